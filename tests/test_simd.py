"""Every base64 kernel this CPU supports against the scalar kernel and the oracle.

The compiled core picks a kernel once (FLUSHSINK_SIMD or CPU detection); these tests force
each one in turn with ``_set_simd_path``. A SIMD kernel decodes 32- or 64-byte blocks (four
per step), then finishes with masked or scalar code, and only the exact scalar rule reports
errors: so errors are placed in every position class (first, middle and last block of a
step, the masked tail, the scalar tail, the final quantum) and must come out with the same
code and offset on every path.
"""

from __future__ import annotations

import base64
import json
import random

import pytest

_speedups = pytest.importorskip("flushsink._speedups")

from flushsink import AudioFormat, FrameError  # noqa: E402

import reference as ref  # noqa: E402

KERNELS = ("scalar", "avx2", "avx512")


def _supported(name: str) -> bool:
    before = _speedups.simd_path()
    try:
        _speedups._set_simd_path(name)
    except ValueError:
        return False
    finally:
        _speedups._set_simd_path(before)
    return True


SUPPORTED = [k for k in KERNELS if _supported(k)]


@pytest.fixture(autouse=True)
def restore_kernel():
    before = _speedups.simd_path()
    yield
    _speedups._set_simd_path(before)


@pytest.fixture(params=KERNELS)
def kernel(request):
    if request.param not in SUPPORTED:
        pytest.skip(f"this CPU has no {request.param} kernel")
    assert _speedups._set_simd_path(request.param) == request.param
    return request.param


def decode_on(kernel: str, data) -> tuple:
    _speedups._set_simd_path(kernel)
    try:
        return ("ok", _speedups.b64decode(data))
    except FrameError as exc:
        return ("err", exc.code, exc.offset)


def outcome_ref(data: bytes) -> tuple:
    try:
        return ("ok", ref.b64decode(data))
    except ref.RefFrameError as exc:
        return ("err", exc.code, exc.offset)


def test_kernel_names():
    assert "scalar" in SUPPORTED
    assert _speedups._set_simd_path("auto") == SUPPORTED[-1]   # the best one
    with pytest.raises(ValueError):
        _speedups._set_simd_path("sse9")


# --- valid input ---------------------------------------------------------------------------

def test_every_length_up_to_300(kernel):
    rng = random.Random(300)
    for size in range(301):
        raw = rng.randbytes(size)
        encoded = base64.b64encode(raw)
        assert _speedups.b64decode(encoded) == raw, size
        assert ref.b64decode(encoded) == raw


def test_unaligned_views_and_buffer_types(kernel):
    rng = random.Random(11)
    raw = rng.randbytes(3 * 700 + 2)
    encoded = base64.b64encode(raw)
    for shift in range(8):
        backing = bytearray(b"!" * shift + encoded + b"!" * 5)
        view = memoryview(backing)[shift:shift + len(encoded)]
        assert _speedups.b64decode(view) == raw, shift
    assert _speedups.b64decode(bytearray(encoded)) == raw


@pytest.mark.parametrize("size", [16384, 65536, 65536 * 3 + 7, 1 << 20])
def test_large(kernel, size):
    raw = random.Random(size).randbytes(size)
    encoded = base64.b64encode(raw)
    assert _speedups.b64decode(encoded) == raw


def test_same_bytes_as_scalar_for_every_alphabet_byte(kernel):
    # every character at every position of a 64-byte block, and each unused-bits pattern
    alphabet = ref.B64_ALPHABET.encode()
    for rotation in range(64):
        data = (alphabet[rotation:] + alphabet[:rotation]) * 9
        assert decode_on(kernel, data) == decode_on("scalar", data) == outcome_ref(data)
    for last in alphabet:
        for data in (b"A" * 297 + bytes([last]) + b"==", b"A" * 298 + bytes([last]) + b"="):
            assert decode_on(kernel, data) == decode_on("scalar", data) == outcome_ref(data)


# --- invalid input -------------------------------------------------------------------------

