"""Pure-Python twin of the compiled core (ext/_speedups.pyx): same API, events, errors.

It is the fallback where the extension is not built and the oracle the tests compare
the compiled core with, so it favours plain, checkable code: a regex-driven JSON
validator that reports the same error codes and byte offsets as ext/frame.c, and the
base64 rule of ext/b64.h (the exact path). Valid frames, nearly all of them, take a fast
intake first: the standard library's json and a2b_base64, guarded where they and the
spec disagree (see "The fast intake" below); any doubt sends a frame to the exact path.
See docs/sink.md for the behaviour.
"""

from __future__ import annotations

import binascii
import functools
import json
import re
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Protocol, cast

import numpy as np

from ._common import (
    MAX_FLUSH_ID,
    SLOTS,
    Layout,
    SinkStats,
    envelope_layout,
    flush_id_value,
    frame_type_error,
    load_payload,
    str_frame_error,
)
from ._store import (KIND_CODES, REENTRANT, TYPE_CHUNK, TYPE_CODES, TYPE_DONE, TYPE_ERROR,
                     TYPE_NONE, TYPE_UNKNOWN, AudioChunk, Store, _Segment)
from .errors import FrameError
from .segments import Event

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["AudioChunk", "Sink", "SinkStats", "b64decode", "simd_path", "_set_simd_path"]

MAX_DEPTH = 64
_get_ident = threading.get_ident
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


# --- hex (an envelope's audio_encoding="hex") ------------------------------------------

_HEX_TEXT = b"0123456789abcdefABCDEF"
_HEX_SET = frozenset(_HEX_TEXT)


def _hex_decode(raw: Any) -> bytes:
    """Decode hex strictly (raw: bytes, or the str of an escaped string); raises
    _Reject: "hex_char" at the first character that is not a hex digit, else
    "hex_length" at the end when the length is odd (ext/b64.c hex_decode)."""
    text = raw.encode("latin-1") if isinstance(raw, str) and raw.isascii() else raw
    if isinstance(text, bytes) and not text.translate(None, _HEX_TEXT) and not len(text) % 2:
        return bytes.fromhex(text.decode("ascii"))
    for i, c in enumerate(raw):
        if (ord(c) if isinstance(c, str) else c) not in _HEX_SET:
            raise _Reject("hex_char", i)
    raise _Reject("hex_length", len(raw))


def _hex_fast(text: str) -> Optional[bytes]:
    try:
        return _hex_decode(text)
    except _Reject:
        return None


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


# An envelope's paths as the exact scanner walks them: the names (bytes) of an object's
# members on the paths, each mapped to (slot, None, path) for a field or (None, the
# members below, path) for an object the paths go through.
_Trie = dict[bytes, tuple[Optional[str], Any, str]]


def _trie(layout: Layout) -> _Trie:
    root: _Trie = {}
    for slot, path in zip(SLOTS, layout.paths):
        if path is None:
            continue
        node = root
        for depth, name in enumerate(path):
            key = name.encode("ascii")
            prefix = ".".join(path[:depth + 1])
            if depth == len(path) - 1:
                node[key] = (slot, None, prefix)
            else:
                node = node.setdefault(key, (None, {}, prefix))[1]
    return root


class _Scanner:
    """Validates one frame and records the known top-level fields.

    Syntax errors are found in order by the scanner; UTF-8 errors by one strict decode
    of the whole frame. A UTF-8 error can only be inside a string (outside strings any
    non-ASCII byte is a syntax error at the same offset), so the earlier of the two is
    the one a single left-to-right pass meets first, as in ext/frame.c.
    """

    def __init__(self, buf: bytes, trie: Optional[_Trie] = None) -> None:
        self.buf = buf
        self.n = len(buf)
        self.fields: dict[str, _Value] = {}
        self.object_offset = 0
        # an envelope's paths (None: Cartesia's top-level keys), and the values of the
        # objects on them by dotted path
        self.trie = trie
        self.inner: dict[str, _Value] = {}

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
        if self.trie is None:
            i = self._object(i, 1, top=True)
        else:
            i = self._object(i, 1, node=self.trie)
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

    def _object(self, i: int, depth: int, top: bool = False,
                node: Optional[_Trie] = None) -> int:
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
            step = self._step(node, key_offset, end, escaped) if node is not None else None
            if step is not None and step[1] is not None:
                i = self._inner(step[1], step[2], i, depth, key_offset)
            else:
                if step is not None:
                    key = step[0]
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

    def _inner(self, children: _Trie, path: str, i: int, depth: int, key_offset: int) -> int:
        """An object on the way to an envelope's field (or what stands in its place)."""
        if path in self.inner:
            raise _Reject("duplicate", key_offset)
        c = self.buf[i]
        self.inner[path] = _Value("object" if c == 0x7B else "null" if c == 0x6E else "other", i)
        if c != 0x7B:
            return self._value(i, depth)
        if depth + 1 > MAX_DEPTH:
            raise _Reject("depth", i)
        return self._object(i, depth + 1, node=children)

    def _step(self, node: _Trie, quote: int, end: int, escaped: bool) -> Any:
        """The envelope path's step a key of an object on the paths is: (slot, None,
        path) for a field, (None, children, path) for an object on the way; else None."""
        raw = self.buf[quote + 1:end]
        if escaped:
            try:
                raw = json.loads(self.buf[quote:end + 1]).encode("utf-8", "surrogatepass")
            except ValueError:  # bad UTF-8 in the key: scan() reports it at its offset
                return None
        return node.get(raw)

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


