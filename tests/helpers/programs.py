"""Programs of Sink calls for the tests that compare a sink with the reference model or the
two cores with each other (test_sink_model.py, test_differential.py,
test_twin_fast_path.py): hypothesis strategies that make them the way a server sends
frames, the frame in each input type, and a call's outcome in a form that compares.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

from flushsink import CapacityError, FrameError

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