ALPHABET = frozenset(ref.B64_ALPHABET.encode())
NOT_ALPHABET = bytes(v for v in range(256) if v not in ALPHABET and v != ord("="))
# the bytes next to each range of the alphabet, and the high-bit ones
BAD_BYTES = b"*,.:?@[`{\x7f\x80\xaf\xff\0 !-_\n"
assert not set(BAD_BYTES) & ALPHABET


def _positions(n: int) -> list[int]:
    """Every offset for short inputs; for long ones the edges of each 32/64-byte block and a
    sample inside, plus everything in the last 300 bytes (masked and scalar tails)."""
    if n <= 700:
        return list(range(n))
    picked = set(range(0, 70)) | set(range(n - 300, n))
    for edge in range(0, n, 32):
        picked.update(p for p in (edge - 1, edge, edge + 1, edge + 17) if 0 <= p < n)
    return sorted(picked)


@pytest.mark.parametrize("size", [4, 28, 64, 100, 284, 292, 540, 1100, 4096 + 44])
def test_one_bad_byte_at_every_position_class(size):
    """Each kernel against the scalar kernel at every chosen offset, and against the oracle
    on a sample (the oracle is slow); bad bytes, '=', and a cut of the input."""
    rng = random.Random(size)
    good = base64.b64encode(rng.randbytes(size // 4 * 3))
    assert len(good) == size
    for pos in _positions(size):
        variants = [good[:pos] + bytes([rng.choice(BAD_BYTES)]) + good[pos + 1:],
                    good[:pos] + b"=" + good[pos + 1:],
                    good[:pos]]
        for data in variants:
            expected = decode_on("scalar", data)
            if pos % 13 == 0 or pos >= size - 8 or size <= 300:
                assert expected == outcome_ref(data), (pos, data[pos:pos + 1])
            for k in SUPPORTED[1:]:
                assert decode_on(k, data) == expected, (k, pos, data[pos:pos + 1])


def test_every_bad_byte_value_in_every_lane(kernel):
    """Each byte outside the alphabet at each offset of a 64-byte block, inside the
    unrolled loop (block 2 of a 4-block step) and in the masked/scalar tail."""
    good = base64.b64encode(random.Random(3).randbytes(3 * 150))   # 600 characters
    for base in (128, len(good) - 64 - 4):
        for lane in range(64):
            pos = base + lane
            for value in NOT_ALPHABET:
                data = good[:pos] + bytes([value]) + good[pos + 1:]
                try:
                    _speedups.b64decode(data)
                except FrameError as exc:
                    assert (exc.code, exc.offset) == ("base64_char", pos), (value, pos)
                else:
                    raise AssertionError(f"byte {value:#x} at {pos} was accepted")


def test_first_of_two_errors_wins():
    rng = random.Random(2)
    good = bytearray(base64.b64encode(rng.randbytes(3 * 300)))
    n = len(good)
    for _ in range(300):
        a, b = sorted(rng.sample(range(n), 2))
        data = bytearray(good)
        data[a] = rng.choice(b"=!\x80")
        data[b] = rng.choice(b"=!\x80")
        expected = outcome_ref(bytes(data))
        for k in SUPPORTED:
            assert decode_on(k, bytes(data)) == expected, (k, a, b)


def test_padding_cases_in_the_final_quantum_after_long_input():
    body = base64.b64encode(random.Random(5).randbytes(3 * 200)).decode()
    for tail in ["AA==", "AAA=", "A===", "====", "=AAA", "A=A=", "AA=A", "AAAA", "AA=", "AAA",
                 "AA=!", "A!==", "AAAA=", "AA==AA=="]:
        data = (body + tail).encode()
        expected = outcome_ref(data)
        for k in SUPPORTED:
            assert decode_on(k, data) == expected, (k, tail)


def test_random_corruptions_across_kernels():
    rng = random.Random(99)
    for _ in range(400):
        raw = rng.randbytes(rng.randrange(0, 900))
        data = bytearray(base64.b64encode(raw))
        for _ in range(rng.randrange(0, 3)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        if data and rng.random() < 0.2:
            del data[rng.randrange(len(data)):]
        data = bytes(data)
        expected = outcome_ref(data)
        for k in SUPPORTED:
            assert decode_on(k, data) == expected, k


# --- the Sink on every kernel --------------------------------------------------------------

def _chunk(context_id: str, flush_id: int, audio: bytes, step: float) -> bytes:
    return json.dumps({"type": "chunk", "context_id": context_id, "status_code": 206,
                       "done": False, "step_time": step, "flush_id": flush_id,
                       "data": base64.b64encode(audio).decode()}).encode()


def _session(rng: random.Random):
    """Interleaved contexts, chunk sizes from 0 bytes to ~1 s of 44.1 kHz audio, odd sizes
    too (a sample split across chunks), and one escaped data string (the slow path)."""
    frames, expected = [], {}
    for cid in ("a", "b", "c"):
        for flush_id in (1, 2):
            expected[(cid, flush_id)] = bytearray()
    order = [(cid, fid) for cid in ("a", "b", "c") for fid in (1, 2) for _ in range(12)]
    order.sort(key=lambda key: (key[1], rng.random()))
    for cid, fid in order:
        size = rng.choice([0, 1, 3, 640, 1764, 4410, 17640, 88200, rng.randrange(1, 9000)])
        audio = rng.randbytes(size)
        frame = _chunk(cid, fid, audio, 12.5)
        if rng.random() < 0.05:
            frame = frame.replace(b"/", b"\\/")
        frames.append(frame)
        expected[(cid, fid)] += audio
    for cid in ("a", "b", "c"):
        for fid in (1, 2):
            frames.append(json.dumps({"type": "flush_done", "context_id": cid,
                                      "status_code": 206, "done": False, "flush_done": True,
                                      "flush_id": fid}).encode())
    return frames, expected


def _run_sink(kernel: str, frames):
    _speedups._set_simd_path(kernel)
    sink = _speedups.Sink(AudioFormat("pcm_s16le", 44100), prealloc_seconds=0.5)
    outcomes = [ref.core_outcome(sink, frame) for frame in frames]
    return outcomes


def test_sink_same_segments_on_every_kernel():
    frames, expected = _session(random.Random(44100))
    results = {k: _run_sink(k, frames) for k in SUPPORTED}
    for k in SUPPORTED[1:]:
        assert results[k] == results["scalar"], k
    ready = [ev for outcome in results["scalar"] if outcome[0] == "ok" for ev in outcome[1]]
    assert len(ready) == len(expected)
    for ev in ready:
        assert ev[0] == "ready"
        key = (ev[1], ev[2])
        pcm = bytes(expected[key])
        whole = len(pcm) // 2 * 2
        assert ev[6] == pcm[:whole] and ev[7] == pcm[whole:], key


@pytest.mark.slow
def test_sink_rejects_bad_data_identically_on_every_kernel():
    rng = random.Random(7)
    audio = rng.randbytes(44100)            # 58800 base64 characters
    frame = _chunk("ctx", 1, audio, 25.0)
    start = frame.index(b'"data": "') + len(b'"data": "')
    length = len(base64.b64encode(audio))
    offsets = sorted({0, 1, 63, 64, 255, 256, 300, 12345, length - 300, length - 70,
                      length - 40, length - 5, length - 4, length - 3, length - 1}
                     | {rng.randrange(length) for _ in range(20)})
    for off in offsets:
        for bad in (b"!", b"=", b"\x7f"):
            data = frame[:start + off] + bad + frame[start + off + 1:]
            try:
                ref.parse_frame(data)
                expected = None
            except ref.RefFrameError as exc:
                expected = ("frame_error", exc.code, exc.offset)
            got = {k: _run_sink(k, [data])[0] for k in SUPPORTED}
            for k in SUPPORTED:
                outcome = got[k]
                if expected is None:
                    assert outcome[0] == "ok", (k, off, bad)
                else:
                    assert outcome[:3] == expected, (k, off, bad)
            assert len({repr(v) for v in got.values()}) == 1, (off, bad)
