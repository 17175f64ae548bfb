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

from flushsink import AudioFormat, FrameError
from flushsink import _fallback

import reference as ref
from helpers.frames import (BAD_FRAMES, INTERESTING, REJECTED, VALID_FRAMES, json_leaf, marked,
                            mutated_frames, server_objects)
from helpers.programs import as_input, outcome, scenarios

try:
    from flushsink import _speedups
except ImportError:  # pragma: no cover
    _speedups = None

needs_compiled = pytest.mark.skipif(_speedups is None, reason="compiled core not built")
pytestmark = needs_compiled


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


@st.composite
def near_copies(draw):
    """A stream of near-copies of one frame: most members repeat byte for byte, some
    change, move, repeat (duplicate keys), break or are cut off."""
    obj = draw(server_objects())
    for key in draw(st.lists(st.sampled_from(["type", "context_id", "flush_id", "data"]),
                             max_size=2)):
        obj[key] = draw(json_leaf)   # a wrong type is reported at its (remembered) offset
    rng = random.Random(draw(st.integers(0, 2**32)))
    ws, escape = draw(st.sampled_from([0.0, 0.3])), draw(st.sampled_from([0.0, 0.2]))
    base = ref.server_frame(obj, rng, ws=ws, escape=escape)
    frames = []
    for _ in range(draw(st.integers(2, 8))):
        frame = bytearray(ref.server_frame(obj, rng, ws=ws, escape=escape)
                          if draw(st.booleans()) else base)
        for _ in range(draw(st.integers(0, 2))):
            op = draw(st.sampled_from(["replace", "insert", "delete", "cut", "repeat", "drop"]))
            # the envelope (before data) is what the scanner remembers: aim there
            pos = draw(st.integers(0, max(0, min(len(frame), 80) - 1)))
            comma = frame.find(b",", pos)
            if op == "replace":
                frame[pos:pos + 1] = draw(st.sampled_from(INTERESTING))
            elif op == "insert":
                frame[pos:pos] = draw(st.sampled_from(INTERESTING))
            elif op == "delete":
                del frame[pos:pos + draw(st.integers(1, 3))]
            elif op == "cut":
                del frame[pos:]
            elif comma > 0:
                start = frame.rfind(b",", 0, comma) + 1 or frame.find(b"{") + 1
                if op == "repeat":   # the member ending at that comma, twice
                    frame[comma + 1:comma + 1] = frame[start:comma + 1]
                else:
                    del frame[start:comma + 1]
        frames.append(bytes(frame))
    return frames


@settings(max_examples=ref.examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_copies())
def test_near_copy_streams_agree(frames):
    """The compiled scanner remembers the top-level members of earlier frames (frame.c's
    fs_memo) and does not validate a repeated member again; the twin remembers nothing.
    Streams of frames that repeat, move, duplicate and break members must agree."""
    run_both(("pcm_s16le", 44100), {}, [("feed", f, "bytes") for f in frames])


def test_remembered_member_is_still_a_duplicate():
    """A member seen (and remembered) in one frame and repeated in the next is still a
    duplicate key, reported at the second occurrence, wherever the memory kicks in."""
    first = b'{"context_id":"a","type":"chunk","flush_id":1,"data":"AAAA"}'
    # the second "type" is where the first frame's "type" was: remembered, yet a duplicate
    again = b'{"type":"chunk","type":"chunk","flush_id":1,"data":"AAAA"}'
    # and here the first "type" is taken from memory, the second scanned: still a duplicate
    later = b'{"flush_id":1,"type":"chunk","type":"chunk","context_id":"a","data":"AAAA"}'
    sink = _speedups.Sink()
    assert sink.feed(first) == ()
    with pytest.raises(FrameError) as info:
        sink.feed(again)
    assert (info.value.code, info.value.offset) == ("duplicate", again.index(b'"type"', 2))
    with pytest.raises(FrameError) as info:
        sink.feed(later)
    assert (info.value.code, info.value.offset) == ("duplicate", later.rindex(b'"type"'))
    assert sink.feed(first) == ()
    assert sink.stats.audio_bytes == 6
    assert sink.stats.rejected_frames == 2


# Values an envelope member may change to between frames: the compiled scanner keeps the
# last data-last frame's envelope as a template (frame.c's fs_template) and validates only
# the string and number values that changed, so these aim at that: valid and broken
# numbers and strings, other kinds, and values that run into the next member.
NEW_VALUES = [b"0", b"7", b"-3", b"41.7", b"41.700001", b"1e5", b"2E-3", b"12345678901234567890",
              b"-", b"1.", b"1e", b"01", b"-0", b"1.5e+", b"--1", b"0x1", b"1 2",
              b'""', b'"a"', b'"chunk"', b'"flush_done"', b'"\\u0063hunk"', b'"x\\"y"',
              b'"\\u00e9"', b'"\\ud83d\\ude00"', b'"\\ud83d"', b'"\xc3\xa9"', b'"\\x"', b'"\x01"',
              b'"\xff"', b'"unterminated', b'"a\\', b"null", b"true", b"{}", b"[1]", b""]
# "seq" puts a number before the known keys, so that two changed numbers can have known
# keys between them even in this order
ENVELOPE = [(b"seq", b"12"), (b"type", b'"chunk"'), (b"context_id", b'"ctx-1"'),
            (b"status_code", b"206"), (b"done", b"false"), (b"step_time", b"41.7"),
            (b"flush_id", b"1")]


