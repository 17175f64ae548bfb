"""A hostile or broken server: every bad frame is a typed error or a counted drop, the
connection's other contexts keep working, and nothing already received is lost.

Three layers: a deterministic differential fuzz smoke run (the same engine as the atheris
target in fuzz/, tests/helpers/differential.py: compiled core against the pure twin, fixed
seeds); hand-made frames through the sans-I/O Session on the core of the run; and the same
frames through the asyncio and sync clients from a scripted websocket server of our own on
loopback (for frames the emulator cannot send), each stopped by its test, every wait
bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile

import flushsink
from flushsink import _fallback, sync
from flushsink.errors import CapacityError, ConnectionLost, FrameError
from flushsink.formats import AudioFormat
from flushsink.segments import ContextDone, SegmentReady
from flushsink._shell import ClientBase
from flushsink.session import Session

try:
    from flushsink import _speedups
except ImportError:  # pragma: no cover
    _speedups = None

from helpers import differential  # shared with the atheris target, fuzz/fuzz_sink.py
from helpers.scripted import (TIMEOUT, ScriptedServer, audio_of, b64, chunk, done, flush_done,
                              run, run_script)

S16 = AudioFormat("pcm_s16le", 24000)


# --- 1. the fuzz smoke run -------------------------------------------------------------------
#
# Deterministic: fixed seeds, a fixed number of programs. It needs both cores, whichever one
# the suite runs on, so it runs once, in the compiled pass.

smoke = pytest.mark.skipif(_speedups is None or flushsink.BACKEND != "compiled",
                           reason="differential: needs the compiled core; runs in the compiled pass")


def _supported_kernels() -> list[str]:
    if _speedups is None:
        return []
    before, found = _speedups.simd_path(), []
    for name in ("scalar", "avx2", "avx512"):
        try:
            found.append(_speedups._set_simd_path(name))
        except ValueError:
            pass
    _speedups._set_simd_path(before)
    return found


@pytest.mark.slow
@smoke
def test_fuzz_smoke_structured():
    counts = {"FrameError": 0, "CapacityError": 0, "segments": 0}
    for seed in range(3000):
        config, ops = differential.generate_structured(differential.RandomProvider(seed))
        try:
            result = differential.run_program(config, ops)
        except differential.Finding as exc:
            raise AssertionError(f"seed {seed}: {exc}\nops: {ops!r}") from None
        for key in counts:
            counts[key] += result[key]
    # the generator must keep reaching every outcome, or the smoke run tests nothing
    assert all(n > 100 for n in counts.values()), counts


@pytest.mark.slow
@smoke
@pytest.mark.parametrize("kernel", ["scalar", "avx2", "avx512"])
def test_fuzz_smoke_on_every_base64_kernel(kernel):
    if kernel not in _supported_kernels():
        pytest.skip(f"this CPU has no {kernel} kernel")
    before = _speedups.simd_path()
    _speedups._set_simd_path(kernel)
    try:
        for seed in range(50_000, 50_600):
            config, ops = differential.generate_structured(differential.RandomProvider(seed))
            try:
                differential.run_program(config, ops)
            except differential.Finding as exc:
                raise AssertionError(f"{kernel}, seed {seed}: {exc}\nops: {ops!r}") from None
    finally:
        _speedups._set_simd_path(before)


@pytest.mark.slow
@smoke
def test_fuzz_smoke_raw_mutations():
    rng = random.Random(20251125)
    seeds = [differential.encode_raw(c, o) for c, o in differential.seed_programs()]
    seeds += differential.big_seed_inputs()
    counts = {"FrameError": 0, "CapacityError": 0, "segments": 0}
    for i in range(4000):
        data = differential.mutate_raw(rng, rng.choice(seeds))
        config, ops = differential.decode_raw(data)
        try:
            result = differential.run_program(config, ops)
        except differential.Finding as exc:
            raise AssertionError(f"input {data!r}: {exc}") from None
        for key in counts:
            counts[key] += result[key]
    assert all(n > 100 for n in counts.values()), counts


@smoke
def test_fuzz_engine_catches_a_disagreement():
    """The comparison is not vacuous: a twin that differs by one byte is caught."""
    class Skewed:
        class Sink(_fallback.Sink):
            def feed(self, frame):
                events = super().feed(frame)
                for ev in events:
                    if isinstance(ev, SegmentReady) and len(ev.segment.samples):
                        ev.segment.samples = ev.segment.samples.copy()
                        ev.segment.samples[0] ^= 1
                return events

    frames = [chunk("a", 1, b"\x01\x02"), flush_done("a", 1)]
    with pytest.raises(differential.Finding, match="cores differ"):
        differential.run_program(differential.DEFAULT_CONFIG,
                                 [("feed", f, "bytes") for f in frames], pure=Skewed)


# --- frames by hand (chunk, flush_done, done: helpers/scripted.py) ----------------------------

# Base64 broken at every position class: (label, data text, code, index in the text).
# "QUJD" is "ABC"; a body of 12 full quanta (48 chars) spans the 32-byte AVX2 and 16-byte
# blocks; the longer one (400 chars) crosses the AVX2 and AVX-512 bulk loops.
_GOOD48 = b64(bytes(range(36)))
_GOOD400 = b64(bytes(range(256)) + bytes(range(44)))
B64_CASES = [
    ("first char", "!" + _GOOD48[1:], "base64_char", 0),
    ("second char", _GOOD48[:1] + "-" + _GOOD48[2:], "base64_char", 1),
    ("middle", _GOOD48[:21] + "_" + _GOOD48[22:], "base64_char", 21),
    ("in a SIMD block", _GOOD400[:200] + "*" + _GOOD400[201:], "base64_char", 200),
    ("SIMD block edge", _GOOD400[:255] + "." + _GOOD400[256:], "base64_char", 255),
    ("last quantum 0", _GOOD48[:44] + "%" + _GOOD48[45:], "base64_char", 44),
    ("last quantum 1", _GOOD48[:45] + "%" + _GOOD48[46:], "base64_char", 45),
    ("last quantum 2", _GOOD48[:46] + "%" + _GOOD48[47:], "base64_char", 46),
    ("last char", _GOOD48[:47] + "%", "base64_char", 47),
    ("pad in the body", _GOOD48[:8] + "=" + _GOOD48[9:], "base64_padding", 9),
    ("third pad", "QQ===", "base64_padding", 4),
    ("char after pad", "QQ==QUJD", "base64_padding", 4),
    ("pad then char", "QUI=D", "base64_padding", 4),
    ("length 1", "Q", "base64_length", 1),
    ("length 5", "QUJDR", "base64_length", 5),
    ("unpadded", "QUI", "base64_length", 3),
    ("space", "QUJD QUJD", "base64_char", 4),
    ("url-safe", "-_-_", "base64_char", 0),
    ("non-ASCII", "QUJDé", "base64_char", 4),
]


def data_frame(text: str, cid="a", fid=1) -> tuple[bytes, int]:
    """A chunk frame whose data is text (written as JSON); the offset where data starts."""
    head = '{"type":"chunk","context_id":%s,"flush_id":%d,"data":"' % (json.dumps(cid), fid)
    body = json.dumps(text, ensure_ascii=False)[1:-1]
    return (head + body + '"}').encode(), len(head.encode())


def _escaped_data_frame() -> bytes:
    text = b64(bytes(range(48)))  # has '/' and '+'
    escaped = "".join("\\/" if ch == "/" else "\\u%04x" % ord(ch) if ch in "AQg+" else ch
                      for ch in text)
    return ('{"type":"chunk","context_id":"b","flush_id":1,"data":"' + escaped + '"}').encode()


# (name, frame, expected FrameError code or None for a frame that is accepted).
HOSTILE = [
    ("truncated", b'{"type":"chunk","context_id":"a","data":"AAAA', "truncated"),
    ("no colon", b'{"type" "chunk"}', "syntax"),
    ("single quotes", b"{'type':'chunk'}", "syntax"),
    ("trailing comma", b'{"type":"chunk",}', "syntax"),
    ("two objects", b'{"type":"done","context_id":"zz"}{}', "trailing"),
    ("not an object", b'["chunk"]', "not_object"),
    ("empty", b"", "not_object"),
    ("BOM", b'\xef\xbb\xbf{"type":"done","context_id":"a"}', "not_object"),
    ("NaN", b'{"type":"chunk","context_id":"a","step_time":NaN,"data":""}', "syntax"),
    ("Infinity", b'{"type":"chunk","context_id":"a","x":-Infinity,"data":""}', "number"),
    ("bad utf-8 id", b'{"type":"chunk","context_id":"a\xff","data":"QUJD"}', "utf8"),
    ("overlong utf-8", b'{"type":"chunk","context_id":"\xc0\xaf","data":"QUJD"}', "utf8"),
    ("utf-8 surrogate", b'{"type":"chunk","x":"\xed\xa0\x80","context_id":"a","data":""}', "utf8"),
    ("cut utf-8", b'{"type":"chunk","context_id":"a","data":"QUJD\xe2\x82"}', "utf8"),
    ("raw control", b'{"type":"chunk","context_id":"a\n","data":""}', "control"),
    ("bad escape", b'{"type":"chunk","context_id":"a\\x41","data":""}', "escape"),
    ("lone surrogate escape", b'{"type":"chunk","context_id":"\\ud800","data":""}', "surrogate"),
    ("duplicate type", b'{"type":"chunk","context_id":"a","type":"done"}', "duplicate"),
    ("duplicate escaped key", b'{"context_id":"a","type":"chunk","t\\u0079pe":"done"}', "duplicate"),
    ("depth 65", b'{"type":"chunk","x":' + b"[" * 64 + b"]" * 64 + b',"context_id":"a"}', "depth"),
    ("flush_id negative", b'{"type":"chunk","context_id":"a","flush_id":-1,"data":""}', "field_type"),
    ("flush_id 2**62+1", b'{"type":"chunk","context_id":"a","flush_id":4611686018427387905,"data":""}',
     "field_type"),
    ("flush_id float", b'{"type":"chunk","context_id":"a","flush_id":1.0,"data":""}', "field_type"),
    ("data number", b'{"type":"chunk","context_id":"a","flush_id":1,"data":12}', "field_type"),
    ("context_id object", b'{"type":"chunk","context_id":{"a":1},"data":""}', "field_type"),
    ("escaped bad base64", b'{"type":"chunk","context_id":"a","flush_id":1,"data":"QU\\u0021D"}',
     "base64_char"),
] + [("base64 " + label, data_frame(text)[0], code) for label, text, code, _ in B64_CASES] + [
    # accepted: unknown duplicate keys, depth 64, escapes in data, unknown types
    ("depth 64", b'{"type":"nothing","x":' + b"[" * 63 + b"]" * 63 + b"}", None),
    ("unknown duplicate keys", b'{"type":"nothing","x":1,"x":2}', None),
    ("unknown type", b'{"type":"voice_changed","context_id":"a"}', None),
    ("error without context", b'{"type":"error","error":"rate limited"}', None),
]


@pytest.mark.parametrize("label, text, code, index", B64_CASES, ids=[c[0] for c in B64_CASES])
def test_base64_error_offsets_at_every_position_class(core, label, text, code, index):
    frame, start = data_frame(text)
    with pytest.raises(FrameError) as info:
        core.Sink().feed(frame)
    assert info.value.code == code
    assert info.value.offset == start + len(text[:index].encode())


def test_escapes_in_data_decode_like_plain_base64(core):
    sink = core.Sink(S16)
    assert sink.feed(_escaped_data_frame()) == ()
    (ready,) = sink.feed(flush_done("b", 1))
    assert ready.segment.samples.tobytes() == bytes(range(48))


def interleaved_script(bad_frames: list[bytes]) -> tuple[list[bytes], dict[str, bytes]]:
    """Frames of contexts a and b with every bad frame in between; the audio each must get."""
    frames, audio = [], {"a": b"", "b": b""}
    for part in range(2):
        for cid in ("a", "b"):
            piece = audio_of(cid, part)
            frames.append(chunk(cid, 1, piece))
            audio[cid] += piece
        frames += bad_frames[part::2]
    frames += [flush_done("a", 1), flush_done("b", 1), done("a"), done("b")]
    return frames, audio


def test_session_survives_every_hostile_frame(core):
    delivered = {"a": [], "b": []}
    session = Session(core.Sink(S16, drop_unannounced=True))  # as the clients' Sinks
    for cid in ("a", "b"):
        session.request(session.new_context(model_id="m", voice="v", context_id=cid), "x")
    rejected = 0
    for name, frame, code in HOSTILE:
        if code is None:
            continue
        with pytest.raises(FrameError) as info:
            core.Sink(S16).feed(frame)
        assert info.value.code == code, name
        rejected += 1
    frames, audio = interleaved_script([f for _, f, _ in HOSTILE])
    for frame in frames:
        for event in session.receive(frame):
            delivered[event.context_id].append(event)
    assert session.rejected_frames == rejected
    assert session.sink.stats.rejected_frames == rejected
    # every bad base64 frame was a chunk of a/1: it keeps its good audio and says what it
    # lost; b got none of them and is complete
    lost = sum(1 for _, frame, code in HOSTILE if code and code.startswith("base64"))
    for cid in ("a", "b"):
        segments = [e.segment for e in delivered[cid] if isinstance(e, SegmentReady)]
        assert [(s.flush_id, s.complete) for s in segments] == [(1, cid == "b")]
        assert segments[0].samples.tobytes() == audio[cid]
        assert any(isinstance(e, ContextDone) for e in delivered[cid])
    error = [e.segment for e in delivered["a"] if isinstance(e, SegmentReady)][0].error
    assert error.startswith(f"lost {lost} chunks (") and error.endswith(
        ", the first: invalid base64 character"), error


def test_late_and_duplicate_frames_are_dropped_and_counted(core, tmp_path):
    writer = flushsink.FileWriter(tmp_path)
    sink = core.Sink(S16)
    events = []
    for frame in [chunk("a", 1, b"\x01\x00\x02\x00"), flush_done("a", 1),
                  flush_done("a", 1),                 # flush_done twice
                  chunk("a", 1, b"\x09\x09"),          # a chunk for a finished segment
                  flush_done("a", 7),                  # flush_done for a segment never seen
                  done("a"), done("a"),                # done twice
                  chunk("a", 2, b"\x05\x05"), chunk("a", None, b"\x05\x05"),  # after done
                  flush_done("a", 8),
                  b'{"type":"timestamps","context_id":"a","flush_id":1,'
                  b'"word_timestamps":{"words":["x"],"start":[0],"end":[1]}}']:
        events += sink.feed(frame)
    for event in events:
        writer(event)
    ready = [e.segment for e in events if isinstance(e, SegmentReady)]
    assert [(s.flush_id, s.samples.tobytes(), s.complete) for s in ready] == [
        (1, b"\x01\x00\x02\x00", True), (7, b"", True)]  # an unknown flush_done: an empty segment
    assert sink.stats.dropped_frames == 7
    assert sorted(os.listdir(tmp_path / "a")) == ["1.wav"]  # the empty one is not written
    assert ready[1].path is None
    data, _ = soundfile.read(tmp_path / "a" / "1.wav", dtype="int16")
    assert data.tolist() == [1, 2]


# --- the clients against a scripted websocket server (helpers/scripted.py) -------------------

def test_client_survives_every_hostile_frame_in_text_and_binary_frames(tmp_path):
    bad = [f for _, f, code in HOSTILE if code is not None]
    bad = [f if i % 2 else ("binary", f) for i, f in enumerate(bad)]
    frames, audio = interleaved_script(bad)
    results, tts = run(run_script(frames, writer=flushsink.FileWriter(tmp_path)))
    assert tts.session.rejected_frames == len(bad)
    for cid in ("a", "b"):
        segments, failure = results[cid]
        assert failure is None
        assert [s.samples.tobytes() for s in segments] == [audio[cid]]
        data, _ = soundfile.read(segments[0].path, dtype="int16")
        assert data.tobytes() == audio[cid]


def test_sync_client_survives_hostile_frames():
    bad = [f for _, f, code in HOSTILE if code is not None][:12]
    frames, audio = interleaved_script(bad)
    with ScriptedServer(frames, wait_for=2).running_in_thread() as server:
        with sync.connect(server.url, receive_timeout=TIMEOUT) as tts:
            contexts = [tts.context(voice="v", context_id=cid) for cid in ("a", "b")]
            for ctx in contexts:
                ctx.push("text")
            got = {ctx.context_id: ctx.collect() for ctx in contexts}
            assert tts.session.rejected_frames == len(bad)
    for cid in ("a", "b"):
        assert [s.samples.tobytes() for s in got[cid]] == [audio[cid]]


def test_frame_over_max_size_closes_1009_and_keeps_what_arrived(tmp_path):
    a1, b1 = audio_of("a", 0), audio_of("b", 0)
    big = chunk("a", 1, bytes(60_000))
    script = [chunk("a", 1, a1), chunk("b", 1, b1), big, chunk("b", 1, b1)]
    results, tts = run(run_script(script, max_size=50_000, writer=flushsink.FileWriter(tmp_path)))
    assert tts.close_code == 1009
    for cid, audio in (("a", a1), ("b", b1)):
        segments, failure = results[cid]
        assert isinstance(failure, ConnectionLost) and "1009" in str(failure)
        assert [(s.samples.tobytes(), s.complete) for s in segments] == [(audio, False)]
        assert segments[0].path.endswith(".partial.wav")
        data, _ = soundfile.read(segments[0].path, dtype="int16")
        assert data.tobytes() == audio


def test_flood_of_flush_ids_fails_that_context_only():
    flood = [chunk("a", fid, bytes(1000)) for fid in range(1, 40)]  # never flushed
    b1 = audio_of("b", 0)
    script = [chunk("b", 1, b1)] + flood + [flush_done("b", 1), done("b")]
    sink = flushsink.Sink(S16, max_total_bytes=10_000)
    results, tts = run(run_script(script, sink=sink))
    segments, failure = results["a"]
    assert isinstance(failure, CapacityError) and failure.context_id == "a"
    # the segment the refused chunk was for says what it lost; the others were cancelled
    assert all(not s.complete for s in segments)
    errors = sorted({s.error for s in segments})
    assert errors == ["cancelled", "cancelled; lost 1 chunk (1000 bytes): over max_total_bytes=10000"]
    assert sum(len(s.samples) * 2 for s in segments) <= 10_000 - len(b1)  # what fitted is kept
    assert [s.samples.tobytes() for s in results["b"][0]] == [b1] and results["b"][1] is None
    assert tts.sink.stats.open_bytes == 0


@pytest.mark.parametrize("fault, dropped", [("flood_contexts:60@done", 120),
                                             ("flood_flushes:60@done", 121)])
def test_emulator_floods_are_dropped_and_counted(fault, dropped):
    """The emulator's floods (a chunk for each of 60 contexts the client never opened, all
    open at once, then their dones; or 60 chunk + flush_done pairs of one such context)
    against a cap with room for the client's own segment and 10 flood chunks: every frame
    of the flood is a counted drop, nothing of it is stored, the client's context is
    untouched."""
    from flushsink.emulator import Emulator, render

    voice = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
    output_format = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 44100}
    want = render("Stay hungry, stay foolish.", voice, AudioFormat("pcm_s16le", 44100))

    async def main():
        async with Emulator(chunk_ms=20) as emu:
            flood_chunk = emu.chunk_bytes(AudioFormat("pcm_s16le", 44100))
            sink = flushsink.Sink(max_total_bytes=len(want) + 10 * flood_chunk)
            async with flushsink.connect(f"{emu.ws_url}?fault={fault}", sink=sink,
                                         receive_timeout=TIMEOUT) as tts:
                ctx = tts.context(voice=voice, output_format=output_format)
                await ctx.push("Stay hungry, stay foolish.")
                await ctx.no_more_inputs()
                return await ctx.collect(), tts.session, sink.stats

    segments, session, stats = run(main())
    assert [(s.samples.tobytes(), s.complete) for s in segments] == [(want, True)]
    assert stats.dropped_frames == dropped
    assert session.rejected_frames == stats.rejected_frames == 0
    assert session.unrouted == 0 and stats.open_bytes == 0
    assert stats.audio_bytes == len(want)  # not one byte of the flood was stored


HOSTILE_IDS = ["../../escape", "../escape", "/etc/passwd", "..", ".", "a/b", "a_b", "a:b",
               "a\\b", "A/B", "con", "x.partial", "\u00e9t\u00e9", "e\u0301t\u0065\u0301",
               "a" * 300, "a" * 299 + "b", " ", "\u202e"]


def test_hostile_ids_from_the_server_stay_inside_and_apart(tmp_path):
    out = tmp_path / "nested" / "out"
    script = []
    for k, cid in enumerate(HOSTILE_IDS):
        script += [chunk(cid, 1, bytes([k, 0]) * 3), flush_done(cid, 1), done(cid)]
    results, tts = run(run_script(script, ids=HOSTILE_IDS, wait_for=len(HOSTILE_IDS),
                                  writer=flushsink.FileWriter(out)))
    paths = []
    for k, cid in enumerate(HOSTILE_IDS):
        segments, failure = results[cid]
        assert failure is None, cid
        assert [s.samples.tobytes() for s in segments] == [bytes([k, 0]) * 3], cid
        paths.append(segments[0].path)
    assert len(set(paths)) == len(HOSTILE_IDS)  # no two ids share a file
    written = sorted(str(p) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(paths)  # nothing anywhere else, no temp file left
    for k, path in enumerate(paths):
        assert Path(path).resolve().is_relative_to(out.resolve())
        data, _ = soundfile.read(path, dtype="int16")
        assert data.tolist() == [k] * 3  # each id's own audio: nothing overwritten


def test_chunks_after_done_and_done_twice_change_no_file(tmp_path):
    a1 = audio_of("a", 0)
    script = [chunk("a", 1, a1), done("a"), chunk("a", 1, bytes(8)), chunk("a", 2, bytes(8)),
              done("a"), flush_done("a", 1), chunk("b", 1, b"\x07\x00"), done("b")]
    results, tts = run(run_script(script, writer=flushsink.FileWriter(tmp_path)))
    assert [s.samples.tobytes() for s in results["a"][0]] == [a1]
    assert [s.samples.tobytes() for s in results["b"][0]] == [b"\x07\x00"]
    assert tts.sink.stats.dropped_frames == 4
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.wav")) == \
        ["a/1.wav", "b/1.wav"]
    data, _ = soundfile.read(tmp_path / "a" / "1.wav", dtype="int16")
    assert data.tobytes() == a1


def test_server_errors_end_only_their_context():
    a1 = audio_of("a", 0)
    script = [chunk("a", 1, a1), chunk("b", 1, a1),
              json.dumps({"type": "error", "error": "connection-level"}).encode(),
              json.dumps({"type": "error", "context_id": "a", "status_code": 500,
                          "error_code": "internal", "title": "Boom", "message": "it broke"}).encode(),
              done("b")]
    results, tts = run(run_script(script))
    segments, failure = results["a"]
    assert type(failure).__name__ == "ContextFailed" and "it broke" in str(failure)
    assert [(s.samples.tobytes(), s.complete) for s in segments] == [(a1, False)]
    assert [s.samples.tobytes() for s in results["b"][0]] == [a1] and results["b"][1] is None
    assert [e.message for e in tts.session.server_errors] == ["connection-level"]


def test_no_file_name_is_shared_by_two_ids_even_case_or_unicode_variants(tmp_path):
    ids = ["Ab", "aB", "a/b", "a_b", "a:b", "a?b", "a*b", "a b", "\u00c5", "A\u030a"]
    writer = flushsink.FileWriter(tmp_path, "{context_id}.raw", container="raw")
    sink = flushsink.Sink(S16)
    for k, cid in enumerate(ids):
        sink.feed(chunk(cid, 1, bytes([k]) * 4))
        for event in sink.feed(done(cid)):
            writer(event)
    names = sorted(os.listdir(tmp_path))
    assert len(names) == len(ids)
    contents = sorted((tmp_path / n).read_bytes() for n in names)
    assert contents == sorted(bytes([k]) * 4 for k in range(len(ids)))
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._~-]*", name), name


def test_incomplete_last_sample_is_reported_not_lost():
    sink = flushsink.Sink(AudioFormat("pcm_f32le", 24000))
    sink.feed(chunk("a", 1, b"\x00\x00\x80\x3f\x01\x02\x03"))  # one float and 3 stray bytes
    (ready,) = sink.feed(flush_done("a", 1))
    assert ready.segment.samples.tolist() == [1.0]
    assert ready.segment.trailing_bytes == b"\x01\x02\x03"
    assert np.array_equal(ready.segment.samples, np.array([1.0], "<f4"))


def test_a_segment_that_lost_a_chunk_is_written_as_partial(core, tmp_path):
    """docs/sink.md "Lost chunks": the bad chunk in the middle is lost, the segment keeps
    the audio around it, finishes incomplete (flush_done notwithstanding) and says what
    it lost; the FileWriter writes it as .partial, never under the complete name."""
    writer = flushsink.FileWriter(tmp_path)
    shell = ClientBase("ws://127.0.0.1:9", sink=core.Sink(S16), writer=writer)  # no connection
    session = shell.session
    session.request(session.new_context(model_id="m", voice="v", context_id="a"), "x")
    good1, good2 = audio_of("a", 0), audio_of("a", 1)
    bad, _ = data_frame("QUJD" * 8 + "!!!!")
    for frame in [chunk("a", 1, good1), bad, chunk("a", 1, good2), flush_done("a", 1)]:
        shell._receive(frame)
    assert session.rejected_frames == 1
    assert sorted(os.listdir(tmp_path / "a")) == ["1.partial.wav"]
    data, rate = soundfile.read(tmp_path / "a" / "1.partial.wav", dtype="int16")
    assert data.tobytes() == good1 + good2 and rate == 44100  # the context's default format


# --- floods the caps do not see -----------------------------------------------------------------

CLIENTS = ["asyncio", "sync"]
TESTS = Path(__file__).resolve().parent


def fragment_flood(client: str, fragments: int, max_size: int, **env) -> dict:
    """helpers/fragment_flood.py in a subprocess of its own: ru_maxrss is then the flood's."""
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "helpers.fragment_flood", client, str(fragments),
                           str(max_size)], capture_output=True, text=True, timeout=240,
                          cwd=TESTS, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _websockets_fragment_limit():
    try:
        from websockets.asyncio.messages import MAX_FRAGMENTS
    except ImportError:
        return None
    return MAX_FRAGMENTS


