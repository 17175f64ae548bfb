"""Streaming Sink (docs/sink.md "Streaming"): ``Sink(..., stream=True)`` returns an
AudioChunk for each chunk frame, views of the audio that stay valid and unchanged; with
``keep_audio=False`` it keeps none of it. Runs on the core of the run (flushsink.Sink);
the differential tests at the end compare the compiled core with the twin."""

from __future__ import annotations

import base64
import gc
import os
import json
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flushsink
from flushsink import (AudioChunk, AudioFormat, CapacityError, FrameError, SegmentReady,
                       _fallback)

import reference as ref
from helpers.programs import as_input, scenarios

try:
    from flushsink import _speedups
except ImportError:  # pragma: no cover - only when the extension is not built
    _speedups = None

EMPTY = ()  # the shared empty tuple a chunk without a whole sample returns
#: either core's AudioChunk (the differential tests meet both)
CHUNK_TYPES = (_fallback.AudioChunk,) + ((_speedups.AudioChunk,) if _speedups else ())
WIDTHS = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1}


def chunk(audio: bytes, cid="c", fid=1) -> bytes:
    obj = {"type": "chunk", "context_id": cid, "data": base64.b64encode(audio).decode()}
    if fid is not None:
        obj["flush_id"] = fid
    return json.dumps(obj).encode()


def flush_done(cid="c", fid=1) -> bytes:
    return json.dumps({"type": "flush_done", "context_id": cid, "flush_id": fid}).encode()


def done(cid="c") -> bytes:
    return json.dumps({"type": "done", "context_id": cid}).encode()


def audio_of(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def split(audio: bytes, cuts) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(audio)]
    return [audio[a:b] for a, b in zip(bounds, bounds[1:])]


def stream_sink(encoding="pcm_s16le", rate=16000, **options):
    return flushsink.Sink(AudioFormat(encoding, rate), stream=True, **options)


def feed_all(sink, frames):
    """Every event of the frames, in order."""
    events = []
    for frame in frames:
        events += sink.feed(frame)
    return events


def chunks_of(events, cid="c", fid=1):
    return [e for e in events if isinstance(e, AudioChunk)
            and e.context_id == cid and e.flush_id == fid]


def segment_of(events, cid="c", fid=1):
    (segment,) = [e.segment for e in events if isinstance(e, SegmentReady)
                  and e.segment.context_id == cid and e.segment.flush_id == fid]
    return segment


def model_audio(frames, encoding, rate, cid="c", fid=1) -> tuple[bytes, bytes]:
    """(whole samples, trailing bytes) of the segment, by the reference model."""
    model = ref.RefSink(encoding, rate)
    for frame in frames:
        for ev in model.feed(frame):
            if ev[0] == "ready" and ev[1] == cid and ev[2] == fid:
                return ev[6], ev[7]
    raise AssertionError("the model finished no such segment")


def check_chunks(chunks, segment, width):
    """The chunks are consecutive views whose samples make up the segment's."""
    start = 0
    for c in chunks:
        assert c.start == start
        assert len(c) == len(c.samples) == c.nbytes // width > 0
        assert c.samples.tobytes() == c.data.tobytes()
        assert c.data.nbytes == c.nbytes
        start += len(c)
    assert start == segment.sample_count == len(segment.samples)
    joined = b"".join(c.data.tobytes() for c in chunks)
    assert joined == segment.samples.tobytes()
    return joined


# --- events --------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", sorted(WIDTHS))
def test_every_split_of_a_sample_across_frames(encoding):
    width = WIDTHS[encoding]
    audio = audio_of(width * 40 + width - 1, seed=width)  # and a sample left unfinished
    for first_cut in range(1, width * 2 + 1):  # every split of the first samples
        cuts = {first_cut, first_cut + 1, 3 * width + 1, 10 * width + width - 1, 25 * width}
        cuts = {c for c in cuts if 0 < c < len(audio)}
        frames = [chunk(part) for part in split(audio, cuts)] + [flush_done()]
        events = feed_all(stream_sink(encoding), frames)
        segment = segment_of(events)
        joined = check_chunks(chunks_of(events), segment, width)
        whole, trailing = model_audio(frames, encoding, 16000)
        assert joined == whole
        assert segment.trailing_bytes == trailing == audio[len(audio) - width + 1:]


