"""The emulator's server: the handshake (path, API key, version, the 429 refusal), one
:class:`~flushsink.emulator.connection.Connection` per accepted websocket, the logs, and
the ways to run it (``async with``, a thread, ``serve_forever``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..formats import AudioFormat
from ._local import LocalServer, Rejection
from .connection import Connection, ConnectionLog
from .faults import FaultSpec, parse_faults

__all__ = ["Emulator", "EmulatorStats", "Rejection", "WS_PATH", "DEFAULT_VERSION", "STRUCTURED_ERRORS_SINCE"]

WS_PATH = "/tts/websocket"
#: The version SDK 3.2.0 sends, used when the client names none.
DEFAULT_VERSION = "2025-11-04"
#: First API version whose errors carry error_code/title/message instead of ``error``.
STRUCTURED_ERRORS_SINCE = "2026-03-01"


@dataclass(frozen=True)
class EmulatorStats:
    """Totals over every connection so far."""

    connections: int
    rejected: int
    messages_received: int
    cancels: int
    chunks_sent: int
    audio_bytes_sent: int
    faults_fired: int


def _first(values: Sequence[str] | None) -> str | None:
    return values[0] if values else None


def _presented_keys(headers: Headers, query: dict[str, list[str]]) -> list[str]:
    keys = list(headers.get_all("X-API-Key"))
    for value in headers.get_all("Authorization"):
        scheme, _, credential = value.partition(" ")
        if scheme.lower() == "bearer":
            keys.append(credential.strip())
    return keys + query.get("api_key", []) + query.get("access_token", [])


class Emulator(LocalServer):
    """A Cartesia-compatible TTS websocket server on ``host:port`` (0 picks a free port).

    Use it as ``async with Emulator(...) as emu``, with :meth:`start` / :meth:`stop`, from
    sync code with :meth:`running_in_thread`, or as a service with :meth:`serve_forever`.

    Handshake:
        api_key: when set, a connection must present it as ``Authorization: Bearer K``,
            ``X-API-Key: K``, ``?api_key=K`` or ``?access_token=K``, else HTTP 401.
            None accepts any key or none.
        reject_429: refuse every connection with HTTP 429 (the parallel-socket limit).
        concurrency_limit: at most this many active contexts over all connections (a
            context is active from its first request until it ends or expires); the next
            one gets an error for that context, status 429, ``concurrency_limited``. More
            than ten times this many open sockets: the handshake gets HTTP 429, as
            Cartesia documents. None (default): no limit.
        retry_after: the ``Retry-After`` (seconds) of the emulator's HTTP 429s; None
            sends none (whether Cartesia sends one is unknown).
        compression: None (default) or ``"deflate"`` to accept permessage-deflate.
        max_size: largest client message in bytes; a bigger one closes with 1009.
        idle_timeout: seconds without traffic in either direction before the server
            closes with 1000 ``connection idle timeout``; None never closes.

    Contexts:
        voices: the voice ids that exist; a request naming another gets an error for
            its context (404 ``voice_not_found`` from API version 2026-03-01, 400
            before). None (default): any id is a voice.
        context_expiry: seconds after its last audio at which an open context (one
            that was not ended) expires, as Cartesia's do after 1 s; None: never. A
            context that has had no audio yet (its text waits for a flush: the emulator
            does not emulate time-based buffering) does not expire, and counts against
            ``concurrency_limit`` until it ends or its socket closes.
            Input to an expired or ended context gets an error for it (after its
            ``done``, if that is still to come), not silence.

    Stream shape:
        error_shape: ``"legacy"`` (``error`` string) or ``"structured"`` (``error_code``,
            ``title``, ``message``, ...); None (default) picks by the API version the
            client sends (structured from 2026-03-01).
        flush_id_base: the flush id of a context's first segment (1 as documented; 0 as
            older SDKs assumed).
        flush_id_on_chunks: whether chunks (and timestamps) carry ``flush_id``;
            ``flush_done`` always does.
        flush_done_before_done: also send ``flush_done`` for a context's last segment
            before ``done`` (whether the real server does is unknown).
        done_after_cancel: send ``done`` after a cancelled context's running segment.
        chunk_ms: audio per chunk, in milliseconds.
        odd_chunks: make every chunk but the last an odd number of bytes, so 16- and
            32-bit samples straddle chunks.
        pace: ``"fast"`` (only yield between chunks), ``"realtime"``, or a float: that
            many seconds of audio per second.
        faults: faults for every connection, e.g. ``"drop@chunk:3"``; see
            :mod:`flushsink.emulator.faults`.
        record_messages: keep every client message in :attr:`ConnectionLog.received`;
            turn it off for a long-running server (the counts are kept either way).

    ``connections`` logs every accepted connection, ``rejected`` every refused
    handshake, and ``stats`` sums them up.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        reject_429: bool = False,
        concurrency_limit: int | None = None,
        retry_after: float | None = 1.0,
        voices: Iterable[str] | None = None,
        context_expiry: float | None = 1.0,
        compression: Literal["deflate"] | None = None,
        max_size: int | None = 2**20,
        idle_timeout: float | None = 300.0,
        error_shape: Literal["legacy", "structured"] | None = None,
        flush_id_base: int = 1,
        flush_id_on_chunks: bool = True,
        flush_done_before_done: bool = False,
        done_after_cancel: bool = True,
        chunk_ms: float = 100.0,
        odd_chunks: bool = False,
        pace: Literal["fast", "realtime"] | float = "fast",
        faults: FaultSpec = (),
        record_messages: bool = True,
    ) -> None:
        if compression not in (None, "deflate"):
            raise ValueError(f"compression must be None or 'deflate', not {compression!r}")
        if error_shape not in (None, "legacy", "structured"):
            raise ValueError(f"error_shape must be None, 'legacy' or 'structured', not {error_shape!r}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive or None, not {idle_timeout!r}")
        if isinstance(flush_id_base, bool) or not isinstance(flush_id_base, int):
            raise ValueError(f"flush_id_base must be an integer, not {flush_id_base!r}")
        if concurrency_limit is not None and (
            isinstance(concurrency_limit, bool) or not isinstance(concurrency_limit, int)
            or concurrency_limit < 1
        ):
            raise ValueError(f"concurrency_limit must be a positive integer or None, not {concurrency_limit!r}")
        for name, value in (("retry_after", retry_after), ("context_expiry", context_expiry)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf")
            ):
                raise ValueError(f"{name} must be a number of seconds >= 0 or None, not {value!r}")
        self.reject_429 = reject_429
        self.concurrency_limit = concurrency_limit
        self.retry_after = retry_after
        self.voices: frozenset[str] | None = None if voices is None else frozenset(voices)
        self.context_expiry = context_expiry
        self.active_contexts: set[Any] = set()  # every connection's, for concurrency_limit
        self._open_sockets = 0
        self.compression = compression
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.error_shape = error_shape
        self.flush_id_base = flush_id_base
        self.flush_id_on_chunks = flush_id_on_chunks
        self.flush_done_before_done = flush_done_before_done
        self.done_after_cancel = done_after_cancel
        self.odd_chunks = odd_chunks
        self.faults = parse_faults(faults)
        self.connections: list[ConnectionLog] = []
        super().__init__(host, port, pace, api_key=api_key, chunk_ms=chunk_ms,
                         record_messages=record_messages)

    # --- addresses and life cycle: LocalServer's (start, stop, async with, a thread, serve_forever)

    @property
    def ws_url(self) -> str:
        """The full endpoint, ``ws://host:port/tts/websocket``."""
        return self.url + WS_PATH

    def _serve_options(self) -> dict[str, Any]:
        return {
            "process_request": self._process_request,
            "process_response": self._process_response,
            "compression": self.compression,
            "max_size": self.max_size,
            # Cartesia has no keepalive of its own; the idle timeout is the only one.
            "ping_interval": None,
        }

    # --- pacing

    def chunk_bytes(self, fmt: AudioFormat) -> int:
        """Bytes of audio per chunk frame for ``fmt``."""
        size = max(1, round(fmt.sample_rate * self.chunk_ms / 1000)) * fmt.sample_width
        return size | 1 if self.odd_chunks else size

    # --- statistics

    @property
    def stats(self) -> EmulatorStats:
        logs = list(self.connections)  # the server thread may append meanwhile
        return EmulatorStats(
            connections=len(logs),
            rejected=len(self.rejected),
            messages_received=sum(log.messages_received for log in logs),
            cancels=sum(log.cancels_received for log in logs),
            chunks_sent=sum(log.sent["chunk"] for log in logs),
            audio_bytes_sent=sum(log.audio_bytes_sent for log in logs),
            faults_fired=sum(len(log.fired) for log in logs),
        )

    # --- handshake and connections

    def _reject(self, connection: ServerConnection, status: int, path: str, reason: str) -> Response:
        response = super()._reject(connection, status, path, reason)
        if status == 429 and self.retry_after is not None:
            response.headers["Retry-After"] = f"{self.retry_after:g}"
        return response

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        query = parse_qs(target.query)
        if target.path != WS_PATH:
            return self._reject(connection, 404, request.path, "Not Found")
        if self.api_key is not None and self.api_key not in _presented_keys(request.headers, query):
            return self._reject(connection, 401, request.path, "Invalid API key")
        if self.reject_429 or (
            self.concurrency_limit is not None and self._open_sockets >= 10 * self.concurrency_limit
        ):
            return self._reject(connection, 429, request.path, "Too many concurrent websocket connections")
        try:
            parse_faults(",".join(query.get("fault", [])))
        except ValueError as exc:
            return self._reject(connection, 400, request.path, str(exc))
        return None

    @staticmethod
    def _process_response(connection: ServerConnection, request: Request, response: Response) -> None:
        response.headers["X-Request-Id"] = str(connection.id)  # LiveKit logs this header

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # the handler only runs after a handshake
        query = parse_qs(urlsplit(request.path).query)
        version = (  # the query wins over the header (docs/protocol.md 1.3)
            _first(query.get("cartesia_version"))
            or _first(request.headers.get_all("Cartesia-Version"))
            or DEFAULT_VERSION
        )
        structured = (
            self.error_shape == "structured"
            if self.error_shape is not None
            else version >= STRUCTURED_ERRORS_SINCE
        )
        log = ConnectionLog(
            request_id=str(ws.id),
            path=request.path,
            headers={name.lower(): value for name, value in request.headers.raw_items()},
            version=version,
            structured_errors=structured,
            faults=self.faults + parse_faults(",".join(query.get("fault", []))),
        )
        self.connections.append(log)
        self._open_sockets += 1
        try:
            await Connection(self, ws, log).run()
        finally:
            self._open_sockets -= 1