@pytest.mark.skipif(_websockets_fragment_limit() is None,
                    reason="this websockets' recv() has no fragment limit")
@pytest.mark.parametrize("client", CLIENTS)
def test_flood_of_tiny_fragments_is_refused_like_recv(client):
    """12 MB sent as one TEXT frame and 12 million 1-byte continuation frames: refused
    with 1009 "too many fragments" at websockets' MAX_FRAGMENTS, as its recv() does.
    Before: the client kept every fragment (a list of bytes objects: 64 B each, 764 MB)."""
    result = fragment_flood(client, 12_000_000, 16 * 2**20)
    assert result["close_code"] == 1009 and "too many fragments" in result["message"]
    assert result["error"] == "ConnectionLost"
    assert result["growth"] < 200 * 2**20, result


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
def test_fragments_are_joined_in_memory_bounded_by_the_message(client):
    """Without a fragment limit (websockets < 16, or WEBSOCKETS_MAX_FRAGMENTS raised) a
    message of a million 1-byte fragments is joined into one buffer: the peak grows by
    the parser's per-read frames and the message, not by 64 B per fragment (before:
    215 MB asyncio, 175 MB sync; now 82 and 11). The message arrives whole."""
    result = fragment_flood(client, 1_000_000, 16 * 2**20, WEBSOCKETS_MAX_FRAGMENTS="1000000000")
    assert result["close_code"] == 1000, result  # the server's: the message was accepted
    assert result["growth"] < 150 * 2**20, result


