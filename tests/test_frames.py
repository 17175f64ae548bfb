"""Frame validation: FrameError codes and byte offsets (docs/sink.md, "Validation").

Each malformed frame (tests/helpers/frames.py) is written by hand with ``<!>`` where the
error must be reported; the expectation is checked against the independent validator
(reference.py) too, so a mistake in either shows up. Then: every prefix of real frames,
random mutations, and "a rejected frame leaves the state unchanged" for every code.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flushsink
from flushsink import AudioFormat, FrameError
from flushsink._common import SLOTS
from flushsink.errors import FRAME_ERROR_REASONS

import reference as ref
from helpers.frames import BAD_FRAMES, REJECTED, VALID_FRAMES, marked, mutated_frames


def depth_frames():
    """(frame, expected or None): 64 levels pass, 65 fail at the 65th bracket."""
    cases = []
    for opener, closer, inner in (("[", "]", ""), ("{\"k\":", "}", "1")):
        ok = '{"a":' + opener * 63 + inner + closer * 63 + "}"
        cases.append((ok.encode(), None))
        bad = '{"a":' + opener * 63 + "<!>" + opener + inner + closer * 64 + "}"
        cases.append((bad.encode(), "depth"))
        cut = '{"a":' + opener * 63 + "<!>" + opener  # depth comes before the truncation
        cases.append((cut.encode(), "depth"))
    mixed = '{"a":' + '[{"k":' * 31 + "[" + "<!>[" + "]]" + "}]" * 31 + "}"
    cases.append((mixed.encode(), "depth"))
    cases.append((('{"a":' + '[{"k":' * 31 + "[]" + "}]" * 31 + "}").encode(), None))
    return cases


def core_error(core, frame):
    sink = core.Sink()
    with pytest.raises(FrameError) as info:
        sink.feed(frame)
    exc = info.value
    assert sink.stats.rejected_frames == 1 and sink.stats.frames == 0
    return exc


@pytest.mark.parametrize("code,template", BAD_FRAMES, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_frame(core, code, template):
    frame, offset = marked(template)
    if code == "truncated":
        assert offset == len(frame)
    # the oracle agrees with the hand-written expectation
    with pytest.raises(ref.RefFrameError) as oracle:
        ref.parse_frame(frame)
    assert (oracle.value.code, oracle.value.offset) == (code, offset), "oracle disagrees with the table"
    exc = core_error(core, frame)
    assert (exc.code, exc.offset) == (code, offset), f"{frame!r}: got {exc.code}@{exc.offset}"
    assert isinstance(exc, ValueError)
    assert str(exc) == str(FrameError(exc.code, exc.offset, exc.detail))
    if code == "field_type":
        assert oracle.value.detail and oracle.value.detail in exc.detail


@pytest.mark.parametrize("frame", VALID_FRAMES)
def test_valid_frame(core, frame):
    expected = ref.RefSink().feed(frame)
    assert_events(core.Sink().feed(frame), expected)


def assert_events(events, expected):
    ref.assert_same(ref.norm_events(events), expected)


@pytest.mark.parametrize("case", range(7))
def test_depth(core, case):
    template, code = depth_frames()[case]
    if code is None:
        assert ref.parse_frame(template) is not None
        core.Sink().feed(template)
        return
    frame, offset = marked(template)
    with pytest.raises(ref.RefFrameError) as oracle:
        ref.parse_frame(frame)
    assert (oracle.value.code, oracle.value.offset) == (code, offset)
    exc = core_error(core, frame)
    assert (exc.code, exc.offset) == (code, offset)


def test_ambiguous_empty_frame(core):
    # docs/sink.md does not say whether a blank frame is not_object or truncated; both at len
    for frame in (b"", b"   ", b"\r\n\t"):
        exc = core_error(core, frame)
        assert exc.code in ("not_object", "truncated") and exc.offset == len(frame)


# --- str frames ----------------------------------------------------------------------------

def test_str_lone_surrogate(core):
    for text, prefix in (
        ('{"a":"x\ud800"}', '{"a":"x'),
        ('{"context_id":"é\udc00","type":"done"}', '{"context_id":"é'),
        ('{"type":"chunk","data":"AAAA\udfff"}', '{"type":"chunk","data":"AAAA'),
        ('{"a":"😀\ud83d\ude00"}', '{"a":"😀'),
    ):
        exc = core_error(core, text)
        assert (exc.code, exc.offset) == ("utf8", len(prefix.encode())), text


def test_str_offsets_are_utf8_bytes(core):
    text = '{"a":"é😀€","b":NaN}'
    exc = core_error(core, text)
    assert (exc.code, exc.offset) == ("syntax", text.encode().index(b"NaN"))


# --- every prefix of real frames -----------------------------------------------------------

def sample_frames():
    rng = random.Random(7)
    objs = [
        ref.chunk_obj(b"\x01\x02\x03\x04\x05", "ctx-é😀", 3, status_code=206, done=False, step_time=41.7),
        {"type": "flush_done", "context_id": "c", "flush_id": 12, "flush_done": True, "data": "", "done": False},
        {"type": "timestamps", "context_id": "c", "flush_id": 1, "word_timestamps":
            {"words": ["Stay", "hungry,"], "start": [0.0, 0.31], "end": [0.29, 0.74]}},
        {"type": "error", "context_id": "c", "status_code": 429, "error_code": "concurrency_limited",
         "title": "Too many", "message": "limit", "done": True, "nested": [{"a": [-1.5e-3, None, True]}]},
        {"type": "done", "context_id": "turn-17", "status_code": 206, "done": True},
    ]
    return [ref.server_frame(o, rng, ws=0.4, escape=0.2) for o in objs] + [
        b'{"type":"chunk","data":"A\\u0041\\/\\u002b","flush_id":0}',
        b'{"a":"\\ud83d\\ude00\xf0\x9f\x98\x80","flush_id":9}',
    ]


@pytest.mark.parametrize("index", range(7))
def test_every_prefix_is_truncated(core, index):
    frame = sample_frames()[index]
    stripped = frame.rstrip(ref.WS)
    lead = len(frame) - len(frame.lstrip(ref.WS))
    for cut in range(lead + 1, len(stripped)):
        prefix = frame[:cut]
        with pytest.raises(ref.RefFrameError) as oracle:
            ref.parse_frame(prefix)
        assert oracle.value.code == "truncated" and oracle.value.offset == cut
        exc = core_error(core, prefix)
        assert oracle.value.accepts(exc.code, exc.offset), (prefix, exc.code, exc.offset)


# --- random mutations of server frames -----------------------------------------------------

@settings(max_examples=ref.examples(600), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_mutated_frames_match_oracle(frame):
    model = ref.RefSink()
    try:
        expected = ref.model_outcome(model, frame)
    except ref.Ambiguous:
        return
    got = ref.core_outcome(flushsink.Sink(), frame)
    ref.assert_outcome(got, expected, frame)


@settings(max_examples=ref.examples(300), deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_match_oracle(frame):
    try:
        expected = ref.model_outcome(ref.RefSink(), frame)
    except ref.Ambiguous:
        return
    ref.assert_outcome(ref.core_outcome(flushsink.Sink(), frame), expected, frame)


def json_accepts(frame: bytes) -> bool:
    """A second, json-module based accept/reject opinion (no duplicate/field checks)."""
    def refuse(name):
        raise ValueError(name)
    try:
        text = frame.decode("utf-8")
        if text.lstrip(" \t\n\r")[:1] != "{":
            return False
        value = json.loads(text, parse_constant=refuse)
        json.dumps(value).encode("utf-8")  # no lone surrogates from escapes
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        return False
    return True


@settings(max_examples=ref.examples(400), deadline=None)
@given(mutated_frames())
def test_oracle_agrees_with_json_module(frame):
    """The validator accepts exactly what json.loads accepts, up to the extra rules."""
    try:
        ref.scan_frame(frame)
        ours = True
    except ref.RefFrameError as exc:
        ours = False
        if exc.code in ("duplicate", "field_type", "depth"):
            return
    except ref.Ambiguous:
        return
    # json.loads happily takes whitespace json does not (none here) and control chars in
    # strings only with strict=False (default strict=True rejects them): same rules
    assert ours == json_accepts(frame), frame


# --- a rejected frame leaves the state unchanged -------------------------------------------

def base_script():
    """Frames that leave open segments, labels, adoption candidates and ended contexts."""
    rng = random.Random(3)
    objs = [
        ref.chunk_obj(b"\x01\x02\x03", "a"),                    # a: unlabelled segment 0
        ref.chunk_obj(b"\x04\x05", "b", 1),                     # b: segment 1
        ref.chunk_obj(b"\x06", None),                           # None context
        {"type": "flush_done", "context_id": "b", "flush_id": 1},
        ref.chunk_obj(b"\x07\x08\x09", "b", 2),
        {"type": "done", "context_id": "z"},
        {"type": "timestamps", "context_id": "a", "word_timestamps": {"words": ["w"], "start": [0.5], "end": [0.7]}},
    ]
    return [ref.server_frame(o, rng) for o in objs]


def tail_script():
    rng = random.Random(4)
    objs = [
        ref.chunk_obj(b"\x10\x11", "a", 7),                     # a adopts 7
        ref.chunk_obj(b"\x12", "b"),
        ref.chunk_obj(b"\x13\x14", "c", 0),
        {"type": "flush_done", "context_id": "a"},
        ref.chunk_obj(b"\x15", "z"),                            # dropped: z ended
        {"type": "phoneme_timestamps", "context_id": "c", "flush_id": 0,
         "phoneme_timestamps": {"phonemes": ["p"], "start": [0.0], "end": [0.1]}},
        {"type": "error", "context_id": "b", "error": "boom"},
        {"type": "done"},
    ]
    return [ref.server_frame(o, rng) for o in objs]



def run_script(sink, frames):
    return [ref.core_outcome(sink, f) for f in frames]


@pytest.mark.parametrize("code,bad", REJECTED, ids=[c for c, _ in REJECTED])
@pytest.mark.parametrize("position", ["early", "middle", "late"])
def test_rejected_frame_changes_nothing(code, bad, position):
    """A rejected frame stores nothing. One whose base64 is bad was meant for a known
    segment, which it marks as having lost a chunk (docs/sink.md "Lost chunks"): the
    clean sink gets the same chunk with no data in its place, so that both resolve the
    same segment, and the two differ by that mark alone."""
    head, tail = base_script(), tail_script()
    cut = {"early": 1, "middle": 4, "late": len(head)}[position]
    clean = flushsink.Sink(AudioFormat("pcm_s16le", 16000))
    dirty = flushsink.Sink(AudioFormat("pcm_s16le", 16000))
    expected = run_script(clean, head[:cut])
    assert run_script(dirty, head[:cut]) == expected
    before = dirty.stats
    with pytest.raises(FrameError) as info:
        dirty.feed(bad)
    assert info.value.code == code
    loses = code.startswith("base64")
    if loses:
        assert run_script(clean, [ref.without_audio(bad)]) == [("ok", [])]
    after = dirty.stats
    assert after.audio_bytes == before.audio_bytes and after.open_bytes == before.open_bytes
    assert after == clean.stats._replace(frames=clean.stats.frames - loses,
                                         chunks=clean.stats.chunks - loses,
                                         rejected_frames=clean.stats.rejected_frames + 1)
    rest = head[cut:] + tail
    got = run_script(dirty, rest) + [("ok", ref.sort_by_context(ref.norm_events(dirty.close("x"))))]
    want = run_script(clean, rest) + [("ok", ref.sort_by_context(ref.norm_events(clean.close("x"))))]
    ref.assert_same(ref.unmark_lost(got), want)
    marks = ref.lost_marks(got)
    if loses:
        reason = FRAME_ERROR_REASONS[code]
        assert marks == [f"lost 1 chunk ({dirty_size(bad)} bytes): {reason}"], marks
    else:
        assert marks == []
    assert dirty.stats == clean.stats._replace(frames=clean.stats.frames - loses,
                                               chunks=clean.stats.chunks - loses,
                                               rejected_frames=clean.stats.rejected_frames + 1)


def dirty_size(frame: bytes) -> int:
    """The size docs/sink.md gives a chunk's (here unescaped, ASCII) data, valid or not."""
    text = json.loads(frame)["data"]
    return len(text) * 3 // 4 - text[-2:].count("=")


