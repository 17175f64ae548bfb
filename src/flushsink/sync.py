"""Blocking client for the Cartesia TTS websocket, on ``websockets.sync.client``.

The same API as :mod:`flushsink.client` without ``await``: a reader thread receives
every frame as bytes, feeds it to the Sink and routes the events to per-context queues.
"""

from __future__ import annotations

import functools
import inspect
import queue
import sys
import threading
import time
from typing import Any, Iterator, Optional, cast

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from ._connection import HANDSHAKE_FAILURES, DirectMessages, drop_message, handshake_error
from ._shell import ClientBase
from .errors import ReceiveTimeout, SendTimeout
from .segments import Segment, SegmentReady
from .session import ConnectionLost, ContextState, StreamEnd, StreamError

__all__ = ["connect", "Client", "Context", "ReceiveTimeout"]

# websockets 17 wants connect() used as a context manager unless legacy=True is passed,
# which older versions (the official SDK pins < 16) do not accept: ask only where known.
_DIRECT: dict[str, Any] = (
    {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {})


try:  # websockets 16+: recv() refuses messages of more frames than this
    from websockets.sync.messages import MAX_FRAGMENTS
except ImportError:  # pragma: no cover - older websockets have no such limit
    MAX_FRAGMENTS = sys.maxsize


class _Connection(DirectMessages, ClientConnection):
    _max_fragments = MAX_FRAGMENTS

    def _refuse(self, code: int, reason: str) -> None:
        # As websockets' recv() does, through send_context(): it waits for this very
        # thread (the one receiving) to end, so another thread must call it.
        threading.Thread(target=self._fail, args=(code, reason), daemon=True).start()

    def _fail(self, code: int, reason: str) -> None:
        try:
            with self.send_context():
                self.protocol.fail(code, reason)
        except ConnectionClosed:
            pass

    def send_data(self) -> None:
        # The client sets the socket's timeout to send_timeout once the handshake is
        # done, so a sendall() to a server that stopped reading fails instead of
        # blocking forever with the protocol lock held (which also stalls websockets'
        # keepalive and receiving threads). send_context() then closes the connection
        # and raises ConnectionClosed from the SendTimeout. Once closing, websockets
        # sets the timeout to its close deadline itself: that one stays its own.
        try:
            super().send_data()
        except TimeoutError:
            if self.close_deadline is not None:
                raise
            raise self._send_timed_out() from None


class Context:
    """One generation context: push text, flush, finish, and read its segments."""

    def __init__(self, client: "Client", state: ContextState) -> None:
        self._client = client
        self._state = state
        self._queue: "queue.Queue[Any]" = queue.Queue()

    @property
    def context_id(self) -> str:
        return self._state.context_id

    def push(self, transcript: str, *, flush: bool = False, **extra: Any) -> None:
        """Send text (``continue: true``); with ``flush=True`` it ends a segment."""
        self._client._send(self._client._session_call(
            self._client._session.request, self._state, transcript, continue_=True,
            flush=flush, **extra))

    def flush(self) -> None:
        """Close the current segment: the server answers with ``flush_done``."""
        self.push("", flush=True)

    def no_more_inputs(self) -> None:
        """Tell the server the context's text is complete; ``done`` follows its audio."""
        self._client._send(self._client._session_call(
            self._client._session.request, self._state, "", continue_=False))

    def cancel(self) -> None:
        """Stop the context: queued input is dropped by the server, late audio by us;
        segments still open are finished as incomplete."""
        with self._client._state_lock:
            events, message = self._client._session.cancel(self._state)
            self._client._deliver(events)
        if message is not None and self._client._connected():
            try:
                self._client._send(message)
            except (ConnectionClosed, ConnectionLost, SendTimeout):
                pass

    def events(self, timeout: Optional[float] = None) -> Iterator[Any]:
        """Every event of this context until it ends. Raises ContextFailed,
        ConnectionLost or ReceiveTimeout: the latter once the context has been silent
        (no frame of it, audio included) for ``timeout`` (default ``receive_timeout``)
        seconds, noticed within twice that."""
        wait = self._client.receive_timeout if timeout is None else timeout
        activity = self._client._session.sink.activity
        while True:
            # chunks bring no events: when the wait runs out, the Sink's count of the
            # context's frames says whether its audio is still arriving (see asyncio's)
            seen = activity(self.context_id)
            while True:
                try:
                    event = self._queue.get(timeout=wait)
                    break
                except queue.Empty:
                    now = activity(self.context_id)
                    if now == seen:
                        raise ReceiveTimeout(
                            f"no frame for context {self.context_id!r} in {wait} s") from None
                    seen = now
            if isinstance(event, StreamEnd):
                if event.failure is not None:
                    raise event.failure
                return
            if isinstance(event, StreamError):
                raise event.error  # e.g. a WriteError: iterate again to go on
            yield event
            del event  # do not pin the last event (and its audio) while waiting for the next

    def segments(self, timeout: Optional[float] = None) -> Iterator[Segment]:
        """The finished segments of this context, in order, until it ends."""
        for event in self.events(timeout):
            if isinstance(event, SegmentReady):
                segment = event.segment
                del event
                yield segment
                del segment  # released as soon as the caller lets go of it

    def collect(self, timeout: Optional[float] = None) -> list[Segment]:
        """All segments of the context, once it is done."""
        return list(self.segments(timeout))


class Client(ClientBase):
    """A connection (re-opened on demand) and its contexts. Use :func:`connect`."""

    _context_class = Context

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        # the Session is touched by the caller's thread and the reader thread
        self._state_lock = threading.RLock()
        self._connect_lock = threading.Lock()
        self._ws: Optional[ClientConnection] = None
        self._reader: Optional[threading.Thread] = None

    def _session_call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        with self._state_lock:
            return method(*args, **kwargs)

    def context(self, *, model_id: str = "sonic-latest", voice: Any,
                output_format: Optional[dict[str, Any]] = None, context_id: Optional[str] = None,
                **defaults: Any) -> Context:
        """A new context; ``defaults`` are sent with each of its requests."""
        with self._state_lock:
            context: Context = self._new_context(model_id, voice, output_format, context_id,
                                                 defaults)
            return context

    def _connected(self) -> bool:
        return self._ws is not None and self._reader is not None and self._reader.is_alive()

    def connect(self) -> None:
        """Open the connection now (it also opens on the first push). Raises
        HandshakeError (AuthenticationError, RateLimited) when it cannot."""
        with self._connect_lock:
            if self._connected():
                return
            self._claim(self._session.sink)  # released if this client was closed
            try:
                ws = ws_connect(self.url, additional_headers=self.headers,
                                open_timeout=self.open_timeout, max_size=self.max_size,
                                close_timeout=self.close_timeout,
                                compression=self.compression,
                                create_connection=cast(Any, self._new_connection), **_DIRECT)
            except HANDSHAKE_FAILURES as exc:
                raise handshake_error(self.url, exc, self.open_timeout) from exc
            if self.send_timeout is not None:
                ws.socket.settimeout(self.send_timeout)  # see _Connection.send_data
            self._ws = ws
            self.connections += 1
            self._reader = threading.Thread(target=self._read, args=(ws,),
                                            name="flushsink-reader", daemon=True)
            self._reader.start()

    def _send(self, message: str) -> None:
        if not self._connected():
            self.connect()  # after an idle close, the next push reconnects
        ws = self._ws
        assert ws is not None
        try:
            ws.send(message)
        except ConnectionClosed as exc:
            raise self._send_failed(exc, ws) from exc

    def _new_connection(self, *args: Any, **kwargs: Any) -> ClientConnection:
        connection = _Connection(*args, **kwargs)
        connection.on_message = functools.partial(self._on_message, connection)
        connection.send_timeout = self.send_timeout
        return connection

    def _on_message(self, connection: "_Connection", message: Any) -> None:
        """A message, straight from the protocol, in websockets' receiving thread (so
        the writer runs there too: a slow one delays the reading of the socket)."""
        try:
            with self._state_lock:
                events = self._session.receive(message)
                if events:  # (an audio frame has none: this is all it costs here)
                    self._deliver(events)
        except Exception as exc:  # a bug (or a writer's own error) must not go unseen
            connection.on_message = drop_message  # the rest of what this connection brings
            self._reader_failed(exc)
            # close() waits for this very thread to end: another one must call it
            threading.Thread(target=connection.close, args=(1011, "client failed"),
                             daemon=True).start()

    def _read(self, ws: ClientConnection) -> None:
        # Messages go to _on_message in websockets' own thread; this one waits for the
        # end of the connection (and feeds whatever recv() still gets, see DirectMessages).
        try:
            while True:
                frame = ws.recv(decode=False)
                with self._state_lock:
                    self._receive(frame)
        except ConnectionClosed as exc:
            with self._state_lock:
                self._lost(self._closed(exc, ws))
        except Exception as exc:  # a bug must not leave the contexts waiting forever
            self._reader_failed(exc)
            ws.close()

    def close(self) -> None:
        """Close the connection; contexts still open finish as incomplete. Returns within
        ``close_timeout`` (default: ``open_timeout``): websockets drops the connection of
        a server that does not answer the closing handshake in time. (A push blocked by
        a server that stopped reading holds websockets' lock until its send_timeout.)"""
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        self._release()
        timeout = self.close_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        if ws is not None:
            ws.close()
        if reader is not None:
            reader.join(None if deadline is None else max(deadline - time.monotonic(), 0.05))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def connect(url: Optional[str] = None, api_key: Optional[str] = None, **options: Any) -> Client:
    """``with flushsink.sync.connect(...) as tts:`` — the blocking twin of
    :func:`flushsink.connect`."""
    return Client(url, api_key, **options)