@pytest.mark.parametrize("client", CLIENTS)
def test_fragmented_message_over_max_size_closes_1009(client, monkeypatch):
    """The size of a fragmented message counts as a whole, as in recv(): 1009 once it
    passes max_size, however small each fragment."""
    from helpers.fragment_flood import chunk_message, flood_bytes
    from helpers.rawserver import RawServer, accept_websocket

    from flushsink import client as client_module
    monkeypatch.setattr(client_module._Connection, "_max_fragments", 10**9, raising=False)
    monkeypatch.setattr(sync._Connection, "_max_fragments", 10**9, raising=False)
    wire = flood_bytes(chunk_message(60_000))

    def handler(conn):
        accept_websocket(conn)
        conn.recv(65536)
        try:
            conn.sendall(wire)
        except OSError:
            pass
        conn.shutdown(socket.SHUT_RDWR)

    fmt = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000}
    with RawServer(handler) as server:
        if client == "asyncio":
            async def main():
                async with flushsink.connect(server.url, max_size=50_000,
                                             receive_timeout=TIMEOUT) as tts:
                    ctx = tts.context(voice="v", context_id="a", output_format=fmt)
                    await ctx.push("text")
                    with pytest.raises(ConnectionLost) as lost:
                        await ctx.collect()
                    return tts.close_code, str(lost.value)

            code, message = run(main())
        else:
            with sync.connect(server.url, max_size=50_000, receive_timeout=TIMEOUT) as tts:
                ctx = tts.context(voice="v", context_id="a", output_format=fmt)
                ctx.push("text")
                with pytest.raises(ConnectionLost) as lost:
                    ctx.collect()
                code, message = tts.close_code, str(lost.value)
    assert code == 1009 and "1009" in message