def envelope_frame(members, data: bytes, seps=(b", ", b": "), tail=b"}") -> bytes:
    comma, colon = seps
    body = comma.join(b'"' + k + b'"' + colon + v for k, v in members)
    return b"{" + body + (comma if members else b"") + b'"data"' + colon + b'"' + data + b'"' + tail


@st.composite
def envelope_streams(draw):
    """Frames with data last, most of them the previous envelope with a value or two
    changed; now and then a key, a separator, the data or the tail."""
    members = list(ENVELOPE)
    if draw(st.booleans()):
        members = draw(st.permutations(members))
    seps = draw(st.sampled_from([(b", ", b": "), (b",", b":"), (b" ,\n", b" : ")]))
    frames = []
    for _ in range(draw(st.integers(2, 10))):
        current = list(members)
        data = ref.b64encode(draw(st.binary(max_size=30))).encode()
        tail = b"}"
        for _ in range(draw(st.integers(0, 3))):
            op = draw(st.sampled_from(["value", "value", "value", "resize", "resize", "key",
                                       "drop", "repeat", "data", "tail", "seps"]))
            k = draw(st.integers(0, len(current) - 1)) if current else 0
            if op == "value" and current:
                current[k] = (current[k][0], draw(st.sampled_from(NEW_VALUES)))
            elif op == "resize" and current:
                # a number one or two digits longer or shorter: two of these in one frame
                # can cancel out, and the keys between them still move
                length = max(1, len(current[k][1]) + draw(st.sampled_from([-2, -1, 1, 2])))
                current[k] = (current[k][0], b"7" * length)
            elif op == "key" and current:
                current[k] = (draw(st.sampled_from([b"type", b"flush_id", b"data", b"x",
                                                    b"context_id", rb"t\u0079pe"])), current[k][1])
            elif op == "drop" and current:
                del current[k]
            elif op == "repeat" and current:
                current.insert(k, current[k])
            elif op == "data":
                data = draw(st.sampled_from([b"", b"AAAA", b"AA==", b"A=AA", b'AA"A', b"AA\\/A",
                                             b"AA\\u0041A", b'AA\\"A', b"\xc3\xa9AAA", b"AAA"]))
            elif op == "tail":
                tail = draw(st.sampled_from([b"} ", b" }", b"}\n\t", b"}}", b"", b'", "x": 1}',
                                             b"} x", b"]"]))
            else:
                seps = draw(st.sampled_from([(b", ", b": "), (b",", b":"), (b", ", b":")]))
        if draw(st.booleans()):
            members = current   # the envelope drifts, as step_time and flush_id do
        frames.append(envelope_frame(current, data, seps, tail))
    return frames


@settings(max_examples=ref.examples(600), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelope_streams())
def test_envelope_streams_agree(frames):
    """Streams aimed at the compiled scanner's template: every frame must give what the
    twin (which remembers nothing) gives, whatever changed since the template was made."""
    run_both(("pcm_s16le", 44100), {}, [("feed", f, "bytes") for f in frames])


def test_template_changes_that_cancel_out_still_move_the_keys_between():
    """Regression (found in review): step_time one byte shorter and flush_id one byte
    longer left the total shift at 0, and the context_id between them kept the
    template's offsets: the audio went to a context named 'tx"'."""
    first = b'{"type":"chunk","step_time":9.5,"context_id":"ctx","flush_id":9,"data":"AAAA"}'
    second = b'{"type":"chunk","step_time":10,"context_id":"ctx","flush_id":10,"data":"AAAA"}'
    run_both(("pcm_s16le", 44100), {}, [("feed", first, "bytes"), ("feed", second, "bytes"),
                                        ("close", "end")])
    sink = _speedups.Sink()
    sink.feed(first)
    sink.feed(second)
    assert sorted((e.segment.context_id, e.segment.flush_id) for e in sink.close()) == [
        ("ctx", 9), ("ctx", 10)]


def test_template_survives_other_frames():
    """The template is the last data-last envelope; frames of other shapes in between
    (flush_done without data last, timestamps) neither break it nor are matched to it."""
    chunk = envelope_frame(ENVELOPE, b"AAAA")
    longer = envelope_frame([(k, b"41.25" if k == b"step_time" else v) for k, v in ENVELOPE], b"AAAAAAAA")
    done = b'{"type": "flush_done", "context_id": "ctx-1", "data": "", "flush_id": 1, "flush_done": true}'
    next_flush = envelope_frame([(k, b"2" if k == b"flush_id" else v) for k, v in ENVELOPE], b"AAAB")
    bad_number = envelope_frame([(k, b"4.x" if k == b"step_time" else v) for k, v in ENVELOPE], b"AAAA")
    ops = [("feed", f, "bytes") for f in (chunk, longer, done, next_flush, bad_number, chunk,
                                          next_flush, done)]
    run_both(("pcm_s16le", 44100), {}, ops)
    sink = _speedups.Sink()
    for frame in (chunk, longer):
        assert sink.feed(frame) == ()
    with pytest.raises(FrameError) as info:
        sink.feed(bad_number)
    assert (info.value.code, info.value.offset) == ("number", bad_number.index(b"4.x") + 2)


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
