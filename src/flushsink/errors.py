"""The exception tree, shared by the compiled core and the pure-Python twin.

Everything flushsink raises on purpose derives from :class:`FlushsinkError`.
Errors caused by bad data from the server also derive from :class:`ValueError`.
"""

from __future__ import annotations

from typing import Any


class FlushsinkError(Exception):
    """Base class of every error flushsink raises on purpose."""


class FrameError(FlushsinkError, ValueError):
    """A frame could not be accepted: malformed JSON, bad UTF-8, invalid base64,
    a field of the wrong type, or a frame that is not a JSON object.

    ``offset`` is the byte offset in the frame (UTF-8 bytes for a ``str`` frame)
    where the problem was found; ``code`` is a stable short name for the kind.
    The sink's state is unchanged by a rejected frame.
    """

    def __init__(self, code: str, offset: int, detail: str = "") -> None:
        self.code = code
        self.offset = offset
        self.detail = detail
        reason = FRAME_ERROR_REASONS.get(code, code)
        if detail:
            reason = f"{reason} ({detail})"
        super().__init__(f"{reason} at byte {offset}")


# The compiled core reports a code and an offset; both implementations build the
# message from this one table, so the messages are identical.
FRAME_ERROR_REASONS = {
    "not_object": "frame is not a JSON object",
    "syntax": "invalid JSON",
    "truncated": "truncated JSON",
    "utf8": "invalid UTF-8",
    "control": "unescaped control character in JSON string",
    "escape": "invalid escape in JSON string",
    "surrogate": "unpaired surrogate in JSON \\u escape",
    "number": "invalid JSON number",
    "depth": "JSON nested too deeply",
    "trailing": "data after the JSON object",
    "duplicate": "duplicate key",
    "field_type": "field has the wrong type",
    "base64_char": "invalid base64 character",
    "base64_padding": "invalid base64 padding",
    "base64_length": "invalid base64 length",
    "hex_char": "invalid hex character",
    "hex_length": "invalid hex length (odd)",
}


class CapacityError(FlushsinkError):
    """A cap would be exceeded: storing a frame would pass one of the Sink's caps
    (``max_segment_bytes``, ``max_total_bytes``, ``max_open_segments``,
    ``max_timestamps``), or a client would open more contexts than the provider allows
    on one socket (ElevenLabs: five; refused before anything is sent).

    A rejected frame is rejected whole; everything stored before is intact.
    """

    def __init__(self, message: str, context_id: Any = None, flush_id: Any = None) -> None:
        super().__init__(message)
        self.context_id = context_id
        self.flush_id = flush_id


class AudioOverflow(CapacityError):
    """A streaming client's context had more audio waiting for ``audio()`` than the
    client's ``audio_buffer_bytes``: at once with ``on_audio_overflow="fail"``, or for
    longer than ``receive_timeout`` with ``"wait"`` (the consumer did not read). The
    context fails with it: ``audio()``, ``segments()`` and ``events()`` raise it, its
    open segments finish as incomplete and its later frames are dropped."""


class FormatError(FlushsinkError, ValueError):
    """An audio format that flushsink does not know or cannot write."""


class WriteError(FlushsinkError, OSError):
    """A segment could not be written. No file was left under the final name.

    ``segment`` is the segment that failed, so the caller can retry (for example
    into another directory); ``path`` is the path that was attempted.
    """

    def __init__(self, message: str, segment: Any = None, path: Any = None) -> None:
        super().__init__(message)
        self.segment = segment
        self.path = path


# --- the websocket clients ----------------------------------------------------------------

class ContextFailed(FlushsinkError):
    """The server reported an error for this context (``event`` holds it)."""

    def __init__(self, event: Any) -> None:
        super().__init__(f"context {event.context_id!r} failed: {event.message}")
        self.event = event

    def __reduce__(self) -> Any:  # pickled with its event (multiprocessing, futures)
        return (type(self), (self.event,))


class ConnectionLost(FlushsinkError, ConnectionError):
    """The connection closed while this context was still receiving. Its open segments
    were finished as incomplete (and written as ``.partial`` files by a FileWriter)."""


class ContextClosed(FlushsinkError):
    """The context already ended (done, failed, cancelled): it takes no more input."""


class ReceiveTimeout(FlushsinkError, TimeoutError):
    """A context was silent for the client's ``receive_timeout``: no frame of it (audio
    included) arrived for that long."""


class SendTimeout(FlushsinkError, TimeoutError):
    """A message could not be handed to the socket within the client's ``send_timeout``:
    the server stopped reading. The connection is closed (its contexts finish as on any
    lost connection), so nothing waits on it any longer."""


class HandshakeError(FlushsinkError, ConnectionError):
    """The server refused the websocket handshake, or did not speak websocket at all.

    ``status`` is the HTTP status code when the server answered with one (else ``None``);
    ``retry_after`` the seconds its ``Retry-After`` header asked for, when it sent one.
    """

    def __init__(self, message: str, status: "int | None" = None,
                 retry_after: "float | None" = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class AuthenticationError(HandshakeError):
    """The server refused the API key: HTTP 401 or 403 at the handshake, or (ElevenLabs,
    which checks the key after it) an ``invalid_api_key`` error frame."""


class RateLimited(FlushsinkError):
    """Cartesia is rate limiting this client (HTTP status 429). Two kinds, both caught by
    ``except RateLimited``: :class:`ConnectionRateLimited`, a handshake refused (more
    sockets than ten times the account's concurrency limit), and
    :class:`ContextRateLimited`, a context refused (more active contexts than the
    limit). ``retry_after``: the seconds the server asked to wait, when it said."""

    retry_after: "float | None" = None


class ConnectionRateLimited(RateLimited, HandshakeError):
    """The handshake was refused with HTTP 429 (also a :class:`HandshakeError`).
    ``connect(..., retry=...)`` retries it."""

    def __init__(self, message: str, status: "int | None" = 429,
                 retry_after: "float | None" = None) -> None:
        HandshakeError.__init__(self, message, status, retry_after)


class ContextRateLimited(RateLimited, ContextFailed):
    """A context was refused with a 429 error event (``concurrency_limited``): the account
    has its limit of active contexts (also a :class:`ContextFailed`; ``event`` holds the
    error). Not retried by the clients: its input would have to be sent again."""

    def __init__(self, event: Any) -> None:
        ContextFailed.__init__(self, event)


class ConfigError(FlushsinkError, ValueError):
    """An argument flushsink cannot use, refused before anything is sent: a URL that is
    not ``ws://`` or ``wss://``, a Sink that another open client already uses, a
    context id that cannot be sent as JSON text."""
