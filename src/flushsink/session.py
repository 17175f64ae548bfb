"""Sans-I/O protocol state for one Cartesia TTS websocket: request JSON out, frames in.

Both clients (asyncio and sync) drive a :class:`Session`: it builds the request messages
of each context, feeds received frames to the :class:`~flushsink.Sink`, hands finished
segments to the writer, and routes every event to the one context it belongs to.
Nothing here touches a socket.
"""

from __future__ import annotations

import collections
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ._accel import Sink
from .errors import (
    CapacityError,
    ConfigError,
    ConnectionLost,
    ContextClosed,
    ContextFailed,
    FrameError,
    WriteError,
)
from .formats import AudioFormat
from .segments import ContextDone, ContextError, SegmentReady, ServerError

__all__ = ["Session", "ContextState", "normalize_url", "auth_headers", "CARTESIA_URL",
           "DEFAULT_VERSION", "ConnectionLost", "ContextClosed", "ContextFailed"]

log = logging.getLogger("flushsink")

#: Cartesia's TTS websocket, used when no url is given.
CARTESIA_URL = "wss://api.cartesia.ai/tts/websocket"
DEFAULT_VERSION = "2025-11-04"
DEFAULT_OUTPUT_FORMAT = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 44100}


def normalize_url(url: Optional[str]) -> str:
    """Cartesia's URL by default; a bare ``ws://host:port`` gets ``/tts/websocket``.

    Raises :class:`~flushsink.errors.ConfigError` (a ``ValueError``) for anything but a
    ``ws://`` or ``wss://`` URL."""
    if url is None:
        return CARTESIA_URL
    if not isinstance(url, str):
        raise ConfigError(f"url must be a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("ws", "wss"):
        raise ConfigError(f"url must start with ws:// or wss://, not {url!r}")
    host, slash, path = rest.partition("/")
    if not path.strip("/"):
        return f"{scheme}://{host}/tts/websocket"
    return url


def auth_headers(api_key: Optional[str], version: str) -> dict[str, str]:
    headers = {"Cartesia-Version": version}
    if api_key:
        headers["X-API-Key"] = api_key
    return headers


@dataclass
class ContextState:
    """What the session knows about one context."""

    context_id: str
    request: dict[str, Any]  # fields repeated in every request of the context
    format: AudioFormat
    started: bool = False  # a request was sent
    ended: bool = False  # done, failed, cancelled or lost: no more input
    closed: bool = False  # its event stream got the closing marker
    failure: Optional[BaseException] = None


#: How many connection-level server errors and write errors a Session keeps (the latest).
KEPT_ERRORS = 100


class Session:
    """Routes one connection's frames to contexts. ``deliver(state, event)`` is called
    for every event of a known context; events of unknown contexts are logged and
    counted in ``unrouted``.

    ``server_errors`` holds the latest 100 errors without a context (``ServerError``)
    and ``server_error_count`` counts them all; ``write_errors`` and
    ``write_error_count`` do the same for failed writes. Only the latest are kept so a
    server cannot grow the client's memory with error frames (200,000 of them kept
    226 MB), nor a full disk with the segments its WriteErrors carry.
    """

    def __init__(self, sink: Sink, deliver: Callable[[ContextState, Any], None],
                 writer: Optional[Callable[[Any], Any]] = None) -> None:
        self.sink = sink
        # only the contexts this client opens may store audio: a server sending frames
        # for others cannot fill the caps or make files with them
        sink.drop_unannounced = True
        self.writer = writer
        self.deliver = deliver
        self.contexts: dict[str, ContextState] = {}
        self.server_errors: collections.deque[ServerError] = collections.deque(maxlen=KEPT_ERRORS)
        self.server_error_count = 0
        self.write_errors: collections.deque[WriteError] = collections.deque(maxlen=KEPT_ERRORS)
        self.write_error_count = 0
        self.rejected_frames = 0
        self.unrouted = 0

    # ---- outgoing -----------------------------------------------------------------

    def new_context(self, *, model_id: str, voice: Any,
                    output_format: Optional[dict[str, Any]] = None,
                    context_id: Optional[str] = None, **defaults: Any) -> ContextState:
        """Register a context; ``defaults`` (language, add_timestamps, generation_config,
        max_buffer_delay_ms, ...) go into every request of it. A ``context_id`` that is
        not valid Unicode (a lone surrogate) is a ConfigError, before anything is
        registered."""
        output_format = dict(output_format or DEFAULT_OUTPUT_FORMAT)
        fmt = AudioFormat.from_output_format(output_format)
        context_id = context_id or str(uuid.uuid4())
        if not isinstance(context_id, str):
            raise TypeError(f"context_id must be a str, not {type(context_id).__name__}")
        try:
            context_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            # json.dumps would send it as a \ud800 escape, which is no character: the
            # server's frames would name no context this client has (and the Sink
            # rejects such escapes), so the context would wait for nothing
            raise ConfigError(
                f"context id {context_id!r} is not valid Unicode text: {exc.reason} at "
                f"index {exc.start}") from None
        if context_id in self.contexts:
            raise ValueError(f"context id {context_id!r} is already in use on this connection")
        if isinstance(voice, str):
            voice = {"mode": "id", "id": voice}
        # the key order of the official SDK, so servers see what they expect
        request = {"context_id": context_id, "model_id": model_id, "transcript": "",
                   "voice": voice, "output_format": output_format, "continue": True}
        request.update({k: v for k, v in defaults.items() if v is not None})
        state = ContextState(context_id, request, fmt)
        self.contexts[context_id] = state
        self.sink.set_format(context_id, fmt)
        return state

    def request(self, state: ContextState, transcript: str, *, continue_: bool = True,
                flush: bool = False, **extra: Any) -> str:
        """The JSON text of one generation request of ``state``."""
        if state.ended:
            raise ContextClosed(f"context {state.context_id!r} has ended")
        if not isinstance(transcript, str):
            raise TypeError("transcript must be a str")
        message = dict(state.request)
        message["transcript"] = transcript
        message["continue"] = continue_
        if flush:
            message["flush"] = True
        message.update(extra)
        state.started = True
        return json.dumps(message)

    def cancel(self, state: ContextState) -> Optional[str]:
        """End the context locally (its late audio is dropped, open segments finish as
        incomplete) and return the cancel message to send, if the server knows it."""
        if state.ended:
            return None
        for event in self.sink.cancel(state.context_id):
            self._deliver_segment(state, event)
        self._end(state, None)
        return json.dumps({"context_id": state.context_id, "cancel": True}) if state.started else None

    # ---- incoming -----------------------------------------------------------------

    def receive(self, frame: Any) -> None:
        """Feed one frame. A frame the Sink rejects is logged and counted, never fatal:
        one bad frame must not take the other contexts down."""
        try:
            events = self.sink.feed(frame)
        except CapacityError as exc:
            self.rejected_frames += 1
            self._fail_context(exc.context_id, exc)
            return
        except FrameError as exc:
            self.rejected_frames += 1
            log.warning("flushsink: rejected a frame from the server: %s", exc)
            return
        except MemoryError:
            # the frame is lost (nothing was stored), the connection and contexts go on
            self.rejected_frames += 1
            log.error("flushsink: out of memory storing a frame from the server")
            return
        for event in events:
            self._route(event)

    def connection_lost(self, reason: str) -> None:
        """The socket closed: finish what was received as incomplete, fail the contexts
        that were still waiting for audio."""
        for event in self.sink.close(reason):
            self._route(event)
        for state in list(self.contexts.values()):
            if not state.ended and state.started:
                self._end(state, ConnectionLost(f"connection lost: {reason}"))

    def _deliver_segment(self, state: Optional[ContextState], event: SegmentReady) -> None:
        """Write the segment, then hand it to its context. A failed write never reaches
        the reader (the connection and the other contexts go on): the context gets the
        segment and then the WriteError, which carries the segment for a retry."""
        failure: Optional[WriteError] = None
        if state is None:
            return  # not a context of this client: nothing of it is written
        if self.writer is not None:
            try:
                self.writer(event)
            except WriteError as exc:
                self.write_errors.append(exc)
                self.write_error_count += 1
                failure = exc
        self.deliver(state, event)
        if failure is None:
            return
        if event.segment.complete:
            # the reader gets it from the context's iterator: logging it as an error too
            # would report it twice to a program that handles it
            log.info("flushsink: %s", failure)
            self.deliver(state, _Failed(failure))
        else:
            # an incomplete segment's stream ends with its own failure (lost connection,
            # server error) right after it: the write error is only logged and kept then
            log.error("flushsink: %s", failure)

    def _route(self, event: Any) -> None:
        if isinstance(event, ServerError):
            self.server_errors.append(event)
            self.server_error_count += 1
            log.warning("flushsink: server error without context: %s", event.message)
            return
        state = self.contexts.get(event.context_id)
        if isinstance(event, SegmentReady):
            self._deliver_segment(state, event)
        elif state is not None:
            self.deliver(state, event)
        if state is None:
            self.unrouted += 1
            log.debug("flushsink: event for unknown context %r dropped", event.context_id)
            return
        if isinstance(event, ContextDone):
            self._end(state, None)
        elif isinstance(event, ContextError):
            self._end(state, ContextFailed(event))

    def _fail_context(self, context_id: Any, exc: BaseException) -> None:
        state = self.contexts.get(context_id)
        log.warning("flushsink: %s", exc)
        if state is None or state.ended:
            return
        for event in self.sink.cancel(context_id):
            self._route(event)
        self._end(state, exc)

    def _end(self, state: ContextState, failure: Optional[BaseException]) -> None:
        self.contexts.pop(state.context_id, None)
        if state.closed:
            return
        state.closed = True
        state.ended = True
        state.failure = failure
        self.deliver(state, _End(failure))


@dataclass(frozen=True)
class _End:
    """Internal marker closing a context's event stream (with the failure, if any)."""

    failure: Optional[BaseException]


@dataclass(frozen=True)
class _Failed:
    """Internal marker: raise this error in the context's stream, which goes on."""

    error: BaseException
