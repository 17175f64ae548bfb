"""asyncio client for the Cartesia TTS websocket, on ``websockets.asyncio.client``.

One connection carries many contexts; a single reader task receives every frame as
bytes and feeds it to the Sink (through :class:`~flushsink.session.Session`), which
routes each event to its own context. Nothing protocol-specific lives here.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator, Optional

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from ._accel import Sink
from .errors import FlushsinkError, ReceiveTimeout
from .formats import DEFAULT_FORMAT
from .segments import Segment, SegmentReady
from .session import (
    DEFAULT_VERSION,
    log,
    ConnectionLost,
    ContextState,
    Session,
    _End,
    _Failed,
    auth_headers,
    normalize_url,
)

__all__ = ["connect", "Client", "ClientBase", "Context", "ReceiveTimeout"]


def _resolve_key(url: Optional[str], api_key: Optional[str]) -> Optional[str]:
    api_key = api_key or os.environ.get("CARTESIA_API_KEY") or None
    if url is None and api_key is None:
        raise FlushsinkError(
            "no API key for Cartesia: pass api_key= or set CARTESIA_API_KEY "
            "(or pass url= of another server, e.g. flushsink's emulator)"
        )
    return api_key


class Context:
    """One generation context: push text, flush, finish, and read its segments."""

    def __init__(self, client: "Client", state: ContextState) -> None:
        self._client = client
        self._state = state
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    @property
    def context_id(self) -> str:
        return self._state.context_id

    async def push(self, transcript: str, *, flush: bool = False, **extra: Any) -> None:
        """Send text (``continue: true``); with ``flush=True`` it ends a segment."""
        await self._client._send(self._client._session.request(
            self._state, transcript, continue_=True, flush=flush, **extra))

    async def flush(self) -> None:
        """Close the current segment: the server answers with ``flush_done``."""
        await self.push("", flush=True)

    async def no_more_inputs(self) -> None:
        """Tell the server the context's text is complete; ``done`` follows its audio."""
        await self._client._send(self._client._session.request(
            self._state, "", continue_=False))

    async def cancel(self) -> None:
        """Stop the context: queued input is dropped by the server, late audio by us;
        segments still open are finished as incomplete."""
        message = self._client._session.cancel(self._state)
        if message is not None and self._client._connected():
            try:
                await self._client._send(message)
            except (ConnectionClosed, ConnectionLost):
                pass  # the connection is gone, so is the context on the server

    async def events(self, timeout: Optional[float] = None) -> AsyncIterator[Any]:
        """Every event of this context (SegmentReady, Timestamps, ContextDone, ...), until
        it ends. Raises ContextFailed, ConnectionLost or ReceiveTimeout."""
        wait = self._client.receive_timeout if timeout is None else timeout
        while True:
            try:
                event = await asyncio.wait_for(self._queue.get(), wait)
            except asyncio.TimeoutError:
                raise ReceiveTimeout(
                    f"no event for context {self.context_id!r} in {wait} s") from None
            if isinstance(event, _End):
                if event.failure is not None:
                    raise event.failure
                return
            if isinstance(event, _Failed):
                raise event.error  # e.g. a WriteError: iterate again to go on
            yield event
            del event  # do not pin the last event (and its audio) while waiting for the next

    async def segments(self, timeout: Optional[float] = None) -> AsyncIterator[Segment]:
        """The finished segments of this context, in order, until it ends."""
        async for event in self.events(timeout):
            if isinstance(event, SegmentReady):
                segment = event.segment
                del event
                yield segment
                del segment  # released as soon as the caller lets go of it

    async def collect(self, timeout: Optional[float] = None) -> list[Segment]:
        """All segments of the context, once it is done."""
        return [segment async for segment in self.segments(timeout)]