@pytest.mark.parametrize("encoding", sorted(WIDTHS))
def test_a_chunk_event_covers_the_samples_that_chunk_completes(encoding):
    width = WIDTHS[encoding]
    audio = audio_of(width * 3, seed=1)
    sink = stream_sink(encoding)
    sizes = [width - 1, 2, width * 2 - 1] if width > 1 else [1, 1, 1]
    starts = []
    at = 0
    for size in sizes:
        events = sink.feed(chunk(audio[at:at + size]))
        at += size
        first, end = (at - size) // width, at // width
        if first == end:
            assert events == ()
            continue
        (c,) = events
        assert (c.start, len(c)) == (first, end - first)
        assert c.data.tobytes() == audio[first * width:end * width]
        starts.append(c.start)
    assert starts


def test_a_chunk_that_completes_no_sample_returns_the_empty_tuple():
    sink = stream_sink("pcm_f32le")
    assert sink.feed(chunk(b"\x01")) is EMPTY
    assert sink.feed(chunk(b"\x02\x03")) is EMPTY
    assert sink.feed(chunk(b"")) is EMPTY
    (c,) = sink.feed(chunk(b"\x04\x05"))
    assert (c.start, len(c), c.data.tobytes()) == (0, 1, b"\x01\x02\x03\x04")
    assert sink.stats.chunks == 4


def test_audio_chunk_attributes():
    sink = stream_sink("pcm_s16le", 24000)
    sink.feed(chunk(bytes(4800), "turn-1", 7))
    (c,) = sink.feed(chunk(np.arange(240, dtype="<i2").tobytes(), "turn-1", 7))
    assert type(c) is flushsink.AudioChunk
    assert (c.context_id, c.flush_id, c.start, len(c), c.nbytes) == ("turn-1", 7, 2400, 240, 480)
    assert c.format == AudioFormat("pcm_s16le", 24000)
    assert c.duration == pytest.approx(0.01)
    assert c.samples.dtype == np.dtype("<i2")
    assert np.array_equal(c.samples, np.arange(240))
    assert c.samples is c.samples and c.data is c.data  # made once
    assert c.data.format == "B" and c.data.readonly
    assert "turn-1" in repr(c) and "2400..2640" in repr(c)


def test_segments_without_flush_id_and_several_contexts():
    sink = stream_sink("pcm_s16le")
    a, b = audio_of(101, 1), audio_of(77, 2)
    frames = [chunk(a[:50], "a", None), chunk(b[:33], "b", 3), chunk(a[50:], "a", None),
              chunk(b[33:], "b", 3), done("a"), done("b")]
    events = feed_all(sink, frames)
    seg_a = segment_of(events, "a", 0)
    seg_b = segment_of(events, "b", 3)
    check_chunks(chunks_of(events, "a", 0), seg_a, 2)
    check_chunks(chunks_of(events, "b", 3), seg_b, 2)
    assert seg_a.samples.tobytes() == a[:100] and seg_a.trailing_bytes == a[100:]


def test_stream_options_are_checked_and_read_only():
    fmt = AudioFormat("pcm_s16le", 16000)
    with pytest.raises(ValueError, match="keep_audio"):
        flushsink.Sink(fmt, keep_audio=False)
    sink = flushsink.Sink(fmt, stream=True, keep_audio=False)
    assert (sink.stream, sink.keep_audio) == (True, False)
    assert (flushsink.Sink(fmt).stream, flushsink.Sink(fmt).keep_audio) == (False, True)
    with pytest.raises(AttributeError):
        sink.stream = False
    with pytest.raises(AttributeError):
        sink.keep_audio = True
    assert flushsink.Sink(fmt).feed(chunk(b"\x01\x02")) is EMPTY  # not streaming: as before


# --- lifetime of the views ---------------------------------------------------------------


def held_views(events):
    """Each chunk's views and a copy of what they showed when they came."""
    return [(c, c.samples, c.data, c.samples.copy()) for c in events if isinstance(c, AudioChunk)]


def assert_unchanged(held):
    for c, samples, data, copy in held:  # (as bytes: random float32 bits hold NaNs)
        assert samples.tobytes() == copy.tobytes()
        assert data.tobytes() == copy.tobytes()
        assert c.samples.tobytes() == copy.tobytes()