@pytest.mark.parametrize("code,bad", REJECTED, ids=[c for c, _ in REJECTED])
def test_rejected_frame_run_matches_model(code, bad):
    frames = base_script()[:4] + [bad] + base_script()[4:] + tail_script()
    sink = flushsink.Sink(AudioFormat("pcm_s16le", 16000))
    model = ref.RefSink("pcm_s16le", 16000)
    for frame in frames:
        ref.assert_outcome(ref.core_outcome(sink, frame), ref.model_outcome(model, frame), frame)
    assert tuple(sink.stats) == model.stats_tuple()


def test_the_kernels_names_are_the_ones_both_cores_and_the_model_use(compiled_core):
    """ext/frame.h and ext/b64.h list each key name, frame type and error code once; the
    compiled core reads them from there. They must be what the twin, the store's rules,
    the reference model and the error reasons know, or a frame would mean one thing to
    one core and another to the other."""
    from flushsink import _fallback, _store

    codes = {c for c in compiled_core.SCAN_CODES + compiled_core.BASE64_CODES if c is not None}
    assert codes <= set(FRAME_ERROR_REASONS), codes - set(FRAME_ERROR_REASONS)
    assert compiled_core.SCAN_CODES[0] is None and compiled_core.BASE64_CODES[0] is None
    # Cartesia's keys, then the slots only an envelope names (flushsink._common.SLOTS)
    cartesia = compiled_core.FIELD_NAMES[:len(_fallback.KNOWN_KEYS)]
    assert cartesia == _fallback.KNOWN_KEYS == ref.KNOWN_KEYS
    assert compiled_core.FIELD_NAMES[len(cartesia):] == (None,) * (len(SLOTS) - len(cartesia))
    assert SLOTS[:len(cartesia)] == cartesia
    known_types = {t for t in compiled_core.FRAME_TYPE_NAMES if t is not None}
    assert known_types == set(_store.TYPE_CODES)
    # the frames written by hand for each code cover exactly the kernels' codes
    # (hex audio's codes come only with a hex envelope: tests/test_sink_envelopes.py)
    expected = {code for code, _ in BAD_FRAMES + REJECTED} - {"field_type", "type"}
    assert expected == codes - {"hex_char", "hex_length"}, expected ^ codes
