"""Frames for the tests that check the scanner: hand-written bad frames with the place of
their error marked, valid frames, frames that must be rejected whole, and hypothesis
strategies that make server frames and mutate them. test_frames.py checks the cores and
the reference model against them; test_differential.py checks the two cores against each
other on them.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

import reference as ref

MARK = b"<!>"


def marked(template: bytes) -> tuple[bytes, int]:
    assert template.count(MARK) == 1, template
    return template.replace(MARK, b""), template.index(MARK)


T = b'{"type":"timestamps","word_timestamps":'
C = b'{"type":"chunk","data":"'

BAD_FRAMES = [
    # not_object
    ("not_object", b"<!>[]"), ("not_object", b"  <!>[1]"), ("not_object", b'<!>"a"'),
    ("not_object", b"<!>1"), ("not_object", b"<!>null"), ("not_object", b"\t\r\n <!>x{}"),
    ("not_object", b"<!>\xef\xbb\xbf{}"), ("not_object", b" <!>\xef\xbb\xbf{}"),
    ("not_object", b"<!>\x00{}"), ("not_object", b"<!>\x0c{}"), ("not_object", b"<!>\xc2\xa0{}"),
    ("not_object", b"<!>}"),
    # truncated (offset = frame length)
    ("truncated", b"{<!>"), ("truncated", b'{"a"<!>'), ("truncated", b'{"a":<!>'),
    ("truncated", b'{"a":1<!>'), ("truncated", b'{"a":"x<!>'), ("truncated", b'{"a":"\\<!>'),
    ("truncated", b'{"a":"\\u12<!>'), ("truncated", b'{"a":[<!>'), ("truncated", b'{"a":[1,<!>'),
    ("truncated", b'{"a":{<!>'), ("truncated", b'{"a":t<!>'), ("truncated", b'{"a":nul<!>'),
    ("truncated", b'{"a":-<!>'), ("truncated", b'{"a":1.<!>'), ("truncated", b'{"a":1e<!>'),
    ("truncated", b'{"a":1e+<!>'), ("truncated", b'{"a":1,<!>'), ("truncated", b" {  <!>"),
    ("truncated", b'{"a":"\\ud800<!>'), ("truncated", b'{"a":"\\ud800\\<!>'),
    ("truncated", b'{"a":"\\ud800\\u<!>'), ("truncated", b'{"a":"\\ud800\\udc0<!>'),
    ("truncated", b'{"a":{"b":[<!>'), ("truncated", b'{"a":1 \n<!>'), ("truncated", b'{"<!>'),
    ("truncated", b'{"type":"chunk","data":"!!"<!>'),
    # syntax
    ("syntax", b"{<!>a:1}"), ("syntax", b"{<!>'a':1}"), ("syntax", b'{"a"<!>1}'),
    ("syntax", b'{"a" <!>=1}'), ("syntax", b'{"a":<!>}'), ("syntax", b'{"a":1<!>"b":2}'),
    ("syntax", b'{"a":1,<!>}'), ("syntax", b"{<!>,}"), ("syntax", b'{"a":1 ,<!>,"b":1}'),
    ("syntax", b'{"a":<!>NaN}'), ("syntax", b'{"a":<!>Infinity}'), ("syntax", b'{"a":<!>+1}'),
    ("syntax", b'{"a":<!>.5}'), ("syntax", b'{"a":0<!>1}'), ("syntax", b'{"a":-0<!>1}'),
    ("syntax", b'{"a":1.5<!>.3}'), ("syntax", b'{"a":tru<!>x}'), ("syntax", b'{"a":nul<!>}'),
    ("syntax", b'{"a":<!>True}'), ("syntax", b'{"a":true<!>1}'), ("syntax", b'{"a":[1 <!>2]}'),
    ("syntax", b'{"a":[1,<!>]}'), ("syntax", b'{"a":[<!>,1]}'), ("syntax", b'{"a":{"b"<!>}}'),
    ("syntax", b'{"a":1<!>]'), ("syntax", b'{"a":[1<!>}'), ("syntax", b"{\"a\":<!>'x'}"),
    ("syntax", b'{"a":<!>\xc3\xa9}'), ("syntax", b"{<!>\xc3\xa9:1}"), ("syntax", b'{"a":1<!>\x0c}'),
    ("syntax", b'{"a":<!>\x00}'), ("syntax", b'{"a":1e5<!>e}'), ("syntax", b'{"a":<!>undefined}'),
    ("syntax", b'{"a":"x"<!>"y"}'), ("syntax", b'{"a"<!>;1}'), ("syntax", b'{"a":[]<!>[]}'),
    ("syntax", b'{"a":<!>\xef\xbb\xbf1}'), ("syntax", b'{"a":[<!>}]}'), ("syntax", b'{"a":0<!>x0}'),
    ("syntax", b'{"a":1<!>\xc2\xa0}'), ("syntax", b'{"type":"chunk","data":"!!",<!>}'),
    ("syntax", b'{"a":fals<!>E}'), ("syntax", b"{\"a\":<!>''}"),
    # number: the byte that should be a digit
    ("number", b'{"a":-<!>}'), ("number", b'{"a":-<!>a}'), ("number", b'{"a":1.<!>}'),
    ("number", b'{"a":1.<!>e5}'), ("number", b'{"a":1e<!>}'), ("number", b'{"a":1E<!>x}'),
    ("number", b'{"a":1e+<!>}'), ("number", b'{"a":1e-<!>,"b":1}'), ("number", b'{"a":-<!>.5}'),
    ("number", b'{"a":-<!>-1}'), ("number", b'{"a":[-<!>]}'), ("number", b'{"a":0.<!>x}'),
    ("number", b'{"a":-<!>Infinity}'), ("number", b'{"a":1.<!>.}'), ("number", b'{"a":2E+<!>+1}'),
    # utf8 inside strings: the first byte of the bad sequence
    ("utf8", b'{"a":"<!>\xff"}'), ("utf8", b'{"a":"<!>\x80"}'), ("utf8", b'{"a":"<!>\xc0\x80"}'),
    ("utf8", b'{"a":"<!>\xc1\xbf"}'), ("utf8", b'{"a":"<!>\xe0\x80\x80"}'),
    ("utf8", b'{"a":"<!>\xe0\x9f\xbf"}'), ("utf8", b'{"a":"<!>\xed\xa0\x80"}'),
    ("utf8", b'{"a":"<!>\xed\xbf\xbf"}'), ("utf8", b'{"a":"<!>\xf0\x80\x80\x80"}'),
    ("utf8", b'{"a":"<!>\xf0\x8f\xbf\xbf"}'), ("utf8", b'{"a":"<!>\xf4\x90\x80\x80"}'),
    ("utf8", b'{"a":"<!>\xf5\x80\x80\x80"}'), ("utf8", b'{"a":"<!>\xf8\x88\x80\x80\x80"}'),
    ("utf8", b'{"a":"<!>\xc3("}'), ("utf8", b'{"a":"<!>\xe2\x82("}'), ("utf8", b'{"a":"<!>\xe2\x82"}'),
    ("utf8", b'{"a":"\xc3\xa9<!>\x80"}'), ("utf8", b'{"a":"ok\xe2\x82\xac<!>\xf0\x9f\x98"}'),
    ("utf8", b'{"<!>\xff":1}'), ("utf8", b'{"type":"<!>\xfe"}'), ("utf8", b'{"a":["x","<!>\xc3"]}'),
    ("utf8", b'{"a":"\xf4\x8f\xbf\xbf<!>\xf8"}'), ("utf8", b'{"context_id":"<!>\xc3\xc3\xa9"}'),
    ("utf8", b'{"a":"<!>\xe1\xbf\xc0"}'), ("utf8", b'{"a":"<!>\xf1\x80\x80\x7f"}'),
    # control bytes inside strings
    ("control", b'{"a":"<!>\x00"}'), ("control", b'{"a":"x<!>\n"}'), ("control", b'{"a":"<!>\t"}'),
    ("control", b'{"a":"<!>\x1f"}'), ("control", b'{"<!>\r":1}'),
    ("control", C + b'AA<!>\nAA"}'), ("control", b'{"a":{"b":["<!>\x01"]}}'),
    # escapes: the backslash
    ("escape", b'{"a":"<!>\\x"}'), ("escape", b'{"a":"<!>\\U0041"}'), ("escape", b'{"a":"<!>\\u004"}'),
    ("escape", b'{"a":"<!>\\u00G1"}'), ("escape", b'{"a":"<!>\\ "}'), ("escape", b'{"a":"<!>\\\'"}'),
    ("escape", b'{"a":"<!>\\a"}'), ("escape", b'{"a":"<!>\\0"}'), ("escape", b'{"a":"ok\\n<!>\\e"}'),
    ("escape", b'{"<!>\\k":1}'), ("escape", b'{"a":"<!>\\\xc3\xa9"}'), ("escape", b'{"a":"\\\\<!>\\q"}'),
    ("escape", b'{"a":"<!>\\u-123"}'), ("escape", b'{"a":"<!>\\u 123"}'),
    # surrogates: the backslash of the first escape of the bad pair
    ("surrogate", b'{"a":"<!>\\ud800"}'), ("surrogate", b'{"a":"<!>\\uDC00"}'),
    ("surrogate", b'{"a":"<!>\\udfff x"}'), ("surrogate", b'{"a":"<!>\\ud800\\ud800"}'),
    ("surrogate", b'{"a":"<!>\\ud800\\u0041"}'), ("surrogate", b'{"a":"<!>\\ud800\\n"}'),
    ("surrogate", b'{"a":"<!>\\udbff x"}'), ("surrogate", b'{"a":"\\ud800\\udc00<!>\\udc00"}'),
    ("surrogate", b'{"a":"<!>\\ud800x\\udc00"}'), ("surrogate", b'{"<!>\\udc00":1}'),
    ("surrogate", b'{"a":"<!>\\uDBFF\\uDBFF\\uDC00"}'), ("surrogate", b'{"a":"<!>\\udc00\\ud800"}'),
    ("surrogate", C + b'<!>\\ud800"}'),
    # trailing
    ("trailing", b"{}<!>x"), ("trailing", b"{} <!>{}"), ("trailing", b"{}\n<!>\x00"),
    ("trailing", b"{}<!>\xef\xbb\xbf"), ("trailing", b'{"a":1}<!>}'), ("trailing", b"{}\t\r\n <!>,"),
    ("trailing", b"{}<!>]"), ("trailing", b'{"type":"chunk","data":"!!"}<!>x'), ("trailing", b"{}<!>\x0c"),
    # duplicate known keys: the second key's opening quote
    ("duplicate", b'{"type":"chunk",<!>"type":"chunk"}'),
    ("duplicate", b'{"context_id":"a","x":1,<!>"context_id":"a"}'),
    ("duplicate", b'{"flush_id":null,<!>"flush_id":null}'),
    ("duplicate", b'{"data":"", <!>"d\\u0061ta":""}'),
    ("duplicate", b'{"t\\u0079pe":"a",<!>"type":"a"}'),
    ("duplicate", b'{"word_timestamps":1,<!>"word_timestamps":1}'),
    ("duplicate", b'{"phoneme_timestamps":{},\n<!>"phoneme_timestamps":{}}'),
    ("duplicate", b'{"type":"chunk",<!>"type":1}'),
    ("duplicate", b'{"flush_id":1,<!>"flush_\\u0069d":1,"x":[}'),
    # field types: the value
    ("field_type", b'{"type":<!>1}'), ("field_type", b'{"type":<!>true}'),
    ("field_type", b'{"type":<!>["chunk"]}'), ("field_type", b'{"type": <!>{}}'),
    ("field_type", b'{"context_id":<!>5}'), ("field_type", b'{"context_id":<!>false}'),
    ("field_type", b'{"data":<!>[]}'), ("field_type", b'{"data":<!>12}'),
    ("field_type", b'{"type":"done","data":<!>1}'),
    ("field_type", b'{"flush_id":<!>"1"}'), ("field_type", b'{"flush_id":<!>1.0}'),
    ("field_type", b'{"flush_id":<!>1e2}'), ("field_type", b'{"flush_id":<!>1E0}'),
    ("field_type", b'{"flush_id":<!>-1}'), ("field_type", b'{"flush_id":<!>4611686018427387905}'),
    ("field_type", b'{"flush_id":<!>99999999999999999999999}'), ("field_type", b'{"flush_id":<!>true}'),
    ("field_type", b'{"flush_id":<!>[1]}'), ("field_type", b'{"flush_id":<!>0.5}'),
    ("field_type", b'{"flush_id":<!>18446744073709551616}'), ("field_type", b'{"flush_id":<!>9223372036854775807}'),
    # field types are checked once the frame is valid JSON: a later JSON error wins
    ("duplicate", b'{"type":1,<!>"type":"chunk"}'), ("truncated", b'{"type":1,"a":[<!>'),
    ("trailing", b'{"type":1}<!>x'), ("syntax", b'{"flush_id":-5,"a":<!>NaN}'),
    ("field_type", T + b"<!>5}"), ("field_type", T + b'<!>{"words":["a"],"start":[0]}}'),
    ("field_type", T + b'<!>{"words":["a"],"start":[0],"end":[true]}}'),
    ("field_type", T + b'<!>{"words":[1],"start":[0],"end":[1]}}'),
    ("field_type", T + b'<!>{"words":"a","start":[0],"end":[1]}}'),
    ("field_type", T + b'<!>{"words":["a","b"],"start":[0,1],"end":[1]}}'),
    ("field_type", T + b'<!>{"words":["a"],"start":["0"],"end":[1]}}'),
    ("field_type", T + b'<!>[]}'),
    ("field_type", b'{"type":"phoneme_timestamps","phoneme_timestamps":<!>{"words":["a"],"start":[0],"end":[1]}}'),
    ("field_type", b'{"word_timestamps":<!>[],"type":"timestamps"}'),
    # base64 of chunk data: offsets into the frame
    ("base64_char", C + b'AA<!>!A"}'), ("base64_padding", C + b'AB=<!>C"}'),
    ("base64_length", C + b'AAA<!>"}'), ("base64_char", C + b'AA<!>\\u0021A"}'),
    ("base64_padding", C + b'AA==<!>\\u0041AAA"}'), ("base64_char", C + b'AA<!>\\nAA"}'),
    ("base64_length", C + b'A\\/A<!>"}'), ("base64_char", C + b'<!>\xc3\xa9AAA"}'),
    ("base64_char", C + b'AA<!>\\u00e9A"}'), ("base64_length", C + b'AAA=\\u003d<!>"}'),
    ("base64_padding", C + b'A\\u003d\\u003d<!>\\u003d"}'), ("base64_char", C + b'AAAA<!>\\ud83d\\ude00"}'),
    ("base64_char", C + b'AA<!>\\"A"}'), ("base64_char", C + b'AAAA<!>\\\\AAA"}'),
    ("base64_padding", b'{"flush_id":3,"data":"AA==<!>=AAA","type":"chunk"}'),
    ("base64_char", b'{"data":"QUJD<!>-","context_id":"x","type":"chunk"}'),
    ("base64_length", b'{"data":"QUJD\\u0044<!>","type":"c\\u0068unk"}'),
]

VALID_FRAMES = [
    b"{}", b" \t\r\n{ \t\r\n} \t\r\n", b'{"a":[[]],"b":{"c":{}}}', b'{"a":"\x7f"}',
    b'{"a":"\\ud800\\udc00\\uDBFF\\uDFFF"}', b'{"a":-0.0e+00,"b":1E-5,"c":0,"d":-12.5e3}',
    b'{"x":1,"x":2}', b'{"x":{"type":1,"type":2}}', b'{"type":"a","Type":"b","TYPE":3}',
    b'{"type":"chunk","word_timestamps":5}', b'{"type":"done","word_timestamps":5,"phoneme_timestamps":"x"}',
    b'{"type":"flush_done","data":"!!"}', b'{"data":"!!"}', b'{"type":null,"data":null,"flush_id":null,"context_id":null}',
    b'{"flush_id":0}', b'{"flush_id":4611686018427387904}', b'{"type":"chunk","data":""}',
    b'{"type":"chunk","data":"A\\/A\\u002B"}', b'{"a":"\xf4\x8f\xbf\xbf\xe2\x82\xac\xc3\xa9"}',
    b'{"type":"chunk","data":"AR=="}', b'{"a":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u00E9"}',
    b'{"type":"timestamps","phoneme_timestamps":5,"word_timestamps":{"words":[],"start":[],"end":[]}}',
]


# --- random mutations of server frames -----------------------------------------------------

INTERESTING = [b'"', b"\\", b"{", b"}", b"[", b"]", b":", b",", b" ", b"\x00", b"\x1f", b"\x7f",
               b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xff", b"=", b"!", b"-", b".", b"e", b"0",
               b"u", b"\\u", b"\\ud800", b"\\udc00", b"n", b"t", b"/", b"A", b"\n"]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                      st.floats(allow_nan=False, allow_infinity=False, width=32), st.text(max_size=6))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=6)


@st.composite
def server_objects(draw):
    kind = draw(st.sampled_from(["chunk", "chunk", "flush_done", "done", "error", "timestamps",
                                 "phoneme_timestamps", "mystery", None]))
    obj = {}
    if kind is not None:
        obj["type"] = kind
    if draw(st.booleans()):
        obj["context_id"] = draw(st.sampled_from(["a", "b", "", "é/😀", "x\"y\\z"]))
    if draw(st.booleans()):
        obj["flush_id"] = draw(st.integers(0, 5) | st.just(2**62))
    if kind == "chunk":
        obj["data"] = ref.b64encode(draw(st.binary(max_size=12)))
    elif kind in ("timestamps", "phoneme_timestamps"):
        names = draw(st.lists(st.text(max_size=3), max_size=3))
        times = [round(0.1 * i, 3) for i in range(len(names))]
        key, names_key = ("word_timestamps", "words") if kind == "timestamps" else ("phoneme_timestamps", "phonemes")
        obj[key] = {names_key: names, "start": times, "end": times}
    elif kind == "error":
        if draw(st.booleans()):
            obj["error"] = draw(st.text(max_size=8))
        else:
            obj.update(error_code="x", title=draw(st.text(max_size=4)), message=draw(st.text(max_size=6)))
    if draw(st.booleans()):
        obj["status_code"] = 206
        obj["extra"] = draw(json_value)
    return obj


@st.composite
def mutated_frames(draw):
    obj = draw(server_objects())
    rng = random.Random(draw(st.integers(0, 2**32)))
    frame = bytearray(ref.server_frame(obj, rng, ws=draw(st.sampled_from([0.0, 0.3, 1.0])),
                                       escape=draw(st.sampled_from([0.0, 0.2, 1.0]))))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "cut"]))
        pos = draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "replace":
            frame[pos:pos + 1] = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=1))
        elif op == "insert":
            frame[pos:pos] = draw(st.sampled_from(INTERESTING))
        elif op == "delete":
            del frame[pos:pos + draw(st.integers(1, 3))]
        else:
            del frame[pos:]
    return bytes(frame)


# --- frames a sink must reject whole, whatever came before --------------------------------

REJECTED = [
    ("not_object", b'["type","done"]'),
    ("truncated", b'{"type":"done","context_id":"a"'),
    ("syntax", b'{"type":"done","context_id":"a",}'),
    ("utf8", b'{"type":"chunk","context_id":"a","flush_id":7,"data":"AAAA","x":"\xff"}'),
    ("control", b'{"type":"chunk","context_id":"a","flush_id":7,"data":"AAAA","x":"\x01"}'),
    ("escape", b'{"type":"error","context_id":"b","error":"x\\q"}'),
    ("surrogate", b'{"type":"flush_done","context_id":"a","flush_id":7,"x":"\\udc00"}'),
    ("number", b'{"type":"done","context_id":"b","x":-}'),
    ("depth", b'{"type":"done","context_id":"a","x":' + b"[" * 64 + b"]" * 64 + b"}"),
    ("trailing", b'{"type":"done","context_id":"a"} {}'),
    ("duplicate", b'{"type":"chunk","context_id":"a","flush_id":7,"data":"AAAA","flush_id":7}'),
    ("field_type", b'{"type":"chunk","context_id":"a","data":"AAAA","flush_id":7.0}'),
    ("field_type", b'{"type":"timestamps","context_id":"q","flush_id":4,"word_timestamps":{"words":["a"],"start":[],"end":[]}}'),
    ("field_type", b'{"type":"phoneme_timestamps","context_id":"a","flush_id":7,"phoneme_timestamps":{"phonemes":[1],"start":[0],"end":[0]}}'),
    ("base64_char", b'{"type":"chunk","context_id":"a","flush_id":7,"data":"AAA!"}'),
    ("base64_padding", b'{"type":"chunk","context_id":"n","data":"AAAAA=A="}'),
    ("base64_length", b'{"type":"chunk","context_id":"b","flush_id":9,"data":"AAAAAA"}'),
    ("base64_char", b'{"type":"chunk","flush_id":5,"data":"AA\\u00e9A"}'),
    ("utf8", '{"type":"chunk","context_id":"a","flush_id":7,"data":"AAAA","x":"\udc00"}'),
]
