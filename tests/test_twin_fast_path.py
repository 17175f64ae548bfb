"""The twin's fast intake (json + a2b_base64 + envelope templates) against its exact path
and the compiled core: the same events, results, errors (code, offset, detail, message)
and stats, frame by frame, on valid and invalid frames (docs/sink.md).

Sink._fast_path = False sends every frame of a twin through the exact scanner; the
compiled core is compared too where it is built. The frames are written by hand, so that
they hold what json and the spec disagree on: member order, whitespace, escapes (keys
included), unknown nested members, duplicate keys, NaN, surrogates, deep nesting,
flush_id forms, non-ASCII ids, base64 that strict_mode of Python 3.11 lets through; and
streams of frames that share an envelope, so that the templates are made, hit and missed.
"""

from __future__ import annotations

import base64
import itertools
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flushsink import AudioFormat
from flushsink import _fallback
from flushsink._fallback import _b64_decode, _b64_fast, _Envelopes, _fast_frame, _Reject

import reference as ref
from helpers.programs import outcome

try:
    from flushsink import _speedups
except ImportError:  # pragma: no cover - only when the extension is not built
    _speedups = None

FORMAT = AudioFormat("pcm_s16le", 16000)


def make_sinks(**caps):
    """The twin (fast intake), the twin (exact path only) and the compiled core."""
    fast = _fallback.Sink(FORMAT, **caps)
    exact = _fallback.Sink(FORMAT, **caps)
    exact._fast_path = False
    return [fast, exact] + ([_speedups.Sink(FORMAT, **caps)] if _speedups is not None else [])


def assert_agree(frames, **caps):
    sinks = make_sinks(**caps)
    for frame in frames:
        results = [(outcome(lambda: sink.feed(frame)), tuple(sink.stats)) for sink in sinks]
        for other in results[1:]:
            assert other == results[0], frame
    # what every segment held, and how it ended
    ends = [outcome(lambda: sink.close("end")) for sink in sinks]
    for other in ends[1:]:
        assert other == ends[0]


# --- base64: strict_mode plus the guard is the spec's rule ---------------------------------

def short_texts():
    for n in range(8):
        yield from itertools.product("AB/=*\n", repeat=n)
    for n in (8, 9):
        yield from itertools.product("AB=*", repeat=n)


@pytest.mark.slow
def test_b64_fast_is_the_spec_rule_on_every_short_text():
    """_b64_fast accepts exactly what the exact decoder accepts, with the same bytes
    (A: zero low bits, B and /: non-zero ones, = padding, others outside the alphabet;
    3.11's strict_mode alone takes "AAAA=" and "AAAA====")."""
    for chars in short_texts():
        text = "".join(chars)
        try:
            expected = _b64_decode(text.encode())
        except _Reject:
            expected = None
        assert _b64_fast(text) == expected, text


# --- the fast intake takes what servers send ------------------------------------------------

def server_stream(layout, count=5, flush_id=1, context_id="e47e3a7f-a1f3-479b-3c58-f36277b77bfb"):
    rng = random.Random(7)
    pcm = [rng.randbytes(rng.choice([640, 642, 1764])) for _ in range(count)]
    frames = []
    for piece in pcm:
        data = base64.b64encode(piece).decode()
        envelope = {"status_code": 206, "done": False,
                    "step_time": round(rng.uniform(1, 100), rng.randint(0, 6)),
                    "flush_id": flush_id}
        message = ({"type": "chunk", "context_id": context_id, **envelope, "data": data}
                   if layout == "last" else
                   {"type": "chunk", "data": data, **envelope, "context_id": context_id})
        frames.append(json.dumps(message, separators=(",", ":") if layout == "compact"
                                 else None).encode())
    return frames, pcm


@pytest.mark.parametrize("layout", ["last", "second", "compact"])
def test_server_frames_take_the_fast_path_and_its_templates(layout):
    frames, pcm = server_stream(layout)
    envelopes = _Envelopes()
    for index, (frame, piece) in enumerate(zip(frames, pcm)):
        if index >= 2:  # the second frame made the template: from the third on, it fits
            key = frame.find(b'"data"')
            start = frame.index(b'"', key + 6 + 1) + 1
            envelope = frame[:start] + frame[frame.index(b'"', start):]
            assert envelopes.match(envelope) is not None, frame
        assert _fast_frame(frame, envelopes) == (
            "chunk", "e47e3a7f-a1f3-479b-3c58-f36277b77bfb", 1, piece)
    assert envelopes.last is not None
    assert_agree(frames)


