"""What every emulator server shares: an address on loopback, the life cycle (``async
with``, :meth:`~LocalServer.start` / :meth:`~LocalServer.stop`, a thread of its own for sync
code, :meth:`~LocalServer.serve_forever` for a service) on websockets' asyncio server.

A provider's emulator subclasses :class:`LocalServer` and says what the server runs:
``_handle`` (one accepted websocket) and ``_serve_options`` (websockets ``serve`` options
such as ``process_request``). It also gets the pace of the audio (``pace``, with
:meth:`~LocalServer._pace_after`) and the log of refused handshakes (``rejected``, with
:meth:`~LocalServer._reject`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Response

__all__ = ["LocalServer", "Pace", "Rejection"]

S = TypeVar("S", bound="LocalServer")

#: ``"fast"`` (only yield between chunks), ``"realtime"``, or seconds of audio per second.
Pace = Union[Literal["fast", "realtime"], float]


@dataclass(frozen=True)
class Rejection:
    """A handshake the emulator refused."""

    status: int
    path: str
    reason: str


def pace_factor(pace: Pace) -> float | None:
    """Seconds of audio per second for ``pace`` (None: as fast as it goes); ValueError
    for anything else."""
    if pace == "fast":
        return None
    if pace == "realtime":
        return 1.0
    if isinstance(pace, (int, float)) and not isinstance(pace, bool) and pace > 0:
        return float(pace)
    raise ValueError(f"pace must be 'fast', 'realtime' or a positive number, not {pace!r}")


class LocalServer:
    """A websocket server on ``host:port`` (0 picks a free port), run by its owner, sending
    audio at ``pace``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, pace: Pace = "fast", *,
                 api_key: str | None = None, chunk_ms: float = 100.0,
                 record_messages: bool = True) -> None:
        """``api_key``: the key a client must present (None: any or none);
        ``chunk_ms``: audio per chunk message; ``record_messages``: keep every client
        message in the connection logs (turn it off for a long-running server)."""
        if api_key == "":
            raise ValueError("api_key must be None (accept any key) or a non-empty key")
        if not 0 < chunk_ms <= 60_000:  # (nan and inf fail too)
            raise ValueError(f"chunk_ms must be above 0 and at most 60000, not {chunk_ms!r}")
        self.pace = pace
        self.pace_factor = pace_factor(pace)
        self.api_key = api_key
        self.chunk_ms = chunk_ms
        self.record_messages = record_messages
        self.host = host
        self.rejected: list[Rejection] = []
        self._requested_port = port
        self._port: int | None = None
        self._server: Server | None = None

    # --- what a subclass provides

    async def _handle(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    def _serve_options(self) -> dict[str, Any]:
        """More options for websockets' ``serve`` (``process_request``, ``max_size``...)."""
        return {}

    # --- pacing and refusals

    async def _pace_after(
        self, loop: asyncio.AbstractEventLoop, started: float, audio_seconds: float
    ) -> None:
        """Wait after a chunk: just yield (so contexts interleave), or keep the pace: the
        chunk that ends ``audio_seconds`` into audio begun at ``started`` (loop time)."""
        if self.pace_factor is None:
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(max(0.0, started + audio_seconds / self.pace_factor - loop.time()))

    def _reject(self, connection: ServerConnection, status: int, path: str, reason: str) -> Response:
        """Refuse a handshake with an HTTP status (logged in ``rejected``)."""
        self.rejected.append(Rejection(status, path, reason))
        return connection.respond(status, reason + "\n")

    # --- addresses

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not running")
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port``: the base URL SDKs take (``websocket_base_url``...)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    # --- life cycle

    async def start(self: S) -> S:
        """Bind and start accepting connections (on the running event loop)."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        options = {"close_timeout": 5, "server_header": "flushsink-emulator",
                   **self._serve_options()}
        self._server = await serve(self._handle, self.host, self._requested_port, **options)
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def stop(self, timeout: float = 10.0) -> None:
        """Close every connection (1001) and stop listening. Idempotent."""
        server, self._server, self._port = self._server, None, None
        if server is None:
            return
        server.close()
        await asyncio.wait_for(server.wait_closed(), timeout)

    async def __aenter__(self: S) -> S:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def serve_forever(self: S, ready: Callable[[S], None] | None = None) -> None:
        """Run until cancelled (e.g. by Ctrl-C under ``asyncio.run``), then stop.

        ``ready`` is called once the port is bound, e.g. to print the URL.
        """
        await self.start()
        try:
            if ready is not None:
                ready(self)
            await asyncio.Event().wait()
        finally:
            await self.stop()

    @contextlib.contextmanager
    def running_in_thread(self: S, timeout: float = 10.0) -> Iterator[S]:
        """Run the server on its own event loop in a daemon thread, for sync code::

            with Emulator().running_in_thread() as emu:
                ...  # emu.ws_url is listening

        On exit the server is stopped and the thread joined (each within ``timeout``).
        """
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="flushsink-emulator", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout)
            yield self
        finally:
            try:
                asyncio.run_coroutine_threadsafe(self.stop(timeout), loop).result(timeout)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout)
                if not thread.is_alive():
                    loop.close()
