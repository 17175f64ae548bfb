"""Segment: one finished (context, flush) piece of audio, and the events a Sink returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, cast

import numpy as np

from ._common import at_path
from .formats import AudioFormat, decode_g711


class TimedText(NamedTuple):
    """A word or phoneme with start and end times in seconds."""

    text: str
    start: float
    end: float


class Segment:
    """A finished piece of audio of one context, between two flushes.

    ``samples`` is a numpy array over the segment's own buffer (no copy): int16 for
    pcm_s16le, float32 for pcm_f32le, uint8 codes for pcm_mulaw / pcm_alaw (see
    :meth:`to_int16`). ``complete`` is False when the segment was finished by an
    error, a cancel, a dropped connection or ``Sink.close``; ``error`` says why.
    ``trailing_bytes`` holds bytes at the end that do not form a whole sample.
    ``start`` is the segment's offset in its context's audio, in seconds; word and
    phoneme timestamps are relative to it (add ``start`` for context time).
    ``sample_count`` is the number of whole samples the segment received: ``len(samples)``,
    except from a Sink made with ``keep_audio=False``, which streamed the audio and kept
    none of it (``samples`` is then empty; docs/sink.md "Streaming").
    """

    __slots__ = (
        "context_id", "flush_id", "format", "samples", "complete", "error",
        "trailing_bytes", "start", "word_timestamps", "phoneme_timestamps", "path",
        "sample_count",
    )

    def __init__(
        self,
        context_id: Optional[str],
        flush_id: int,
        format: AudioFormat,
        samples: np.ndarray,
        complete: bool = True,
        error: Optional[str] = None,
        trailing_bytes: bytes = b"",
        start: float = 0.0,
        word_timestamps: tuple[TimedText, ...] = (),
        phoneme_timestamps: tuple[TimedText, ...] = (),
        sample_count: Optional[int] = None,
    ) -> None:
        self.context_id = context_id
        self.flush_id = flush_id
        self.format = format
        self.samples = samples
        self.complete = complete
        self.error = error
        self.trailing_bytes = trailing_bytes
        self.start = start
        self.word_timestamps = word_timestamps
        self.phoneme_timestamps = phoneme_timestamps
        self.path: Optional[str] = None
        self.sample_count: int = len(samples) if sample_count is None else sample_count

    @property
    def duration(self) -> float:
        """Length in seconds (whole samples only)."""
        return self.sample_count / self.format.sample_rate

    @property
    def nbytes(self) -> int:
        """Bytes of whole samples (``trailing_bytes`` not included), received ones for a
        segment whose audio was not kept."""
        if self.sample_count == len(self.samples):
            return int(self.samples.nbytes)
        return self.sample_count * self.format.sample_width

    def to_int16(self) -> np.ndarray:
        """The samples as int16: G.711 codes expanded, float clipped to [-1, 1] and scaled."""
        encoding = self.format.encoding
        if encoding == "pcm_s16le":
            return self.samples
        if encoding == "pcm_f32le":
            pcm16 = np.rint(np.clip(self.samples, -1.0, 1.0) * 32767.0).astype("<i2")
            return cast(np.ndarray, pcm16)
        return decode_g711(self.samples, encoding)

    def pcm(self) -> memoryview:
        """The raw little-endian audio bytes (a view, no copy)."""
        return self.samples.data.cast("B")

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"incomplete: {self.error}"
        return (
            f"<Segment context_id={self.context_id!r} flush_id={self.flush_id} "
            f"{self.format.encoding}/{self.format.sample_rate} {self.sample_count} samples "
            f"{self.duration:.3f}s {state}>"
        )


# --- events ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentReady:
    """A segment was finished (by flush_done, done, error, cancel or close)."""

    segment: Segment

    @property
    def context_id(self) -> Optional[str]:
        return self.segment.context_id


@dataclass(frozen=True)
class ContextDone:
    """The server finished the context; all its segments came before this event."""

    context_id: Optional[str]


@dataclass(frozen=True)
class ContextError:
    """The server reported an error for one context; the context is over.

    Both shapes are read: legacy ``{"error": "..."}`` and structured
    ``error_code`` / ``title`` / ``message``. ``message`` is the most useful text.
    """

    context_id: Optional[str]
    message: str
    status_code: Optional[int] = None
    error_code: Optional[str] = None
    title: Optional[str] = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ServerError:
    """An error without ``context_id``: about the connection, it ends no context.

    (The design called this ``ConnectionError``; renamed so it does not shadow the builtin.)
    """

    message: str
    status_code: Optional[int] = None
    error_code: Optional[str] = None
    title: Optional[str] = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Timestamps:
    """Word or phoneme timestamps (``kind`` is "words" or "phonemes").

    ``items`` carry context-relative times as the server sent them; the same items,
    relative to the segment, are attached to the segment when it is finished.
    """

    context_id: Optional[str]
    flush_id: int
    kind: str
    items: tuple[TimedText, ...]
    segment_start: float


@dataclass(frozen=True)
class Unknown:
    """A frame whose ``type`` flushsink does not know; never an error."""

    context_id: Optional[str]
    type: Any
    message: dict[str, Any] = field(compare=False, repr=False)


Event = SegmentReady | ContextDone | ContextError | ServerError | Timestamps | Unknown


# --- helpers shared by both cores for the rare, non-audio frames -------------------------

def error_event(context_id: Optional[str], has_context: bool, obj: dict[str, Any]) -> Any:
    """Build a ContextError (or a ServerError when the frame has no context_id)."""
    error = obj.get("error")
    title = obj.get("title")
    text = obj.get("message")
    code = obj.get("error_code")
    status = obj.get("status_code")
    if not isinstance(status, int) or isinstance(status, bool):
        status = None
    if isinstance(error, str) and error:
        message = error
    elif isinstance(text, str) and text:
        message = f"{title}: {text}" if isinstance(title, str) and title else text
    elif isinstance(title, str) and title:
        message = title
    else:
        message = str(code) if code is not None else "unknown error"
    title = title if isinstance(title, str) else None
    code = code if isinstance(code, str) else None
    if has_context:
        return ContextError(context_id, message, status, code, title, obj)
    return ServerError(message, status, code, title, obj)


def envelope_error_event(envelope: Any, context_id: Optional[str], has_context: bool,
                         obj: dict[str, Any]) -> Any:
    """error_event for a frame read by an envelope other than Cartesia's: the message is
    the first non-empty string at its error_message_keys, the code the value at its
    error_code_key (a number becomes its text)."""
    message = next((text for text in (at_path(obj, key) for key in envelope.error_message_keys)
                    if isinstance(text, str) and text), None)
    code = at_path(obj, envelope.error_code_key)
    if isinstance(code, bool) or not isinstance(code, (str, int)):
        code = None
    code = str(code) if code is not None else None
    message = message or code or "unknown error"
    if has_context:
        return ContextError(context_id, message, None, code, None, obj)
    return ServerError(message, None, code, None, obj)


_TIMESTAMP_KEYS = {"words": ("word_timestamps", "words"), "phonemes": ("phoneme_timestamps", "phonemes")}


def timestamp_key(kind: str) -> str:
    return _TIMESTAMP_KEYS[kind][0]


def parse_timed_text(obj: dict[str, Any], kind: str) -> tuple[TimedText, ...]:
    """Read ``{"words": [...], "start": [...], "end": [...]}`` (or phonemes).

    Raises ValueError if the arrays are missing, of unequal length or mistyped;
    the cores turn that into a FrameError at the value's offset.
    """
    key, names_key = _TIMESTAMP_KEYS[kind]
    value = obj.get(key)
    if not isinstance(value, dict):
        raise ValueError(key)
    names, starts, ends = value.get(names_key), value.get("start"), value.get("end")
    if not (isinstance(names, list) and isinstance(starts, list) and isinstance(ends, list)):
        raise ValueError(key)
    if not len(names) == len(starts) == len(ends):
        raise ValueError(key)
    items = []
    for name, start, end in zip(names, starts, ends):
        if not isinstance(name, str):
            raise ValueError(key)
        for t in (start, end):
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise ValueError(key)
        items.append(TimedText(name, float(start), float(end)))
    return tuple(items)


def shift(items: tuple[TimedText, ...], offset: float) -> tuple[TimedText, ...]:
    """Times minus ``offset``: context time to segment time."""
    return tuple(TimedText(t.text, t.start - offset, t.end - offset) for t in items)