# --- intake: what the rules need from a frame ------------------------------------------
#
# Both intakes return the same record, (type, context_id, flush_id, data): the fields of a
# frame that passed phases 1 and 2 of docs/sink.md (JSON, field types); a context_id that
# is null or absent is None.
# For a chunk, data is the decoded audio (the fast intake) or the data member's _Value,
# decoded after the caps (the exact intake); for other frames it is not used.

_FrameFields = tuple[Optional[str], Optional[str], Optional[int], Any]


def _exact_frame(buf: bytes) -> _FrameFields:
    """The exact path: every check of docs/sink.md in order; raises _Reject."""
    scanner = _Scanner(buf)
    scanner.scan()
    fields = scanner.fields
    # field types, in the documented order
    ftype: Optional[str] = None
    value = fields.get("type")
    if value is not None and value.kind != "null":
        if value.kind != "string":
            raise _Reject("field_type", value.offset, "type")
        ftype = _string_value(buf, value)
    cid_value = fields.get("context_id")
    if cid_value is not None and cid_value.kind not in ("null", "string"):
        raise _Reject("field_type", cid_value.offset, "context_id")
    label: Optional[int] = None
    value = fields.get("flush_id")
    if value is not None and value.kind != "null":
        label = flush_id_value(buf[value.start:value.end]) if value.kind == "number" else None
        if label is None:
            raise _Reject("field_type", value.offset, "flush_id")
    data = fields.get("data")
    if data is not None and data.kind not in ("null", "string"):
        raise _Reject("field_type", data.offset, "data")
    cid = (_string_value(buf, cid_value)
           if cid_value is not None and cid_value.kind == "string" else None)
    return ftype, cid, label, data


# An envelope's intake returns (type code, context_id, label, data, final): the store's
# frame type (an envelope names types by kind, the store numbers them), and whether the
# frame also ends its context (an envelope without types: audio with its final flag set).

_EnvFields = tuple[int, Optional[str], Optional[int], Any, bool]


class _Reader(NamedTuple):
    """What the twin reads an envelope by (made once per Sink)."""

    layout: Layout
    trie: _Trie    # names as bytes, for the exact scanner
    strie: Any     # the same with names as str, for the fast intake
    codes: dict[str, int]  # type value -> the store's frame type

    @classmethod
    def of(cls, envelope: Any) -> "_Reader":
        layout = envelope_layout(envelope)
        trie = _trie(layout)
        return cls(layout, trie, _str_trie(trie),
                   {value: KIND_CODES[kind] for value, kind in layout.types.items()})


def _str_trie(trie: _Trie) -> Any:
    return {name.decode("ascii"): (slot, None if children is None else _str_trie(children),
                                   path)
            for name, (slot, children, path) in trie.items()}