@pytest.mark.parametrize("how", ["flush_done", "close", "cancel", "dropped"])
def test_views_outlive_growth_and_the_segment(how):
    # prealloc 0: the buffer grows many times while the views are held
    sink = stream_sink("pcm_s16le", prealloc_seconds=0)
    audio = audio_of(20001, 5)
    parts = split(audio, range(333, len(audio), 333))
    held = []
    for i, part in enumerate(parts):
        events = sink.feed(chunk(part))
        if i % 3 == 0:
            held += held_views(events)  # the others are dropped at once
        else:
            [c for c in events if isinstance(c, AudioChunk)]  # made, never looked at
        assert_unchanged(held)
    assert len(held) >= 20
    if how == "flush_done":
        (ready,) = sink.feed(flush_done())
    elif how == "close":
        (ready,) = sink.close()
    elif how == "cancel":
        (ready,) = sink.cancel("c")
    else:
        ready = None
    del sink
    gc.collect()
    assert_unchanged(held)
    if ready is not None:
        assert ready.segment.samples.tobytes() == audio[:20000]
        # more audio in other sinks reuses released buffers: the views must not see it
        other = stream_sink("pcm_s16le", prealloc_seconds=0)
        for part in parts:
            other.feed(chunk(bytes(len(part))))
        other.close()
        assert_unchanged(held)
        assert ready.segment.samples.tobytes() == audio[:20000]


def test_views_are_read_only_and_so_are_streamed_segments():
    sink = stream_sink("pcm_s16le")
    (c,) = sink.feed(chunk(bytes(8)))
    assert not c.samples.flags.writeable
    with pytest.raises(ValueError):
        c.samples[0] = 1
    with pytest.raises(ValueError):
        c.samples.flags.writeable = True
    assert c.data.readonly
    with pytest.raises(TypeError):
        c.data[0] = 1
    assert not np.frombuffer(c.data, "<i2").flags.writeable
    (ready,) = sink.feed(flush_done())
    assert not ready.segment.samples.flags.writeable
    with pytest.raises(ValueError):
        ready.segment.samples[0] = 1
    # without stream a segment's samples stay writable (its own buffer, no views)
    plain = flushsink.Sink(AudioFormat("pcm_s16le", 16000))
    plain.feed(chunk(bytes(8)))
    (ready,) = plain.feed(flush_done())
    assert ready.segment.samples.flags.writeable


# --- keep_audio=False ----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", sorted(WIDTHS))
def test_keep_audio_false_holds_nothing(encoding):
    width = WIDTHS[encoding]
    # caps far below the audio: they bound held audio, and none is held
    sink = stream_sink(encoding, keep_audio=False, max_segment_bytes=8, max_total_bytes=8)
    audio = audio_of(5000 * width + width - 1, 3)
    parts = split(audio, range(37, len(audio), 37))
    held = []
    for part in parts:
        events = sink.feed(chunk(part))
        held += held_views(events)
        assert sink.stats.open_bytes == 0
    assert sink.stats.audio_bytes == len(audio)
    assert b"".join(c.data.tobytes() for c, *_ in held) == audio[:5000 * width]
    starts = [c.start for c, *_ in held]
    assert starts == sorted(starts) and starts[0] == 0
    (ready,) = sink.feed(flush_done())
    segment = ready.segment
    assert segment.sample_count == 5000
    assert len(segment.samples) == 0 and segment.samples.dtype == AudioFormat(encoding, 8000).dtype
    assert not segment.samples.flags.writeable
    assert segment.trailing_bytes == audio[5000 * width:]
    assert segment.duration == 5000 / 16000
    assert segment.nbytes == 5000 * width
    assert segment.complete
    assert sink.stats.open_bytes == 0 and sink.stats.open_segments == 0
    assert_unchanged(held)


def test_keep_audio_false_views_never_see_later_audio():
    sink = stream_sink("pcm_s16le", keep_audio=False)
    held = held_views(sink.feed(chunk(b"\x01\x02\x03")))
    for i in range(50):
        held += held_views(sink.feed(chunk(bytes([i]) * 101)))
        assert_unchanged(held)
    sink.close()
    gc.collect()
    assert_unchanged(held)


def test_keep_audio_false_segment_start_times_count_the_audio():
    sink = stream_sink("pcm_s16le", 8000, keep_audio=False)
    sink.feed(chunk(bytes(16000), "c", 1))
    (first,) = sink.feed(flush_done("c", 1))
    (c,) = sink.feed(chunk(bytes(4), "c", 2))
    (second,) = sink.feed(flush_done("c", 2))
    assert first.segment.duration == 1.0 and second.segment.start == 1.0
    assert c.start == 0


# --- errors ----------------------------------------------------------------------------------


def outcome(sink, frame):
    try:
        events = sink.feed(frame)
    except FrameError as exc:
        return ("frame_error", exc.code, exc.offset, str(exc))
    except CapacityError as exc:
        return ("capacity", str(exc), exc.context_id, exc.flush_id)
    return ("ok", [norm(e) for e in events])


