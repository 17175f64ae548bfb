"""Sans-I/O protocol state for the Cartesia TTS websocket: frames in, events and
messages out.

Both clients (asyncio and sync) drive a :class:`Session`: it builds the request messages
of each context, feeds received frames to the :class:`~flushsink.Sink`, and returns each
event tagged for the one context it belongs to, closing each context's stream with a
:class:`StreamEnd`. It writes no file, touches no socket and calls nothing back: the
shell (:mod:`flushsink._shell`, shared by :mod:`flushsink.client` and
:mod:`flushsink.sync`) sends what it returns, writes the segments and fills the
contexts' queues, as websockets' ``protocol.py`` leaves its I/O to its connections.
"""

from __future__ import annotations

import collections
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ._accel import Sink
from .errors import (
    CapacityError,
    ConfigError,
    ConnectionLost,
    ContextClosed,
    ContextFailed,
    ContextRateLimited,
    FrameError,
    WriteError,
)
from .formats import AudioFormat
from .segments import ContextDone, ContextError, SegmentReady, ServerError

__all__ = ["Session", "ContextState", "StreamEnd", "StreamError", "normalize_url",
           "auth_headers", "CARTESIA_URL", "DEFAULT_VERSION", "ConnectionLost", "ContextClosed",
           "ContextFailed"]

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


@dataclass(frozen=True)
class StreamEnd:
    """The event stream of context ``context_id`` ends here: its iterator returns, or
    raises ``failure`` (ContextFailed, ConnectionLost, CapacityError, ...) if there is
    one. The last event a context gets."""

    context_id: Optional[str]
    failure: Optional[BaseException]


@dataclass(frozen=True)
class StreamError:
    """Raise ``error`` from the iterator of context ``context_id``; its stream goes on
    after it (a failed write: the caller may retry the segment and iterate again)."""

    context_id: Optional[str]
    error: BaseException


