"""Independent oracles for the Sink, written from docs/sink.md only.

Nothing here imports or mirrors the cores: a strict base64 decoder, a JSON frame validator
that reports the documented (code, offset), and a reference model of the segment semantics
built on ``json.loads`` and those two. They are deliberately slow and plain: every rule of
the spec is one visible branch.

Where docs/sink.md allows two readings, the validator raises with ``alts``: the other
(code, offset) pairs a core may report; the model raises :class:`Ambiguous` when the next
step depends on an unspecified choice, and the property tests stop comparing there.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from flushsink.segments import (
    ContextDone,
    ContextError,
    SegmentReady,
    ServerError,
    Timestamps,
    Unknown,
    error_event,
)

# --- errors -------------------------------------------------------------------------------


class RefFrameError(Exception):
    """What a core must raise: FrameError(code, offset); ``alts`` are other readings."""

    def __init__(self, code: str, offset: int, detail: str = "", alts=()) -> None:
        super().__init__(f"{code} at {offset} {detail}")
        self.code = code
        self.offset = offset
        self.detail = detail
        self.alts = set(alts)

    def accepts(self, code: str, offset: int) -> bool:
        return (code, offset) == (self.code, self.offset) or (code, offset) in self.alts


# what docs/sink.md "Lost chunks" says a segment lost a chunk to, by FrameError code
BASE64_REASONS = {"base64_char": "invalid base64 character",
                  "base64_padding": "invalid base64 padding",
                  "base64_length": "invalid base64 length"}


class RefCapacityError(Exception):
    pass


class Ambiguous(Exception):
    """The spec does not decide what happens next (see the message)."""


# --- base64 (RFC 4648 section 4, with the strictness of docs/sink.md) ----------------------

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(B64_ALPHABET)}


def b64_check_chars(chars, end_offset: int) -> bytes:
    """Decode a sequence of (character, offset) pairs; raise RefFrameError on the first problem.

    ``end_offset`` is where base64_length is reported (the closing quote in a frame,
    ``len(data)`` for the module function).
    """
    pads = 0
    values = []
    for ch, off in chars:
        if ch == "=":
            pads += 1
            if pads == 3:
                raise RefFrameError("base64_padding", off)
        elif ch in _B64_VALUE:
            if pads:
                raise RefFrameError("base64_padding", off)
            values.append(_B64_VALUE[ch])
        else:
            raise RefFrameError("base64_char", off)
    if len(chars) % 4:
        raise RefFrameError("base64_length", end_offset)
    out = bytearray()
    acc = 0
    nbits = 0
    for v in values:
        acc = (acc << 6) | v
        nbits += 6
        if nbits >= 8:
            nbits -= 8
            out.append((acc >> nbits) & 0xFF)
            acc &= (1 << nbits) - 1
    # leftover bits (< 8) are the unused low bits of the last character: accepted, dropped
    return bytes(out)


def b64decode(data: bytes) -> bytes:
    """The module-level ``b64decode`` contract: offsets relative to ``data``."""
    return b64_check_chars([(chr(c), i) for i, c in enumerate(bytes(data))], len(data))


def b64encode(raw: bytes) -> str:
    """Plain padded encoder (used to build frames; checked against base64 in the tests)."""
    out = []
    for q in range(0, len(raw), 3):
        block = raw[q:q + 3]
        n = int.from_bytes(block + b"\0" * (3 - len(block)), "big")
        quad = [B64_ALPHABET[(n >> s) & 63] for s in (18, 12, 6, 0)]
        if len(block) < 3:
            quad[len(block) + 1:] = "=" * (3 - len(block))
        out.append("".join(quad))
    return "".join(out)


# --- JSON frame validator ------------------------------------------------------------------

WS = b" \t\n\r"
DIGITS = b"0123456789"
HEX = b"0123456789abcdefABCDEF"
MAX_DEPTH = 64
KNOWN_KEYS = ("type", "context_id", "flush_id", "data", "word_timestamps", "phoneme_timestamps")
STRING_FIELDS = ("type", "context_id", "data")
FLUSH_ID_MAX = 2 ** 62
_SIMPLE_ESCAPES = {
    ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "\b", ord("f"): "\f",
    ord("n"): "\n", ord("r"): "\r", ord("t"): "\t",
}
_INT_RE = re.compile(rb"-?(0|[1-9][0-9]*)")

# docs/sink.md: the types of the known fields are checked once the frame is valid JSON
# (the first JSON problem by offset wins over any field_type).
DEFER_FIELD_TYPES = True


@dataclass
class FieldInfo:
    name: str
    key_offset: int
    value_offset: int
    value_end: int
    chars: Optional[list] = None  # for string values: [(char, offset of its text)]
    close_quote: int = -1


class _Scanner:
    def __init__(self, frame: bytes) -> None:
        self.b = frame
        self.n = len(frame)
        self.fields: dict[str, FieldInfo] = {}
        self.pending: Optional[RefFrameError] = None  # a deferred field_type

    # helpers
    def ws(self, i: int) -> int:
        while i < self.n and self.b[i] in WS:
            i += 1
        return i

    def truncated(self, alts=()):
        raise RefFrameError("truncated", self.n, alts=alts)

    def scan(self) -> dict[str, FieldInfo]:
        i = self.ws(0)
        if i >= self.n:
            # nothing but whitespace: no first byte to call "not {", no object to be inside
            self.truncated(alts={("not_object", self.n)})
        if self.b[i] != ord("{"):
            raise RefFrameError("not_object", i)
        i = self.obj(i, 1, top=True)
        i = self.ws(i)
        if i < self.n:
            raise RefFrameError("trailing", i)
        if self.pending is not None:
            raise self.pending
        return self.fields

    def value(self, i: int, depth: int) -> int:
        if i >= self.n:
            self.truncated()
        c = self.b[i]
        if c == ord("{"):
            return self.obj(i, depth + 1)
        if c == ord("["):
            return self.arr(i, depth + 1)
        if c == ord('"'):
            return self.string(i)[0]
        if c == ord("-") or c in DIGITS:
            return self.number(i)
        if c in b"tfn":
            return self.literal(i)
        raise RefFrameError("syntax", i)

    def obj(self, i: int, depth: int, top: bool = False) -> int:
        if depth > MAX_DEPTH:
            raise RefFrameError("depth", i)
        i = self.ws(i + 1)
        if i >= self.n:
            self.truncated()
        if self.b[i] == ord("}"):
            return i + 1
        seen: set[str] = set()
        while True:
            if i >= self.n:
                self.truncated()
            if self.b[i] != ord('"'):
                raise RefFrameError("syntax", i)
            key_offset = i
            i, chars, _ = self.string(i)
            key = "".join(ch for ch, _ in chars)
            known = top and key in KNOWN_KEYS
            if known:
                if key in seen:
                    raise RefFrameError("duplicate", key_offset)
                seen.add(key)
            i = self.ws(i)
            if i >= self.n:
                self.truncated()
            if self.b[i] != ord(":"):
                raise RefFrameError("syntax", i)
            i = self.ws(i + 1)
            if known:
                i = self.known_value(key, key_offset, i, depth)
            else:
                i = self.value(i, depth)
            i = self.ws(i)
            if i >= self.n:
                self.truncated()
            c = self.b[i]
            if c == ord(","):
                i = self.ws(i + 1)
                continue
            if c == ord("}"):
                return i + 1
            raise RefFrameError("syntax", i)

    def arr(self, i: int, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise RefFrameError("depth", i)
        i = self.ws(i + 1)
        if i >= self.n:
            self.truncated()
        if self.b[i] == ord("]"):
            return i + 1
        while True:
            i = self.value(i, depth)
            i = self.ws(i)
            if i >= self.n:
                self.truncated()
            c = self.b[i]
            if c == ord(","):
                i = self.ws(i + 1)
                continue
            if c == ord("]"):
                return i + 1
            raise RefFrameError("syntax", i)

    def literal(self, i: int) -> int:
        word = {ord("t"): b"true", ord("f"): b"false", ord("n"): b"null"}[self.b[i]]
        for k, ch in enumerate(word):
            p = i + k
            if p >= self.n:
                self.truncated()
            if self.b[p] != ch:
                raise RefFrameError("syntax", p)
        return i + len(word)

    def digits(self, j: int) -> int:
        while j < self.n and self.b[j] in DIGITS:
            j += 1
        return j

    def need_digit(self, j: int) -> None:
        if j >= self.n:
            self.truncated()
        if self.b[j] not in DIGITS:
            raise RefFrameError("number", j)

    def number(self, i: int) -> int:
        j = i
        if self.b[j] == ord("-"):
            j += 1
            self.need_digit(j)
        if self.b[j] == ord("0"):
            j += 1
        else:
            j = self.digits(j)
        if j < self.n and self.b[j] == ord("."):
            j += 1
            self.need_digit(j)
            j = self.digits(j)
        if j < self.n and self.b[j] in b"eE":
            j += 1
            if j < self.n and self.b[j] in b"+-":
                j += 1
            self.need_digit(j)
            j = self.digits(j)
        return j

    def string(self, i: int):
        """Scan the string starting at its quote; return (end, [(char, offset)], close quote)."""
        chars = []
        j = i + 1
        while True:
            if j >= self.n:
                self.truncated()
            c = self.b[j]
            if c == ord('"'):
                return j + 1, chars, j
            if c == ord("\\"):
                k, ch = self.escape(j)
                chars.append((ch, j))
                j = k
            elif c < 0x20:
                raise RefFrameError("control", j)
            elif c < 0x80:
                chars.append((chr(c), j))
                j += 1
            else:
                k, ch = self.utf8(j)
                chars.append((ch, j))
                j = k

    def utf8(self, j: int):
        lead = self.b[j]
        tail = (0x80, 0xBF)
        if 0xC2 <= lead <= 0xDF:
            need = [tail]
        elif lead == 0xE0:
            need = [(0xA0, 0xBF), tail]
        elif 0xE1 <= lead <= 0xEC or lead in (0xEE, 0xEF):
            need = [tail, tail]
        elif lead == 0xED:
            need = [(0x80, 0x9F), tail]  # no UTF-16 surrogates
        elif lead == 0xF0:
            need = [(0x90, 0xBF), tail, tail]
        elif 0xF1 <= lead <= 0xF3:
            need = [tail, tail, tail]
        elif lead == 0xF4:
            need = [(0x80, 0x8F), tail, tail]  # nothing above U+10FFFF
        else:
            raise RefFrameError("utf8", j)  # continuation byte, C0/C1 overlong, F5-FF
        for k, (lo, hi) in enumerate(need):
            p = j + 1 + k
            if p >= self.n:
                # cut by the end of the frame: "ends inside the object"; a core that checks
                # UTF-8 first could call it invalid UTF-8 at the lead byte
                self.truncated(alts={("utf8", j)})
            if not lo <= self.b[p] <= hi:
                raise RefFrameError("utf8", j)
        end = j + 1 + len(need)
        return end, self.b[j:end].decode("utf-8")

    def hex4(self, j: int) -> tuple[int, int]:
        """``j`` is a backslash followed by ``u``; return (code unit, index after it)."""
        for k in range(4):
            p = j + 2 + k
            if p >= self.n:
                self.truncated()
            if self.b[p] not in HEX:
                raise RefFrameError("escape", j)
        return int(self.b[j + 2:j + 6], 16), j + 6

    def escape(self, j: int):
        if j + 1 >= self.n:
            self.truncated()
        e = self.b[j + 1]
        if e in _SIMPLE_ESCAPES:
            return j + 2, _SIMPLE_ESCAPES[e]
        if e != ord("u"):
            raise RefFrameError("escape", j)
        unit, k = self.hex4(j)
        if 0xDC00 <= unit <= 0xDFFF:
            raise RefFrameError("surrogate", j)
        if not 0xD800 <= unit <= 0xDBFF:
            return k, chr(unit)
        # a high surrogate: must be followed by \u and a low one
        if k >= self.n:
            self.truncated()
        if self.b[k] != ord("\\"):
            alts = set()
            c = self.b[k]
            if c < 0x20:
                alts.add(("control", k))
            elif c >= 0x80:
                try:
                    self.utf8(k)
                except RefFrameError as exc:
                    alts.add((exc.code, exc.offset))
                    alts |= exc.alts
            raise RefFrameError("surrogate", j, alts=alts)
        if k + 1 >= self.n:
            self.truncated()
        if self.b[k + 1] != ord("u"):
            if self.b[k + 1] in _SIMPLE_ESCAPES:
                raise RefFrameError("surrogate", j)
            # a bad escape right after a high surrogate: both are problems
            raise RefFrameError("surrogate", j, alts={("escape", k)})
        try:
            low, end = self.hex4(k)
        except RefFrameError as exc:
            if exc.code == "truncated":
                raise
            raise RefFrameError("surrogate", j, alts={("escape", k)}) from None
        if not 0xDC00 <= low <= 0xDFFF:
            raise RefFrameError("surrogate", j)
        return end, chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))

    def known_value(self, key: str, key_offset: int, i: int, depth: int) -> int:
        start = i
        chars = None
        close = -1
        try:
            if key in STRING_FIELDS and i < self.n and self.b[i] == ord('"'):
                end, chars, close = self.string(i)
            else:
                end = self.value(i, depth)
        except RefFrameError as exc:
            # an error inside a value already known to have the wrong type: a core that
            # checks the type at the value's first byte reports field_type there
            if self._already_wrong(key, start, exc.offset) and not DEFER_FIELD_TYPES:
                exc.alts.add(("field_type", start))
            raise
        raw = self.b[start:end]
        value = json.loads(raw)
        self.fields[key] = FieldInfo(key, key_offset, start, end, chars, close)
        try:
            self.check_type(key, raw, value, start)
        except RefFrameError as exc:
            if not DEFER_FIELD_TYPES:
                raise
            if self.pending is None:
                self.pending = exc
        return end

    def check_type(self, key: str, raw: bytes, value: Any, start: int) -> None:
        if key in STRING_FIELDS:
            if value is not None and not isinstance(value, str):
                raise RefFrameError("field_type", start, key)
        elif key == "flush_id" and value is not None:
            if raw == b"-0":
                raise Ambiguous("flush_id -0: an integer 0 or a negative?")
            ok = (
                _INT_RE.fullmatch(raw) is not None
                and isinstance(value, int) and not isinstance(value, bool)
                and 0 <= value <= FLUSH_ID_MAX
            )
            if not ok:
                raise RefFrameError("field_type", start, key)

    def _already_wrong(self, key: str, start: int, stop: int) -> bool:
        if start >= self.n:
            return False
        first = self.b[start]
        if key in STRING_FIELDS:
            return first not in b'"n'
        if key == "flush_id":
            if first == ord("n"):
                return False
            if first not in DIGITS:
                return True
            text = self.b[start:stop]
            if any(c in text for c in b".eE"):
                return True
            digits = re.match(rb"[0-9]*", text).group(0)
            return bool(digits) and int(digits) > FLUSH_ID_MAX
        return False


def scan_frame(frame: bytes) -> dict[str, FieldInfo]:
    """Validate the JSON and the eager field types; return the known fields' positions."""
    return _Scanner(bytes(frame)).scan()