def in_thread(target, timeout: float = 30):
    """Run a blocking test body in a thread, so a hang fails the test instead of the run."""
    outcome: dict = {}

    def body():
        try:
            outcome["result"] = target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still blocked after {timeout} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def push_until_send_timeout(client: str, url: str, send_timeout: float):
    """Push 256 KiB transcripts until one raises SendTimeout (at most 100 MB); returns how
    many went through, how long the failing push took, its error, and what the context's
    iterator raised after it."""
    import time
    from flushsink.errors import SendTimeout

    text = "x" * 2**18
    fmt = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000}
    if client == "asyncio":
        async def main():
            async with flushsink.connect(url, send_timeout=send_timeout,
                                         receive_timeout=TIMEOUT) as tts:
                ctx = tts.context(voice="v", output_format=fmt)
                for sent in range(400):
                    started = time.monotonic()
                    try:
                        await ctx.push(text)
                    except SendTimeout as exc:
                        took = time.monotonic() - started
                        with pytest.raises(ConnectionLost) as lost:
                            await ctx.collect()
                        return sent, took, exc, lost.value
                raise AssertionError("every push went through")

        return run(main())

    def body():
        with sync.connect(url, send_timeout=send_timeout, receive_timeout=TIMEOUT) as tts:
            ctx = tts.context(voice="v", output_format=fmt)
            for sent in range(400):
                started = time.monotonic()
                try:
                    ctx.push(text)
                except SendTimeout as exc:
                    took = time.monotonic() - started
                    with pytest.raises(ConnectionLost) as lost:
                        ctx.collect()
                    return sent, took, exc, lost.value
            raise AssertionError("every push went through")

    return in_thread(body)


