"""Sink semantics (docs/sink.md "Segments", "Other calls"): every scenario runs on the core
and on the reference model, and the key facts are also asserted by hand."""

from __future__ import annotations

import array
import base64
import gc
import itertools
import json
import os
import random

import numpy as np
import pytest

import flushsink
from flushsink import (
    AudioFormat, CapacityError, ContextDone, ContextError, FrameError, ServerError,
    Timestamps, Unknown,
)

import reference as ref

ENCODINGS = ["pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"]


def enc(obj, seed=0, ws=0.3, escape=0.0) -> bytes:
    return ref.server_frame(obj, random.Random(seed), ws=ws, escape=escape)


class Pair:
    """A core Sink and the reference model fed the same frames; every outcome compared."""

    def __init__(self, core=None, encoding="pcm_s16le", rate=44100, **caps):
        core = core or flushsink
        self.sink = core.Sink(AudioFormat(encoding, rate), **caps)
        self.model = ref.RefSink(encoding, rate, **caps)
        self.seed = 0

    def feed(self, frame, *, raw=False):
        if isinstance(frame, dict):
            self.seed += 1
            frame = enc(frame, self.seed)
        expected = ref.model_outcome(self.model, frame)
        events = None
        try:
            events = self.sink.feed(frame)
            got = ("ok", ref.norm_events(events))
        except FrameError as exc:
            got = ("frame_error", exc.code, exc.offset, exc.detail)
        except CapacityError:
            got = ("capacity",)
        ref.assert_outcome(got, expected, frame)
        self.check_stats()
        if raw:
            return got, events
        return got[1] if got[0] == "ok" else got

    def set_format(self, cid, encoding, rate):
        self.sink.set_format(cid, AudioFormat(encoding, rate))
        self.model.set_format(cid, encoding, rate)

    def cancel(self, cid):
        events = self.sink.cancel(cid)
        got = ref.norm_events(events)
        ref.assert_same(got, self.model.cancel(cid), "cancel events")
        self.check_stats()
        return got

    def close(self, *reason):
        events = self.sink.close(*reason)
        got = ref.sort_by_context(ref.norm_events(events))
        ref.assert_same(got, self.model.close(*reason), "close events")
        self.check_stats()
        return got

    def check_stats(self):
        assert tuple(self.sink.stats) == self.model.stats_tuple()


def ready(ev):
    assert ev[0] == "ready", ev
    keys = ("context_id", "flush_id", "encoding", "rate", "dtype", "samples", "trailing",
            "complete", "error", "start", "words", "phonemes")
    return dict(zip(keys, ev[1:]))


def chunk(audio, cid=None, fid=None, **extra):
    return ref.chunk_obj(audio, cid, fid, **extra)


def flush_done(cid=None, fid=None):
    obj = {"type": "flush_done", "flush_done": True}
    if cid is not None:
        obj["context_id"] = cid
    if fid is not None:
        obj["flush_id"] = fid
    return obj


def done(cid=None):
    return {"type": "done", "done": True, **({"context_id": cid} if cid is not None else {})}


# --- return values and input types ---------------------------------------------------------

def test_chunk_returns_the_shared_empty_tuple(core):
    sink = core.Sink()
    a = sink.feed(enc(chunk(b"\1\2", "a")))
    b = sink.feed(enc(chunk(b"\3\4", "b", 4)))
    c = sink.feed(enc(chunk(b"", "a")))
    assert a == () and a is b and b is c
    sink.feed(enc(done("z")))
    dropped = sink.feed(enc(chunk(b"\1\2", "z")))
    assert dropped == () and type(dropped) is tuple


def test_other_frames_return_tuples(core):
    sink = core.Sink()
    for obj in (flush_done("a"), {"type": "what"}, done("a"), {"type": "error", "error": "x"}):
        result = sink.feed(enc(obj))
        assert type(result) is tuple and len(result) >= 1


def _inputs(frame: bytes):
    padded = bytearray(b"xx" + frame + b"yy")
    yield "bytes", frame
    yield "bytearray", bytearray(frame)
    yield "memoryview", memoryview(frame)
    yield "memoryview-slice", memoryview(padded)[2:-2]
    yield "str", frame.decode("utf-8")
    yield "array-B", array.array("B", frame)
    yield "array-b", array.array("b", frame)
    yield "numpy-uint8", np.frombuffer(frame, dtype=np.uint8)
    yield "memoryview-readonly-bytes", memoryview(bytes(padded))[2:-2]


def test_input_types_are_equivalent(core):
    frames = [
        enc(chunk(b"\x01\x02\x03\x04\x05", "é😀", 2), escape=0.3),
        enc({"type": "timestamps", "context_id": "é😀", "flush_id": 2,
             "word_timestamps": {"words": ["ü"], "start": [0.1], "end": [0.2]}}),
        enc(flush_done("é😀", 2)),
        enc({"type": "novel", "context_id": "é😀", "x": ["\u2028"]}),
        enc(done("é😀")),
    ]
    results = {}
    for frame in frames:
        for name, value in _inputs(frame):
            results.setdefault(name, [])
    for name in results:
        sink = core.Sink()
        out = []
        for frame in frames:
            value = dict(_inputs(frame))[name]
            out.append(ref.norm_events(sink.feed(value)))
        out.append(tuple(sink.stats))
        results[name] = out
    first = results["bytes"]
    for name, out in results.items():
        ref.assert_same(out, first, name)


@pytest.mark.parametrize("value", [
    None, 12, 1.5, ["{}"], {"type": "done"}, object(), memoryview(b'{"a":1}  ')[::2],
    array.array("h", [123, 125]), memoryview(b'{}{}').cast("H"),
    np.asfortranarray(np.zeros((3, 4), np.uint8)),
], ids=["None", "int", "float", "list", "dict", "object", "strided-memoryview", "array-h",
        "memoryview-H", "fortran-2d"])
def test_other_types_raise_type_error(core, value):
    sink = core.Sink()
    with pytest.raises(TypeError):
        sink.feed(value)
    assert sink.stats.frames == 0


def test_non_contiguous_memoryview_of_a_valid_frame(core):
    frame = b'{"type":"done"}'
    spread = bytes(itertools.chain.from_iterable((c, 32) for c in frame))
    view = memoryview(spread)[::2]
    assert bytes(view) == frame
    sink = core.Sink()
    with pytest.raises(TypeError):
        sink.feed(view)


# --- chunk splits, trailing bytes, encodings -------------------------------------------------