def _timed_items(value: Any, names_key: str):
    """The timestamps payload check, written from the spec; None when it is invalid."""
    if not isinstance(value, dict):
        return None
    names, starts, ends = value.get(names_key), value.get("start"), value.get("end")
    if not (isinstance(names, list) and isinstance(starts, list) and isinstance(ends, list)):
        return None
    if not len(names) == len(starts) == len(ends):
        return None
    items = []
    for name, s, e in zip(names, starts, ends):
        if not isinstance(name, str):
            return None
        for t in (s, e):
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                return None
        items.append((name, float(s), float(e)))
    return tuple(items)


@dataclass
class Parsed:
    obj: dict
    type: Any
    context_id: Optional[str]
    has_context: bool
    flush_id: Optional[int]
    audio: Optional[bytes]  # decoded data of a chunk frame
    kind: Optional[str] = None  # "words" / "phonemes" for timestamp frames
    items: tuple = ()
    payload_error: Optional[RefFrameError] = None  # base64 / timestamps, see parse_frame


TIMESTAMP_TYPES = {"timestamps": ("words", "word_timestamps", "words"),
                   "phoneme_timestamps": ("phonemes", "phoneme_timestamps", "phonemes")}


def parse_frame(frame: bytes, defer_payload: bool = False) -> Parsed:
    """Full validation of one frame, in the documented order; raise RefFrameError.

    With ``defer_payload`` an invalid base64 or timestamps payload (checked once the frame
    is valid JSON) is returned in ``payload_error`` instead: whether a frame that would be
    dropped anyway has its payload checked is not specified.
    """
    try:
        return _parse_frame(frame)
    except _PayloadError as exc:
        if not defer_payload:
            raise exc.error from None
        exc.parsed.payload_error = exc.error
        return exc.parsed