@pytest.mark.parametrize("client", CLIENTS)
def test_push_to_a_server_that_stopped_reading_raises_send_timeout(client):
    """A server that completes the handshake and never reads again (4 kB receive
    buffer): a push raises SendTimeout within about send_timeout, the connection is
    closed and the context ends as on a lost connection. Before: push blocked forever
    (asyncio in drain(), sync in sendall() holding websockets' lock)."""
    from helpers.rawserver import RawServer, accept_websocket

    stop = threading.Event()

    def handler(conn):
        accept_websocket(conn)
        stop.wait(60)  # and never reads again

    try:
        with RawServer(handler, rcvbuf=4096) as server:
            sent, took, error, lost = push_until_send_timeout(client, server.url, 0.5)
            stop.set()
    finally:
        stop.set()
    assert isinstance(error, TimeoutError) and isinstance(error, flushsink.FlushsinkError)
    assert took < 2.5, took  # 5x send_timeout: generous, no tight timing
    assert "stopped reading" in str(error) and "stopped reading" in str(lost)


def test_a_flood_of_context_less_errors_keeps_the_latest_100_and_a_count(core):
    """Error frames without a context end nothing and were all kept (200,000: 226 MB):
    now the latest 100 and the count."""
    session = Session(core.Sink(S16))
    for k in range(5000):
        session.receive(json.dumps({"type": "error", "error": f"error {k}"}).encode())
    assert session.server_error_count == 5000
    assert [e.message for e in session.server_errors] == [f"error {k}" for k in range(4900, 5000)]
    assert session.server_errors[-1].message == "error 4999"  # a sequence, latest last