def test_the_fast_path_declines_what_it_cannot_vouch_for():
    """Each of these is valid, or invalid in a way json does not see; the fast intake
    leaves them to the exact path (None), which decides."""
    for frame in [b'\xef\xbb\xbf{"type":"chunk","data":""}', b'{"a":NaN}', b'{"a":"\\ud800"}',
                  b'{"type":"chunk","type":"chunk"}', b'{"t\\u0079pe":"x","type":"x"}',
                  b'{"flush_id":-0}', b'{"flush_id":1.0}', b'{"flush_id":1e0}',
                  b'{"flush_id":4611686018427387905}', b'{"a":' + b"[" * 64 + b"]" * 64 + b"}",
                  b'{"type":"chunk","data":"AAAA="}', b'{"type":"chunk","data":"AAAA===="}',
                  b'{"type":"chunk","data":"QUJD"} x', b'[]', b'', b'{"type":0.0}',
                  b'{"x":1,"x":2,"type":"done"}']:  # any key twice: valid, left alone
        assert _fast_frame(frame, _Envelopes()) is None, frame
        assert_agree([frame])
    # valid frames near those edges that it does take
    for frame in [b'{"flush_id":0}', b'{"a":-0.0,"flush_id":0}', b'{"flush_id":4611686018427387904}',
                  b'{"a":' + b"[" * 63 + b"]" * 63 + b"}", b'{"x":1,"y:":2,"type":"done"}',
                  b'{"a":"\\ud83d\\ude00 ok"}'.replace(b"\\ud83d\\ude00", "é".encode())]:
        assert _fast_frame(frame, _Envelopes()) is not None, frame
        assert_agree([frame])


def test_the_data_cut_is_always_the_top_level_member():
    """Frames where the first `"data"` is not the top-level data member, or where the cut
    string is not base64: the fast intake must still give the exact path's outcome."""
    frames = [
        b'{"meta":{"data":"QUFB"},"type":"chunk","data":"QkJC"}',
        b'{"meta":{"data":"QUFB"},"type":"chunk"}',
        b'{"meta":{"data":"QUFB"},"type":"chunk","data":""}',
        b'{"\\"data":"QUFB","type":"chunk","data":""}',
        b'{"\\"data":"QUFB","type":"chunk"}',
        b'{"note":"x\\"data\\":\\"QUFB","type":"chunk"}',
        b'{"type":"data","data":"QUFB"}',
        b'{"type":"chunk","data":"QUFB","data":"QkJC"}',
        b'{"type":"chunk","d\\u0061ta":"QUFB","data":"QkJC"}',
        b'{"type":"chunk","data":"QU\\/B"}', b'{"type":"chunk","data":"\\u0041AAA"}',
        b'{"type":"chunk","data" :\t"QUFB"}', b'{"type":"chunk","data":\n"QUFB" }',
        b'{"type":"chunk","data":5}', b'{"type":"chunk","data":null}',
        b'{"type":"chunk","data":"QUFB"', b'{"type":"chunk","data":"QUFB}',
        b'{"type":"chunk","data"', b'{"type":"chunk","data":', b'{"type":"chunk","data":"',
        b'{"type":"chunk","data":"QU\xc3\xa9B"}', b'{"type":"chunk","data":"QUFB"}\xff',
        b'{"type":"chunk","x":[1],"data":"QUFB"}', b' {"type":"chunk","data":"QUFB"}',
        b'{"type":"chunk","data":"QUFB","x":{"data":"QkJC"}}',
    ]
    assert_agree(frames)
    for frame in frames:
        assert_agree([frame])


# --- templates: a changed number may be any JSON number, and nothing else may change --------

STEP_TIMES = ["66.014704", "7", "0", "-0", "0.5", "1e5", "1E+5", "-1.5e-3", "123456789012345678901",
              "01", "1.", "-", ".5", "NaN", "1e", "00", "1.5.", "+1", "1 ", "Infinity", "0x1"]


