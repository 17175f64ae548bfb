"""One Sink, several threads (docs/sink.md "Threads"): every public method runs with the
sink to itself, so no mix of calls from several threads can crash, touch freed memory
or corrupt stored audio. A feeding thread runs against a second thread calling each
other method; the audio is then checked chunk by chunk. `make sanitize` runs these
under AddressSanitizer, where a buffer freed or moved under a decode is reported even
when it does not crash.

The chunks of 768 KiB (1 MiB of base64) are decoded without the GIL; the small ones
are not, but building events runs Python code, where the GIL can change hands too.
"""

from __future__ import annotations

import base64
import json
import sys
import threading

import numpy as np
import pytest

import flushsink
from flushsink import AudioFormat, SegmentReady

BIG = 384 * 1024  # samples per big chunk: 768 KiB of audio, 1 MiB of base64
SMALL = 240       # samples per small chunk
CHUNKS = {1: 8, 3: 12, 0: 200}  # chunks per round, by how often a big one comes


def chunk(cid: str, label: int, seq: int, samples: int) -> bytes:
    # every sample of a chunk holds its sequence number: a segment's audio must then be
    # whole chunks, in order, each seen once
    audio = np.full(samples, seq % 32768, "<i2").tobytes()
    return json.dumps({"type": "chunk", "context_id": cid, "flush_id": label,
                       "data": base64.b64encode(audio).decode()}).encode()


def flush_done(cid: str, label: int) -> bytes:
    return json.dumps({"type": "flush_done", "context_id": cid, "flush_id": label}).encode()


@pytest.fixture(autouse=True)
def fast_switching():
    # hand the GIL over as often as CPython allows, for more interleavings per run
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def check_audio(segments: list, sizes: dict) -> int:
    """Each segment's samples are runs of one sequence number, each run a whole chunk
    of the size that sequence number was sent with, numbers increasing. Returns the
    total bytes."""
    total = 0
    for seg in segments:
        samples = seg.samples
        total += samples.nbytes + len(seg.trailing_bytes)
        assert seg.trailing_bytes == b""
        if not len(samples):
            continue
        edges = np.flatnonzero(np.diff(samples)) + 1
        starts = np.concatenate(([0], edges))
        ends = np.concatenate((edges, [len(samples)]))
        values = samples[starts]
        assert (np.diff(values.astype(np.int64)) > 0).all(), "chunks out of order or repeated"
        for value, start, end in zip(values.tolist(), starts.tolist(), ends.tolist()):
            assert end - start == sizes[value], (
                f"chunk {value} holds {end - start} samples, sent {sizes[value]}")
    return total


def run_against(other, *, rounds: int, chunks_per_round: int, big_every: int,
                with_flush_done: bool):
    """Thread A feeds rounds of chunks (one context per round); thread B calls
    ``other(sink, round)`` meanwhile, once a round has a segment open (so that the call
    lands while a chunk of that segment is decoded), or in a loop if ``once`` is false
    on ``other``. Returns what both saw."""
    sink = flushsink.Sink(AudioFormat("pcm_s16le", 24000), prealloc_seconds=0.01)
    delivered: list = []
    sizes: dict = {}
    done = threading.Event()
    acting = threading.Event()  # thread B reached its call in the current round
    progress = {"round": 0, "chunk": 0}
    failures: list = []
    lock = threading.Lock()

    def feeder():
        try:
            seq = 0
            for r in range(rounds):
                cid = f"ctx-{r}"
                progress["chunk"] = -1
                frames = []  # built first: feeding (and decoding) is then most of the time
                for k in range(chunks_per_round):
                    seq += 1
                    samples = BIG if big_every and k % big_every == 0 else SMALL
                    sizes[seq % 32768] = samples
                    frames.append(chunk(cid, 1, seq, samples))
                acting.clear()
                progress["round"] = r
                for k, frame in enumerate(frames):
                    if k == len(frames) - 1 and not failures:
                        # On a loaded machine each GIL handover waits for the OS to run
                        # the other thread, and B could miss every round (seen in full
                        # suite runs: "assert cancelled" with nothing cancelled). If B has
                        # not reached its call yet, let it: the call then runs alongside
                        # this last chunk's decode instead of never.
                        acting.wait(5)
                    progress["chunk"] = k
                    events = sink.feed(frame)
                    with lock:
                        delivered.extend(e.segment for e in events if isinstance(e, SegmentReady))
                if with_flush_done:
                    events = sink.feed(flush_done(cid, 1))
                    with lock:
                        delivered.extend(e.segment for e in events if isinstance(e, SegmentReady))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)
        finally:
            done.set()

    def caller():
        try:
            acted = -1
            once = getattr(other, "once", True)
            while not done.is_set():
                r = progress["round"]
                if once and (acted == r or progress["chunk"] < 1):
                    continue  # wait (holding the GIL, handed over every microsecond)
                acted = r
                acting.set()
                result = other(sink, r)
                if isinstance(result, tuple):
                    with lock:
                        delivered.extend(e.segment for e in result
                                         if isinstance(e, SegmentReady))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=feeder), threading.Thread(target=caller)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a thread hung"
    assert not failures, failures
    delivered.extend(e.segment for e in sink.close("end"))
    stats = sink.stats
    assert stats.open_segments == 0 and stats.open_bytes == 0
    # every byte stored is handed over exactly once, in whole chunks
    assert check_audio(delivered, sizes) == stats.audio_bytes
    keys = [(s.context_id, s.flush_id) for s in delivered]
    assert len(keys) == len(set(keys)), "a segment was finished twice"
    return sink, delivered