def _exact_env_frame(buf: bytes, reader: _Reader) -> _EnvFields:
    """_exact_frame for an envelope: the frame's JSON, then each slot's path and type in
    SLOTS order (the objects on its path first, outermost first: each must be an object
    or null), then its kind."""
    scanner = _Scanner(buf, reader.trie)
    scanner.scan()
    fields, inner, layout = scanner.fields, scanner.inner, reader.layout
    for slot, path, name in zip(SLOTS, layout.paths, layout.names):
        if path is None:
            continue
        for depth in range(1, len(path)):
            value = inner.get(".".join(path[:depth]))
            if value is not None and value.kind not in ("object", "null"):
                raise _Reject("field_type", value.offset, ".".join(path[:depth]))
        value = fields.get(slot)
        if value is None or value.kind == "null":
            continue
        if slot in ("type", "context_id", "data", "context_fallback") \
                and value.kind != "string":
            raise _Reject("field_type", value.offset, name)
        if slot == "flush_id" and (value.kind != "number"
                                   or flush_id_value(buf[value.start:value.end]) is None):
            raise _Reject("field_type", value.offset, name)
        if slot == "final" and buf[value.offset] not in b"tf":
            raise _Reject("field_type", value.offset, name)
    value = fields.get("flush_id")
    label = flush_id_value(buf[value.start:value.end]) \
        if value is not None and value.kind == "number" else None
    value = fields.get("context_id")
    if value is None or value.kind != "string":
        value = fields.get("context_fallback")  # (a string or null: checked above)
    cid = _string_value(buf, value) if value is not None and value.kind == "string" else None
    data = fields.get("data")
    if data is not None and data.kind != "string":
        data = None
    value = fields.get("final")
    final = value is not None and buf[value.offset] == 0x74  # true
    value = fields.get("type")
    if layout.typeless:
        error = fields.get("error")
        code = TYPE_CHUNK if data is not None else TYPE_DONE if final else \
            TYPE_ERROR if error is not None and error.kind == "string" else TYPE_NONE
    elif value is None or value.kind == "null":
        code = TYPE_NONE
    else:
        code = reader.codes.get(_string_value(buf, value), TYPE_UNKNOWN)
    return code, cid, label, data, final


def _string_value(buf: bytes, value: _Value) -> str:
    if value.escaped:
        return cast(str, json.loads(buf[value.start - 1:value.end + 1]))
    return buf[value.start:value.end].decode("utf-8")


# The fast intake. Most frames are valid, and for a valid frame the standard library's C
# parser and a2b_base64 give the fields and the audio the exact path gives, several times
# faster than the regex walk. It takes a frame only when it can show that the exact path
# accepts the frame with the same fields; in any doubt, and for every frame with an error,
# it returns None and the frame takes the exact path, which finds the error's code and
# offset. It changes nothing but its cache of envelopes, so a frame may take both. Where
# json and docs/sink.md disagree, a cheap check sends the frame to the exact path:
#
# - UTF-8: a strict decode rejects what the spec rejects (overlong forms, encoded
#   surrogates, past U+10FFFF, cut sequences); a BOM decodes to "\ufeff", which is not "{";
# - the top level: the first non-whitespace character must be "{" and only whitespace may
#   follow the object (json skips the spec's whitespace, space tab LF CR, and no other);
# - NaN, Infinity, -Infinity: json accepts them, parse_constant raises instead;
# - \uD800-\uDFFF escapes: json lets a lone surrogate through, so any surrogate escape,
#   paired or not, takes the exact path;
# - depth: json nests until RecursionError; a frame with more than MAX_DEPTH brackets in
#   all (strings included) takes the exact path;
# - duplicate keys: json keeps the last, the spec rejects a known key twice; a frame
#   with fewer members than colons is counted again with object_pairs_hook=tuple, and
#   any top-level key seen twice (known or not: the rare frame, not worth telling apart)
#   takes the exact path;
# - numbers: json's grammar is the spec's, and an int comes only from the integer grammar
#   (no fraction, no exponent), so flush_id must be an int (not a bool) in
#   0..MAX_FLUSH_ID; but "-0" is the int 0, so a flush_id of 0 next to a possible "-0"
#   token takes the exact path;
# - data: a2b_base64(strict_mode=True) is the spec's rule once the length is a multiple
#   of 4 and the text does not end in "===" (3.11's strict mode skips "=" after a
#   complete quad: "AAAA=", "AAAA===="); tests/test_twin_fast_path.py checks this on
#   every short string. Non-ASCII data makes a2b_base64 raise.

_JSON_WS = " \t\n\r"
_DATA_VALUE = cast(Any, re.compile(rb'[ \t\n\r]*:[ \t\n\r]*"'))
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_NUMBER_START = frozenset(":,[" + _JSON_WS)
_NUMBER_GOES_ON = frozenset("0123456789.eE")


if sys.version_info >= (3, 11):
    _a2b_strict = functools.partial(binascii.a2b_base64, strict_mode=True)
else:  # pragma: no cover - Python 3.10's a2b_base64 has no strict_mode

    def _a2b_strict(text: Any) -> bytes:
        """The same accept set, for text that passed the guard of _b64_fast."""
        try:
            return _b64_decode(text.encode("ascii") if isinstance(text, str) else bytes(text))
        except _Reject:
            raise ValueError("invalid base64") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# parse_float=bool: no field the intake reads may be a float, so a float's value is never
