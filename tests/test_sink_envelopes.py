"""Sink(format, envelope=...): both cores read any envelope alike (issue 16 item 1).

No oracle of our own for most of this: the compiled core, the twin's fast intake and the
twin's exact path must agree on every outcome (events, FrameError code, offset, detail,
CapacityError, stats) for frames of each built-in envelope and of a user's envelope with
deep paths and hex audio, in any member order, with escapes, junk members and mutations.
Two independent references anchor it: an envelope that describes Cartesia's frames must
read them exactly as the Cartesia intake does (its template memo and guesses included),
and tests/test_envelopes.py holds each built-in to a json.loads router over each
emulator's real frames.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flushsink
from flushsink import AudioFormat, ContextDone, FrameError, SegmentReady, Sink
from flushsink import _fallback
from flushsink.envelopes import (CARTESIA, ELEVENLABS, OPENAI_REALTIME, TWILIO_MEDIA, Envelope)

import reference as ref
from helpers.differential import DEEP_HEX
from helpers.frames import INTERESTING, json_value
from helpers.programs import as_input, outcome, scenarios

try:
    from flushsink import _speedups
except ImportError:  # pragma: no cover
    _speedups = None

needs_compiled = pytest.mark.skipif(_speedups is None, reason="compiled core not built")

FMT = AudioFormat("pcm_s16le", 16000)

DESCRIBED_CARTESIA = dataclasses.replace(CARTESIA, name="cartesia, described")
ENVELOPES = [ELEVENLABS, OPENAI_REALTIME, TWILIO_MEDIA, DEEP_HEX, DESCRIBED_CARTESIA]


def put(obj: dict, path: str, value) -> None:
    *outer, last = path.split(".")
    for name in outer:
        obj = obj.setdefault(name, {})
        if not isinstance(obj, dict):
            return
    obj[last] = value


def encode(env: Envelope, audio: bytes) -> str:
    return audio.hex() if env.audio_encoding == "hex" else base64.b64encode(audio).decode()


@st.composite
def envelope_objects(draw, env: Envelope):
    """A frame of env as a server sends it, now and then with a field of the wrong type."""
    obj: dict = {}
    if env.type_key is None:
        kind = draw(st.sampled_from(["audio"] * 5 + ["final", "audio_final", "error", "other"]))
    else:
        value = draw(st.sampled_from([v for v, k in env.type_kinds().items() if k == "audio"] * 4
                                     + list(env.type_kinds()) + ["mystery", None]))
        kind = env.kind_of(value) if value is not None else "other"
        if value is not None or draw(st.integers(0, 5)) == 0:
            put(obj, env.type_key, value)
    if env.context_key:
        cid = draw(st.sampled_from(["a", "b", "é/😀", "x\"y\\z", None]))
        if cid is not None or draw(st.integers(0, 4)) == 0:
            put(obj, env.context_key, cid)
    if env.context_fallback_key and draw(st.integers(0, 2)) == 0:
        put(obj, env.context_fallback_key, draw(st.sampled_from(["a", "c", None])))
    if env.segment_key and draw(st.booleans()):
        put(obj, env.segment_key, draw(st.integers(0, 3)))
    if kind in ("audio", "audio_final"):
        put(obj, env.audio_key, encode(env, draw(st.binary(max_size=12))))
    if env.final_key:
        final = True if kind in ("final", "audio_final") else draw(st.sampled_from([None, False]))
        if final is not None or draw(st.booleans()):
            put(obj, env.final_key, final)
    if kind == "error":
        for key in env.error_message_keys[:draw(st.integers(0, len(env.error_message_keys)))]:
            put(obj, key, draw(st.text(max_size=5)))
        if env.error_code_key and draw(st.booleans()):
            put(obj, env.error_code_key, draw(st.sampled_from(["limited", 1008])))
    if kind in ("timestamps", "phoneme_timestamps"):
        key, names = ("word_timestamps", "words") if kind == "timestamps" \
            else ("phoneme_timestamps", "phonemes")
        n = draw(st.integers(0, 2))
        obj[key] = {names: ["w"] * n, "start": [0.1] * n, "end": [0.2] * n}
    for _ in range(draw(st.integers(0, 2))):  # members nobody reads, beside the paths too
        path = draw(st.sampled_from(["extra", "step_time"] + [
            p.rsplit(".", 1)[0] + ".junk" for p in env.paths() if p and "." in p]))
        put(obj, path, draw(json_value))
    if draw(st.integers(0, 7)) == 0:  # a wrong type, where one would be refused
        paths = [p for p in env.paths()[:5] if p]
        path = draw(st.sampled_from(paths + [p.split(".")[0] for p in paths if "." in p]))
        put(obj, path, draw(st.sampled_from([5, -1, 2**63, "text", [1], {"a": 1}, True, 1.5])))
    return obj


@st.composite
def envelope_frames(draw, env: Envelope):
    obj = draw(envelope_objects(env))
    rng = random.Random(draw(st.integers(0, 2**32)))
    frame = bytearray(ref.server_frame(obj, rng, ws=draw(st.sampled_from([0.0, 0.3])),
                                       escape=draw(st.sampled_from([0.0, 0.0, 0.3]))))
    if draw(st.integers(0, 5)) == 0:
        pos = draw(st.integers(0, max(0, len(frame) - 1)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        if op == "replace":
            frame[pos:pos + 1] = draw(st.sampled_from(INTERESTING))
        elif op == "insert":
            frame[pos:pos] = draw(st.sampled_from(INTERESTING))
        else:
            del frame[pos:pos + draw(st.integers(1, 3))]
    return bytes(frame)


@st.composite
def programs(draw):
    env = draw(st.sampled_from(ENVELOPES))
    caps = draw(st.sampled_from([{}, {}, {"max_segment_bytes": 24, "max_total_bytes": 40},
                                 {"max_ended_contexts": 1, "stream": True}]))
    ops = draw(st.lists(st.one_of(
        st.tuples(st.just("feed"), envelope_frames(env),
                  st.sampled_from(["bytes", "bytes", "str", "bytearray"])),
        st.tuples(st.just("cancel"), st.sampled_from(["a", "b"])),
        st.tuples(st.just("close"), st.just("dropped"))), min_size=1, max_size=30))
    return env, caps, ops


def stream_outcome(call):
    """outcome(), with a streaming sink's AudioChunks as what they hold."""
    chunks = []

    def events():
        result = call()
        if isinstance(result, tuple):
            chunks.extend((c.context_id, c.flush_id, c.start, bytes(c.data)) for c in result
                          if type(c).__name__ == "AudioChunk")  # (each core has its own)
            return tuple(e for e in result if type(e).__name__ != "AudioChunk")
        return result
    result = outcome(events)
    return result, chunks


