"""Property tests: random frame sequences, the core against the reference model.

Frames are made the way a server makes them (random key order, whitespace, escapes, extra
keys), interleaved over a few contexts with flush_id base 0/1/absent, plus mutated frames,
cancel/close/set_format, and small caps so that CapacityError happens too (the programs:
tests/helpers/programs.py). Where the spec leaves a choice open the model raises Ambiguous
and the example stops being compared there.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flushsink
from flushsink import AudioFormat

import reference as ref
from helpers.programs import FORMATS, as_input, scenarios


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