# needed, and the conversion is a tenth of an envelope's parse. bool() turns its text into
# True, which is neither a str nor an int, so a float where a field should be fails that
# field's type check as a float would (json still checks the number's grammar).
# _scan_pairs keeps every member, duplicates too (object_pairs_hook=tuple), for the
# frames where _scan_object's dict may have hidden one.
def _scanner(**options: Any) -> Callable[[str, int], tuple[Any, int]]:
    """json's scanner (the C one where there is one): JSONDecoder.scan_once, which parses
    one value at an index, without json.loads' wrapping (typeshed leaves it out)."""
    decoder = json.JSONDecoder(parse_constant=_no_constant, parse_float=bool, **options)
    scan: Callable[[str, int], tuple[Any, int]] = cast(Any, decoder).scan_once
    return scan


_scan_object = _scanner()
_scan_pairs = _scanner(object_pairs_hook=tuple)


def _fast_frame(buf: bytes, envelopes: _Envelopes) -> Optional[_FrameFields]:
    """The fields of a frame the exact path would accept, with the decoded audio of a
    chunk; None when the frame must take the exact path. envelopes: the Sink's envelope
    templates, which this keeps up to date.

    It cuts the data string out first, so that json parses the envelope alone, not the
    audio's base64 too. Why the cut is the top-level data member's value: none of the
    three quotes found is escaped (the one before `data` has no backslash before it, the
    others follow "a" and ":" or whitespace), and an unescaped quote opens or closes a
    string. Had the first one closed a string, `data` would stand outside any string and
    the envelope would not be JSON. So it opens the key "data", the second closes it, and
    the third, after the colon, opens its value, which the first quote after it closes:
    the cut is base64 text (a2b_base64 strict accepted it), without quotes or
    backslashes. With no nested container in the envelope (nor in the cut), the member is
    a top-level one. Base64 text is valid string content, so the frame is valid JSON
    exactly when the envelope is, with the same members but data; and valid UTF-8 exactly
    when the envelope is (the cut is ASCII, between two ASCII quotes). A frame where the
    cut does not work so (no data string, nested containers, data not base64) is parsed
    whole.
    """
    audio: Optional[bytes] = None
    envelope: Optional[bytes] = None
    key = buf.find(b'"data"')
    if key > 0 and buf[key - 1] != 0x5C:
        # the value's opening quote: json.dumps puts it at key + 9, compact writers at
        # key + 8; other whitespace takes the regex
        if buf[key + 6:key + 9] == b': "':
            start = key + 9
        elif buf[key + 6:key + 8] == b':"':
            start = key + 8
        else:
            value = _DATA_VALUE.match(buf, key + 6)
            start = value.end() if value is not None else 0
        end = buf.find(b'"', start) if start else -1
        # the base64 guard of _b64_fast: a multiple of 4 long, and no "=" third from the
        # end (for an empty cut, buf[end - 3] is the quote after data, or ':')
        if end > 0 and not (end - start) % 4 and buf[end - 3] != 0x3D:
            try:
                # a long chunk is decoded from a view of the frame, a short one from a
                # copy (a view costs more to make than 4 KiB cost to copy)
                audio = _a2b_strict(buf[start:end] if end - start < 4096
                                    else memoryview(buf)[start:end])
            except ValueError:  # binascii.Error
                audio = None
            else:
                envelope = buf[:start] + buf[end:]
                fields = envelopes.match(envelope)
                if fields is not None:
                    return fields + (audio,)
                try:
                    text = envelope.decode("utf-8")
                except UnicodeDecodeError:
                    return None
                # nested containers: parse it whole (also a frame that does not start
                # with "{", which is rare and takes the full parse, where it is checked)
                if "[" in text or text.find("{", 1) >= 0:
                    audio = envelope = None
    if audio is None:
        try:
            text = buf.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if text[:1] == "{":
        start = 0
    else:
        start = len(text) - len(text.lstrip(_JSON_WS))
        if text[start:start + 1] != "{":
            return None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        return None
    if (audio is None and (text.find("{", start + 1) >= 0 or "[" in text)
            and text.count("{") + text.count("[") > MAX_DEPTH):
        return None
    try:
        members, end = _scan_object(text, start)
    except Exception:  # JSONDecodeError, StopIteration, NaN, the int digits limit, ...
        return None
    if end != len(text) and text[end:].strip(_JSON_WS):
        return None
    # A key seen twice: json keeps the last. Each top-level member has one colon outside
    # strings, and anything else only adds colons (nested objects, colons in strings),
    # so as many colons as members proves that no key repeats, without the pairs.
    if text.count(":") != len(members) and len(_scan_pairs(text, start)[0]) != len(members):
        return None
    ftype = members.get("type")
    cid = members.get("context_id")
    label = members.get("flush_id")
    data = members.get("data")
    # each test in the order that settles the common case (a str, an int > 0) first
    if ((type(ftype) is not str and ftype is not None)
            or (type(cid) is not str and cid is not None)
            or (type(data) is not str and data is not None)):
        return None
    if label is not None and (type(label) is not int or label > MAX_FLUSH_ID or (
            label <= 0 and (label < 0 or _negative_zero(text)))):
        return None
    if audio is None and ftype == "chunk":
        audio = _b64_fast(data) if data is not None else b""
        if audio is None:
            return None
    if envelope is not None:
        envelopes.learn(envelope, (ftype, cid, label))
    return ftype, cid, label, audio


# The fast intake of an envelope's frames: json parses the whole frame (the audio's
# string too: envelopes put it anywhere, so it is not cut out), with every member kept
# (object_pairs_hook=tuple) so that a key on the envelope's paths seen twice in one
# object sends the frame to the exact path, and floats parsed as floats (a float where
# the final flag should be is not a bool). The other guards are _fast_frame's.
_scan_members = json.JSONDecoder(parse_constant=_no_constant,
                                 object_pairs_hook=tuple).scan_once  # type: ignore[attr-defined]


def _members(pairs: Any, node: Any, fields: dict[str, Any], inner: dict[str, Any]) -> bool:
    """Collect the envelope's fields from an object's pairs; False when a key on the
    paths repeats (the exact path then reports it)."""
    seen = set()
    for key, value in pairs:
        step = node.get(key)
        if step is None:
            continue
        if key in seen:
            return False
        seen.add(key)
        slot, children, path = step
        if children is None:
            fields[slot] = value
        else:
            inner[path] = value
            if type(value) is tuple and not _members(value, children, fields, inner):
                return False
    return True


def _fast_env_frame(buf: bytes, reader: _Reader) -> Optional[_EnvFields]:
    """The fields of an envelope's frame the exact path would accept, the audio of a
    chunk decoded; None when the frame must take the exact path."""
    try:
        text = buf.decode("utf-8")
    except UnicodeDecodeError:
        return None
    start = 0 if text[:1] == "{" else len(text) - len(text.lstrip(_JSON_WS))
    if text[start:start + 1] != "{":
        return None
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        return None
    if text.count("{") + text.count("[") > MAX_DEPTH:
        return None
    try:
        pairs, end = _scan_members(text, start)
    except Exception:  # JSONDecodeError, NaN, the int digits limit, RecursionError, ...
        return None
    if end != len(text) and text[end:].strip(_JSON_WS):
        return None
    fields: dict[str, Any] = {}
    inner: dict[str, Any] = {}
    if not _members(pairs, reader.strie, fields, inner):
        return None
    if any(type(value) is not tuple and value is not None for value in inner.values()):
        return None
    ftype, cid, label, data = (fields.get("type"), fields.get("context_id"),
                               fields.get("flush_id"), fields.get("data"))
    final = fields.get("final")
    fallback = fields.get("context_fallback")
    if ((type(ftype) is not str and ftype is not None)
            or (type(cid) is not str and cid is not None)
            or (type(fallback) is not str and fallback is not None)
            or (type(data) is not str and data is not None)
            or (type(final) is not bool and final is not None)):
        return None
    if label is not None and (type(label) is not int or label > MAX_FLUSH_ID or (
            label <= 0 and (label < 0 or _negative_zero(text)))):
        return None
    if reader.layout.typeless:
        error = fields.get("error")
        code = TYPE_CHUNK if data is not None else TYPE_DONE if final else \
            TYPE_ERROR if type(error) is str else TYPE_NONE
    else:
        code = TYPE_NONE if ftype is None else reader.codes.get(ftype, TYPE_UNKNOWN)
    if cid is None:
        cid = fallback
    audio = None
    if code == TYPE_CHUNK:
        if data is None:
            audio = b""
        else:
            audio = _hex_fast(data) if reader.layout.hex else _b64_fast(data)
            if audio is None:
                return None
    return code, cid, label, audio, final is True


# Envelope templates. Within a context the server repeats its envelope but for a number
# or two (step_time changes with every chunk), so most of a small chunk's cost, the
# envelope's parse and checks, can be kept from the chunk before. A template is an
# envelope that passed every check, as a head and a tail around the value of one number
# member that changed (none if nothing did), with the fields it gave. An envelope that is
# the head, a JSON number, then the tail, is valid exactly as the template's envelope,
# with the same fields: the exact path finds the same members, keys and known values, and
# a number of its own grammar where the other was. (The compiled core remembers repeated
# members for the same reason, ext/frame.c fs_memo.)
#
# A template is made from two envelopes of the same shape (the envelope without its
# digits): the first one is kept, and the next one shows which number changed. Contexts
# interleave, so there is a template per shape, the last one used tried first; the map
# is emptied when full, so that a server sending ever new envelopes costs one entry each.

_MAX_TEMPLATES = 256
# the JSON number grammar (docs/sink.md, ext/frame.c)
_NUMBER_TOKEN = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# in an envelope without backslashes, its strings and its numbers, in order
_ENVELOPE_TOKEN = re.compile(rb'"[^"]*"|-?[0-9][-+.eE0-9]*')
_KNOWN_QUOTED = frozenset(b'"' + key.encode() + b'"' for key in KNOWN_KEYS)


class _Template(NamedTuple):
    head: bytes
    tail: bytes  # empty when nothing changed: head is then the whole envelope
    fields: tuple[Optional[str], Optional[str], Optional[int]]

    def match(self, envelope: bytes) -> Optional[tuple[Optional[str], Optional[str],
                                                       Optional[int]]]:
        head, tail = self.head, self.tail
        if not tail:
            return self.fields if envelope == head else None
        end = len(envelope) - len(tail)
        if (end > len(head) and envelope.startswith(head) and envelope.endswith(tail)
                and _NUMBER_TOKEN.fullmatch(envelope, len(head), end)):
            return self.fields
        return None


class _Envelopes:
    """The envelope templates of one Sink."""

    __slots__ = ("last", "by_shape")

    def __init__(self) -> None:
        self.last: Optional[_Template] = None
        # shape -> its template, or the first envelope of that shape
        self.by_shape: dict[bytes, Any] = {}

    def match(self, envelope: bytes) -> Optional[tuple[Optional[str], Optional[str],
                                                      Optional[int]]]:
        """The fields of an envelope that fits a template; None if none does."""
        last = self.last
        if last is not None:
            fields = last.match(envelope)
            if fields is not None:
                return fields
        template = self.by_shape.get(envelope.translate(None, b"0123456789"))
        if type(template) is _Template:
            fields = template.match(envelope)
            if fields is not None:
                self.last = template
                return fields
        return None

    def learn(self, envelope: bytes, fields: tuple[Any, ...]) -> None:
        """After a flat envelope passed every check (and fit no template)."""
        if b"\\" in envelope:
            return  # escapes: the tokens below would not be exact
        shape = envelope.translate(None, b"0123456789")
        seen = self.by_shape.get(shape)
        template = None
        if type(seen) is bytes:
            template = _template(seen, envelope, fields)
        if template is None:
            if len(self.by_shape) >= _MAX_TEMPLATES and shape not in self.by_shape:
                self.by_shape.clear()
            self.by_shape[shape] = envelope
        else:
            self.by_shape[shape] = self.last = template


def _template(before: bytes, envelope: bytes, fields: tuple[Any, ...]) -> Optional[_Template]:
    """The template of two valid flat envelopes without backslashes that differ in at
    most one number, the value of a member other than a known field (so their fields are
    the same); else None.

    Without backslashes every quote opens or closes a string, so the tokens are exact;
    flat, so the key of a number is the string just before it."""
    tokens = _ENVELOPE_TOKEN.findall(envelope)
    before_tokens = _ENVELOPE_TOKEN.findall(before)
    if len(tokens) != len(before_tokens):
        return None
    changed = None
    key = b""
    for index, (text, old) in enumerate(zip(tokens, before_tokens)):
        if text[0] == 0x22:
            if text != old:
                return None
            key = text
        elif text != old:
            if changed is not None or key in _KNOWN_QUOTED:
                return None
            changed = index
    if changed is None:
        return _Template(envelope, b"", fields)
    number = list(_ENVELOPE_TOKEN.finditer(envelope))[changed]
    return _Template(envelope[:number.start()], envelope[number.end():], fields)


def _negative_zero(text: str) -> bool:
    """Whether text may hold the number -0, which json reads as the int 0 and the spec
    rejects as a flush_id: "-0" where a number may start and not going on as a number
    ("-0.5" is a float). One inside a string too; a false alarm only costs the exact path."""
    at = text.find("-0")
    while at >= 0:
        after = text[at + 2:at + 3]
        if text[at - 1] in _NUMBER_START and (not after or after not in _NUMBER_GOES_ON):
            return True
        at = text.find("-0", at + 2)
    return False


def _b64_fast(text: str) -> Optional[bytes]:
    """Decode base64 by the spec's rule, or None if it is not valid (then the exact path
    finds the error)."""
    if len(text) % 4 or text.endswith("==="):
        return None
    try:
        return _a2b_strict(text)
    except ValueError:  # binascii.Error; non-ASCII text
        return None


