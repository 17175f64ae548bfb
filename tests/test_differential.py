"""Differential: the compiled core and the pure-Python twin on the same inputs.

No oracle here, so this also covers what the spec leaves open (ambiguous offsets, dropped
frames with bad payloads, close() order): both cores must still agree exactly, including
FrameError code, offset, detail and message, CapacityError, events, event order and stats.
"""

from __future__ import annotations

import base64
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flushsink import AudioFormat, CapacityError, FrameError
from flushsink import _fallback

import reference as ref
from test_frames import BAD_FRAMES, REJECTED, VALID_FRAMES, marked, mutated_frames
from test_sink_model import as_input, scenarios

try:
    from flushsink import _speedups
except ImportError:  # pragma: no cover
    _speedups = None

needs_compiled = pytest.mark.skipif(_speedups is None, reason="compiled core not built")
pytestmark = needs_compiled


def outcome(call):
    try:
        result = call()
    except FrameError as exc:
        return ("frame_error", exc.code, exc.offset, exc.detail, str(exc))
    except CapacityError as exc:
        return ("capacity", str(exc), exc.context_id, exc.flush_id)
    except (TypeError, ValueError) as exc:
        return (type(exc).__name__,)
    if isinstance(result, tuple):
        return ("ok", ref.norm_events(result), [type(e).__name__ for e in result])
    return ("ok", result)


def run_both(fmt, caps, ops):
    sinks = [core.Sink(AudioFormat(*fmt), **caps) for core in (_speedups, _fallback)]
    for op in ops:
        results = []
        for sink in sinks:
            if op[0] == "feed":
                frame = as_input(op[1], op[2])
                results.append(outcome(lambda: sink.feed(frame)))
            elif op[0] == "cancel":
                results.append(outcome(lambda: sink.cancel(op[1])))
            elif op[0] == "close":
                results.append(outcome(lambda: sink.close(op[1])))
            else:
                results.append(outcome(lambda: sink.set_format(op[1], AudioFormat(*op[2]))))
            results[-1] = (results[-1], tuple(sink.stats))
        assert results[0] == results[1], op


@settings(max_examples=ref.examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_sequences_agree(scenario):
    run_both(*scenario)


@settings(max_examples=ref.examples(500), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_single_frames_agree(frame):
    run_both(("pcm_s16le", 44100), {}, [("feed", frame, "bytes")])


@settings(max_examples=ref.examples(300), deadline=None)
@given(st.binary(max_size=60))
def test_random_bytes_agree(frame):
    run_both(("pcm_s16le", 44100), {}, [("feed", frame, "bytes")])


def test_tables_agree():
    frames = [marked(t)[0] for _, t in BAD_FRAMES] + VALID_FRAMES + [b for _, b in REJECTED]
    for frame in frames:
        run_both(("pcm_f32le", 24000), {}, [("feed", frame, "bytes")])


def test_dropped_frames_with_bad_payloads_agree():
    # whether a frame that will be dropped has its payload checked is left open: agree at least
    bad = [b'{"type":"chunk","context_id":"a","data":"A=A="}',
           b'{"type":"chunk","context_id":"a","flush_id":1,"data":"!"}',
           b'{"type":"timestamps","context_id":"a","flush_id":1,"word_timestamps":5}',
           b'{"type":"timestamps","context_id":"a","flush_id":1}',
           b'{"type":"phoneme_timestamps","context_id":"a","phoneme_timestamps":null}',
           b'{"type":"error"}', b'{"type":"chunk","flush_id":-0,"data":""}']
    for setup in ([b'{"type":"chunk","context_id":"a","flush_id":1,"data":""}',
                   b'{"type":"flush_done","context_id":"a","flush_id":1}'],
                  [b'{"type":"done","context_id":"a"}', b'{"type":"done"}']):
        for frame in bad:
            run_both(("pcm_s16le", 8000), {}, [("feed", f, "bytes") for f in setup] + [("feed", frame, "bytes")])


@settings(max_examples=ref.examples(300), deadline=None)
@given(st.binary(max_size=200), st.lists(st.tuples(st.integers(0, 300), st.binary(min_size=1, max_size=2)), max_size=3))
def test_b64decode_agrees(raw, edits):
    data = bytearray(base64.b64encode(raw))
    for pos, patch in edits:
        data[min(pos, len(data)):min(pos, len(data)) + len(patch)] = patch
    data = bytes(data)
    assert outcome(lambda: _speedups.b64decode(data)) == outcome(lambda: _fallback.b64decode(data))


def test_large_frames_agree():
    rng = random.Random(11)
    for size in (1, 1000, 65536 + 7, 10**6 + 3):
        audio = rng.randbytes(size)
        frame = ref.server_frame(ref.chunk_obj(audio, "c", 1), rng)
        ops = [("feed", frame, "bytes"), ("feed", b'{"type":"flush_done","context_id":"c","flush_id":1}', "bytes")]
        run_both(("pcm_f32le", 48000), {}, ops)
        pos = rng.randrange(len(frame) // 2, len(frame) - 3)
        broken = frame[:pos] + b"*" + frame[pos + 1:]
        run_both(("pcm_f32le", 48000), {}, [("feed", broken, "bytes")])
