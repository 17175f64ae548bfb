"""Property tests: random frame sequences, the core against the reference model.

Frames are made the way a server makes them (random key order, whitespace, escapes, extra
keys), interleaved over a few contexts with flush_id base 0/1/absent, plus mutated frames,
cancel/close/set_format, and small caps so that CapacityError happens too. Where the spec
leaves a choice open the model raises Ambiguous and the example stops being compared there.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flushsink
from flushsink import AudioFormat

import reference as ref

CONTEXTS = ["a", "b", None, "é😀/\"x"]
FORMATS = [("pcm_s16le", 44100), ("pcm_f32le", 24000), ("pcm_mulaw", 8000), ("pcm_alaw", 16000)]
MUTATIONS = [b'"', b"\\", b"{", b"}", b"]", b":", b",", b"\x00", b"\xff", b"\xc3", b"=", b"!",
             b"-", b".", b"\\u", b"\\ud800", b"n", b" ", b"A"]


@st.composite
def frame_objects(draw):
    kind = draw(st.sampled_from(["chunk"] * 8 + ["flush_done"] * 3 + ["done", "error", "timestamps",
                                                                     "phoneme_timestamps", "other"]))
    cid = draw(st.sampled_from(CONTEXTS))
    fid = draw(st.one_of(st.none(), st.integers(0, 4), st.just(2**62)))
    obj: dict = {}
    if kind != "other" or draw(st.booleans()):
        obj["type"] = kind if kind != "other" else draw(st.sampled_from(["status", "CHUNK", ""]))
    if cid is not None or draw(st.integers(0, 4)) == 0:
        obj["context_id"] = cid  # sometimes an explicit null
    if fid is not None or draw(st.integers(0, 4)) == 0:
        obj["flush_id"] = fid
    if kind == "chunk":
        obj["data"] = ref.b64encode(draw(st.binary(max_size=11)))
        obj["step_time"] = 41.7
    elif kind in ("timestamps", "phoneme_timestamps"):
        n = draw(st.integers(0, 2))
        key, names = ("word_timestamps", "words") if kind == "timestamps" else ("phoneme_timestamps", "phonemes")
        starts = [draw(st.integers(0, 3000)) / 100 for _ in range(n)]
        obj[key] = {names: [draw(st.text(max_size=3)) for _ in range(n)], "start": starts,
                    "end": [s + 0.25 for s in starts]}
    elif kind == "error":
        if draw(st.booleans()):
            obj["error"] = draw(st.text(max_size=5))
        else:
            obj.update(status_code=429, error_code="limited", title="T", message=draw(st.text(max_size=5)))
    if draw(st.integers(0, 3)) == 0:
        obj["done"] = False
        obj["extra"] = [{"type": "done", "data": "!"}, "\\\"}"]
    return obj


@st.composite
def operations(draw, allow_mutations=True):
    op = draw(st.sampled_from(["frame"] * 14 + ["mutated"] * (2 if allow_mutations else 0)
                              + ["cancel", "close", "set_format"]))
    if op == "frame" or op == "mutated":
        obj = draw(frame_objects())
        rng = random.Random(draw(st.integers(0, 2**16)))
        frame = ref.server_frame(obj, rng, ws=draw(st.sampled_from([0.0, 0.3])),
                                 escape=draw(st.sampled_from([0.0, 0.0, 0.3])))
        if op == "mutated":
            frame = bytearray(frame)
            pos = draw(st.integers(0, len(frame) - 1))
            if draw(st.booleans()):
                frame[pos:pos + 1] = draw(st.sampled_from(MUTATIONS))
            else:
                del frame[pos:pos + draw(st.integers(1, 4))]
            frame = bytes(frame)
        as_type = draw(st.sampled_from(["bytes", "bytes", "str", "bytearray", "memoryview"]))
        return ("feed", frame, as_type)
    if op == "cancel":
        return ("cancel", draw(st.sampled_from([c for c in CONTEXTS if c is not None] + ["zz"])))
    if op == "close":
        return ("close", draw(st.sampled_from(["closed", "dropped"])))
    return ("set_format", draw(st.sampled_from([c for c in CONTEXTS if c is not None])),
            draw(st.sampled_from(FORMATS)))


@st.composite
def scenarios(draw, allow_mutations=True):
    fmt = draw(st.sampled_from(FORMATS))
    caps = draw(st.sampled_from([{}, {}, {"max_segment_bytes": 24, "max_total_bytes": 40},
                                 {"max_total_bytes": 30, "max_ended_contexts": 1}]))
    ops = draw(st.lists(operations(allow_mutations), min_size=1, max_size=40))
    return fmt, caps, ops


def as_input(frame: bytes, as_type: str):
    if isinstance(frame, str):
        return frame
    if as_type == "str":
        try:
            return frame.decode("utf-8")
        except UnicodeDecodeError:
            return frame
    return {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[as_type](frame)


def run_against_model(fmt, caps, ops) -> None:
    sink = flushsink.Sink(AudioFormat(*fmt), **caps)
    model = ref.RefSink(*fmt, **caps)
    for op in ops:
        try:
            if op[0] == "feed":
                frame = as_input(op[1], op[2])
                expected = ref.model_outcome(model, frame)
                ref.assert_outcome(ref.core_outcome(sink, frame), expected, frame)
            elif op[0] == "cancel":
                expected = model.cancel(op[1])
                ref.assert_same(ref.norm_events(sink.cancel(op[1])), expected, f"cancel({op[1]!r})")
            elif op[0] == "close":
                expected = model.close(op[1])
                ref.assert_same(ref.sort_by_context(ref.norm_events(sink.close(op[1]))), expected, "close")
            else:
                model.set_format(op[1], *op[2])
                sink.set_format(op[1], AudioFormat(*op[2]))
        except ref.Ambiguous:
            return  # the spec does not decide what happens from here on
        assert tuple(sink.stats) == model.stats_tuple(), op


@settings(max_examples=ref.examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(allow_mutations=False))
def test_valid_sequences_match_model(scenario):
    run_against_model(*scenario)


@settings(max_examples=ref.examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_sequences_with_malformed_frames_match_model(scenario):
    run_against_model(*scenario)


@settings(max_examples=ref.examples(150), deadline=None)
@given(st.sampled_from(FORMATS), st.binary(max_size=64), st.lists(st.integers(0, 64), max_size=6),
       st.sampled_from([None, 0, 1]))
def test_random_chunking_reassembles(fmt, audio, cuts, fid):
    """However the audio is cut into chunks, the segment holds it whole."""
    cuts = sorted({min(c, len(audio)) for c in cuts})
    parts = [audio[i:j] for i, j in zip([0] + cuts, cuts + [len(audio)])]
    sink = flushsink.Sink(AudioFormat(*fmt))
    for part in parts:
        assert sink.feed(ref.server_frame(ref.chunk_obj(part, "c", fid), random.Random(len(part)))) == ()
    (ev, _) = sink.feed(b'{"type":"done","context_id":"c"}')
    width = ref.ENC_WIDTH[fmt[0]]
    whole = len(audio) - len(audio) % width
    assert ev.segment.samples.tobytes() == audio[:whole]
    assert ev.segment.trailing_bytes == audio[whole:]
    assert ev.segment.flush_id == (0 if fid is None else fid)