def sample_audio(encoding: str, count: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if encoding == "pcm_s16le":
        return rng.integers(-32768, 32768, count).astype("<i2").tobytes()
    if encoding == "pcm_f32le":
        return rng.uniform(-1, 1, count).astype("<f4").tobytes()
    return rng.integers(0, 256, count).astype("u1").tobytes()


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_two_way_split(core, encoding):
    width = ref.ENC_WIDTH[encoding]
    audio = sample_audio(encoding, 3)  # a few samples: every split inside and between them
    for extra in range(width):  # 0..width-1 trailing bytes
        total = audio + bytes(range(200, 200 + extra))
        for cut in range(len(total) + 1):
            pair = Pair(core, encoding, 8000)
            assert pair.feed(chunk(total[:cut], "c")) == []
            assert pair.feed(chunk(total[cut:], "c")) == []
            (ev,) = pair.feed(flush_done("c"))
            seg = ready(ev)
            whole = len(total) - len(total) % width
            assert seg["samples"] == total[:whole]
            assert seg["trailing"] == total[whole:]
            assert seg["dtype"] == np.dtype(ref.ENC_DTYPE[encoding]).str


def test_every_three_way_split_f32(core):
    audio = sample_audio("pcm_f32le", 3, seed=5)
    for i in range(len(audio) + 1):
        for j in range(i, len(audio) + 1):
            sink = core.Sink(AudioFormat("pcm_f32le", 24000))
            for part in (audio[:i], audio[i:j], audio[j:]):
                assert sink.feed(enc(chunk(part, "c", 1))) == ()
            (ev,) = sink.feed(enc(flush_done("c", 1)))
            assert ev.segment.samples.tobytes() == audio
            assert np.array_equal(ev.segment.samples, np.frombuffer(audio, "<f4"))
            assert ev.segment.trailing_bytes == b""


def test_byte_at_a_time(core):
    audio = sample_audio("pcm_s16le", 9, seed=2) + b"\x07"
    pair = Pair(core)
    for k in range(len(audio)):
        pair.feed(chunk(audio[k:k + 1], "c", 3))
    (ev,) = pair.feed(flush_done("c", 3))
    assert ready(ev)["samples"] == audio[:-1] and ready(ev)["trailing"] == b"\x07"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_samples_array(core, encoding):
    audio = sample_audio(encoding, 1000, seed=9)
    sink = core.Sink(AudioFormat(encoding, 16000))
    half = len(audio) // 2 + 1
    sink.feed(enc(chunk(audio[:half], "c")))
    sink.feed(enc(chunk(audio[half:], "c")))
    (ev, _) = sink.feed(enc(done("c")))
    seg = ev.segment
    dtype = {"pcm_s16le": "<i2", "pcm_f32le": "<f4"}.get(encoding, "uint8")
    assert isinstance(seg.samples, np.ndarray) and seg.samples.dtype == np.dtype(dtype)
    assert seg.samples.dtype.byteorder in "<|="  # little endian on every host
    assert seg.samples.ndim == 1 and seg.samples.tobytes() == audio
    assert seg.format == AudioFormat(encoding, 16000)
    assert seg.samples.base is not None  # a view over the segment's buffer, not a copy
    again = seg.samples
    assert np.shares_memory(again, np.frombuffer(seg.pcm(), dtype=np.uint8))
    assert seg.duration == pytest.approx(len(audio) / ref.ENC_WIDTH[encoding] / 16000)
    assert seg.nbytes == len(audio)


def _g711_reference(code: int, encoding: str) -> int:
    # ITU-T G.711 expansion, written out from the standard's tables
    if encoding == "pcm_mulaw":
        u = ~code & 0xFF
        sign, exponent, mantissa = u & 0x80, (u >> 4) & 7, u & 0x0F
        magnitude = ((mantissa << 3) + 0x84 << exponent) - 0x84
        return -magnitude if sign else magnitude
    a = code ^ 0x55
    sign, exponent, mantissa = a & 0x80, (a >> 4) & 7, a & 0x0F
    magnitude = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if sign else -magnitude


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_to_int16(core, encoding):
    if encoding in ("pcm_mulaw", "pcm_alaw"):
        audio = bytes(range(256))
    elif encoding == "pcm_f32le":
        audio = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -2.0, 1e-6, 0.25], "<f4").tobytes()
    else:
        audio = np.array([0, 1, -1, 32767, -32768, 12345], "<i2").tobytes()
    sink = core.Sink(AudioFormat(encoding, 8000))
    sink.feed(enc(chunk(audio, "c")))
    (ev,) = sink.feed(enc(flush_done("c")))
    out = ev.segment.to_int16()
    assert out.dtype == np.dtype("<i2")
    if encoding == "pcm_s16le":
        expected = np.frombuffer(audio, "<i2")
    elif encoding == "pcm_f32le":
        x = np.frombuffer(audio, "<f4").astype(np.float64)
        expected = np.array([round(max(-1.0, min(1.0, v)) * 32767) for v in x], "<i2")
    else:
        expected = np.array([_g711_reference(c, encoding) for c in audio], "<i2")
    assert np.array_equal(out, expected)
    if encoding == "pcm_mulaw":
        assert (out[0xFF], out[0x7F], out[0x00], out[0x80]) == (0, 0, -32124, 32124)
    if encoding == "pcm_alaw":
        assert (out[0xD5], out[0x55], out[0xAA], out[0x2A]) == (8, -8, 32256, -32256)


# --- formats per context, start times ----------------------------------------------------

def test_set_format_applies_to_segments_opened_after(core):
    pair = Pair(core, "pcm_s16le", 44100)
    pair.feed(chunk(b"\1\2\3\4", "a"))                        # a/0 opens as s16 44100
    pair.set_format("a", "pcm_f32le", 24000)
    pair.set_format("b", "pcm_mulaw", 8000)
    pair.feed(chunk(b"\5\6", "a"))                            # still the s16 segment
    (ev,) = pair.feed(flush_done("a"))
    seg = ready(ev)
    assert (seg["encoding"], seg["rate"], seg["samples"]) == ("pcm_s16le", 44100, b"\1\2\3\4\5\6")
    pair.feed(chunk(b"\7\x08\x09\x0a\x0b", "a"))               # a/1 opens as f32 24000
    pair.feed(chunk(b"\x0c\x0d\x0e", "b"))
    pair.feed(chunk(b"\x0f\x10", "c"))
    events = pair.close()
    segs = {ready(e)["context_id"]: ready(e) for e in events}
    assert (segs["a"]["encoding"], segs["a"]["rate"], segs["a"]["dtype"]) == ("pcm_f32le", 24000, "<f4")
    assert segs["a"]["samples"] == b"\7\x08\x09\x0a" and segs["a"]["trailing"] == b"\x0b"
    assert segs["a"]["start"] == pytest.approx(6 / (24000 * 4))   # 6 bytes stored before, at f32
    assert (segs["b"]["encoding"], segs["b"]["dtype"]) == ("pcm_mulaw", "|u1")
    assert segs["c"]["encoding"] == "pcm_s16le"


def test_segment_start_counts_every_stored_byte(core):
    pair = Pair(core, "pcm_s16le", 16000)
    pair.feed(chunk(b"\1\2\3", "a", 0))                       # 1 sample + 1 trailing byte
    ev0, = pair.feed(flush_done("a", 0))
    pair.feed(chunk(b"\4\5\6\7", "a", 1))
    pair.feed(chunk(b"\x08\x09", "a", 2))                     # 2 opens while 1 is open
    pair.feed(chunk(b"\x0a\x0b", "a", 1))
    ev1, = pair.feed(flush_done("a", 1))
    ev2, = pair.feed(flush_done("a", 2))
    assert ready(ev0)["start"] == 0.0
    assert ready(ev1)["start"] == pytest.approx(3 / 32000)
    assert ready(ev2)["start"] == pytest.approx(7 / 32000)
    assert ready(ev1)["samples"] == b"\4\5\6\7\x0a\x0b"