class _PayloadError(Exception):
    def __init__(self, error: RefFrameError, parsed: Parsed) -> None:
        self.error = error
        self.parsed = parsed


def _parse_frame(frame: bytes) -> Parsed:
    frame = bytes(frame)
    fields = scan_frame(frame)
    obj = json.loads(frame)
    assert isinstance(obj, dict)
    ftype = obj.get("type")
    cid = obj.get("context_id")
    fid = obj.get("flush_id")
    audio = None
    parsed = Parsed(obj, ftype, cid, cid is not None, fid, None)
    if ftype == "chunk":
        info = fields.get("data")
        if info is not None and info.chars is not None:
            try:
                audio = b64_check_chars(info.chars, info.close_quote)
            except RefFrameError as exc:
                raise _PayloadError(exc, parsed) from None
        else:
            audio = b""
        parsed.audio = audio
    elif ftype in TIMESTAMP_TYPES:
        kind, key, names_key = TIMESTAMP_TYPES[ftype]
        info = fields.get(key)
        if info is None or obj.get(key) is None:
            raise Ambiguous(f"{ftype} frame without {key}")
        items = _timed_items(obj[key], names_key)
        if items is None:
            raise _PayloadError(RefFrameError("field_type", info.value_offset, key), parsed)
        parsed.kind = kind
        parsed.items = items
    return parsed