def template_stream(step_times, context_ids=("e47e3a7f-a1f3-479b-3c58-f36277b77bfb",),
                    flush_ids=("1",), layout="last"):
    rng = random.Random(3)
    frames = []
    for step_time, cid, flush_id in zip(step_times, itertools.cycle(context_ids),
                                        itertools.cycle(flush_ids)):
        data = base64.b64encode(rng.randbytes(rng.randint(0, 40))).decode()
        head = '{"type": "chunk", "context_id": "%s", "status_code": 206, "done": false, ' % cid
        if layout == "last":
            text = head + '"step_time": %s, "flush_id": %s, "data": "%s"}' % (step_time, flush_id, data)
        else:
            text = ('{"type": "chunk", "data": "%s", "step_time": %s, "flush_id": %s, '
                    '"context_id": "%s"}' % (data, step_time, flush_id, cid))
        frames.append(text.encode())
    return frames


@pytest.mark.parametrize("layout", ["last", "second"])
@pytest.mark.parametrize("bad", STEP_TIMES)
def test_a_template_hole_takes_json_numbers_only(layout, bad):
    assert_agree(template_stream(["1.5", "2.25", "3.125", bad, "4.5", bad], layout=layout))


def test_templates_keep_known_fields_apart():
    """Same shape (digits differ only), other context or flush_id: never the template's."""
    cids = ("e47e3a7f-a1f3-479b-3c58-f36277b77bfb", "e17e3a7f-a1f3-479b-3c58-f36277b77bf1",
            "e47e3a7f-a1f3-479b-3c58-f36277b77bfb")
    assert_agree(template_stream([str(i + 0.5) for i in range(9)], context_ids=cids))
    assert_agree(template_stream([str(i + 0.5) for i in range(9)], flush_ids=("1", "1", "2", "3")))
    assert_agree(template_stream([str(i + 0.5) for i in range(9)], flush_ids=("1", "0", "-0", "10")))
    assert_agree(template_stream(["1.5"] * 6))  # nothing changes: the template is the envelope
    # only a known number changes: it must not become the template's hole
    assert_agree(template_stream(["1.5"] * 6, flush_ids=("1", "2", "3")))
    assert_agree(template_stream(["1.5"] * 6, flush_ids=("1", "2", "3"), layout="second"))


def test_many_shapes_stay_bounded():
    envelopes = _Envelopes()
    for index in range(3 * _fallback._MAX_TEMPLATES):
        frame = b'{"type":"chunk","context_id":"' + b"x" * index + b'","data":"QUFB"}'
        for _ in range(2):  # the second one makes a template
            assert _fast_frame(frame, envelopes) == ("chunk", "x" * index, None, b"AAA")
        assert len(envelopes.by_shape) <= _fallback._MAX_TEMPLATES


# --- random frames: everything json and the spec disagree on --------------------------------

def text_value(draw):
    return draw(st.sampled_from([
        '"a"', '"e47e3a7f-a1f3-479b-3c58-f36277b77bfb"', '"é😀"', '"\\u00e9"', '"\\ud83d\\ude00"',
        '"\\ud800"', '"\\udc00\\ud800"', '"a:b"', '"a{b"', '"a[b"', '"\\"data\\":\\"QUFB"', '""',
        '"\\/x"', '"tab\\there"', '"bad\\x"', '"\x01"', "null", "1", "0.0", "true", "[]", "{}",
    ]))


def number_text(draw):
    return draw(st.sampled_from(STEP_TIMES[:8] + ["1.0", "1e0", "-1", "4611686018427387904",
                                                  "4611686018427387905", "2", "NaN", "-Infinity",
                                                  "1e400", "-0.0", "01", "1."]))


def nested_value(draw):
    depth = draw(st.sampled_from([1, 2, 5, 62, 63, 64, 65, 70]))
    inner = draw(st.sampled_from(["1", '"x"', '{"data":"QUFB"}', "[]", '{"a":NaN}']))
    opener = draw(st.sampled_from(["[", '{"k":']))
    closer = "]" if opener == "[" else "}"
    return opener * depth + inner + closer * depth