# --- flush_id: bases, absence, adoption ---------------------------------------------------

@pytest.mark.parametrize("base", [0, 1, 7, 2**62 - 3])
def test_flush_ids_on_every_frame(core, base):
    pair = Pair(core)
    labels = []
    for k in range(3):
        pair.feed(chunk(bytes([k, k]), "c", base + k))
        pair.feed(chunk(bytes([k, k + 1]), "c", base + k))
        (ev,) = pair.feed(flush_done("c", base + k))
        labels.append(ready(ev)["flush_id"])
        assert ready(ev)["samples"] == bytes([k, k, k, k + 1]) and ready(ev)["complete"]
    assert labels == [base, base + 1, base + 2]
    assert pair.feed(done("c")) == [("done", "c")]


@pytest.mark.parametrize("base", [0, 1, 5])
def test_flush_id_only_on_flush_done(core, base):
    """Chunks without flush_id, flush_done with it: the open segment adopts the server's label."""
    pair = Pair(core)
    got = []
    for k in range(3):
        pair.feed(chunk(bytes([k, 0]), "c"))
        pair.feed(chunk(bytes([k, 1]), "c"))
        (ev,) = pair.feed(flush_done("c", base + k))
        got.append((ready(ev)["flush_id"], ready(ev)["samples"]))
    assert got == [(base + k, bytes([k, 0, k, 1])) for k in range(3)]


def test_no_flush_ids_at_all(core):
    pair = Pair(core)
    labels = []
    for k in range(3):
        pair.feed(chunk(b"\1\1", "c"))
        (ev,) = pair.feed(flush_done("c"))
        labels.append(ready(ev)["flush_id"])
    pair.feed(chunk(b"\2\2", "c"))
    events = pair.feed(done("c"))
    assert labels == [0, 1, 2] and ready(events[0])["flush_id"] == 3 and events[1] == ("done", "c")


def test_flush_done_of_nothing_is_an_empty_segment(core):
    pair = Pair(core, "pcm_f32le", 24000)
    (ev,) = pair.feed(flush_done("c", 4))
    seg = ready(ev)
    assert (seg["flush_id"], seg["samples"], seg["trailing"], seg["complete"]) == (4, b"", b"", True)
    assert seg["dtype"] == "<f4"
    (ev,) = pair.feed(flush_done("c"))
    assert ready(ev)["flush_id"] == 5          # the next label
    (ev,) = pair.feed(flush_done("d"))
    assert ready(ev)["flush_id"] == 0


def test_late_frames_of_a_finished_flush_are_dropped(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\2", "c", 1))
    pair.feed(flush_done("c", 1))
    assert pair.feed(chunk(b"\3\4", "c", 1)) == []
    assert pair.feed(flush_done("c", 1)) == []
    assert pair.feed({"type": "timestamps", "context_id": "c", "flush_id": 1,
                      "word_timestamps": {"words": ["a"], "start": [0], "end": [1]}}) == []
    assert pair.sink.stats.dropped_frames == 3
    assert pair.sink.stats.open_segments == 0


def test_labelled_segments_do_not_adopt(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "c", 5))
    pair.feed(chunk(b"\2\2", "c"))          # -> 5, the open segment
    pair.feed(chunk(b"\3\3", "c", 7))       # 5 is labelled: a new segment 7
    pair.feed(chunk(b"\4\4", "c", 5))       # -> 5 (open)
    pair.feed(chunk(b"\5\5", "c"))          # -> 7, the most recently opened
    events = pair.feed(done("c"))
    segs = [ready(e) for e in events[:-1]]
    assert [(s["flush_id"], s["samples"]) for s in segs] == [(5, b"\1\1\2\2\4\4"), (7, b"\3\3\5\5")]
    assert events[-1] == ("done", "c")


def test_a_label_equal_to_ours_names_the_segment(core):
    """chunk, chunk(0), chunk(1): the server named segment 0, so 1 is a new segment
    (a regression: 1 used to adopt 0 and merge two flushes)."""
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "c"))          # unlabelled, our label 0
    pair.feed(chunk(b"\2\2", "c", 0))       # the server calls it 0 too
    pair.feed(chunk(b"\3\3", "c", 1))       # a new segment
    events = pair.feed(done("c"))
    segs = [ready(e) for e in events[:-1]]
    assert [(s["flush_id"], s["samples"]) for s in segs] == [(0, b"\1\1\2\2"), (1, b"\3\3")]


def test_fortran_order_array_is_a_type_error(core):
    import numpy as np

    frame = np.asfortranarray(np.frombuffer(b'{"type":"done","context_id":"c"}', np.uint8)[:32].reshape(4, 8))
    with pytest.raises(TypeError):
        core.Sink().feed(frame)


def test_adoption_by_a_chunk(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "c"))          # unlabelled 0
    pair.feed(chunk(b"\2\2", "c", 9))       # adopts 9
    pair.feed(chunk(b"\3\3", "c", 10))      # 9 is labelled now: new 10
    (ev,) = pair.feed(flush_done("c", 9))
    assert (ready(ev)["flush_id"], ready(ev)["samples"]) == (9, b"\1\1\2\2")
    pair.feed(flush_done("c", 10))
    pair.feed(chunk(b"\4\4", "c"))          # next label 11
    (ev,) = pair.feed(flush_done("c"))
    assert ready(ev)["flush_id"] == 11


def test_next_label_is_one_past_the_highest(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "c", 5))
    pair.feed(flush_done("c", 5))
    pair.feed(chunk(b"\2\2", "c", 2))       # below: a new segment 2, next label stays 6
    (ev,) = pair.feed(flush_done("c", 2))
    assert ready(ev)["flush_id"] == 2
    pair.feed(chunk(b"\3\3", "c"))
    (ev,) = pair.feed(flush_done("c"))
    assert ready(ev)["flush_id"] == 6


def test_flush_done_finishes_the_named_segment_not_the_newest(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "c", 1))
    pair.feed(chunk(b"\2\2", "c", 2))
    (ev,) = pair.feed(flush_done("c", 1))
    assert ready(ev)["flush_id"] == 1
    pair.feed(chunk(b"\3\3", "c"))          # the open segment is 2
    (ev,) = pair.feed(flush_done("c"))
    assert (ready(ev)["flush_id"], ready(ev)["samples"]) == (2, b"\2\2\3\3")


def test_flush_done_with_a_new_label_while_a_labelled_one_is_open(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "c", 1))
    (ev,) = pair.feed(flush_done("c", 3))   # 3 never seen: an empty segment 3
    assert (ready(ev)["flush_id"], ready(ev)["samples"]) == (3, b"")
    (ev,) = pair.feed(flush_done("c"))
    assert (ready(ev)["flush_id"], ready(ev)["samples"]) == (1, b"\1\1")