def frame_bytes(frame) -> bytes:
    """str -> UTF-8 as a core does; a lone surrogate is utf8 at its byte offset."""
    if isinstance(frame, str):
        try:
            return frame.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RefFrameError("utf8", len(frame[:exc.start].encode("utf-8"))) from None
    return bytes(frame)


# --- frame building (the way a server does it) ----------------------------------------------

WS_CHARS = " \t\n\r"


def _ws(rng: random.Random, amount: float) -> str:
    if amount <= 0 or rng.random() > amount:
        return ""
    return "".join(rng.choice(WS_CHARS) for _ in range(rng.randint(1, 3)))


def _dump_string(s: str, rng: random.Random, escape: float) -> str:
    out = ['"']
    for ch in s:
        cp = ord(ch)
        if ch == '"':
            out.append(rng.choice(['\\"', "\\u0022"]))
        elif ch == "\\":
            out.append(rng.choice(["\\\\", "\\u005c", "\\u005C"]))
        elif cp < 0x20:
            out.append(rng.choice([json.dumps(ch)[1:-1], "\\u%04x" % cp]))
        elif escape and rng.random() < escape:
            if ch == "/" and rng.random() < 0.5:
                out.append("\\/")
            elif cp > 0xFFFF:
                v = cp - 0x10000
                out.append("\\u%04x\\u%04X" % (0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF)))
            else:
                out.append(rng.choice(["\\u%04x", "\\u%04X"]) % cp)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def dump(value: Any, rng: random.Random, ws: float = 0.3, escape: float = 0.0,
         shuffle: bool = True) -> str:
    """json.dumps with random key order, random whitespace and optional random escapes."""
    if isinstance(value, dict):
        keys = list(value)
        if shuffle:
            rng.shuffle(keys)
        parts = [
            _ws(rng, ws) + _dump_string(k, rng, escape) + _ws(rng, ws) + ":" + _ws(rng, ws)
            + dump(value[k], rng, ws, escape, shuffle) + _ws(rng, ws)
            for k in keys
        ]
        return "{" + (",".join(parts) if parts else _ws(rng, ws)) + "}"
    if isinstance(value, list):
        parts = [_ws(rng, ws) + dump(v, rng, ws, escape, shuffle) + _ws(rng, ws) for v in value]
        return "[" + (",".join(parts) if parts else _ws(rng, ws)) + "]"
    if isinstance(value, str):
        return _dump_string(value, rng, escape)
    return json.dumps(value)