def norm(ev):
    if type(ev) in CHUNK_TYPES:
        return ("chunk", ev.context_id, ev.flush_id, ev.start, ev.samples.dtype.str,
                ev.samples.tobytes(), bytes(ev.data), ev.samples.flags.writeable,
                ev.data.readonly)
    if isinstance(ev, SegmentReady):
        s = ev.segment
        return ("ready", s.context_id, s.flush_id, s.format, s.samples.dtype.str,
                s.samples.tobytes(), s.sample_count, s.trailing_bytes, s.complete, s.error,
                s.start, s.word_timestamps, s.phoneme_timestamps)
    return ref.norm_event(ev)


def test_errors_are_those_of_a_plain_sink_and_change_nothing():
    fmt = AudioFormat("pcm_s16le", 16000)
    caps = {"max_segment_bytes": 40, "max_total_bytes": 60}
    plain = flushsink.Sink(fmt, **caps)
    streaming = flushsink.Sink(fmt, stream=True, **caps)
    frames = [
        chunk(b"\x01\x02\x03"),
        b'{"type":"chunk","context_id":"c","flush_id":1,"data":"AQ!D"}',   # base64_char
        b'{"type":"chunk","context_id":"c","flush_id":1,"data":"AQ="}',    # base64_length
        b'{"type":"chunk","context_id":"c","flush_id":1,"data":"AQ==',     # truncated
        b'{"type":"chunk","context_id":"c","flush_id":-1,"data":"AQ=="}',  # field_type
        chunk(bytes(50)),                                                    # segment cap
        chunk(bytes(30), "d"), chunk(bytes(30), "e"),                        # total cap
        chunk(b"\x04\x05"),
        chunk(b"\x06"),
        flush_done(), done("d"),
    ]
    chunk_events = []
    for frame in frames:
        got_plain = outcome(plain, frame)
        got = outcome(streaming, frame)
        assert tuple(plain.stats) == tuple(streaming.stats)
        if got[0] != "ok":
            assert got == got_plain, frame
            continue
        chunk_events += [e for e in got[1] if e[0] == "chunk"]
        assert [e for e in got[1] if e[0] != "chunk"] == got_plain[1]
    assert [(e[1], e[3], e[6]) for e in chunk_events] == [
        ("c", 0, b"\x01\x02"), ("d", 0, bytes(30)), ("c", 1, b"\x03\x04"), ("c", 2, b"\x05\x06")]
    assert plain.stats.rejected_frames == 6