def test_contexts_are_independent(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "a"))
    pair.feed(chunk(b"\2\2", "b", 3))
    pair.feed(chunk(b"\3\3"))                # the None context
    pair.feed(chunk(b"\4\4", ""))            # "" is a context of its own
    pair.feed(flush_done("a", 3))
    events = pair.close("bye")
    assert {(ready(e)["context_id"], ready(e)["flush_id"], ready(e)["samples"]) for e in events} == {
        (None, 0, b"\3\3"), ("", 0, b"\4\4"), ("b", 3, b"\2\2")}


# --- done, error, unknown ------------------------------------------------------------------

def test_done_finishes_every_open_segment_in_order(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "c", 3))
    pair.feed(chunk(b"\2\2", "c", 1))
    pair.feed(chunk(b"\3\3", "c", 2))
    events = pair.feed(done("c"))
    assert [ready(e)["flush_id"] for e in events[:-1]] == [3, 1, 2]
    assert all(ready(e)["complete"] and ready(e)["error"] is None for e in events[:-1])
    assert events[-1] == ("done", "c")
    for late in (chunk(b"\4\4", "c"), chunk(b"\4\4", "c", 9), flush_done("c"), done("c"),
                 {"type": "error", "context_id": "c", "error": "x"}, {"type": "zzz", "context_id": "c"},
                 {"type": "timestamps", "context_id": "c", "word_timestamps": {"words": [], "start": [], "end": []}}):
        assert pair.feed(late) == []
    assert pair.sink.stats.dropped_frames == 7


def test_done_without_segments(core):
    pair = Pair(core)
    assert pair.feed(done("new")) == [("done", "new")]
    assert pair.feed(done()) == [("done", None)]
    assert pair.feed(chunk(b"\1\1")) == [] and pair.sink.stats.dropped_frames == 1


LEGACY = {"type": "error", "context_id": "c", "status_code": 400, "done": True,
          "error": "transcript empty or contains only punctuation"}
STRUCTURED = {"type": "error", "done": True, "status_code": 429, "error_code": "concurrency_limited",
              "title": "Too many concurrent requests", "message": "You have exceeded your limit.",
              "request_id": "r:c:m", "context_id": "c", "doc_url": "https://example.invalid/"}


@pytest.mark.parametrize("shape", ["legacy", "structured"])
def test_context_error(core, shape):
    obj = LEGACY if shape == "legacy" else STRUCTURED
    message = obj["error"] if shape == "legacy" else f"{obj['title']}: {obj['message']}"
    pair = Pair(core)
    pair.feed(chunk(b"\1\1\1", "c", 1))
    pair.feed(chunk(b"\2\2", "c", 2))
    pair.feed(chunk(b"\3\3", "other"))
    got, events = pair.feed(obj, raw=True)
    evs = got[1]
    assert [ready(e)["flush_id"] for e in evs[:-1]] == [1, 2]
    for e in evs[:-1]:
        assert ready(e)["complete"] is False and ready(e)["error"] == message
    assert ready(evs[0])["trailing"] == b"\1"
    err = events[-1]
    assert isinstance(err, ContextError) and err.context_id == "c" and err.message == message
    assert err.status_code == obj["status_code"]
    assert err.error_code == obj.get("error_code") and err.title == obj.get("title")
    assert err.raw == obj
    assert pair.feed(chunk(b"\4\4", "c")) == []               # errors are terminal
    assert pair.sink.stats.open_segments == 1                 # "other" untouched


@pytest.mark.parametrize("shape", ["legacy", "structured"])
def test_error_without_context_is_a_server_error(core, shape):
    obj = dict(LEGACY if shape == "legacy" else STRUCTURED)
    del obj["context_id"]
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "c", 1))
    pair.feed(chunk(b"\2\2"))                                  # None context is open too
    got, events = pair.feed(obj, raw=True)
    (err,) = events
    assert isinstance(err, ServerError) and err.raw == obj
    assert pair.sink.stats.open_segments == 2
    pair.feed(chunk(b"\3\3"))
    pair.feed(chunk(b"\4\4", "c", 1))
    null_ctx = dict(obj, context_id=None)                      # null counts as absent
    (err,) = pair.feed(null_ctx, raw=True)[1]
    assert isinstance(err, ServerError)
    events = pair.feed(done())
    assert ready(events[0])["samples"] == b"\2\2\3\3"


def test_unknown_frames(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "c"))
    for obj in ({"type": "mystery", "context_id": "c", "flush_id": 3, "data": "!!"},
                {"context_id": "c", "nested": {"type": "done"}},
                {"type": "CHUNK", "data": "AAAA"}, {}, {"type": None, "context_id": None}):
        got, events = pair.feed(obj, raw=True)
        (ev,) = events
        assert isinstance(ev, Unknown)
        assert ev.type == obj.get("type") and ev.context_id == obj.get("context_id")
        assert ev.message == obj
    assert pair.sink.stats.open_segments == 1 and pair.sink.stats.dropped_frames == 0


# --- timestamps ----------------------------------------------------------------------------

def words(names, starts, ends, cid="c", fid=None, kind="timestamps"):
    key, names_key = ("word_timestamps", "words") if kind == "timestamps" else ("phoneme_timestamps", "phonemes")
    obj = {"type": kind, "context_id": cid, key: {names_key: names, "start": starts, "end": ends}}
    if fid is not None:
        obj["flush_id"] = fid
    return obj


def test_timestamps_context_and_segment_relative(core):
    pair = Pair(core, "pcm_s16le", 8000)
    pair.feed(chunk(b"\0" * 16000, "c", 1))                   # one second
    pair.feed(flush_done("c", 1))
    got, events = pair.feed(words(["Stay", "hungry,"], [1.0, 1.31], [1.29, 1.74], fid=2), raw=True)
    (ts,) = events
    assert isinstance(ts, Timestamps)
    assert (ts.context_id, ts.flush_id, ts.kind) == ("c", 2, "words")
    assert [tuple(t) for t in ts.items] == [("Stay", 1.0, 1.29), ("hungry,", 1.31, 1.74)]
    assert ts.segment_start == pytest.approx(1.0)
    pair.feed(chunk(b"\0" * 800, "c", 2))
    pair.feed(words(["s", "t"], [1.0, 1.07], [1.07, 1.12], fid=2, kind="phoneme_timestamps"))
    pair.feed(words(["stay"], [2.0], [2.5]))                   # no flush_id: the open segment (2)
    (ev,) = pair.feed(flush_done("c", 2))
    seg = ready(ev)
    assert seg["start"] == pytest.approx(1.0)
    assert [w[0] for w in seg["words"]] == ["Stay", "hungry,", "stay"]
    assert seg["words"][1][1] == pytest.approx(0.31) and seg["words"][2][2] == pytest.approx(1.5)
    assert [p[0] for p in seg["phonemes"]] == ["s", "t"] and seg["phonemes"][1][2] == pytest.approx(0.12)


def test_timestamps_open_and_adopt_like_chunks(core):
    pair = Pair(core)
    (ts,) = pair.feed(words(["a"], [0], [1]))                  # opens unlabelled 0
    assert ts[2] == 0
    pair.feed(chunk(b"\1\1", "c", 4))                          # adopts 4
    (ts,) = pair.feed(words(["b"], [1], [2], fid=4))
    assert ts[2] == 4
    (ts,) = pair.feed(words(["c"], [2], [3], fid=6))           # a new segment 6
    events = pair.feed(done("c"))
    assert [(ready(e)["flush_id"], len(ready(e)["words"])) for e in events[:-1]] == [(4, 2), (6, 1)]