class ClientBase:
    """Options, the Session and the contexts: what the asyncio and sync clients share."""

    _context_class: Any = None

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None, *,
                 version: str = DEFAULT_VERSION, writer: Any = None, sink: Optional[Sink] = None,
                 receive_timeout: float = 60.0, open_timeout: float = 10.0,
                 max_size: Optional[int] = 16 * 2**20, compression: Optional[str] = None,
                 additional_headers: Optional[dict[str, str]] = None) -> None:
        self.api_key = _resolve_key(url, api_key)
        self.url = normalize_url(url)
        self.version = version
        self.receive_timeout = receive_timeout
        self.open_timeout = open_timeout
        self.max_size = max_size
        # permessage-deflate costs 3-14x client CPU for ~23% fewer bytes: off by default
        self.compression = compression
        self.headers = {**auth_headers(self.api_key, version), **(additional_headers or {})}
        self._session = Session(sink if sink is not None else Sink(DEFAULT_FORMAT),
                                self._deliver, writer)
        self._contexts: dict[str, Any] = {}
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self.connections = 0

    @property
    def sink(self) -> Sink:
        return self._session.sink

    @property
    def session(self) -> Session:
        return self._session

    def _new_context(self, model_id: str, voice: Any, output_format: Optional[dict[str, Any]],
                     context_id: Optional[str], defaults: dict[str, Any]) -> Any:
        state = self._session.new_context(model_id=model_id, voice=voice,
                                          output_format=output_format, context_id=context_id,
                                          **defaults)
        ctx = self._context_class(self, state)
        self._contexts[state.context_id] = ctx
        return ctx

    def _deliver(self, state: ContextState, event: Any) -> None:
        ctx = self._contexts.get(state.context_id)
        if ctx is not None:
            ctx._queue.put_nowait(event)
            if isinstance(event, _End):
                del self._contexts[state.context_id]

    def _closed(self, exc: ConnectionClosed) -> str:
        # the server's close frame if it sent one, else ours (e.g. 1009 for a frame over
        # max_size), else none at all: the TCP connection dropped
        close = exc.rcvd or exc.sent
        self.close_code = close.code if close else None
        self.close_reason = close.reason if close else None
        if close is None:
            return "connection dropped without a close frame"
        reason = f" ({close.reason})" if close.reason else ""
        side = "the server" if exc.rcvd else "flushsink"
        return f"connection closed by {side} with code {close.code}{reason}"


class Client(ClientBase):
    """A connection (re-opened on demand) and its contexts. Use :func:`connect`."""

    _context_class = Context

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self._ws: Optional[ClientConnection] = None
        self._reader: Optional[asyncio.Task[None]] = None
        self._lock = asyncio.Lock()

    def context(self, *, model_id: str = "sonic-latest", voice: Any,
                output_format: Optional[dict[str, Any]] = None, context_id: Optional[str] = None,
                **defaults: Any) -> Context:
        """A new context; ``defaults`` (language, add_timestamps, max_buffer_delay_ms,
        generation_config, ...) are sent with each of its requests."""
        context: Context = self._new_context(model_id, voice, output_format, context_id, defaults)
        return context

    # ---- connection ---------------------------------------------------------------

    def _connected(self) -> bool:
        return self._ws is not None and self._reader is not None and not self._reader.done()

    async def connect(self) -> None:
        """Open the connection now (it also opens on the first push)."""
        async with self._lock:
            if self._connected():
                return
            self._ws = await ws_connect(
                self.url, additional_headers=self.headers, open_timeout=self.open_timeout,
                max_size=self.max_size, compression=self.compression,
            )
            self.connections += 1
            self._reader = asyncio.create_task(self._read(self._ws))

    async def _send(self, message: str) -> None:
        if not self._connected():
            await self.connect()  # after an idle close, the next push reconnects
        assert self._ws is not None
        try:
            await self._ws.send(message)
        except ConnectionClosed as exc:
            raise ConnectionLost(f"connection closed while sending: {exc}") from exc

    async def _read(self, ws: ClientConnection) -> None:
        receive = self._session.receive
        try:
            while True:
                receive(await ws.recv(decode=False))
        except ConnectionClosed as exc:
            self._session.connection_lost(self._closed(exc))
        except asyncio.CancelledError:
            self._session.connection_lost("the client stopped reading")
            raise
        except Exception as exc:  # a bug must not leave the contexts waiting forever
            log.exception("flushsink: the reader failed")
            self._session.connection_lost(f"reader failed: {exc!r}")
            await ws.close()

    async def close(self) -> None:
        """Close the connection; contexts still open finish as incomplete."""
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        if ws is not None:
            await ws.close()
        if reader is not None:
            try:
                await asyncio.wait_for(reader, self.open_timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                reader.cancel()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


def connect(url: Optional[str] = None, api_key: Optional[str] = None, **options: Any) -> Client:
    """``async with flushsink.connect(...) as tts:`` (see :class:`ClientBase` for options).

    ``url=None`` means Cartesia (``wss://api.cartesia.ai/tts/websocket``) with
    ``api_key`` or ``CARTESIA_API_KEY``; a bare ``ws://host:port`` gets the
    ``/tts/websocket`` path.
    """
    return Client(url, api_key, **options)