@settings(max_examples=ref.examples(200), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(encoding=st.sampled_from(sorted(WIDTHS)), keep=st.booleans(),
       data=st.data())
def test_stream_agrees_with_a_plain_sink_on_any_chunking(encoding, keep, data):
    width = WIDTHS[encoding]
    contexts = ["a", "b"]
    audio = {cid: data.draw(st.binary(max_size=300), label=cid) for cid in contexts}
    own = {}
    for cid in contexts:
        cuts = data.draw(st.lists(st.integers(0, len(audio[cid])), max_size=12), label="cuts")
        own[cid] = [chunk(part, cid, 1) for part in split(audio[cid], cuts)]
    # each context's frames in their order, the two interleaved as drawn
    order = data.draw(st.permutations([cid for cid in contexts for _ in own[cid]]),
                      label="order")
    frames = [own[cid].pop(0) for cid in order] + [flush_done("a", 1), done("b")]
    fmt = AudioFormat(encoding, 16000)
    prealloc = data.draw(st.sampled_from([0.0, 0.001, 10.0]), label="prealloc")
    plain = flushsink.Sink(fmt, prealloc_seconds=prealloc)
    streaming = flushsink.Sink(fmt, prealloc_seconds=prealloc, stream=True, keep_audio=keep)
    pieces = {cid: [] for cid in contexts}
    held = []
    for frame in frames:
        want = [norm(e) for e in plain.feed(frame)]
        events = streaming.feed(frame)
        held += held_views(events)
        got = [norm(e) for e in events]
        for e in got:
            if e[0] == "chunk":
                assert e[3] == sum(len(p) for p in pieces[e[1]]) // width
                pieces[e[1]].append(e[6])
        got = [e for e in got if e[0] != "chunk"]
        if keep:
            assert got == want
        else:
            for e, w in zip(got, want, strict=True):
                if e[0] == "ready":  # the same segment, without its samples
                    assert e[5] == b"" and e[:5] == w[:5] and e[6:] == w[6:]
                else:
                    assert e == w
        stats, plain_stats = streaming.stats, plain.stats
        assert stats[:6] == plain_stats[:6]
        assert stats.open_bytes == (plain_stats.open_bytes if keep else 0)
    for cid in contexts:
        whole = len(audio[cid]) // width * width
        assert b"".join(pieces[cid]) == audio[cid][:whole]
    assert_unchanged(held)


# --- the compiled core's buffers -----------------------------------------------------------


@pytest.fixture
def no_pool(compiled_core):
    """No released buffers kept: a segment starts in a buffer of its first chunk's size
    (a warm pooled one could be large enough never to grow)."""
    compiled_core._pool_limit("0")
    try:
        yield compiled_core
    finally:
        compiled_core._pool_limit(os.environ.get("FLUSHSINK_POOL_BYTES", "64M") or "64M")


def test_growth_reallocates_unless_a_view_holds_the_buffer(no_pool):
    compiled_core = no_pool
    sink = compiled_core.Sink(AudioFormat("pcm_s16le", 16000), stream=True, prealloc_seconds=0)
    copies = compiled_core._stream_copies()
    for _ in range(200):  # the chunks are dropped at once: the buffer grows in place
        sink.feed(chunk(bytes(100)))
    assert compiled_core._stream_copies() == copies
    held = sink.feed(chunk(bytes(100)))
    for _ in range(200):  # one chunk held: growing must not move its bytes
        sink.feed(chunk(bytes(100)))
    assert compiled_core._stream_copies() > copies
    del held
    view = sink.feed(chunk(bytes(100)))[0].data  # a view alone (its chunk gone) holds it too
    copies = compiled_core._stream_copies()
    for _ in range(400):
        sink.feed(chunk(bytes(100)))
    assert compiled_core._stream_copies() > copies
    del view
    copies = compiled_core._stream_copies()
    for _ in range(800):
        sink.feed(chunk(bytes(100)))
    assert compiled_core._stream_copies() == copies


# --- compiled core and twin --------------------------------------------------------------

needs_compiled = pytest.mark.skipif(_speedups is None, reason="compiled core not built")


def run_both(fmt, caps, ops, keep):
    sinks = [core.Sink(AudioFormat(*fmt), stream=True, keep_audio=keep, **caps)
             for core in (_speedups, _fallback)]
    for op in ops:
        results = []
        for sink in sinks:
            try:
                if op[0] == "feed":
                    events = sink.feed(as_input(op[1], op[2]))
                elif op[0] == "cancel":
                    events = sink.cancel(op[1])
                elif op[0] == "close":
                    events = sink.close(op[1])
                else:
                    events = sink.set_format(op[1], AudioFormat(*op[2])) or ()
                result = ("ok", [norm(e) for e in events],
                          [type(e).__name__ for e in events])
            except FrameError as exc:
                result = ("frame_error", exc.code, exc.offset, exc.detail, str(exc))
            except CapacityError as exc:
                result = ("capacity", str(exc), exc.context_id, exc.flush_id)
            except (TypeError, ValueError) as exc:
                result = (type(exc).__name__,)
            results.append((result, tuple(sink.stats)))
        assert results[0] == results[1], op


@needs_compiled
@settings(max_examples=ref.examples(300), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.booleans())
def test_cores_agree_when_streaming(scenario, keep):
    run_both(*scenario, keep)


def test_the_sink_keeps_no_finished_audio(compiled_core):
    # the compiled core reuses an event no one holds (see Sink._streamed); once the
    # segment finishes, its buffer must go back to the pool when its user lets go
    compiled_core._pool_limit("0")  # empty, so that there is room
    compiled_core._pool_limit(os.environ.get("FLUSHSINK_POOL_BYTES", "64M") or "64M")
    sink = compiled_core.Sink(AudioFormat("pcm_s16le", 16000), stream=True)
    for _ in range(100):
        sink.feed(chunk(bytes(640)))  # each event dropped at once
    count, _ = compiled_core._pool_state()
    sink.feed(flush_done())  # and the SegmentReady too
    assert compiled_core._pool_state()[0] == count + 1


def test_a_file_writer_refuses_a_segment_whose_audio_was_not_kept(tmp_path):
    sink = stream_sink("pcm_s16le", keep_audio=False)
    sink.feed(chunk(bytes(100)))
    (ready,) = sink.feed(flush_done())
    writer = flushsink.FileWriter(tmp_path)
    with pytest.raises(flushsink.WriteError, match="keep_audio=False") as caught:
        writer(ready)
    assert caught.value.segment is ready.segment and ready.segment.path is None
    assert not list(tmp_path.iterdir())
    kept = stream_sink("pcm_s16le")  # keeping its audio, a streaming sink's segments write
    kept.feed(chunk(bytes(100)))
    (ready,) = kept.feed(flush_done())
    assert writer(ready) == ready.segment.path
