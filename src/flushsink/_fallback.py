"""Pure-Python twin of the compiled core (ext/_speedups.pyx): same API, events, errors.

It is the fallback where the extension is not built and the oracle the tests compare
the compiled core with, so it favours plain, checkable code: a regex-driven JSON
validator that reports the same error codes and byte offsets as ext/frame.c, and the
base64 rule of ext/b64.h. See docs/sink.md for the behaviour.
"""

from __future__ import annotations

import binascii
import contextlib
import json
import re
import threading
from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol, cast

import numpy as np

from ._common import (
    FRAME_TYPES,
    SinkStats,
    cap_reason,
    check_sink_args,
    flush_id_value,
    frame_type_error,
    lost_error,
    open_segments_cap_error,
    segment_cap_error,
    str_frame_error,
    timestamps_cap_error,
    total_cap_error,
)
from .errors import FRAME_ERROR_REASONS, FrameError
from .formats import DEFAULT_FORMAT, AudioFormat
from .segments import (
    ContextDone,
    Event,
    Segment,
    SegmentReady,
    Timestamps,
    Unknown,
    error_event,
    parse_timed_text,
    shift,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["Sink", "SinkStats", "b64decode", "simd_path", "_set_simd_path"]

MAX_DEPTH = 64
KNOWN_KEYS = ("type", "context_id", "flush_id", "data", "word_timestamps", "phoneme_timestamps")
_KNOWN = {k.encode(): k for k in KNOWN_KEYS}


def simd_path() -> str:
    """The twin decodes with binascii: no SIMD kernel of its own."""
    return "none"


def _set_simd_path(name: str) -> str:
    """The twin has no kernels to choose from; "auto" and "none" are accepted."""
    if name not in ("auto", "none"):
        raise ValueError(f"base64 kernel {name!r} is unknown or not supported by this CPU")
    return simd_path()


# --- base64 ----------------------------------------------------------------------------

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BASE64_TEXT = _ALPHABET + b"="
_ALPHABET_SET = frozenset(_ALPHABET)


def _b64_error(codes: Any) -> tuple[str, int]:
    """The exact error of invalid input (a sequence of byte values or code points)."""
    pads = 0
    for i, c in enumerate(codes):
        if c == 0x3D:  # '='
            pads += 1
            if pads > 2:
                return "base64_padding", i
        elif c not in _ALPHABET_SET:
            return "base64_char", i
        elif pads:
            return "base64_padding", i
    return "base64_length", len(codes)


def _b64_size(text: Any) -> int:
    """n * 3 // 4 minus the '=' among the last two characters (same as b64_decoded_size)."""
    n = len(text)
    pads = (n >= 1 and text[n - 1] in (0x3D, "=")) + (n >= 2 and text[n - 2] in (0x3D, "="))
    return max(n * 3 // 4 - pads, 0)


def _b64_decode(raw: bytes, clean: bool = False) -> bytes:
    """Decode strictly; raises _Reject(code, offset into raw). ``clean``: raw is known
    to hold only alphabet bytes and '=', so only the padding needs checking."""
    body = raw.rstrip(b"=")
    misplaced = b"=" in body if clean else body.translate(None, _ALPHABET)
    if len(raw) % 4 or len(raw) - len(body) > 2 or misplaced:
        raise _Reject(*_b64_error(raw))
    # validated above, so the lenient decoder is exact (and ignores non-zero pad bits)
    return binascii.a2b_base64(raw)


def b64decode(data: ReadableBuffer) -> bytes:
    """Strict base64 decode (the rule of docs/sink.md); FrameError offsets are into data."""
    try:
        return _b64_decode(bytes(memoryview(data)))
    except _Reject as exc:
        raise FrameError(exc.code, exc.offset) from None


# --- JSON scanning ---------------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, code: str, offset: int, detail: str = "") -> None:
        self.code, self.offset, self.detail = code, offset, detail


class _Run(Protocol):
    """A pattern that matches the empty string, so ``match`` never returns None."""

    def match(self, string: bytes, pos: int = ...) -> re.Match[bytes]: ...


_WS = cast(_Run, re.compile(rb"[ \t\n\r]*"))
_STRING_RUN = cast(_Run, re.compile(rb'[^"\\\x00-\x1f]*'))
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")
_DIGITS = cast(_Run, re.compile(rb"[0-9]*"))
_SIMPLE_ESCAPES = frozenset(b'"\\/bfnrt')
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class _Value:
    """Where a known top-level field's value is and what it is."""

    __slots__ = ("kind", "offset", "start", "end", "escaped", "clean")

    def __init__(self, kind: str, offset: int, start: int = 0, end: int = 0,
                 escaped: bool = False, clean: bool = False) -> None:
        self.kind, self.offset, self.start, self.end, self.escaped = (
            kind, offset, start, end, escaped)
        self.clean = clean  # a string of base64 text only


class _Scanner:
    """Validates one frame and records the known top-level fields.

    Syntax errors are found in order by the scanner; UTF-8 errors by one strict decode
    of the whole frame. A UTF-8 error can only be inside a string (outside strings any
    non-ASCII byte is a syntax error at the same offset), so the earlier of the two is
    the one a single left-to-right pass meets first, as in ext/frame.c.
    """

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.n = len(buf)
        self.fields: dict[str, _Value] = {}
        self.object_offset = 0

    def scan(self) -> None:
        try:
            self.buf.decode("utf-8")
            utf8_error = None
        except UnicodeDecodeError as exc:
            utf8_error = exc.start
        try:
            self._scan()
        except _Reject as exc:
            if utf8_error is not None and utf8_error < exc.offset:
                raise _Reject("utf8", utf8_error) from None
            raise
        if utf8_error is not None:  # pragma: no cover - a valid text is valid UTF-8
            raise _Reject("utf8", utf8_error)

    def _scan(self) -> None:
        buf, n = self.buf, self.n
        i = _WS.match(buf, 0).end()
        if i >= n or buf[i] != 0x7B:
            raise _Reject("not_object", i)
        self.object_offset = i
        i = self._object(i, 1, top=True)
        i = _WS.match(buf, i).end()
        if i < n:
            raise _Reject("trailing", i)

    def _ws(self, i: int) -> int:
        i = _WS.match(self.buf, i).end()
        if i >= self.n:
            raise _Reject("truncated", self.n)
        return i

    def _string(self, i: int) -> tuple[int, bool]:
        """i is just past the opening quote; returns (closing quote offset, escaped)."""
        buf, n = self.buf, self.n
        escaped = False
        while True:
            i = _STRING_RUN.match(buf, i).end()
            if i >= n:
                raise _Reject("truncated", n)
            c = buf[i]
            if c == 0x22:
                return i, escaped
            if c != 0x5C:
                raise _Reject("control", i)
            escaped = True
            if i + 1 >= n:
                raise _Reject("truncated", n)
            e = buf[i + 1]
            if e in _SIMPLE_ESCAPES:
                i += 2
                continue
            if e != 0x75:  # 'u'
                raise _Reject("escape", i)
            unit = self._u_escape(i)
            if 0xD800 <= unit <= 0xDBFF:
                # a low surrogate escape must follow; a frame ending first is truncated
                k = i + 6
                if k >= n or (buf[k] == 0x5C and k + 1 >= n):
                    raise _Reject("truncated", n)
                low = -1
                if buf[k:k + 2] == b"\\u":
                    hex_digits = buf[k + 2:k + 6]
                    if len(hex_digits) < 4 and all(c in _HEX_DIGITS for c in hex_digits):
                        raise _Reject("truncated", n)
                    if _HEX4.fullmatch(hex_digits):
                        low = int(hex_digits, 16)
                if not 0xDC00 <= low <= 0xDFFF:
                    raise _Reject("surrogate", i)
                i += 12
            elif 0xDC00 <= unit <= 0xDFFF:
                raise _Reject("surrogate", i)
            else:
                i += 6

    def _u_escape(self, i: int) -> int:
        for k in range(2, 6):
            if i + k >= self.n:
                raise _Reject("truncated", self.n)
            if self.buf[i + k] not in b"0123456789abcdefABCDEF":
                raise _Reject("escape", i)
        return int(self.buf[i + 2:i + 6], 16)

    def _number(self, i: int) -> int:
        buf, n = self.buf, self.n
        if buf[i] == 0x2D:  # '-'
            i += 1
            if i >= n:
                raise _Reject("truncated", n)
            if not 0x30 <= buf[i] <= 0x39:
                raise _Reject("number", i)
        i = i + 1 if buf[i] == 0x30 else _DIGITS.match(buf, i).end()
        if i < n and buf[i] == 0x2E:  # '.'
            i += 1
            if i >= n:
                raise _Reject("truncated", n)
            if not 0x30 <= buf[i] <= 0x39:
                raise _Reject("number", i)
            i = _DIGITS.match(buf, i).end()
        if i < n and buf[i] in b"eE":
            i += 1
            if i < n and buf[i] in b"+-":
                i += 1
            if i >= n:
                raise _Reject("truncated", n)
            if not 0x30 <= buf[i] <= 0x39:
                raise _Reject("number", i)
            i = _DIGITS.match(buf, i).end()
        return i

    def _literal(self, i: int, word: bytes) -> int:
        for k, expected in enumerate(word):
            if i + k >= self.n:
                raise _Reject("truncated", self.n)
            if self.buf[i + k] != expected:
                raise _Reject("syntax", i + k)
        return i + len(word)

    def _value(self, i: int, depth: int) -> int:
        """i is at the first byte of a value; depth is that of its container."""
        c = self.buf[i]
        if c == 0x22:
            return self._string(i + 1)[0] + 1
        if c == 0x7B or c == 0x5B:
            if depth + 1 > MAX_DEPTH:
                raise _Reject("depth", i)
            return self._object(i, depth + 1) if c == 0x7B else self._array(i, depth + 1)
        if c == 0x74:
            return self._literal(i, b"true")
        if c == 0x66:
            return self._literal(i, b"false")
        if c == 0x6E:
            return self._literal(i, b"null")
        if c == 0x2D or 0x30 <= c <= 0x39:
            return self._number(i)
        raise _Reject("syntax", i)

    def _array(self, i: int, depth: int) -> int:
        buf = self.buf
        i = self._ws(i + 1)
        if buf[i] == 0x5D:
            return i + 1
        while True:
            i = self._ws(self._value(i, depth))
            if buf[i] == 0x5D:
                return i + 1
            if buf[i] != 0x2C:
                raise _Reject("syntax", i)
            i = self._ws(i + 1)

    def _object(self, i: int, depth: int, top: bool = False) -> int:
        buf = self.buf
        i = self._ws(i + 1)
        if buf[i] == 0x7D:
            return i + 1
        while True:
            if buf[i] != 0x22:
                raise _Reject("syntax", i)
            key_offset = i
            end, escaped = self._string(i + 1)
            i = self._ws(end + 1)
            if buf[i] != 0x3A:
                raise _Reject("syntax", i)
            i = self._ws(i + 1)
            key = self._known_key(key_offset, end, escaped) if top else None
            if key is None:
                i = self._value(i, depth)
            else:
                if key in self.fields:
                    raise _Reject("duplicate", key_offset)
                i = self._field(key, i, depth)
            i = self._ws(i)
            if buf[i] == 0x7D:
                return i + 1
            if buf[i] != 0x2C:
                raise _Reject("syntax", i)
            i = self._ws(i + 1)

    def _known_key(self, quote: int, end: int, escaped: bool) -> Optional[str]:
        raw = self.buf[quote + 1:end]
        if not escaped:
            return _KNOWN.get(raw)
        try:
            name = json.loads(self.buf[quote:end + 1])
        except ValueError:  # bad UTF-8 in the key: scan() reports it at its offset
            return None
        return name if name in KNOWN_KEYS else None

    def _field(self, key: str, i: int, depth: int) -> int:
        c = self.buf[i]
        if c == 0x22 and key == "data":
            # The large value. Content made only of base64 text is valid JSON without
            # escapes, and one translate() proves it several times faster than the
            # regex walk; anything else takes the exact path below.
            end = self.buf.find(b'"', i + 1)
            if end > 0 and not self.buf[i + 1:end].translate(None, _BASE64_TEXT):
                self.fields[key] = _Value("string", i, i + 1, end, False, clean=True)
                return end + 1
        if c == 0x22:
            end, escaped = self._string(i + 1)
            self.fields[key] = _Value("string", i, i + 1, end, escaped)
            return end + 1
        if c == 0x6E:
            self.fields[key] = _Value("null", i)
            return self._literal(i, b"null")
        if c == 0x2D or 0x30 <= c <= 0x39:
            end = self._number(i)
            self.fields[key] = _Value("number", i, i, end)
            return end
        self.fields[key] = _Value("other", i)
        return self._value(i, depth)


# --- the segment store -----------------------------------------------------------------


class _Segment:
    __slots__ = ("data", "label", "unlabelled", "format", "start", "words", "phonemes",
                 "lost_chunks", "lost_bytes", "lost_reason")

    def __init__(self, label: int, unlabelled: bool, format: AudioFormat, start: float) -> None:
        # a bytearray grows geometrically by itself and allocates nothing up front,
        # which is the twin's way of not paying resident memory for a reservation
        self.data = bytearray()
        self.label = label
        self.unlabelled = unlabelled
        self.format = format
        self.start = start
        self.words: list[Any] = []
        self.phonemes: list[Any] = []
        self.lost_chunks = 0  # chunks rejected (Sink._lose)
        self.lost_bytes = 0
        self.lost_reason: Optional[str] = None


class _Context:
    __slots__ = ("context_id", "format", "open", "next_label", "finished", "finished_order",
                 "finished_pos", "stored", "frames")

    def __init__(self, context_id: Optional[str], format: AudioFormat) -> None:
        self.context_id = context_id
        self.format = format
        self.open: dict[int, _Segment] = {}
        self.next_label = 0
        self.finished: set[int] = set()  # the last max_finished_labels finished labels
        self.finished_order: list[int] = []  # the same, a ring in finishing order
        self.finished_pos = 0
        self.stored = 0
        self.frames = 0  # accepted frames of this context (Sink.activity)

    @property
    def current(self) -> Optional[_Segment]:
        """The most recently opened segment still open."""
        return next(reversed(self.open.values())) if self.open else None


class Sink:
    """Turns Cartesia TTS websocket frames into finished audio segments.

    Pure-Python twin of ``flushsink._speedups.Sink``; see docs/sink.md.
    """

    def __init__(self, format: AudioFormat = DEFAULT_FORMAT, *, prealloc_seconds: float = 10.0,
                 max_segment_bytes: int = 256 * 2**20, max_total_bytes: int = 1024 * 2**20,
                 max_ended_contexts: int = 10_000, max_open_segments: int = 100_000,
                 max_timestamps: int = 1_000_000, max_finished_labels: int = 10_000,
                 drop_unannounced: bool = False) -> None:
        check_sink_args(format, prealloc_seconds, max_segment_bytes, max_total_bytes,
                        max_ended_contexts, max_open_segments, max_timestamps,
                        max_finished_labels)
        self._max_open_segments = max_open_segments
        self._max_timestamps = max_timestamps
        self._max_finished_labels = max_finished_labels
        self._open_timestamps = 0
        self._drop_unannounced = bool(drop_unannounced)
        self._format = format
        self._prealloc_seconds = float(prealloc_seconds)
        self._max_segment_bytes = max_segment_bytes
        self._max_total_bytes = max_total_bytes
        self._max_ended_contexts = max_ended_contexts
        self._contexts: dict[Any, _Context] = {}
        self._ended: dict[Any, bool] = {}
        self._formats: dict[Any, AudioFormat] = {}
        self._open_bytes = 0
        self._open_segments = 0
        self._counts = dict.fromkeys(
            ("frames", "chunks", "audio_bytes", "dropped", "rejected", "segments"), 0)
        # one call at a time (docs/sink.md "Threads"); _owner spots a re-entrant call
        self._lock = threading.Lock()
        self._owner: Optional[int] = None

    @property
    def format(self) -> AudioFormat:
        return self._format

    # read-only, as in the compiled core: the caps hold for the sink's whole life
    @property
    def prealloc_seconds(self) -> float:
        return self._prealloc_seconds

    @property
    def max_segment_bytes(self) -> int:
        return self._max_segment_bytes

    @property
    def max_total_bytes(self) -> int:
        return self._max_total_bytes

    @property
    def max_ended_contexts(self) -> int:
        return self._max_ended_contexts

    @property
    def max_open_segments(self) -> int:
        return self._max_open_segments

    @property
    def max_timestamps(self) -> int:
        return self._max_timestamps

    @property
    def max_finished_labels(self) -> int:
        return self._max_finished_labels

    @property
    def drop_unannounced(self) -> bool:
        return self._drop_unannounced

    @drop_unannounced.setter
    def drop_unannounced(self, value: bool) -> None:
        self._drop_unannounced = bool(value)

    @property
    def stats(self) -> SinkStats:
        with self._held():  # one consistent snapshot
            c = self._counts
            return SinkStats(c["frames"], c["chunks"], c["audio_bytes"], c["dropped"],
                             c["rejected"], c["segments"], self._open_segments,
                             self._open_bytes)

    def _take(self) -> None:
        """The sink to this call alone: other threads' calls wait; a call from the thread
        whose call is running (a finalizer, a signal handler) is a RuntimeError."""
        me = threading.get_ident()
        if not self._lock.acquire(blocking=False):
            if self._owner == me:
                raise RuntimeError("Sink method called while another call of the same thread "
                                   "is running (re-entrant call)")
            self._lock.acquire()
        self._owner = me

    def _give(self) -> None:
        self._owner = None
        self._lock.release()

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        self._take()
        try:
            yield
        finally:
            self._give()

    def activity(self, context_id: Optional[str]) -> int:
        """How many frames the sink has accepted for ``context_id`` (chunks, flush_done,
        timestamps): it grows while frames of the context arrive, and is 0 when the sink
        holds no state for it (unknown, or ended). The clients' receive timeout uses it."""
        with self._held():
            ctx = self._contexts.get(context_id)
            return ctx.frames if ctx is not None else 0

    def set_format(self, context_id: Optional[str], format: AudioFormat) -> None:
        """Use ``format`` for the segments ``context_id`` opens from now on."""
        if not isinstance(format, AudioFormat):
            raise TypeError(f"format must be an AudioFormat, not {type(format).__name__}")
        with self._held():
            self._formats[context_id] = format
            ctx = self._contexts.get(context_id)
            if ctx is not None:
                ctx.format = format

    # ---- intake -------------------------------------------------------------------

    def feed(self, frame: ReadableBuffer | str) -> tuple[Event, ...]:
        """Feed one websocket message; returns a tuple of events (``()`` for audio).

        Raises FrameError (a ValueError) for a malformed frame and CapacityError when
        a cap would be exceeded; either way nothing changes. TypeError for a frame
        that is not bytes-like or str.
        """
        if isinstance(frame, str):
            try:
                buf = frame.encode("utf-8")
            except UnicodeEncodeError:
                with self._held():
                    self._counts["rejected"] += 1
                raise str_frame_error(frame) from None
        elif isinstance(frame, bytes):
            buf = frame
        else:
            try:
                view = memoryview(frame)
            except TypeError:
                raise frame_type_error(frame) from None
            with view:
                if not view.c_contiguous:
                    raise TypeError("frame buffer must be C-contiguous")
                if view.itemsize != 1:
                    raise TypeError("frame buffer must have 1-byte items")
                buf = view.tobytes()
        self._take()
        try:
            return self._feed(buf)
        except _Reject as exc:
            self._counts["rejected"] += 1
            raise FrameError(exc.code, exc.offset, exc.detail) from None
        except BaseException:
            self._counts["rejected"] += 1
            raise
        finally:
            self._give()

    def _feed(self, buf: bytes) -> tuple[Any, ...]:
        scanner = _Scanner(buf)
        scanner.scan()
        fields = scanner.fields
        # field types, in the documented order
        ftype: Optional[str] = None
        value = fields.get("type")
        if value is not None and value.kind != "null":
            if value.kind != "string":
                raise _Reject("field_type", value.offset, "type")
            ftype = self._string_value(buf, value)
        value = fields.get("context_id")
        if value is not None and value.kind not in ("null", "string"):
            raise _Reject("field_type", value.offset, "context_id")
        label: Optional[int] = None
        value = fields.get("flush_id")
        if value is not None and value.kind != "null":
            label = flush_id_value(buf[value.start:value.end]) if value.kind == "number" else None
            if label is None:
                raise _Reject("field_type", value.offset, "flush_id")
        value = fields.get("data")
        if value is not None and value.kind not in ("null", "string"):
            raise _Reject("field_type", value.offset, "data")
        cid_value = fields.get("context_id")
        has_context = cid_value is not None and cid_value.kind == "string"
        cid = (self._string_value(buf, cid_value)
               if cid_value is not None and has_context else None)
        if ftype == "chunk":
            return self._chunk(buf, scanner, cid, label)
        return self._other(buf, scanner, ftype, has_context, cid, label)

    @staticmethod
    def _string_value(buf: bytes, value: _Value) -> str:
        if value.escaped:
            return cast(str, json.loads(buf[value.start - 1:value.end + 1]))
        return buf[value.start:value.end].decode("utf-8")

    # ---- contexts and segments ----------------------------------------------------

    def _new_context(self, cid: Any) -> _Context:
        return _Context(cid, self._formats.get(cid, self._format))

    def _resolve(self, ctx: Optional[_Context], label: Optional[int]) -> tuple[Any, bool, bool]:
        """(segment or None, adopt, new_segment); (None, False, False) means drop."""
        if ctx is None:
            return None, False, True
        current = ctx.current
        if label is not None:
            if label in ctx.finished:
                return None, False, False
            seg = ctx.open.get(label)
            if seg is not None:
                # the server's label equals the one we gave an unlabelled segment: now
                # it is the server's, and no later label may adopt it
                return seg, seg.unlabelled, False
            if current is not None and current.unlabelled:
                return current, True, False
            return None, False, True
        if current is not None:
            return current, False, False
        return None, False, True

    def _open_segment(self, ctx: _Context, label: Optional[int]) -> _Segment:
        fmt = ctx.format
        seg = _Segment(label if label is not None else ctx.next_label, label is None, fmt,
                       ctx.stored / fmt.bytes_per_second)
        return seg

    def _register(self, ctx: _Context, new_context: bool, seg: _Segment, new_segment: bool,
                  adopt: bool, label: Optional[int]) -> None:
        if new_context:
            self._contexts[ctx.context_id] = ctx
        if adopt:
            assert label is not None
            del ctx.open[seg.label]
            seg.label = label
            seg.unlabelled = False
            ctx.open[label] = seg
        elif new_segment:
            ctx.open[seg.label] = seg
            self._open_segments += 1
        ctx.next_label = max(ctx.next_label, seg.label + 1)

    def _finish(self, ctx: _Context, seg: _Segment, complete: bool, error: Optional[str]) -> Any:
        data = seg.data
        if seg.lost_chunks:
            assert seg.lost_reason is not None
            complete = False
            error = lost_error(error, seg.lost_chunks, seg.lost_bytes, seg.lost_reason)
        if ctx.open.pop(seg.label, None) is not None:
            self._open_segments -= 1
            self._open_bytes -= len(data)
            self._open_timestamps -= len(seg.words) + len(seg.phonemes)
        self._remember_finished(ctx, seg.label)
        self._counts["segments"] += 1
        width = seg.format.sample_width
        whole = len(data) // width * width
        samples = np.frombuffer(data, dtype=seg.format.dtype, count=whole // width)
        segment = Segment(ctx.context_id, seg.label, seg.format, samples, complete, error,
                          bytes(data[whole:]), seg.start, shift(tuple(seg.words), seg.start),
                          shift(tuple(seg.phonemes), seg.start))
        return SegmentReady(segment)

    def _remember_finished(self, ctx: _Context, label: int) -> None:
        """Remember that label finished, so that its late frames are dropped: the last
        max_finished_labels of the context, so that a server finishing flush after flush
        cannot grow the sink without bound (docs/sink.md)."""
        cap = self._max_finished_labels
        if cap == 0 or label in ctx.finished:
            return
        ctx.finished.add(label)
        if len(ctx.finished_order) < cap:
            ctx.finished_order.append(label)
            return
        ctx.finished.discard(ctx.finished_order[ctx.finished_pos])
        ctx.finished_order[ctx.finished_pos] = label
        ctx.finished_pos = (ctx.finished_pos + 1) % cap

    def _finish_all(self, ctx: Optional[_Context], complete: bool, error: Optional[str]) -> list[Any]:
        if ctx is None:
            return []
        return [self._finish(ctx, seg, complete, error) for seg in list(ctx.open.values())]

    def _end(self, cid: Any) -> None:
        self._contexts.pop(cid, None)
        self._formats.pop(cid, None)
        self._ended.pop(cid, None)
        self._ended[cid] = True
        while len(self._ended) > self._max_ended_contexts:
            del self._ended[next(iter(self._ended))]

    def _unwelcome(self, cid: Any) -> bool:
        """A context that may not start: ended, or never announced (drop_unannounced)."""
        return cid in self._ended or (self._drop_unannounced and cid not in self._formats)

    def _drop(self) -> tuple[Any, ...]:
        self._counts["frames"] += 1
        self._counts["dropped"] += 1
        return ()

    # ---- chunk --------------------------------------------------------------------

    def _chunk(self, buf: bytes, scanner: _Scanner, cid: Any, label: Optional[int]) -> tuple[Any, ...]:
        ctx = self._contexts.get(cid)
        if ctx is None and self._unwelcome(cid):
            return self._drop()
        found, adopt, new_segment = self._resolve(ctx, label)
        if found is None and not new_segment:
            return self._drop()
        new_context = ctx is None
        if ctx is None:
            ctx = self._new_context(cid)
        data = scanner.fields.get("data")
        text: Any = b""
        if data is not None and data.kind == "string":
            if data.escaped:
                text = json.loads(buf[data.start - 1:data.end + 1])
            else:
                text = buf[data.start:data.end]
        size = _b64_size(text)
        if new_segment:
            seg_label = label if label is not None else ctx.next_label
            current = 0
        else:
            seg_label = label if adopt and label is not None else found.label
            current = len(found.data)
        if new_segment and self._open_segments >= self._max_open_segments:
            raise open_segments_cap_error(ctx.context_id, seg_label, self._max_open_segments)
        if current + size > self._max_segment_bytes:
            self._lose(ctx, new_context, found, new_segment, adopt, label, size,
                       cap_reason("max_segment_bytes", self._max_segment_bytes))
            raise segment_cap_error(ctx.context_id, seg_label, current + size,
                                    self._max_segment_bytes)
        if self._open_bytes + size > self._max_total_bytes:
            self._lose(ctx, new_context, found, new_segment, adopt, label, size,
                       cap_reason("max_total_bytes", self._max_total_bytes))
            raise total_cap_error(ctx.context_id, seg_label, self._open_bytes + size,
                                  self._max_total_bytes)
        try:
            if isinstance(text, str):
                assert data is not None  # text is a str only when data had escapes
                decoded = self._decode_escaped(buf, data, text)
            else:
                decoded = _b64_decode(text, data is not None and data.clean)
        except _Reject as exc:
            self._lose(ctx, new_context, found, new_segment, adopt, label, size,
                       FRAME_ERROR_REASONS[exc.code])
            if isinstance(text, str):
                raise
            assert data is not None  # an absent data decodes to b"" without error
            raise _Reject(exc.code, data.start + exc.offset) from None
        seg = self._open_segment(ctx, label) if new_segment else found
        self._register(ctx, new_context, seg, new_segment, adopt, label)
        seg.data += decoded
        ctx.stored += size
        ctx.frames += 1
        self._open_bytes += size
        c = self._counts
        c["audio_bytes"] += size
        c["chunks"] += 1
        c["frames"] += 1
        return ()

    def _lose(self, ctx: _Context, new_context: bool, found: Any, new_segment: bool,
              adopt: bool, label: Optional[int], size: int, reason: str) -> None:
        """A chunk of this segment is being rejected (a cap, its base64): the segment
        records the loss, so that it finishes incomplete and says what it lost. A chunk
        that would have opened the segment opens it, empty (docs/sink.md "Lost chunks")."""
        seg = self._open_segment(ctx, label) if new_segment else found
        self._register(ctx, new_context, seg, new_segment, adopt, label)
        seg.lost_chunks += 1
        seg.lost_bytes += size
        if seg.lost_reason is None:
            seg.lost_reason = reason

    @staticmethod
    def _decode_escaped(buf: bytes, data: _Value, text: str) -> bytes:
        """Decode an escaped data string; error offsets point into the frame."""
        codes = [ord(ch) for ch in text]
        pads = len(text) - len(text.rstrip("="))
        if (len(text) % 4 or pads > 2 or not text.isascii()
                or text.rstrip("=").encode().translate(None, _ALPHABET)):
            code, index = _b64_error(codes)
            raise _Reject(code, _char_offsets(buf, data.start, data.end)[index])
        return binascii.a2b_base64(text.encode("ascii"))

    # ---- everything but chunks ----------------------------------------------------

    def _other(self, buf: bytes, scanner: _Scanner, ftype: Optional[str], has_context: bool,
               cid: Any, label: Optional[int]) -> tuple[Any, ...]:
        known = ftype in FRAME_TYPES
        message: Any = None
        items: Any = None
        if ftype in ("error", "timestamps", "phoneme_timestamps") or not known:
            message = json.loads(buf)
        if ftype in ("timestamps", "phoneme_timestamps"):
            kind = "words" if ftype == "timestamps" else "phonemes"
            key = "word_timestamps" if kind == "words" else "phoneme_timestamps"
            try:
                items = parse_timed_text(message, kind)
            except ValueError:
                value = scanner.fields.get(key)
                where = value.offset if value is not None else scanner.object_offset
                raise _Reject("field_type", where, key) from None
        if ftype == "error" and not has_context:
            self._counts["frames"] += 1
            return (error_event(None, False, message),)
        ctx = self._contexts.get(cid)
        if ctx is None and self._unwelcome(cid):
            return self._drop()
        if not known:
            self._counts["frames"] += 1
            return (Unknown(cid, message.get("type"), message),)
        if ftype in ("done", "error"):
            event: Any = error_event(cid, True, message) if ftype == "error" else ContextDone(cid)
            events = self._finish_all(ctx, ftype == "done",
                                      None if ftype == "done" else event.message)
            events.append(event)
            self._end(cid)
            self._counts["frames"] += 1
            return tuple(events)
        new_context = ctx is None
        if ctx is None:
            ctx = self._new_context(cid)
        if ftype == "flush_done":
            if label is not None and label in ctx.finished:
                return self._drop()
            if label is not None:
                found = ctx.open.get(label)
                current = ctx.current
                if found is None and current is not None and current.unlabelled:
                    self._register(ctx, new_context, current, False, True, label)
                    found = current
            else:
                found = ctx.current
            if found is None:
                found = self._open_segment(ctx, label)
                found.unlabelled = False
                self._register(ctx, new_context, found, True, False, label)
            self._counts["frames"] += 1
            ctx.frames += 1
            return (self._finish(ctx, found, True, None),)
        # timestamps / phoneme_timestamps
        found, adopt, new_segment = self._resolve(None if new_context else ctx, label)
        if found is None and not new_segment:
            return self._drop()
        if new_segment and self._open_segments >= self._max_open_segments:
            raise open_segments_cap_error(cid, label if label is not None else ctx.next_label,
                                          self._max_open_segments)
        if self._open_timestamps + len(items) > self._max_timestamps:
            raise timestamps_cap_error(
                cid, label if label is not None else ctx.next_label if new_segment
                else found.label, self._open_timestamps + len(items), self._max_timestamps)
        seg = self._open_segment(ctx, label) if new_segment else found
        self._register(ctx, new_context, seg, new_segment, adopt, label)
        (seg.words if ftype == "timestamps" else seg.phonemes).extend(items)
        self._open_timestamps += len(items)
        self._counts["frames"] += 1
        ctx.frames += 1
        return (Timestamps(cid, seg.label, "words" if ftype == "timestamps" else "phonemes",
                           items, seg.start),)

    # ---- ending -------------------------------------------------------------------

    def cancel(self, context_id: Optional[str]) -> tuple[SegmentReady, ...]:
        """Finish the context's open segments as incomplete ("cancelled") and drop its
        later frames. Returns the SegmentReady events."""
        with self._held():
            events = self._finish_all(self._contexts.get(context_id), False, "cancelled")
            self._end(context_id)
            return tuple(events)

    def close(self, reason: str = "closed") -> tuple[SegmentReady, ...]:
        """Finish every open segment as incomplete with ``error=reason`` (for example
        when the connection dropped) and end those contexts. The sink stays usable."""
        with self._held():
            events: list[Any] = []
            for cid in list(self._contexts):
                events.extend(self._finish_all(self._contexts[cid], False, reason))
                self._end(cid)
            return tuple(events)


def _char_offsets(buf: bytes, start: int, end: int) -> list[int]:
    """Frame offset where each character of the string content buf[start:end] starts,
    plus ``end`` (the closing quote) for errors past the last character."""
    offsets = []
    i = start
    while i < end:
        offsets.append(i)
        c = buf[i]
        if c == 0x5C:
            if buf[i + 1] == 0x75:
                unit = int(buf[i + 2:i + 6], 16)
                i += 12 if 0xD800 <= unit <= 0xDBFF else 6
            else:
                i += 2
        else:
            i += 1 if c < 0x80 else 2 if c < 0xE0 else 3 if c < 0xF0 else 4
    offsets.append(end)
    return offsets