def apply(sink, op, judge=stream_outcome):
    """One operation of a program on a sink: (its outcome, the stats after it)."""
    if op[0] == "feed":
        frame = as_input(op[1], op[2])
        result = judge(lambda: sink.feed(frame))
    elif op[0] == "cancel":
        result = judge(lambda: sink.cancel(op[1]))
    elif op[0] == "close":
        result = judge(lambda: sink.close(op[1]))
    else:
        result = judge(lambda: sink.set_format(op[1], AudioFormat(*op[2])))
    return result, tuple(sink.stats)


def run_all(env, caps, ops, sinks):
    results = []
    for op in ops:
        row = [apply(sink, op) for sink in sinks]
        assert all(r == row[0] for r in row), (op, row)
        results.append(row[0])
    return results


def twins(env, caps):
    fast = _fallback.Sink(FMT, envelope=env, **caps)
    exact = _fallback.Sink(FMT, envelope=env, **caps)
    exact._fast_path = False
    return [fast, exact]


@settings(max_examples=ref.examples(400), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs())
def test_the_twins_intakes_agree(program):
    env, caps, ops = program
    run_all(env, caps, ops, twins(env, caps))


@needs_compiled
@settings(max_examples=ref.examples(600), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(programs())
def test_the_cores_agree(program):
    env, caps, ops = program
    run_all(env, caps, ops, [_speedups.Sink(FMT, envelope=env, **caps)] + twins(env, caps))


def _errors_as_kinds(results):
    """Outcomes with error events reduced to what an envelope says of them: the Cartesia
    intake formats titles and statuses its own way (docs/sink.md), and the segments an
    error finishes carry its message."""
    def events(items):
        failed = any(e[0] == "ctx_error" for e in items)
        return [("ctx_error", e[1]) if e[0] == "ctx_error" else
                ("server_error",) if e[0] == "server_error" else
                e[:9] + (e[9] is not None,) + e[10:] if e[0] == "ready" and failed else e
                for e in items]
    return [((r[0][0], events(r[0][1])) + r[0][2:]
             if r[0][0] == "ok" and isinstance(r[0][1], list) else r[0], r[1])
            for r in results]


@settings(max_examples=ref.examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_an_envelope_describing_cartesia_reads_as_the_cartesia_intake(scenario):
    """The envelope path (no template memo, no guesses, the tree of names) against the
    Cartesia intake, on the Cartesia differential's programs, in this core."""
    fmt, caps, ops = scenario
    results = []
    for envelope in (None, DESCRIBED_CARTESIA):
        sink = Sink(AudioFormat(*fmt), envelope=envelope, **caps)
        results.append(_errors_as_kinds([apply(sink, op, outcome) for op in ops]))
    assert results[0] == results[1]


def test_cartesia_is_the_default_and_an_equal_envelope_is_it():
    assert Sink(FMT).envelope is CARTESIA
    assert Sink(FMT, envelope=dataclasses.replace(CARTESIA)).envelope is CARTESIA
    assert Sink(FMT, envelope=TWILIO_MEDIA).envelope is TWILIO_MEDIA
    with pytest.raises(TypeError, match="Envelope"):
        Sink(FMT, envelope="twilio-media")
    assert flushsink.Envelope is Envelope


def feed_all(sink, objects):
    events = []
    for obj in objects:
        events.extend(sink.feed(json.dumps(obj)))
    return events


def test_twilio_media_any_member_order_and_nesting():
    payloads = [bytes(range(i, i + 160)) for i in range(0, 40, 10)]
    frames = [{"event": "connected", "protocol": "Call", "version": "1.0.0"},
              {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
               "start": {"streamSid": "MZ1", "mediaFormat": {"encoding": "audio/x-mulaw"}}}]
    for n, audio in enumerate(payloads):
        media = {"track": "inbound", "chunk": str(n + 1), "timestamp": str(20 * n),
                 "payload": base64.b64encode(audio).decode()}
        frame = {"event": "media", "sequenceNumber": str(n + 2), "media": media,
                 "streamSid": "MZ1"}
        if n % 2:  # the payload first, the event last: any order reads the same
            frame = {"media": dict(reversed(list(media.items()))), "streamSid": "MZ1",
                     "event": "media"}
        frames.append(frame)
    frames.append({"event": "stop", "streamSid": "MZ1", "stop": {"callSid": "CA1"}})
    events = feed_all(Sink(AudioFormat("pcm_mulaw", 8000), envelope=TWILIO_MEDIA), frames)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Unknown", "Unknown", "SegmentReady", "ContextDone"]
    assert events[1].context_id == "MZ1" and events[1].type == "start"
    segment = events[2].segment
    assert segment.complete and segment.context_id == "MZ1"
    assert segment.samples.tobytes() == b"".join(payloads)


def test_openai_realtime_segments_follow_the_done_events_and_errors_read_their_message():
    sink = Sink(FMT, envelope=OPENAI_REALTIME)
    delta = {"type": "response.output_audio.delta", "response_id": "r", "item_id": "i",
             "output_index": 0, "content_index": 0}
    events = feed_all(sink, [
        {**delta, "delta": base64.b64encode(b"\x01\x00\x02\x00").decode()},
        {"type": "response.output_audio.done", "response_id": "r", "item_id": "i"},
        {**delta, "item_id": "j", "delta": base64.b64encode(b"\x03\x00").decode()},
        {"type": "response.output_audio_transcript.delta", "response_id": "r", "delta": "hi"},
        # (response.created and response.done name it at response.id, not response_id)
        {"type": "response.done", "event_id": "e9", "response": {"id": "r", "status": "completed"}},
        {"type": "error", "event_id": "e", "error": {"type": "invalid_request_error",
                                                     "code": "bad_value", "message": "No."}},
    ])
    ready = [e.segment for e in events if isinstance(e, SegmentReady)]
    assert [(s.flush_id, s.samples.tolist()) for s in ready] == [(0, [1, 2]), (1, [3])]
    assert isinstance(events[-2], ContextDone) and events[-2].context_id == "r"
    assert events[1].type == "response.output_audio_transcript.delta"  # Unknown, with its type
    error = events[-1]
    assert isinstance(error, flushsink.ServerError)
    assert (error.message, error.error_code) == ("No.", "bad_value")


def test_elevenlabs_final_audio_ends_its_context_and_counts_once():
    sink = Sink(FMT, envelope=ELEVENLABS)
    events = feed_all(sink, [
        {"audio": base64.b64encode(b"\x01\x00").decode(), "isFinal": None, "contextId": "c",
         "alignment": {"chars": ["a"], "charStartTimesMs": [0], "charDurationsMs": [5]}},
        {"audio": base64.b64encode(b"\x02\x00").decode(), "isFinal": True, "contextId": "c"},
        {"audio": None, "isFinal": True, "contextId": "quota"},
        {"message": "Have not received a new text input", "error": "input_timeout_exceeded",
         "code": 1008},
    ])
    assert [type(e).__name__ for e in events] == ["SegmentReady", "ContextDone", "ContextDone",
                                                  "ServerError"]
    assert events[0].segment.samples.tolist() == [1, 2] and events[0].segment.complete
    assert events[3].error_code == "input_timeout_exceeded"
    stats = sink.stats
    assert (stats.frames, stats.rejected_frames, stats.chunks) == (4, 0, 2)
    # a frame after its context ended is dropped, its final flag too
    assert sink.feed(json.dumps({"audio": "AAA=", "isFinal": True, "contextId": "c"})) == ()
    assert sink.stats.dropped_frames == 1 and sink.stats.frames == 5


@pytest.mark.parametrize("text, code, index", [
    ("0g00", "hex_char", 1), ("000", "hex_length", 3), ("00 0", "hex_char", 2),
    ("\\u0030\\u00300x", "hex_char", 3), ("é0", "hex_char", 0),
])
def test_hex_audio_is_strict_with_offsets_into_the_frame(text, code, index):
    env = dataclasses.replace(DEEP_HEX)
    head = '{"meta":{"kind":"audio","session":{"id":"s"}},"body":{"audio":{"hex":"'
    frame = (head + text + '"}}}').encode()
    with pytest.raises(FrameError) as info:
        Sink(FMT, envelope=env).feed(frame)
    assert info.value.code == code
    # the offset of the index-th character of the string as written
    starts = [len(head.encode())]
    raw = text.encode()
    i = 0
    while i < len(raw):
        i += 6 if raw[i:i + 2] == b"\\u" else len(raw[i:].decode()[0].encode())
        starts.append(len(head.encode()) + i)
    assert info.value.offset == starts[index]


def test_hex_audio_and_deep_paths_store_their_audio():
    sink = Sink(FMT, envelope=DEEP_HEX)
    frame = {"body": {"part": 2, "audio": {"hex": "0100FF7f"}},
             "meta": {"session": {"id": "s"}, "kind": "audio"}}
    assert sink.feed(json.dumps(frame)) == ()
    events = sink.feed(json.dumps({"meta": {"kind": "part_end", "session": {"id": "s"}},
                                   "body": {"part": 2}}))
    segment = events[0].segment
    assert (segment.context_id, segment.flush_id, segment.samples.tolist()) == ("s", 2, [1, 0x7FFF])
    with pytest.raises(FrameError) as info:
        sink.feed(b'{"meta":{"kind":"audio","session":7}}')
    assert (info.value.code, info.value.detail) == ("field_type", "meta.session")
    with pytest.raises(FrameError) as info:
        sink.feed(b'{"meta":{"kind":"audio","kind":"audio"}}')
    assert info.value.code == "duplicate"