def test_failed_writes_keep_the_latest_100_and_a_count(core, tmp_path):
    """Each WriteError carries its segment (its audio): a disk that refuses every write
    must not make the session keep every segment."""
    def refuse(event):
        raise flushsink.WriteError("disk full", segment=event.segment)

    shell = ClientBase("ws://127.0.0.1:9", sink=core.Sink(S16), writer=refuse)  # no connection
    session = shell.session
    state = session.new_context(model_id="m", voice="v", context_id="a")
    session.request(state, "x")
    for fid in range(300):
        shell._receive(chunk("a", fid, b"\x01\x00"))
        shell._receive(flush_done("a", fid))
    assert session.write_error_count == 300
    assert len(session.write_errors) == 100
    assert session.write_errors[-1].segment.flush_id == 299


@pytest.mark.parametrize("option", ["close_timeout", "open_timeout"])
@pytest.mark.parametrize("client", CLIENTS)
def test_close_returns_within_its_timeout_when_the_server_never_answers(client, option):
    """A server that reads everything and answers nothing, not even the closing
    handshake: close() returns within close_timeout (by default open_timeout), and the
    context still receiving ends with ConnectionLost. Before: 10 s, websockets' own
    default, whatever the client was told."""
    import time

    from helpers.rawserver import RawServer, accept_websocket, drain_until_closed

    def handler(conn):
        accept_websocket(conn)
        drain_until_closed(conn, 30)

    fmt = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000}
    options = {option: 0.5, "receive_timeout": TIMEOUT}
    with RawServer(handler) as server:
        if client == "asyncio":
            async def main():
                tts = flushsink.connect(server.url, **options)
                ctx = tts.context(voice="v", output_format=fmt)
                await ctx.push("text")
                started = time.monotonic()
                await tts.close()
                took = time.monotonic() - started
                with pytest.raises(ConnectionLost):
                    await ctx.collect()
                return took

            took = run(main())
        else:
            def body():
                tts = sync.connect(server.url, **options)
                ctx = tts.context(voice="v", output_format=fmt)
                ctx.push("text")
                started = time.monotonic()
                tts.close()
                took = time.monotonic() - started
                with pytest.raises(ConnectionLost):
                    ctx.collect()
                return took

            took = in_thread(body)
    assert took < 2.5, took  # 5x the timeout: generous, no tight timing


