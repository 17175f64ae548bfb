"""Small pieces both cores share, so that they cannot drift apart: argument checks,
frame intake for ``str``, capacity messages, and the stats record."""

from __future__ import annotations

import decimal
import json
from typing import Any, NamedTuple

from .errors import CapacityError, FrameError
from .formats import AudioFormat

#: The largest flush_id accepted: labels stay exact in a signed 64-bit integer.
MAX_FLUSH_ID = 2**62


class SinkStats(NamedTuple):
    """Counters of a Sink. ``frames`` counts accepted frames (dropped ones included);
    rejected frames only raise ``rejected_frames``."""

    frames: int
    chunks: int
    audio_bytes: int
    dropped_frames: int
    rejected_frames: int
    segments: int
    open_segments: int
    open_bytes: int


def check_sink_args(format: Any, prealloc_seconds: Any, max_segment_bytes: Any,
                    max_total_bytes: Any, max_ended_contexts: Any,
                    max_open_segments: Any, max_timestamps: Any = 0,
                    max_finished_labels: Any = 0) -> None:
    if not isinstance(format, AudioFormat):
        raise TypeError(f"format must be an AudioFormat, not {type(format).__name__}")
    if isinstance(prealloc_seconds, bool) or not isinstance(prealloc_seconds, (int, float)):
        raise TypeError("prealloc_seconds must be a number")
    if not 0 <= prealloc_seconds <= 3600:
        raise ValueError("prealloc_seconds must be between 0 and 3600")
    for name, value in (("max_segment_bytes", max_segment_bytes),
                        ("max_total_bytes", max_total_bytes),
                        ("max_ended_contexts", max_ended_contexts),
                        ("max_open_segments", max_open_segments),
                        ("max_timestamps", max_timestamps),
                        ("max_finished_labels", max_finished_labels)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int")
        if not 0 <= value <= 2**62:
            raise ValueError(f"{name} must be between 0 and 2**62")


def prealloc_bytes(format: AudioFormat, seconds: float, max_segment_bytes: int) -> int:
    return min(int(seconds * format.sample_rate) * format.sample_width, max_segment_bytes)


def str_frame_error(frame: str) -> FrameError:
    """The FrameError for a str that cannot be encoded (a lone surrogate)."""
    try:
        frame.encode("utf-8")
    except UnicodeEncodeError as exc:
        offset = len(frame[: exc.start].encode("utf-8", "surrogatepass"))
        return FrameError("utf8", offset)
    raise AssertionError("frame encodes fine")  # pragma: no cover


def frame_type_error(frame: Any) -> TypeError:
    return TypeError(
        f"frame must be bytes, bytearray, memoryview or str, not {type(frame).__name__}"
    )


def segment_cap_error(context_id: Any, flush_id: int, size: int, cap: int) -> CapacityError:
    return CapacityError(
        f"chunk would grow segment {context_id!r}/{flush_id} to {size} bytes, "
        f"over max_segment_bytes={cap}",
        context_id, flush_id,
    )


def open_segments_cap_error(context_id: Any, flush_id: int, cap: int) -> CapacityError:
    return CapacityError(
        f"frame would open segment {context_id!r}/{flush_id}, over max_open_segments={cap}",
        context_id, flush_id,
    )


def timestamps_cap_error(context_id: Any, flush_id: int, count: int, cap: int) -> CapacityError:
    return CapacityError(
        f"timestamps would grow the open segments' items to {count}, "
        f"over max_timestamps={cap}",
        context_id, flush_id,
    )


def total_cap_error(context_id: Any, flush_id: int, size: int, cap: int) -> CapacityError:
    return CapacityError(
        f"chunk would grow the open audio to {size} bytes, over max_total_bytes={cap}",
        context_id, flush_id,
    )


def flush_id_value(text: bytes) -> int | None:
    """The flush_id of a JSON number's text, or None if it is not an accepted label."""
    if not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if value <= MAX_FLUSH_ID else None


def lost_error(error: Any, chunks: int, nbytes: int, reason: str) -> str:
    """The error of a segment from which ``chunks`` chunk frames were rejected (by a cap
    or their base64): what was lost, and why the first one was. ``error`` is the reason
    the segment finished otherwise (None when it finished normally)."""
    what = "1 chunk" if chunks == 1 else f"{chunks} chunks"
    lost = f"lost {what} ({nbytes} bytes){'' if chunks == 1 else ', the first'}: {reason}"
    return lost if error is None else f"{error}; {lost}"


def cap_reason(name: str, cap: int) -> str:
    """What lost_error says of a chunk that a byte cap refused."""
    return f"over {name}={cap}"


def _payload_int(text: str) -> Any:
    try:
        return int(text)
    except ValueError:  # longer than int() takes from text (4300 digits by default)
        return decimal.Decimal(text)


def load_payload(frame: Any) -> Any:
    """The whole of a valid frame as Python objects, for the events that carry it
    (errors, timestamps, unknown types). An integer longer than ``int()`` accepts from
    text comes out as a ``decimal.Decimal``: json.loads would raise a bare ValueError on
    a frame the scanner found valid, and a server must not be able to raise that."""
    return json.loads(frame, parse_int=_payload_int)


# ---- envelopes (flushsink.envelopes): what both intakes read from an Envelope ----------

#: The members an intake records, in the order the field types are checked; the compiled
#: core's slots (ext/frame.h FS_KEY_LIST) are in the same order. Cartesia's names are
#: the slots' names.
SLOTS = ("type", "context_id", "flush_id", "data", "word_timestamps",
         "phoneme_timestamps", "final", "error", "context_fallback")


class Layout(NamedTuple):
    """An envelope as an intake reads it: for each slot of SLOTS, the path of names that
    leads to it (None when the envelope has no such field) and its dotted name (what a
    field_type error says); the frame types by value, as Envelope.kind_of names them;
    whether frames have no type (then the fields classify them) and whether audio is hex.
    """

    paths: tuple[Any, ...]
    names: tuple[Any, ...]
    types: dict[str, str]
    typeless: bool
    hex: bool


def envelope_layout(envelope: Any) -> Layout:
    """The Layout of an Envelope. An envelope without a type reads the first of its
    error message paths to tell an error frame."""
    error = envelope.error_message_keys[0] \
        if envelope.type_key is None and envelope.error_message_keys else None
    names = (envelope.type_key, envelope.context_key, envelope.segment_key,
             envelope.audio_key,
             "word_timestamps" if envelope.timestamp_types else None,
             "phoneme_timestamps" if envelope.phoneme_timestamp_types else None,
             envelope.final_key, error, envelope.context_fallback_key)
    return Layout(tuple(tuple(name.split(".")) if name else None for name in names),
                  names, envelope.type_kinds(), envelope.type_key is None,
                  envelope.audio_encoding == "hex")


def at_path(obj: Any, path: Any) -> Any:
    """The value at a dotted path (str) of a parsed frame, None when a step is missing
    or not an object."""
    if path is None:
        return None
    for name in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj
