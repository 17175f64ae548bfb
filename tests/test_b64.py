"""The strict base64 decoder (``b64decode`` of the core of the run) against the oracle.

Long inputs matter: a SIMD decoder works in 32/64-byte blocks with a scalar tail, so errors
are placed at every offset of inputs longer than several blocks.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flushsink
from flushsink import FrameError

import reference as ref

CODES = {"base64_char", "base64_padding", "base64_length"}


def outcome_ref(data: bytes):
    try:
        return ("ok", ref.b64decode(data))
    except ref.RefFrameError as exc:
        return ("err", exc.code, exc.offset)


def outcome_core(decode, data: bytes):
    try:
        out = decode(data)
    except FrameError as exc:
        assert exc.code in CODES, exc.code
        return ("err", exc.code, exc.offset)
    assert isinstance(out, bytes)
    return ("ok", out)


# --- the oracle itself, checked against the standard library ------------------------------

@settings(max_examples=ref.examples(300), deadline=None)
@given(st.binary(max_size=200))
def test_oracle_round_trips_like_stdlib(raw):
    encoded = base64.b64encode(raw)
    assert ref.b64encode(raw).encode() == encoded
    assert ref.b64decode(encoded) == raw


# The standard library's strictest decoder: a2b_base64's strict_mode is 3.11+; on 3.10,
# b64decode(validate=True) refuses characters outside the alphabet and '=' anywhere but
# in one or two at the end, which is all the check below needs.
if sys.version_info >= (3, 11):
    stdlib_strict_b64decode = functools.partial(binascii.a2b_base64, strict_mode=True)
else:
    stdlib_strict_b64decode = functools.partial(base64.b64decode, validate=True)


@pytest.mark.slow
def test_oracle_accepts_only_what_strict_binascii_accepts():
    # exhaustive over a small alphabet: whatever the oracle accepts, the standard library's
    # strict decoder accepts with the same bytes (the oracle is stricter: no third '=',
    # e.g. 'AAAA====')
    alphabet = b"AQ/=!"
    for n in range(0, 9):
        for combo in itertools.product(alphabet, repeat=n):
            data = bytes(combo)
            got = outcome_ref(data)
            if got[0] == "ok":
                assert stdlib_strict_b64decode(data) == got[1], data


def test_oracle_hand_cases():
    # written by hand from docs/sink.md, to pin the oracle
    cases = {
        b"": ("ok", b""),
        b"AAAA": ("ok", b"\0\0\0"),
        b"AQ==": ("ok", b"\x01"),
        b"AR==": ("ok", b"\x01"),  # non-zero unused bits accepted
        b"AQI=": ("ok", b"\x01\x02"),
        b"AQJ=": ("ok", b"\x01\x02"),
        b"A": ("err", "base64_length", 1),
        b"AAAAA": ("err", "base64_length", 5),
        b"AB=": ("err", "base64_length", 3),
        b"==": ("err", "base64_length", 2),
        b"A===": ("err", "base64_padding", 3),
        b"====": ("err", "base64_padding", 2),
        b"AB=C": ("err", "base64_padding", 3),
        b"=AAA": ("err", "base64_padding", 1),
        b"AA==AA==": ("err", "base64_padding", 4),
        b"AAAA====": ("err", "base64_padding", 6),
        b"AA!A": ("err", "base64_char", 2),
        b"AA-_": ("err", "base64_char", 2),
        b"AA=!": ("err", "base64_char", 3),
        b"AAA\n": ("err", "base64_char", 3),
        b"AA A": ("err", "base64_char", 2),
        b"\xff": ("err", "base64_char", 0),
        b"!": ("err", "base64_char", 0),  # the character comes before the length
    }
    for data, expected in cases.items():
        assert outcome_ref(data) == expected, data


# --- the cores -----------------------------------------------------------------------------

def test_exhaustive_short_inputs(core):
    alphabet = b"Az+/=!\x80"
    for n in range(0, 6):
        for combo in itertools.product(alphabet, repeat=n):
            data = bytes(combo)
            assert outcome_core(core.b64decode, data) == outcome_ref(data), data


def test_every_unused_bit_pattern_is_accepted(core):
    for last in ref.B64_ALPHABET:
        for data in (f"AAAAA{last}==".encode(), f"AAAAAA{last}=".encode()):
            assert outcome_core(core.b64decode, data) == outcome_ref(data)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 31, 32, 33, 47, 48, 49, 95, 96, 97, 191, 192, 193, 1000, 4099])
def test_valid_lengths(core, size):
    raw = random.Random(size).randbytes(size)
    assert core.b64decode(base64.b64encode(raw)) == raw


BAD_BYTES = [b"!", b"-", b"_", b" ", b"\n", b"\0", b"\x80", b"\xff", b".", b":", b"@", b"[", b"`", b"{", b"\x7f"]


@pytest.mark.parametrize("size", [24, 48, 96, 152, 260])
def test_error_at_every_offset_of_long_input(core, size):
    """One bad byte, '=' or a cut at each position: SIMD block edges and the scalar tail."""
    rng = random.Random(size)
    good = base64.b64encode(rng.randbytes(size * 3 // 4))
    assert len(good) == size
    for pos in range(size):
        for bad in (rng.choice(BAD_BYTES), b"="):
            data = good[:pos] + bad + good[pos + 1:]
            assert outcome_core(core.b64decode, data) == outcome_ref(data), (pos, bad)
        cut = good[:pos]
        assert outcome_core(core.b64decode, cut) == outcome_ref(cut), pos


def test_every_bad_byte_value(core):
    good = base64.b64encode(bytes(range(90)))
    for value in range(256):
        for pos in (0, 5, 37, len(good) - 3):
            data = good[:pos] + bytes([value]) + good[pos + 1:]
            assert outcome_core(core.b64decode, data) == outcome_ref(data), (value, pos)


@settings(max_examples=ref.examples(400), deadline=None)
@given(st.binary(max_size=300), st.lists(st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=2)), max_size=3))
def test_random_corruptions(raw, edits):
    data = bytearray(base64.b64encode(raw))
    for pos, patch in edits:
        pos = min(pos, len(data))
        data[pos:pos + len(patch)] = patch
    data = bytes(data)
    assert outcome_core(flushsink._accel.b64decode, data) == outcome_ref(data)


@settings(max_examples=ref.examples(300), deadline=None)
@given(st.text(alphabet="AQgw+/=", max_size=80))
def test_random_alphabet_strings(text):
    data = text.encode()
    assert outcome_core(flushsink._accel.b64decode, data) == outcome_ref(data)


def test_error_is_frame_error_with_message(core):
    with pytest.raises(FrameError) as info:
        core.b64decode(b"AB=C")
    exc = info.value
    assert isinstance(exc, ValueError)
    assert str(exc) == str(FrameError(exc.code, exc.offset, exc.detail))