def test_timestamps_items_types(core):
    pair = Pair(core)
    (ts,) = pair.feed(words(["x", "y"], [0, 1], [2, 3.5]), raw=True)[1]
    for item in ts.items:
        assert isinstance(item.text, str) and type(item.start) is float and type(item.end) is float


# --- frame shapes: order, whitespace, nesting, escapes, ids --------------------------------

def test_keys_in_any_order_and_any_whitespace(core):
    obj = {"type": "chunk", "context_id": "c", "flush_id": 2, "data": ref.b64encode(b"\1\2\3\4"),
           "status_code": 206, "done": False}
    expected = None
    for n, keys in enumerate(itertools.permutations(obj)):
        ws = ["", " ", "\t", "\n", "\r", " \r\n\t "][n % 6]
        text = ws + "{" + ",".join(f'{ws}{json.dumps(k)}{ws}:{ws}{json.dumps(obj[k])}{ws}' for k in keys) + "}" + ws
        sink = core.Sink()
        assert sink.feed(text.encode()) == ()
        result = ref.norm_events(sink.feed(enc(flush_done("c", 2))))
        expected = expected or result
        assert result == expected
    assert ready(expected[0])["samples"] == b"\1\2\3\4"


def test_a_stream_that_changes_member_order_keeps_every_chunk(core):
    """The compiled core guesses that data is the last member (Cartesia's layout) and
    stops guessing after a frame where it is not, until data is last again: whatever the
    order of each frame, in any sequence, every chunk lands once, in order. Orders: data
    last, data second with a string last (Cartesia's documented example), data first,
    data with a flush_id after it and the context before it."""
    layouts = [
        ("type", "context_id", "flush_id", "step_time", "data"),
        ("type", "data", "status_code", "done", "flush_id", "context_id"),
        ("data", "type", "flush_id", "context_id"),
        ("type", "context_id", "data", "flush_id"),
    ]
    rng = random.Random(5)
    sink = core.Sink(AudioFormat("pcm_s16le", 24000))
    expected = bytearray()
    order = [rng.randrange(len(layouts)) for _ in range(60)] + [0] * 5 + [1] * 5 + [0] * 5
    for k, layout in enumerate(order):
        audio = bytes((k * 13 + j) & 0xFF for j in range(2 * (50 + k)))
        expected += audio
        values = {"type": "chunk", "context_id": "turn-1", "flush_id": 1, "step_time": 1.5 * k,
                  "status_code": 206, "done": False, "data": ref.b64encode(audio)}
        frame = "{" + ",".join(f"{json.dumps(key)}:{json.dumps(values[key])}"
                               for key in layouts[layout]) + "}"
        assert sink.feed(frame.encode()) == ()
    (event,) = sink.feed(enc(flush_done("turn-1", 1)))
    assert event.segment.complete and event.segment.samples.tobytes() == bytes(expected)
    assert sink.stats.chunks == len(order) and sink.stats.rejected_frames == 0


def test_frames_built_to_defeat_the_suffix_guess_are_read_exactly(core):
    """With data before other members, the compiled core guesses data's end from the
    previous frame's members after it (where they start if they kept their length, or a
    few bytes either side), and a successful decode proves the guess. Frames whose bytes
    fit that guess but whose data ends elsewhere (an extra member after data, an escaped
    quote or backslash where the guess looks, a suffix of another length) get what the
    reference model says: the same chunks, the same errors at the same offsets."""
    cid = '"turn-1"'

    def docs(data: str, *, extra: str = "", step: str = "41.7") -> bytes:
        return (f'{{"type":"chunk","data":"{data}"{extra},"status_code":206,"step_time":{step},'
                f'"flush_id":1,"context_id":{cid}}}').encode()

    steady = [docs(ref.b64encode(bytes([k] * 30))) for k in range(4)]
    steady_audio = b"".join(bytes([k] * 30) for k in range(4))
    hostile = [
        (docs("QUJDRA==", extra=',"x":"QUJD"'), b"ABCD"),   # the guess spans '","x":"'
        (docs("QUJDRA==", extra=',"x":"\\"QUJD"'), b"ABCD"),  # an escaped quote in the way
        (docs("QUJD\\\\"), b""),                          # a backslash just before the end
        (docs("QUJD\\"), b""),                            # a quote escaped where the guess looks
        (docs("QUJD\\\""), b""),                          # an escaped quote as the "end"
        (docs(ref.b64encode(b"ab"), step="1234567.000001"), b"ab"),  # the suffix grew
        (docs(ref.b64encode(b"cd"), step="1"), b"cd"),               # and shrank
        (docs("", extra=',"y":""'), b""),
    ]
    for frame, audio in hostile:  # each after and before frames the guess is right for
        pair = Pair(core, rate=24000)
        for each in steady + [frame] + steady:
            pair.feed(each)
        events = pair.feed(enc(flush_done("turn-1", 1)))
        assert ready(events[0])["samples"] == steady_audio + audio + steady_audio, frame


@pytest.mark.slow
def test_many_contexts_interleaved_ended_and_reused(core):
    """The compiled core finds the context of a chunk that is not the previous frame's
    in a small table of recent contexts (hashed by id, so that 200 contexts share slots).
    Interleaved chunks, contexts ended by done, cancel and close and then reused by id,
    chunks for a finished segment and ids differing in one byte all get what the
    reference model says."""
    rng = random.Random(11)
    ids = [f"ctx-{k}" for k in range(100)] + [f"{k:032x}" for k in range(100)]
    pair = Pair(core, rate=16000)
    for step in range(1500):
        cid = rng.choice(ids[:20] if step % 3 else ids)
        roll = rng.random()
        if roll < 0.01:
            pair.feed(done(cid))
        elif roll < 0.015:
            pair.cancel(cid)
        elif roll < 0.03:
            pair.feed(flush_done(cid, rng.choice([0, 1, 2])))
        elif roll < 0.0305:
            pair.close()
        else:
            pair.feed(chunk(bytes([step & 0xFF]) * rng.choice([2, 4, 160]), cid,
                            rng.choice([None, 0, 1, 2, 2, 2])))
    pair.close()


def test_nested_values_are_skipped(core):
    tricky = {"a": [{"type": "done", "context_id": "c", "data": "!!", "flush_id": -1}],
              "b": "\"}{][,:\\\"type\\\":\\\"done\\\"", "c": {"d": [[[], {}], "\\", "\u0000"]},
              "e": [1, -2.5e-7, True, False, None, "é😀\u2028"], "word_timestamps": {"x": 1}}
    pair = Pair(core)
    pair.feed(dict(chunk(b"\1\2", "c", 1), **tricky))
    pair.feed(dict(flush_done("c", 1), **tricky))
    assert pair.sink.stats.segments == 1 and pair.sink.stats.dropped_frames == 0