class Session:
    """The protocol state of one client's connections: frames in, events out.

    Each method returns what the shell must do next and does nothing itself:
    ``request`` and ``cancel`` return the message to send, ``receive``,
    ``connection_lost`` and ``cancel`` return events to deliver, in order, each to the
    context its ``context_id`` names: the Sink's events of the contexts this session
    opened (:class:`~flushsink.SegmentReady`, ``ContextDone``, ``ContextError``,
    ``Timestamps``, ``Unknown``), then :class:`StreamEnd` as the last of a context and
    :class:`StreamError` where its reader must see an error. A ``SegmentReady`` is the
    shell's to write (before it delivers it); a write that fails with
    :class:`~flushsink.WriteError` is reported with :meth:`write_failed`, which returns
    what to deliver after the segment. No file, socket or callback is touched here (the
    model is websockets' ``protocol.py``); the shell is :mod:`flushsink._shell`.

    Events of contexts this session did not open are logged and counted in
    ``unrouted``. ``server_errors`` holds the latest 100 errors without a context
    (``ServerError``) and ``server_error_count`` counts them all; ``write_errors`` and
    ``write_error_count`` do the same for the failed writes the shell reports. Only the
    latest are kept so a server cannot grow the client's memory with error frames
    (200,000 of them kept 226 MB), nor a full disk with the segments its WriteErrors
    carry.

    The Sink should drop frames of contexts no ``new_context`` announced
    (``drop_unannounced``, which the clients set): otherwise their audio is stored,
    counts against the caps, and is only dropped here once finished.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
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
        registered. Nothing is sent until its first :meth:`request`."""
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
        """The JSON text of one generation request of ``state``: the shell sends it.
        ContextClosed once the context has ended."""
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

    def cancel(self, state: ContextState) -> tuple[list[Any], Optional[str]]:
        """End the context here (its late audio is dropped, open segments finish as
        incomplete). Returns the events to deliver (those segments, then its
        StreamEnd) and the cancel message to send if the server knows the context
        (None if not, or if it had ended already)."""
        if state.ended:
            return [], None
        events = list(self.sink.cancel(state.context_id))
        self._end(state, None, events)
        message = (json.dumps({"context_id": state.context_id, "cancel": True})
                   if state.started else None)
        return events, message

    def fail(self, state: ContextState, failure: BaseException) -> list[Any]:
        """End the context here with ``failure`` (the shell's own reason, e.g. an
        AudioOverflow): as :meth:`cancel`, its late audio is dropped and its open
        segments finish as incomplete, but its stream ends by raising ``failure``.
        Returns the events to deliver; nothing is sent (as for a CapacityError)."""
        if state.ended:
            return []
        events = self._route(self.sink.cancel(state.context_id))
        self._end(state, failure, events)
        return events

    # ---- incoming -----------------------------------------------------------------

    def receive(self, frame: Any) -> Sequence[Any]:
        """Feed one frame; return the events to deliver. A chunk that stored its audio
        returns the Sink's shared empty tuple: nothing is built per audio frame. A frame
        the Sink rejects is logged and counted, never fatal: one bad frame must not take
        the other contexts down (a CapacityError ends its context, whose events are
        returned)."""
        try:
            events = self.sink.feed(frame)
        except CapacityError as exc:
            self.rejected_frames += 1
            return self._fail_context(exc.context_id, exc)
        except FrameError as exc:
            self.rejected_frames += 1
            log.warning("flushsink: rejected a frame from the server: %s", exc)
            return ()
        except MemoryError:
            # the frame is lost (nothing was stored), the connection and contexts go on
            self.rejected_frames += 1
            log.error("flushsink: out of memory storing a frame from the server")
            return ()
        if not events:
            return events
        return self._route(events)

    def connection_lost(self, reason: str) -> list[Any]:
        """The socket closed: finish what was received as incomplete, fail the contexts
        that were still waiting for audio. Returns the events to deliver."""
        events = self._route(self.sink.close(reason))
        for state in list(self.contexts.values()):
            if not state.ended and state.started:
                self._end(state, ConnectionLost(f"connection lost: {reason}"), events)
        return events

    def write_failed(self, event: SegmentReady, error: WriteError) -> tuple[Any, ...]:
        """The shell could not write ``event``'s segment. Deliver the segment anyway,
        then what this returns: a complete segment's context gets the error from its
        iterator (which goes on; the error carries the segment, for a retry); an
        incomplete one's stream ends with its own failure (lost connection, server
        error) right after it, so the write error is only logged and kept then. A
        failed write never ends the connection or the other contexts."""
        self.write_errors.append(error)
        self.write_error_count += 1
        if event.segment.complete:
            # the reader gets it from the context's iterator: logging it as an error too
            # would report it twice to a program that handles it
            log.info("flushsink: %s", error)
            return (StreamError(event.context_id, error),)
        log.error("flushsink: %s", error)
        return ()

    def _route(self, events: Sequence[Any]) -> list[Any]:
        """The events of this session's contexts, each context's StreamEnd after its
        ContextDone or ContextError; server errors and strangers' events kept aside."""
        routed: list[Any] = []
        for event in events:
            if isinstance(event, ServerError):
                self.server_errors.append(event)
                self.server_error_count += 1
                log.warning("flushsink: server error without context: %s", event.message)
                continue
            state = self.contexts.get(event.context_id)
            if state is None:
                self.unrouted += 1
                log.debug("flushsink: event for unknown context %r dropped", event.context_id)
                continue
            routed.append(event)
            if isinstance(event, ContextDone):
                self._end(state, None, routed)
            elif isinstance(event, ContextError):
                failure = (ContextRateLimited(event) if event.status_code == 429
                           else ContextFailed(event))
                self._end(state, failure, routed)
        return routed

    def _fail_context(self, context_id: Any, exc: BaseException) -> list[Any]:
        state = self.contexts.get(context_id)
        log.warning("flushsink: %s", exc)
        if state is None or state.ended:
            return []
        events = self._route(self.sink.cancel(context_id))
        self._end(state, exc, events)
        return events

    def _end(self, state: ContextState, failure: Optional[BaseException],
             events: list[Any]) -> None:
        """End ``state``'s stream: its StreamEnd goes last into ``events``."""
        self.contexts.pop(state.context_id, None)
        if state.closed:
            return
        state.closed = True
        state.ended = True
        state.failure = failure
        events.append(StreamEnd(state.context_id, failure))