# --- the twin's side of the segment store (the rules: _store.py) --------------------------


class _PySegment(_Segment):
    def __init__(self) -> None:
        super().__init__()
        # a bytearray grows geometrically by itself and allocates nothing up front,
        # which is the twin's way of not paying resident memory for a reservation
        self.data = bytearray()
        # stream mode instead: each chunk's whole samples as bytes (immutable, so the
        # AudioChunk views of them are read-only for free; none kept with keep_audio=False),
        # and the bytes of a sample split across frames, waiting for the rest of it
        self.pieces: list[bytes] = []
        self.tail = b""


class Sink(Store):
    """Turns TTS websocket frames into finished audio segments: Cartesia's, or any
    provider's that an Envelope describes (``envelope=``, flushsink.envelopes).

    Pure-Python twin of ``flushsink._speedups.Sink``; see docs/sink.md. The rules are its
    base class's, flushsink._store.Store; this is its intake and its audio storage.
    """

    def _start(self) -> None:
        # False sends every frame through the exact scanner (tests and benchmarks only);
        # an instance attribute, as a class one is slower to read once per frame
        self._fast_path = True
        self._envelopes = _Envelopes()  # envelope templates (_fast_frame)
        # the frame being fed, for the store's hooks: the frame, and a chunk's audio as
        # the fast intake decoded it, or its data member and that member's text
        self._buf = b""
        self._audio: Optional[bytes] = None
        self._value: Optional[_Value] = None
        self._text: Any = b""
        self._piece = b""  # stream mode: the whole samples the chunk being stored completed
        # the envelope's reader (None: Cartesia's frames, read by the intake above)
        self._reader = None if self._envelope is None else _Reader.of(self._envelope)
        self._hex = self._reader is not None and self._reader.layout.hex

    # ---- intake -------------------------------------------------------------------

    def feed(self, frame: ReadableBuffer | str) -> tuple[Event | AudioChunk, ...]:
        """Feed one websocket message; returns a tuple of events (``()`` for audio).

        Raises FrameError (a ValueError) for a malformed frame and CapacityError when
        a cap would be exceeded; either way nothing changes. TypeError for a frame
        that is not bytes-like or str.
        """
        if type(frame) is bytes:  # what the clients feed
            buf = frame
        elif isinstance(frame, str):
            try:
                buf = frame.encode("utf-8")
            except UnicodeEncodeError:
                self._acquire()
                self._fed += 1
                self._release()
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
        # self._acquire() and self._release(), inlined: per frame, the two calls were a
        # tenth of a small chunk's bookkeeping
        lock = self._lock
        if not lock.acquire(False):
            if self._owner == _get_ident():
                raise RuntimeError(REENTRANT)
            lock.acquire()
        self._owner = _get_ident()
        try:
            self._fed += 1
            if self._reader is not None:
                return self._feed_envelope(buf, self._reader)
            try:
                fields = _fast_frame(buf, self._envelopes) if self._fast_path else None
            except Exception:  # unforeseen by the fast intake: the exact path judges it
                fields = None
            if fields is None:
                fields = _exact_frame(buf)
            ftype, cid, label, data = fields
            ctx = self._contexts.get(cid)
            if ftype != "chunk":
                self._buf = buf
                code = TYPE_NONE if ftype is None else TYPE_CODES.get(ftype, TYPE_UNKNOWN)
                return self._other(ctx, cid, code, label is not None, label or 0)
            return self._take_chunk(buf, ctx, cid, label, data)
        except _Reject as exc:
            raise FrameError(exc.code, exc.offset, exc.detail) from None
        finally:
            self._owner = 0
            lock.release()

    def _feed_envelope(self, buf: bytes, reader: _Reader) -> tuple[Event | AudioChunk, ...]:
        try:
            fields = _fast_env_frame(buf, reader) if self._fast_path else None
        except Exception:  # unforeseen by the fast intake: the exact path judges it
            fields = None
        if fields is None:
            fields = _exact_env_frame(buf, reader)
        code, cid, label, data, final = fields
        ctx = self._contexts.get(cid)
        if code != TYPE_CHUNK:
            self._buf = buf
            return self._other(ctx, cid, code, label is not None, label or 0)
        events = self._take_chunk(buf, ctx, cid, label, data)
        if final and self._contexts.get(cid) is not None:
            # audio that also ends its context (an envelope without types): the end
            # follows the chunk, and the frame counts once
            self._frames -= 1
            self._buf = buf
            events += self._other(self._contexts.get(cid), cid, TYPE_DONE, False, 0)
        return events

    def _take_chunk(self, buf: bytes, ctx: Any, cid: Optional[str], label: Optional[int],
                    data: Any) -> tuple[Event | AudioChunk, ...]:
        """A chunk frame: its decoded audio (bytes) or its data member (a _Value)."""
        if ctx is not None and type(data) is bytes and not self._stream:
            # The steady state, a decoded chunk for an open segment that the caps let
            # grow: what Store._chunk does for it, in a few steps (an open label is
            # never in ctx.finished; an unlabelled segment found by its label is
            # adopted, so it takes the long way), then Store._stored's commit.
            seg = ctx.open.get(label) if label is not None else ctx.current
            size = len(data)
            if (seg is not None and (label is None or not seg.unlabelled)
                    and seg.length + size <= self._max_segment_bytes
                    and self._open_bytes + size <= self._max_total_bytes):
                seg.data += data
                self._stored(ctx, seg, size)
                return ()
        self._buf = buf
        if type(data) is bytes:
            self._audio, self._value, self._text = data, None, b""
        else:
            self._audio, self._value, self._text = None, data, b""
            if data is not None and data.kind == "string":
                if data.escaped:
                    self._text = json.loads(buf[data.start - 1:data.end + 1])
                else:
                    self._text = buf[data.start:data.end]
        return self._chunk(ctx, cid, label is not None, label or 0)

    # ---- the store's hooks ----------------------------------------------------------

    def _data_size(self) -> int:
        if self._audio is not None:
            return len(self._audio)
        if self._hex:
            return len(self._text) // 2
        return _b64_size(self._text)

    def _check_data(self) -> bool:
        return False  # both intakes have checked the whole frame, data included

    def _decode(self, seg: Any, size: int) -> Any:
        decoded = self._audio
        if decoded is None:
            value, text = self._value, self._text
            try:
                if isinstance(text, str):
                    assert value is not None  # text is a str only when data had escapes
                    decoded = self._decode_escaped(self._buf, value, text)
                elif self._hex:
                    decoded = _hex_decode(text)
                else:
                    decoded = _b64_decode(text, value is not None and value.clean)
            except _Reject as exc:
                if isinstance(text, str):
                    return FrameError(exc.code, exc.offset)
                assert value is not None  # an absent data decodes to b"" without error
                return FrameError(exc.code, value.start + exc.offset)
        if not self._stream:
            seg.data += decoded
            return None
        joined = seg.tail + decoded if seg.tail else decoded
        whole = len(joined) // seg.fmt.width * seg.fmt.width
        piece = joined[:whole] if whole < len(joined) else joined
        seg.tail = joined[whole:]
        if piece and self._keep_audio:
            seg.pieces.append(piece)
        self._piece = piece
        return None

    def _chunk_event(self, ctx: Any, seg: Any, first: int, end: int) -> AudioChunk:
        piece, self._piece = self._piece, b""
        return self._new_chunk(ctx, seg, first, end, piece, 0)

    def _new_blank_segment(self) -> _PySegment:
        return _PySegment()

    def _hand_over(self, seg: Any) -> Any:
        if self._stream:  # read-only, as the compiled core's (the chunks' views share it)
            self._trailing = seg.tail
            joined = b"".join(seg.pieces) if self._keep_audio else b""
            seg.pieces = []
            return np.frombuffer(joined, dtype=seg.fmt.dtype)
        data = seg.data
        width = seg.fmt.width
        whole = len(data) // width * width
        self._trailing = bytes(data[whole:])
        return np.frombuffer(data, dtype=seg.fmt.dtype, count=whole // width)

    def _payload(self) -> Any:
        return load_payload(self._buf)

    def _field_offset(self, name: str) -> int:
        # from a scan of a frame known to be valid JSON (the rare case)
        scanner = _Scanner(self._buf, None if self._reader is None else self._reader.trie)
        scanner.scan()
        value = scanner.fields.get(name)
        return value.offset if value is not None else scanner.object_offset

    def _decode_escaped(self, buf: bytes, data: _Value, text: str) -> bytes:
        """Decode an escaped data string; error offsets point into the frame."""
        if self._hex:
            try:
                return _hex_decode(text)
            except _Reject as exc:
                raise _Reject(exc.code, _char_offsets(buf, data.start, data.end)[exc.offset])
        codes = [ord(ch) for ch in text]
        pads = len(text) - len(text.rstrip("="))
        if (len(text) % 4 or pads > 2 or not text.isascii()
                or text.rstrip("=").encode().translate(None, _ALPHABET)):
            code, index = _b64_error(codes)
            raise _Reject(code, _char_offsets(buf, data.start, data.end)[index])
        return binascii.a2b_base64(text.encode("ascii"))


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