def test_escaped_data_equals_unescaped(core):
    audio = bytes(range(256)) * 3
    plain = ref.b64encode(audio)
    variants = [
        plain.replace("/", "\\/"),
        "".join("\\u%04x" % ord(ch) for ch in plain),
        "".join(("\\u%04X" % ord(ch)) if k % 3 == 0 else ch for k, ch in enumerate(plain)),
        "".join("\\/" if ch == "/" else ("\\u002b" if ch == "+" else ch) for ch in plain),
    ]
    for variant in variants + [plain]:
        frame = ('{"type":"chunk","context_id":"c","data":"%s"}' % variant).encode()
        sink = core.Sink()
        assert sink.feed(frame) == ()
        (ev,) = sink.feed(b'{"type":"flush_done","context_id":"c"}')
        assert ev.segment.samples.tobytes() + ev.segment.trailing_bytes == audio
        assert sink.stats.audio_bytes == len(audio)


def test_unicode_and_escaped_context_ids(core):
    cid = "turn/é😀\u2028\"\\"
    forms = [
        json.dumps(cid, ensure_ascii=False), json.dumps(cid),
        '"turn\\/\\u00e9\\uD83D\\uDE00\\u2028\\"\\\\"',
    ]
    sink = core.Sink()
    for k, form in enumerate(forms):
        frame = '{"type":"chunk","context_id":%s,"data":"%s"}' % (form, ref.b64encode(bytes([k, k])))
        assert sink.feed(frame.encode()) == ()
    assert sink.stats.open_segments == 1
    (ev, done_ev) = sink.feed(('{"type":"done","c\\u006fntext_id":%s}' % forms[2]).encode())
    assert ev.segment.context_id == cid and done_ev == ContextDone(cid)
    assert ev.segment.samples.tobytes() == b"\0\0\1\1\2\2"


def test_null_known_fields_count_as_absent(core):
    pair = Pair(core)
    pair.feed({"type": "chunk", "context_id": "c", "data": ref.b64encode(b"\1\1"), "flush_id": None})
    pair.feed({"type": "chunk", "context_id": "c", "data": None})
    pair.feed({"type": "chunk", "context_id": "c"})
    (ev,) = pair.feed({"type": "flush_done", "context_id": "c", "flush_id": None})
    assert (ready(ev)["flush_id"], ready(ev)["samples"]) == (0, b"\1\1")


def test_empty_data_still_resolves_a_segment(core):
    pair = Pair(core)
    assert pair.feed(chunk(b"", "c", 3)) == []
    assert pair.sink.stats.open_segments == 1
    (ev,) = pair.feed(flush_done("c"))
    assert ready(ev)["flush_id"] == 3 and ready(ev)["samples"] == b""


def test_flush_done_with_empty_data_is_not_audio(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "c", 2))
    (ev,) = pair.feed({"type": "flush_done", "context_id": "c", "status_code": 206, "done": False,
                       "data": "", "flush_id": 2, "flush_done": True})
    assert ready(ev)["samples"] == b"\1\1"


# --- caps ------------------------------------------------------------------------------------

def _cap_script():
    return [chunk(b"\1" * 6, "a", 1), chunk(b"\2" * 4, "b"), chunk(b"\3" * 2, "a", 1),
            flush_done("a", 1), chunk(b"\4" * 8, "a"), chunk(b"\5" * 2, "b")]


@pytest.mark.parametrize("bad,limits", [
    (chunk(b"\x09" * 3, "a", 1), {"max_segment_bytes": 10}),    # a/1 would reach 11 > 10
    (chunk(b"\x09" * 11, "n", 5), {"max_segment_bytes": 10}),   # a new segment over the cap
    (chunk(b"\x09" * 11, "b", 7), {"max_segment_bytes": 10}),   # b's unlabelled segment must not adopt 7
    (chunk(b"\x09" * 3, "b"), {"max_total_bytes": 14}),         # open total 12 + 3 > 14
    (chunk(b"\x09" * 3, "z", 0), {"max_total_bytes": 14}),
])
def test_capacity_error_leaves_everything_intact(core, bad, limits):
    """The over-cap chunk stores nothing; it marks its segment as having lost a chunk
    (docs/sink.md "Lost chunks"). The clean pair gets the same chunk with no data in its
    place, so that both resolve the same segment: the two then differ by the mark alone."""
    script = _cap_script()
    clean = Pair(core, **limits)
    dirty = Pair(core, **limits)
    for obj in script[:3]:
        clean.feed(obj)
        dirty.feed(obj)
    before = dirty.sink.stats
    with pytest.raises(CapacityError):
        dirty.sink.feed(enc(bad))
    try:
        dirty.model.feed(enc(bad))
        raise AssertionError("the model accepted the over-cap chunk")
    except ref.RefCapacityError:
        pass
    assert clean.feed({**bad, "data": ""}) == []
    after = dirty.sink.stats
    assert after.audio_bytes == before.audio_bytes and after.open_bytes == before.open_bytes
    assert after == clean.sink.stats._replace(frames=clean.sink.stats.frames - 1,
                                              chunks=clean.sink.stats.chunks - 1,
                                              rejected_frames=before.rejected_frames + 1)
    got, want = [], []
    for obj in script[3:]:
        got.append(dirty.feed(obj))
        want.append(clean.feed(obj))
    got.append(dirty.close())
    want.append(clean.close())
    ref.assert_same(ref.unmark_lost(got), want)
    (mark,) = ref.lost_marks(got)
    cap = "max_segment_bytes" if "max_segment_bytes" in limits else "max_total_bytes"
    assert mark == f"lost 1 chunk ({len(base64.b64decode(bad['data']))} bytes): over {cap}={limits[cap]}"


def test_caps_are_inclusive(core):
    pair = Pair(core, max_segment_bytes=8, max_total_bytes=12)
    assert pair.feed(chunk(b"\1" * 8, "a")) == []                 # exactly the segment cap
    assert pair.feed(chunk(b"\2" * 4, "b")) == []                 # exactly the total cap
    assert pair.feed(chunk(b"\3", "b")) == ("capacity",)
    assert pair.feed(chunk(b"", "b")) == []
    pair.feed(flush_done("a"))                                    # frees 8 of the total
    assert pair.feed(chunk(b"\3" * 4, "b")) == []
    assert pair.feed(chunk(b"\3" * 1, "b")) == ("capacity",)      # b would be 9 > 8


def test_capacity_error_is_a_flushsink_error(core):
    sink = core.Sink(max_segment_bytes=2)
    with pytest.raises(flushsink.FlushsinkError):
        sink.feed(enc(chunk(b"\1\2\3", "a")))
    # nothing stored; the segment the chunk opened says what it lost
    assert sink.stats.open_bytes == 0 and sink.stats.frames == 0
    (event,) = sink.close("end")
    assert not event.segment.complete and len(event.segment.samples) == 0
    assert event.segment.error == "end; lost 1 chunk (3 bytes): over max_segment_bytes=2"


# --- cancel, close, ended contexts -----------------------------------------------------------