def server_frame(obj: dict, rng: random.Random, ws: float = 0.3, escape: float = 0.0) -> bytes:
    """A frame as a server sends it: whitespace around it too."""
    return (_ws(rng, ws) + dump(obj, rng, ws, escape) + _ws(rng, ws)).encode("utf-8")


def chunk_obj(audio: bytes, context_id=None, flush_id=None, **extra) -> dict:
    obj = {"type": "chunk", "data": b64encode(audio), **extra}
    if context_id is not None:
        obj["context_id"] = context_id
    if flush_id is not None:
        obj["flush_id"] = flush_id
    return obj


# --- normalised events ---------------------------------------------------------------------

ENC_DTYPE = {"pcm_s16le": "<i2", "pcm_f32le": "<f4", "pcm_alaw": "|u1", "pcm_mulaw": "|u1"}
ENC_WIDTH = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_alaw": 1, "pcm_mulaw": 1}


def norm_items(items) -> tuple:
    return tuple((t.text, t.start, t.end) if hasattr(t, "text") else tuple(t) for t in items)


def norm_segment(seg) -> tuple:
    return (
        seg.context_id, seg.flush_id, seg.format.encoding, seg.format.sample_rate,
        seg.samples.dtype.str, seg.samples.tobytes(), bytes(seg.trailing_bytes), seg.complete,
        seg.error, seg.start, norm_items(seg.word_timestamps), norm_items(seg.phoneme_timestamps),
    )


def norm_event(ev) -> tuple:
    if isinstance(ev, SegmentReady):
        return ("ready",) + norm_segment(ev.segment)
    if isinstance(ev, ContextDone):
        return ("done", ev.context_id)
    if isinstance(ev, ContextError):
        return ("ctx_error", ev.context_id, ev.message, ev.status_code, ev.error_code, ev.title)
    if isinstance(ev, ServerError):
        return ("server_error", ev.message, ev.status_code, ev.error_code, ev.title)
    if isinstance(ev, Timestamps):
        return ("timestamps", ev.context_id, ev.flush_id, ev.kind, norm_items(ev.items),
                ev.segment_start)
    if isinstance(ev, Unknown):
        return ("unknown", ev.context_id, ev.type, ev.message)
    raise AssertionError(f"not an event: {ev!r}")


def norm_events(events) -> list:
    assert isinstance(events, tuple), type(events)
    return [norm_event(e) for e in events]


_LOST_MARK = re.compile(r"(?:^|; )lost \d+ chunks? \(\d+ bytes\)(?:, the first)?: [^;]*$")


def without_audio(frame) -> bytes:
    """A rejected chunk frame with its data emptied. Fed in its place, it resolves (and
    opens) the segment the rejected frame was meant for and stores nothing: a sink that
    got it differs from one that rejected the frame only by the lost mark of
    docs/sink.md "Lost chunks", which :func:`unmark_lost` takes out."""
    obj = json.loads(frame_bytes(frame), parse_float=str, parse_constant=str)
    kept = {key: obj[key] for key in ("type", "context_id", "flush_id") if key in obj}
    return json.dumps({**kept, "data": ""}).encode()


def unmark_lost(value):
    """Normalised events (or outcomes, or lists of them) with the lost mark taken out of
    every segment's error, its ``complete`` then following what is left."""
    if isinstance(value, list):
        return [unmark_lost(v) for v in value]
    if isinstance(value, tuple) and value[:1] == ("ready",):
        error = value[9]
        mark = _LOST_MARK.search(error) if isinstance(error, str) else None
        if mark:  # "lost ..." alone, or after the segment's own error and "; "
            error = error[:mark.start()] if mark.group(0).startswith("; ") else None
            return value[:8] + (error is None, error) + value[10:]
        return value
    if isinstance(value, tuple) and value[:1] == ("ok",):
        return ("ok", unmark_lost(value[1]))
    return value


def lost_marks(value) -> list:
    """The lost marks in normalised events or outcomes."""
    if isinstance(value, list):
        return [m for v in value for m in lost_marks(v)]
    if isinstance(value, tuple) and value[:1] == ("ready",) and isinstance(value[9], str):
        return [m.group(0).lstrip("; ") for m in [_LOST_MARK.search(value[9])] if m]
    if isinstance(value, tuple) and value[:1] == ("ok",):
        return lost_marks(value[1])
    return []