@pytest.mark.slow
@pytest.mark.parametrize("big_every", [1, 3, 0], ids=["big", "mixed", "small"])
def test_close_against_a_feeding_thread(big_every):
    run_against(lambda sink, r: sink.close("closed by another thread"),
                rounds=16, chunks_per_round=CHUNKS[big_every], big_every=big_every,
                with_flush_done=True)


@pytest.mark.slow
@pytest.mark.parametrize("big_every", [1, 3, 0], ids=["big", "mixed", "small"])
def test_cancel_against_a_feeding_thread(big_every):
    cancelled: set = set()
    after: dict = {}

    def cancel(sink, r):
        cid = f"ctx-{r}"
        events = sink.cancel(cid)
        # from here on the context is ended: nothing more of it may be stored
        after.setdefault(cid, sink.activity(cid))
        cancelled.add(cid)
        return events

    sink, delivered = run_against(cancel, rounds=16, chunks_per_round=CHUNKS[big_every],
                                  big_every=big_every, with_flush_done=True)
    assert cancelled
    assert all(value == 0 for value in after.values())
    for seg in delivered:
        if seg.context_id in cancelled and not seg.complete:
            assert seg.error in ("cancelled", "end")
    # a cancelled context's later frames were dropped, never stored into a new segment
    per_context: dict = {}
    for seg in delivered:
        per_context.setdefault(seg.context_id, []).append(seg)
    for cid in cancelled:
        assert len(per_context.get(cid, [])) <= 1, f"{cid} stored audio after its cancel"


@pytest.mark.slow
@pytest.mark.parametrize("big_every", [1, 0], ids=["big", "small"])
def test_set_format_stats_and_activity_against_a_feeding_thread(big_every):
    formats = [AudioFormat("pcm_s16le", 24000), AudioFormat("pcm_s16le", 16000)]

    def poke(sink, r):
        sink.set_format(f"ctx-{r}", formats[r % 2])
        stats = sink.stats
        assert stats.open_bytes <= stats.audio_bytes
        assert sink.activity(f"ctx-{r}") >= 0
        return None

    poke.once = False  # type: ignore[attr-defined]
    _, delivered = run_against(poke, rounds=16, chunks_per_round=8, big_every=big_every,
                               with_flush_done=True)
    assert delivered


def test_two_feeding_threads_are_serialised():
    """Two threads feeding one sink (each its own context): their calls take turns,
    both contexts' audio arrives whole."""
    sink = flushsink.Sink(AudioFormat("pcm_s16le", 24000))
    results: dict = {}

    def feed(name: str, base: int):
        got = []
        for k in range(24):
            samples = BIG if k % 4 == 0 else SMALL
            sink.feed(chunk(name, 1, base + k, samples))
        got.extend(e.segment for e in sink.feed(flush_done(name, 1)))
        results[name] = got

    threads = [threading.Thread(target=feed, args=(f"t{i}", 1000 * (i + 1))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(2):
        (seg,) = results[f"t{i}"]
        assert seg.complete
        expected = np.concatenate([
            np.full(BIG if k % 4 == 0 else SMALL, 1000 * (i + 1) + k, "<i2") for k in range(24)])
        np.testing.assert_array_equal(seg.samples, expected)


def test_a_call_from_inside_a_running_call_is_a_runtime_error():
    """Code that runs inside a Sink call and calls the same sink (a finalizer, a signal
    handler; here a format whose property calls back) must not wait for itself."""
    sink = flushsink.Sink(AudioFormat("pcm_s16le", 24000))
    seen: list = []

    class Reentrant(AudioFormat):
        @property
        def bytes_per_second(self) -> int:
            try:
                sink.stats
            except RuntimeError as exc:
                seen.append(str(exc))
            return super().bytes_per_second

    sink.set_format("a", Reentrant("pcm_s16le", 24000))
    assert sink.feed(chunk("a", 1, 1, SMALL)) == ()  # the context's format is read here
    assert seen and "re-entrant" in seen[0]
    (event,) = sink.feed(flush_done("a", 1))
    assert event.segment.complete and len(event.segment.samples) == SMALL
    assert sink.stats.segments == 1  # and the sink is free again