def test_cancel(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "c", 1))
    pair.feed(chunk(b"\2\2\2", "c", 2))
    pair.feed(chunk(b"\3\3", "d"))
    events = pair.cancel("c")
    assert [(ready(e)["flush_id"], ready(e)["complete"], ready(e)["error"]) for e in events] == [
        (1, False, "cancelled"), (2, False, "cancelled")]
    assert ready(events[1])["trailing"] == b"\2"
    assert pair.feed(chunk(b"\4\4", "c", 1)) == [] and pair.feed(done("c")) == []
    assert pair.sink.stats.dropped_frames == 2 and pair.sink.stats.open_segments == 1
    assert pair.cancel("never-seen") == []
    assert pair.feed(chunk(b"\5\5", "never-seen")) == []
    assert pair.cancel("c") == []


def test_close(core):
    pair = Pair(core)
    pair.feed(chunk(b"\1\1", "a", 1))
    pair.feed(chunk(b"\2\2", "a", 2))
    pair.feed(chunk(b"\3", "b"))
    pair.feed(chunk(b"\4\4"))
    events = pair.close("connection lost")
    assert len(events) == 4
    assert all(not ready(e)["complete"] and ready(e)["error"] == "connection lost" for e in events)
    assert [ready(e)["flush_id"] for e in events if ready(e)["context_id"] == "a"] == [1, 2]
    for late in (chunk(b"\5\5", "a"), chunk(b"\5\5", "b"), chunk(b"\5\5")):
        assert pair.feed(late) == []
    # the sink stays usable
    pair.feed(chunk(b"\6\6", "new"))
    (ev,) = pair.feed(flush_done("new"))
    assert ready(ev)["samples"] == b"\6\6" and ready(ev)["complete"]
    events = pair.close()
    assert events == []
    pair.feed(chunk(b"\7\7", "new2"))
    (ev,) = pair.close()
    assert ready(ev)["error"] == "closed"


def test_max_ended_contexts_forgets_the_oldest(core):
    pair = Pair(core, max_ended_contexts=2)
    for cid in ("a", "b", "c"):
        pair.feed(chunk(b"\1\1", cid))
        pair.feed(done(cid))
    assert pair.feed(chunk(b"\2\2", "b")) == []             # still remembered: dropped
    assert pair.feed(chunk(b"\2\2", "c")) == []
    assert pair.feed(chunk(b"\3\3", "a")) == []             # forgotten: starts anew
    assert pair.sink.stats.open_segments == 1
    (ev,) = pair.feed(flush_done("a"))
    assert (ready(ev)["flush_id"], ready(ev)["samples"]) == (0, b"\3\3")


# --- stats -----------------------------------------------------------------------------------

def test_stats_counters(core):
    pair = Pair(core)
    s0 = pair.sink.stats
    assert isinstance(s0, core.SinkStats) and tuple(s0) == (0,) * 8
    assert s0._fields == ("frames", "chunks", "audio_bytes", "dropped_frames", "rejected_frames",
                          "segments", "open_segments", "open_bytes")
    pair.feed(chunk(b"\1\2\3", "a", 1))
    pair.feed(chunk(b"\4\5", "b"))
    assert tuple(pair.sink.stats) == (2, 2, 5, 0, 0, 0, 2, 5)
    pair.feed(flush_done("a", 1))
    assert tuple(pair.sink.stats) == (3, 2, 5, 0, 0, 1, 1, 2)
    pair.feed(chunk(b"\6", "a", 1))                             # dropped
    assert pair.feed(b"{oops") == ("frame_error", "syntax", 1, "")
    assert tuple(pair.sink.stats) == (4, 2, 5, 1, 1, 1, 1, 2)
    pair.feed({"type": "x"})
    pair.feed(done("b"))
    assert tuple(pair.sink.stats) == (6, 2, 5, 1, 1, 2, 0, 0)


# --- construction ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc", [
    ({"format": "pcm_s16le"}, TypeError), ({"format": None}, TypeError),
    ({"prealloc_seconds": "1"}, TypeError), ({"prealloc_seconds": -1.0}, ValueError),
    ({"max_segment_bytes": "x"}, TypeError), ({"max_segment_bytes": -1}, ValueError),
    ({"max_total_bytes": 1.5j}, TypeError), ({"max_total_bytes": -5}, ValueError),
    ({"max_ended_contexts": None}, TypeError), ({"max_ended_contexts": -1}, ValueError),
])
def test_bad_arguments(core, kwargs, exc):
    with pytest.raises(exc):
        core.Sink(**kwargs)


def test_set_format_type_check(core):
    sink = core.Sink()
    with pytest.raises(TypeError):
        sink.set_format("a", "pcm_f32le")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_preallocation_is_not_resident(core):
    """A thousand open contexts must not hold a thousand times prealloc_seconds of audio."""
    gc.collect()
    sink = core.Sink(AudioFormat("pcm_f32le", 48000), prealloc_seconds=10.0)  # 1.92 MB each
    before = _rss()
    frames = [enc(chunk(b"\0" * 64, f"ctx{k}")) for k in range(1000)]
    for frame in frames:
        sink.feed(frame)
    grown = _rss() - before
    assert sink.stats.open_segments == 1000
    assert grown < 300 * 2**20, f"{grown / 2**20:.0f} MiB resident for 1000 tiny segments"
    sink.close()


@pytest.mark.slow
def test_released_buffers_are_reused_within_bounds(compiled_core):
    """Segment buffers released by the caller are kept warm for new segments (no page
    faults), at most 64 of them and 64 MiB; reused buffers carry exactly the new audio."""
    import base64
    import gc

    import numpy as np

    sink = compiled_core.Sink(prealloc_seconds=1.0)
    rng = np.random.default_rng(3)
    for round_ in range(30):
        pcm = rng.integers(-2000, 2000, 2 * 44100 + round_, dtype="<i2").tobytes()
        cid = f"c{round_}"
        for start in range(0, len(pcm), 4410):
            piece = base64.b64encode(pcm[start:start + 4410]).decode()
            sink.feed(json.dumps({"type": "chunk", "context_id": cid, "data": piece}))
        (ready_event, _) = sink.feed(json.dumps({"type": "done", "context_id": cid}))
        assert ready_event.segment.samples.tobytes() == pcm
        del ready_event
        gc.collect()
        count, size = compiled_core._pool_state()
        assert 1 <= count <= 64 and size <= 64 * 2**20


def test_many_released_buffers_are_all_kept(compiled_core):
    """A caller that holds a few dozen segments and then lets them all go (a batch, a
    benchmark round) gets every buffer back for the next ones, up to the byte bound."""
    import base64
    import gc

    sink = compiled_core.Sink(prealloc_seconds=0.5)
    piece = base64.b64encode(bytes(88200)).decode()   # 1 s of pcm_s16le at 44.1 kHz
    held = []
    for i in range(40):
        sink.feed(json.dumps({"type": "chunk", "context_id": f"k{i}", "data": piece}))
        (ready_event, _) = sink.feed(json.dumps({"type": "done", "context_id": f"k{i}"}))
        held.append(ready_event.segment)
        del ready_event
    before, _ = compiled_core._pool_state()
    held.clear()
    gc.collect()
    count, size = compiled_core._pool_state()
    assert count == min(64, before + 40) and size <= 64 * 2**20