@st.composite
def frames(draw):
    members = []
    kind = draw(st.sampled_from(['"chunk"'] * 5 + ['"flush_done"', '"done"', '"timestamps"',
                                                   '"mystery"', "null", "5", "0.5"]))
    if draw(st.integers(0, 9)):
        members.append(("type", kind))
    if draw(st.booleans()):
        members.append(("context_id", text_value(draw)))
    if draw(st.booleans()):
        members.append(("flush_id", number_text(draw) if draw(st.integers(0, 3)) else text_value(draw)))
    if draw(st.integers(0, 4)):
        audio = draw(st.binary(max_size=40))
        data = json.dumps(base64.b64encode(audio).decode())
        data = draw(st.sampled_from([data] * 6 + [
            '"AAAA="', '"AAAA===="', '"A==="', '"AB=A"', '"===="', '"QUFB\\/"', '"QUJ\\u0044"',
            '"QU\\/B"', '"é"', "null", "5", '""', '"QUFB\n"', '"QUFB QUFB"']))
        members.append(("data", data))
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(["status_code", "done", "step_time", "extra", "x", "x",
                                    "note", "\\u0074ype", "t\\u0079pe", "data", "\\\"data"]))
        value = draw(st.sampled_from(["number", "text", "nested", "literal"]))
        value = (number_text(draw) if value == "number" else text_value(draw) if value == "text"
                 else nested_value(draw) if value == "nested"
                 else draw(st.sampled_from(["true", "false", "null", "NaN", "nul", "tru"])))
        members.append((key, value))
    order = draw(st.permutations(range(len(members))))
    colon = draw(st.sampled_from([":", ": ", " : ", "\t:\n"]))
    comma = draw(st.sampled_from([",", ", ", " ,\r\n"]))
    body = comma.join(f'"{members[i][0]}"{colon}{members[i][1]}' for i in order)
    text = draw(st.sampled_from(["", " ", "\n"])) + "{" + body + "}" + draw(
        st.sampled_from(["", "", " ", "\t\n", " x", ",", "}"]))
    frame = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 15)) == 0:
        frame = b"\xef\xbb\xbf" + frame
    if draw(st.integers(0, 7)) == 0:
        frame = frame[:draw(st.integers(0, len(frame)))]
    return frame


@settings(max_examples=ref.examples(600), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_single_frames_agree(frame):
    assert_agree([frame])


@settings(max_examples=ref.examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames(), min_size=2, max_size=8))
def test_frame_sequences_agree(stream):
    assert_agree(stream)


@settings(max_examples=ref.examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(STEP_TIMES), min_size=3, max_size=10),
       st.sampled_from(["last", "second"]),
       st.lists(st.sampled_from(["0", "1", "-0", "1.0", "7", "1e0", "1"]), min_size=1, max_size=3))
def test_template_streams_agree(step_times, layout, flush_ids):
    """Streams that make templates, then feed them numbers of every kind."""
    assert_agree(template_stream(step_times, layout=layout, flush_ids=flush_ids),
                 max_segment_bytes=120)


@settings(max_examples=ref.examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_server_streams_agree(data):
    """Real frames, each a near copy of the one before, with a byte changed now and then."""
    frames_, _ = server_stream(data.draw(st.sampled_from(["last", "second", "compact"])), count=6)
    stream = []
    for frame in frames_:
        frame = bytearray(frame)
        if data.draw(st.booleans()):
            at = data.draw(st.integers(0, len(frame) - 1))
            frame[at:at + 1] = data.draw(st.sampled_from([b'"', b"\\", b"{", b"[", b":", b",",
                                                          b"0", b"-", b".", b"e", b"9", b" ",
                                                          b"\xff", b"=", b"A", b""]))
        stream.append(bytes(frame))
    assert_agree(stream)


def test_an_unforeseen_error_in_the_fast_intake_takes_the_exact_path(monkeypatch):
    def broken(buf, envelopes):
        raise KeyError("a bug")
    monkeypatch.setattr(_fallback, "_fast_frame", broken)
    frames_, _ = server_stream("last", count=3)
    assert_agree(frames_ + [b'{"type":"chunk","data":"AAAA="}'])