@pytest.mark.slow
def test_asyncio_close_is_bounded_while_a_push_waits_on_a_server_that_stopped_reading():
    """close() while a push waits for a server that stopped reading (send_timeout far
    off): websockets' close would wait behind it; close_timeout still bounds it."""
    import time

    from helpers.rawserver import RawServer, accept_websocket

    stop = threading.Event()

    def handler(conn):
        accept_websocket(conn)
        stop.wait(60)

    async def main(url):
        tts = flushsink.connect(url, send_timeout=30, close_timeout=0.5, receive_timeout=TIMEOUT)
        ctx = tts.context(voice="v")
        text = "x" * 2**18

        async def flood():
            for _ in range(400):
                await ctx.push(text)

        pushing = asyncio.ensure_future(flood())
        await asyncio.sleep(0.5)  # by now a push waits in drain()
        assert not pushing.done()
        started = time.monotonic()
        await tts.close()
        took = time.monotonic() - started
        with pytest.raises((ConnectionLost, flushsink.ContextClosed)):
            await asyncio.wait_for(pushing, TIMEOUT)
        return took

    try:
        with RawServer(handler, rcvbuf=4096) as server:
            took = run(main(server.url))
            stop.set()
    finally:
        stop.set()
    assert took < 2.5, took


@pytest.mark.parametrize("client", CLIENTS)
def test_a_flood_of_flush_done_without_audio_makes_no_files(client, tmp_path):
    """3000 flush_done frames of the client's own context, no audio: each is still a
    segment (an event), none becomes a file. Before: 3000 empty WAV files (100,000 took
    4 s)."""
    a1 = audio_of("a", 0)
    script = [chunk("a", 0, a1), flush_done("a", 0)]
    script += [flush_done("a", fid) for fid in range(1, 3001)] + [done("a")]
    writer = flushsink.FileWriter(tmp_path)
    with ScriptedServer(script).running_in_thread() as server:
        if client == "asyncio":
            async def main():
                async with flushsink.connect(server.url, writer=writer,
                                             receive_timeout=TIMEOUT) as tts:
                    ctx = tts.context(voice="v", context_id="a")
                    await ctx.push("text")
                    return await ctx.collect()

            segments = run(main())
        else:
            with sync.connect(server.url, writer=writer, receive_timeout=TIMEOUT) as tts:
                ctx = tts.context(voice="v", context_id="a")
                ctx.push("text")
                segments = ctx.collect()
    assert len(segments) == 3001
    assert segments[0].samples.tobytes() == a1 and os.path.exists(segments[0].path)
    assert all(s.path is None and len(s.samples) == 0 for s in segments[1:])
    assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()] == \
        [os.path.join("a", "0.wav")]


def test_an_integer_longer_than_int_takes_is_no_crash(core):
    """Valid JSON may hold an integer of any length; Python's int() refuses more than 4300
    digits from text, and json.loads with it raised a bare ValueError out of feed (and out
    of the client's Session). Such a number now comes out as a decimal.Decimal: in an
    unknown frame or an error it is carried as it is; as a timestamp it is not a time."""
    import decimal

    huge = "7" * 5000
    sink = core.Sink(S16)
    (event,) = sink.feed(('{"type":"nothing","context_id":"a","n":%s}' % huge).encode())
    assert event.message["n"] == decimal.Decimal(huge)
    (event,) = sink.feed(('{"type":"error","error":"x","code":%s}' % huge).encode())
    assert event.raw["code"] == decimal.Decimal(huge)
    with pytest.raises(FrameError) as info:
        sink.feed(('{"type":"timestamps","context_id":"a","word_timestamps":'
                   '{"words":["a"],"start":[%s],"end":[1]}}' % huge).encode())
    assert info.value.code == "field_type"
    session = Session(core.Sink(S16))
    session.receive(('{"type":"error","error":"x","code":%s}' % huge).encode())
    assert session.server_error_count == 1