def test_the_pool_keeps_8_mib_when_no_audio_is_open(compiled_core):
    """Warm buffers are memory too: beyond 8 MiB (or a sixteenth of the audio open in
    the process's Sinks, whichever is more) a released buffer is freed, not kept."""
    import base64
    import gc

    compiled_core._pool_limit("0")   # start from an empty pool
    compiled_core._pool_limit("64M")
    sink = compiled_core.Sink(prealloc_seconds=0.5)
    piece = base64.b64encode(bytes(88200)).decode()
    held = []
    for i in range(16):  # 16 segments of 12 s (1.06 MB each): 17 MB released at once
        for _ in range(12):
            sink.feed(json.dumps({"type": "chunk", "context_id": f"p{i}", "data": piece}))
        (ready_event, _) = sink.feed(json.dumps({"type": "done", "context_id": f"p{i}"}))
        held.append(ready_event.segment)
        del ready_event
    assert sink.stats.open_bytes == 0
    held.clear()
    gc.collect()
    count, size = compiled_core._pool_state()
    assert 7 <= count and 7 * 1_058_400 <= size <= 8 * 2**20


@pytest.mark.parametrize("text,expected", [("64M", 64 * 2**20), ("0", 0), ("512k", 512 * 2**10),
                                           ("1G", 2**30), ("1234", 1234)])
def test_pool_limit_parsing(compiled_core, text, expected):
    try:
        assert compiled_core._pool_limit(text) == expected
    finally:
        compiled_core._pool_limit("64M")


@pytest.mark.parametrize("text", ["lots", "-1", "12x", "M", "99999999999999999999G"])
def test_pool_limit_rejects_garbage(compiled_core, text):
    with pytest.raises(ValueError, match="FLUSHSINK_POOL_BYTES"):
        compiled_core._pool_limit(text)


def test_lowering_the_pool_limit_frees_what_is_over_it(compiled_core):
    import base64
    import gc

    sink = compiled_core.Sink(prealloc_seconds=0.5)
    piece = base64.b64encode(bytes(88200)).decode()
    held = []
    for i in range(4):
        sink.feed(json.dumps({"type": "chunk", "context_id": f"t{i}", "data": piece}))
        held.append(sink.feed(json.dumps({"type": "done", "context_id": f"t{i}"})))
    held.clear()
    gc.collect()
    try:
        assert compiled_core._pool_state()[1] > 100_000
        compiled_core._pool_limit("100k")
        count, size = compiled_core._pool_state()
        assert size <= 100_000 and count <= 1
        compiled_core._pool_limit("0")
        assert compiled_core._pool_state() == (0, 0)
    finally:
        compiled_core._pool_limit("64M")


def test_max_open_segments(core):
    """A frame that would open one segment too many is a CapacityError that changes
    nothing; finishing a segment makes room again; a flush_done that opens and finishes
    an empty segment at once is not held against the cap."""
    import flushsink

    sink = core.Sink(max_open_segments=2)
    sink.feed(json.dumps({"type": "chunk", "context_id": "c", "flush_id": 1, "data": "AAAA"}))
    sink.feed(json.dumps({"type": "chunk", "context_id": "c", "flush_id": 2, "data": ""}))
    third = json.dumps({"type": "chunk", "context_id": "c", "flush_id": 3, "data": "AAAA"})
    stamps = json.dumps({"type": "timestamps", "context_id": "d",
                         "word_timestamps": {"words": ["a"], "start": [0.0], "end": [0.1]}})
    for frame in (third, stamps):
        before = sink.stats
        with pytest.raises(flushsink.CapacityError, match="max_open_segments=2"):
            sink.feed(frame)
        after = sink.stats
        assert after._replace(rejected_frames=0) == before._replace(rejected_frames=0)
    (ready_event,) = sink.feed(json.dumps({"type": "flush_done", "context_id": "x", "flush_id": 7}))
    assert ready_event.segment.flush_id == 7
    sink.feed(json.dumps({"type": "flush_done", "context_id": "c", "flush_id": 1}))
    assert sink.feed(third) == ()
    assert sink.stats.open_segments == 2


# --- memory the byte caps do not count ---------------------------------------------------------

def test_timestamps_are_capped_over_the_open_segments(core):
    """max_timestamps bounds the timestamp items all open segments hold together: a
    timestamps frame that would pass it raises CapacityError and attaches nothing; items
    leave the count when their segment finishes."""
    pair = Pair(core, max_timestamps=3)
    assert pair.feed(words(["a", "b"], [0.0, 0.1], [0.1, 0.2], cid="c", fid=1))[0][0] == "timestamps"
    assert pair.feed(words(["x", "y"], [0.0, 0.1], [0.1, 0.2], cid="d", fid=1)) == ("capacity",)
    assert pair.feed(words(["c"], [0.2], [0.3], cid="c", fid=1))[0][0] == "timestamps"
    (event,) = pair.feed(flush_done("c", 1))
    assert [t[0] for t in ready(event)["words"]] == ["a", "b", "c"]
    assert pair.feed(words(["x", "y"], [0.0, 0.1], [0.1, 0.2], cid="d", fid=1))[0][0] == "timestamps"
    with pytest.raises(CapacityError, match="max_timestamps=3"):
        pair.sink.feed(enc(words(["p", "q"], [0.0, 0.1], [0.1, 0.2], cid="d", fid=1)))


def test_finished_labels_remembered_are_the_last_ones(core):
    """A context remembers the labels of its last max_finished_labels finished segments,
    to drop their late frames; an older one is forgotten, and a late chunk of it opens a
    new segment, so a server that floods flush_done cannot grow the sink without bound."""
    pair = Pair(core, max_finished_labels=2)
    for fid in (1, 2, 3):
        pair.feed(chunk(b"\1\1", "c", fid))
        pair.feed(flush_done("c", fid))
    assert pair.feed(chunk(b"\2\2", "c", 3)) == []    # remembered: dropped
    assert pair.feed(chunk(b"\2\2", "c", 2)) == []    # remembered: dropped
    dropped = pair.sink.stats.dropped_frames
    assert pair.feed(chunk(b"\3\3", "c", 1)) == []    # forgotten: a new segment 1
    assert pair.sink.stats.dropped_frames == dropped
    (event,) = pair.feed(flush_done("c", 1))
    assert (ready(event)["flush_id"], ready(event)["samples"]) == (1, b"\3\3")


def test_a_flood_of_flush_done_keeps_memory_bounded(core):
    """100,000 flush_done frames of one context, each for a new label, leave the sink
    remembering max_finished_labels of them."""
    sink = core.Sink(max_finished_labels=100)
    for fid in range(100_000):
        sink.feed(b'{"type":"flush_done","context_id":"c","flush_id":%d}' % fid)
    assert sink.stats.segments == 100_000
    # the last 100 labels drop their late frames, the ones before do not
    sink.feed(b'{"type":"chunk","context_id":"c","flush_id":99999,"data":"AAAA"}')
    assert sink.stats.dropped_frames == 1
    sink.feed(b'{"type":"chunk","context_id":"c","flush_id":99899,"data":"AAAA"}')
    assert sink.stats.dropped_frames == 1 and sink.stats.open_segments == 1