def approx_equal(a, b) -> bool:
    """Structural equality; floats within a relative 1e-9 (start times are divisions)."""
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return False
        if isinstance(a, bool) or isinstance(b, bool):
            return a == b
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(approx_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(approx_equal(a[k], b[k]) for k in a)
    return type(a) == type(b) and a == b


def assert_same(got, expected, what="events") -> None:
    assert approx_equal(got, expected), f"{what} differ:\n got      {got!r}\n expected {expected!r}"


def sort_by_context(events: list) -> list:
    """close() may visit contexts in any order: keep each context's own order only."""
    def key(ev):
        cid = ev[1]
        return (cid is not None, cid or "")
    return sorted(events, key=key)


# --- the reference model -------------------------------------------------------------------

def error_message(obj: dict) -> tuple:
    """(message, status_code, error_code, title) of an error frame.

    Both cores build error events with the one shared function
    ``flushsink.segments.error_event``; the model takes that rule as given instead of
    restating it (a copy would add no independence).
    """
    event = error_event(None, False, obj)
    return (event.message, event.status_code, event.error_code, event.title)


UNLABELLED, MATCHED, LABELLED = "unlabelled", "matched", "labelled"


@dataclass
class RefSegment:
    label: int
    state: str  # UNLABELLED: opened without flush_id; MATCHED: ...and later named by its label
    encoding: str
    rate: int
    start_bytes: int
    audio: bytearray = field(default_factory=bytearray)
    words: list = field(default_factory=list)
    phonemes: list = field(default_factory=list)
    lost: list = field(default_factory=list)  # (bytes, reason) of each rejected chunk

    @property
    def start(self) -> float:
        return self.start_bytes / (self.rate * ENC_WIDTH[self.encoding])


@dataclass
class RefContext:
    encoding: str
    rate: int
    open: list = field(default_factory=list)
    next_label: int = 0
    finished: OrderedDict = field(default_factory=OrderedDict)  # the last N, oldest first
    stored: int = 0


DROP = object()


class RefSink:
    def __init__(self, encoding="pcm_s16le", rate=44100, *, max_segment_bytes=256 * 2 ** 20,
                 max_total_bytes=1024 * 2 ** 20, max_ended_contexts=10_000,
                 max_timestamps=1_000_000, max_finished_labels=10_000) -> None:
        self.default = (encoding, rate)
        self.formats: dict = {}
        self.max_segment = max_segment_bytes
        self.max_total = max_total_bytes
        self.max_ended = max_ended_contexts
        self.max_timestamps = max_timestamps
        self.max_finished = max_finished_labels
        self.contexts: dict = {}
        self.ended: OrderedDict = OrderedDict()
        self.maybe_ended: set = set()
        self.ever_ended: set = set()
        self.stats = dict(frames=0, chunks=0, audio_bytes=0, dropped_frames=0,
                          rejected_frames=0, segments=0)

    # -- public ----------------------------------------------------------------------------
    def set_format(self, cid, encoding, rate) -> None:
        self.formats[cid] = (encoding, rate)

    def stats_tuple(self) -> tuple:
        open_segments = sum(len(c.open) for c in self.contexts.values())
        open_bytes = sum(len(s.audio) for c in self.contexts.values() for s in c.open)
        s = self.stats
        return (s["frames"], s["chunks"], s["audio_bytes"], s["dropped_frames"],
                s["rejected_frames"], s["segments"], open_segments, open_bytes)

    def feed(self, frame) -> list:
        """Normalised events, or RefFrameError / RefCapacityError (state unchanged)."""
        try:
            parsed = parse_frame(frame_bytes(frame), defer_payload=True)
        except RefFrameError:
            self.stats["rejected_frames"] += 1
            raise
        if parsed.payload_error is not None:
            if parsed.type == "chunk":
                return self._invalid_base64(frame, parsed)
            # a timestamps payload is a field type (phase 2): checked before any drop
            self.stats["rejected_frames"] += 1
            raise parsed.payload_error
        saved = self._save()
        try:
            return self._apply(parsed)
        except RefCapacityError as exc:
            self._restore(saved)
            self.stats["rejected_frames"] += 1
            if parsed.type == "chunk":
                self._lose(parsed, len(parsed.audio), self._cap_reason(exc))
            raise

    def cancel(self, cid) -> list:
        if cid in self.maybe_ended:
            raise Ambiguous("cancel of a context close() may or may not have ended")
        if cid in self.ended:
            return []
        return self._end(cid, "cancelled")

    def close(self, reason="closed") -> list:
        # docs/sink.md: "every open segment of every context is finished ..., and those
        # contexts end". Ambiguous for a context with no open segment; the model ends every
        # context that has segment state (opened one before), as both cores do. Contexts
        # seen only in frames that touch no segment (unknown types) do not end.
        events = []
        for cid in list(self.contexts):
            events += self._end(cid, reason)
        return sort_by_context(events)

    # -- internals -------------------------------------------------------------------------
    def _invalid_base64(self, frame, parsed: Parsed) -> list:
        """docs/sink.md phases 3-5 for a chunk whose base64 is invalid: a frame that would
        be dropped is dropped unchecked; then the caps, with the size the text would decode
        to (3 bytes per 4 characters, less the '=' among the last two); then the error."""
        chars = [c for c, _ in scan_frame(frame_bytes(frame))["data"].chars]
        size = len(chars) * 3 // 4 - (chars[-1:] == ["="]) - (chars[-2:-1] == ["="])
        parsed.audio = bytes(max(size, 0))
        saved = self._save()
        try:
            events = self._apply(parsed)
        except RefCapacityError as exc:
            self._restore(saved)
            self.stats["rejected_frames"] += 1
            self._lose(parsed, size, self._cap_reason(exc))
            raise
        if self.stats["dropped_frames"] > saved[2]["dropped_frames"]:
            return events  # dropped: no base64 check
        self._restore(saved)
        self.stats["rejected_frames"] += 1
        self._lose(parsed, max(size, 0), BASE64_REASONS[parsed.payload_error.code])
        raise parsed.payload_error

    def _cap_reason(self, exc: RefCapacityError) -> str:
        if exc.args[0] == "segment":
            return f"over max_segment_bytes={self.max_segment}"
        return f"over max_total_bytes={self.max_total}"

    def _lose(self, p: Parsed, size: int, reason: str) -> None:
        """docs/sink.md "Lost chunks": the rejected chunk's segment (opened, empty, if the
        chunk would have opened it) remembers the loss."""
        seg = self._resolve(self._context(p.context_id), p.flush_id)
        assert seg is not DROP  # a dropped chunk is never rejected
        seg.lost.append((size, reason))

    def _save(self):
        return (copy.deepcopy(self.contexts), self.ended.copy(), dict(self.stats))

    def _restore(self, saved) -> None:
        self.contexts, self.ended, self.stats = saved

    def _context(self, cid) -> RefContext:
        ctx = self.contexts.get(cid)
        if ctx is None:
            if cid in self.ever_ended and cid in self.formats:
                raise Ambiguous("does set_format survive a context that ended and was forgotten?")
            ctx = self.contexts[cid] = RefContext(*self.default)
        ctx.encoding, ctx.rate = self.formats.get(cid, self.default)
        return ctx

    def _open(self, ctx: RefContext, label: int, state: str) -> RefSegment:
        # a context's format is read when one of its segments opens
        seg = RefSegment(label, state, ctx.encoding, ctx.rate, ctx.stored)
        ctx.open.append(seg)
        ctx.next_label = max(ctx.next_label, label + 1)
        return seg

    def _resolve(self, ctx: RefContext, fid):
        if fid is not None:
            if fid in ctx.finished:
                return DROP
            for seg in ctx.open:
                if seg.label == fid:
                    if seg.state == UNLABELLED:
                        seg.state = LABELLED  # docs/sink.md: the server's label names it now
                    return seg
            top = ctx.open[-1] if ctx.open else None
            if top is not None and top.state != LABELLED:
                if top.state == MATCHED:
                    raise Ambiguous("adoption by a segment the server already named by its label")
                top.label = fid
                top.state = LABELLED
                ctx.next_label = max(ctx.next_label, fid + 1)
                return top
            return self._open(ctx, fid, LABELLED)
        if ctx.open:
            return ctx.open[-1]
        return self._open(ctx, ctx.next_label, UNLABELLED)

    def _finish(self, cid, ctx: RefContext, seg: RefSegment, error=None) -> tuple:
        if seg.lost:
            n = len(seg.lost)
            lost = (f"lost {n} chunk{'s' if n > 1 else ''} ({sum(b for b, _ in seg.lost)} bytes)"
                    f"{', the first' if n > 1 else ''}: {seg.lost[0][1]}")
            error = lost if error is None else f"{error}; {lost}"
        ctx.open.remove(seg)
        # docs/sink.md: the last max_finished_labels distinct labels are remembered
        if self.max_finished and seg.label not in ctx.finished:
            ctx.finished[seg.label] = True
            if len(ctx.finished) > self.max_finished:
                ctx.finished.popitem(last=False)
        self.stats["segments"] += 1
        width = ENC_WIDTH[seg.encoding]
        whole = len(seg.audio) - len(seg.audio) % width
        samples = np.frombuffer(bytes(seg.audio[:whole]), dtype=ENC_DTYPE[seg.encoding])
        start = seg.start
        return (
            "ready", cid, seg.label, seg.encoding, seg.rate, samples.dtype.str,
            samples.tobytes(), bytes(seg.audio[whole:]), error is None, error, start,
            tuple((t, s - start, e - start) for t, s, e in seg.words),
            tuple((t, s - start, e - start) for t, s, e in seg.phonemes),
        )

    def _end(self, cid, error=None) -> list:
        events = []
        ctx = self.contexts.pop(cid, None)
        if ctx is not None:
            for seg in list(ctx.open):
                events.append(self._finish(cid, ctx, seg, error))
        self.ended.pop(cid, None)
        self.ended[cid] = True
        self.ever_ended.add(cid)
        while len(self.ended) > self.max_ended:
            self.ended.popitem(last=False)
        return events

    def _apply(self, p: Parsed) -> list:
        cid = p.context_id
        if p.type == "error" and not p.has_context:
            if None in self.ended or None in self.maybe_ended:
                raise Ambiguous("error without context_id after the None context ended")
            self.stats["frames"] += 1
            return [("server_error",) + error_message(p.obj)]
        if cid in self.maybe_ended:
            raise Ambiguous("a frame for a context close() may or may not have ended")
        self.stats["frames"] += 1
        if cid in self.ended:
            self.stats["dropped_frames"] += 1
            return []
        fid = p.flush_id
        if p.type in ("chunk", "flush_done") or p.type in TIMESTAMP_TYPES:
            ctx = self._context(cid)
        if p.type == "chunk":
            seg = self._resolve(ctx, fid)
            if seg is DROP:
                self.stats["dropped_frames"] += 1
                return []
            audio = p.audio
            if len(seg.audio) + len(audio) > self.max_segment:
                raise RefCapacityError("segment")
            open_bytes = sum(len(s.audio) for c in self.contexts.values() for s in c.open)
            if open_bytes + len(audio) > self.max_total:
                raise RefCapacityError("total")
            seg.audio += audio
            ctx.stored += len(audio)
            self.stats["chunks"] += 1
            self.stats["audio_bytes"] += len(audio)
            return []
        if p.type in TIMESTAMP_TYPES:
            seg = self._resolve(ctx, fid)
            if seg is DROP:
                self.stats["dropped_frames"] += 1
                return []
            held = sum(len(s.words) + len(s.phonemes) for c in self.contexts.values() for s in c.open)
            if held + len(p.items) > self.max_timestamps:
                raise RefCapacityError("timestamps")
            (seg.words if p.kind == "words" else seg.phonemes).extend(p.items)
            return [("timestamps", cid, seg.label, p.kind, p.items, seg.start)]
        if p.type == "flush_done":
            if fid is not None:
                if fid in ctx.finished:
                    self.stats["dropped_frames"] += 1
                    return []
                seg = next((s for s in ctx.open if s.label == fid), None)
                if seg is None:
                    top = ctx.open[-1] if ctx.open else None
                    if top is not None and top.state != LABELLED:
                        if top.state == MATCHED:
                            raise Ambiguous("flush_done adopting a segment already named")
                        top.label = fid
                        top.state = LABELLED
                        ctx.next_label = max(ctx.next_label, fid + 1)
                        seg = top
                    else:
                        seg = self._open(ctx, fid, LABELLED)
            else:
                seg = ctx.open[-1] if ctx.open else self._open(ctx, ctx.next_label, UNLABELLED)
            return [self._finish(cid, ctx, seg)]
        if p.type == "done":
            return self._end(cid) + [("done", cid)]
        if p.type == "error":
            message = error_message(p.obj)
            return self._end(cid, message[0]) + [("ctx_error", cid) + message]
        return [("unknown", cid, p.type, p.obj)]


# --- running a core and the model side by side ---------------------------------------------

def core_outcome(sink, frame):
    """("ok", events) / ("frame_error", code, offset, detail) / ("capacity",) of one feed."""
    from flushsink import CapacityError, FrameError

    try:
        events = sink.feed(frame)
    except FrameError as exc:
        return ("frame_error", exc.code, exc.offset, exc.detail)
    except CapacityError:
        return ("capacity",)
    return ("ok", norm_events(events))


def model_outcome(model: RefSink, frame):
    """Like core_outcome; a RefFrameError is returned as the exception (it has alts)."""
    try:
        return ("ok", model.feed(frame))
    except RefFrameError as exc:
        return ("frame_error", exc)
    except RefCapacityError:
        return ("capacity",)


def assert_outcome(got, expected, frame=None) -> None:
    where = f" for frame {frame!r}" if frame is not None else ""
    if expected[0] == "frame_error":
        exc = expected[1]
        assert got[0] == "frame_error", f"expected FrameError {exc.code}@{exc.offset}, got {got!r}{where}"
        assert exc.accepts(got[1], got[2]), (
            f"expected {exc.code}@{exc.offset} (or {sorted(exc.alts)}), got {got[1]}@{got[2]}{where}")
        if exc.code == "field_type" and got[1] == "field_type" and exc.detail:
            assert exc.detail in got[3], f"detail {got[3]!r} does not name {exc.detail}{where}"
        return
    assert got[0] == expected[0], f"expected {expected!r}, got {got!r}{where}"
    if expected[0] == "ok":
        assert_same(got[1], expected[1], f"events{where}")


# FLUSHSINK_FUZZ_SCALE=10 runs every property test with ten times the examples.
FUZZ_SCALE = float(os.environ.get("FLUSHSINK_FUZZ_SCALE", "1") or 1)


def examples(n: int) -> int:
    return max(1, int(n * FUZZ_SCALE))
