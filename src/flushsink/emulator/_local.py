"""What every emulator server shares: an address on loopback, the life cycle (``async
with``, :meth:`~LocalServer.start` / :meth:`~LocalServer.stop`, a thread of its own for sync
code, :meth:`~LocalServer.serve_forever` for a service) on websockets' asyncio server.

A provider's emulator subclasses :class:`LocalServer` and says what the server runs:
``_handle`` (one accepted websocket) and ``_serve_options`` (websockets ``serve`` options
such as ``process_request``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve

__all__ = ["LocalServer"]

S = TypeVar("S", bound="LocalServer")


class LocalServer:
    """A websocket server on ``host:port`` (0 picks a free port), run by its owner."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._server: Server | None = None

    # --- what a subclass provides

    async def _handle(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    def _serve_options(self) -> dict[str, Any]:
        """More options for websockets' ``serve`` (``process_request``, ``max_size``...)."""
        return {}

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
