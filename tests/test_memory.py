"""Resident memory does not grow while a long feed finishes segments the caller releases.

100,000 tiny segments (1 kB of audio each, so a leaked buffer would be 100 MB) go through
the compiled core, 20,000 through the twin; RSS is read from /proc after a warm-up (the
allocator's pools, the sink's memory of the last max_ended_contexts ended ids) and at the
end. The bounds are generous (a few bytes per segment are allocator noise; a leak of a
segment's buffer or of its Python objects is kilobytes). benchmarks/rss_curve.py prints
the whole curve. Skipped under ASan, whose quarantine keeps freed memory on purpose.
"""

from __future__ import annotations

import base64
import gc
import os
import sys

import pytest

import flushsink
from flushsink.formats import AudioFormat

try:
    from flushsink import _speedups
except ImportError:  # pragma: no cover
    _speedups = None

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS from /proc"),
    pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                       reason="ASan's quarantine keeps freed memory resident on purpose"),
]

AUDIO = base64.b64encode(bytes(range(256)) * 4).decode().encode()  # 1 kB per segment
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def feed_turns(sink, first: int, count: int) -> None:
    """``count`` segments, each in a context of its own: chunk then done (the segment is
    handed over and dropped at once, as a caller that wrote it would)."""
    feed = sink.feed
    for i in range(first, first + count):
        cid = b"turn-%d" % i
        feed(b'{"type":"chunk","context_id":"%s","flush_id":1,"data":"%s"}' % (cid, AUDIO))
        feed(b'{"type":"done","context_id":"%s"}' % cid)


def feed_batches(sink, first: int, count: int, batch: int = 1000) -> None:
    """``count`` segments opened ``batch`` at a time and finished by close() (a drop)."""
    for start in range(first, first + count, batch):
        for i in range(start, start + batch):
            sink.feed(b'{"type":"chunk","context_id":"c-%d","data":"%s"}' % (i, AUDIO))
        assert len(sink.close("connection lost")) == batch


# segments per run: fewer through the twin, which feeds them more slowly
SEGMENTS = {"compiled": {feed_turns: 100_000, feed_batches: 40_000},
            "pure": {feed_turns: 20_000, feed_batches: 10_000}}


@pytest.mark.slow
@pytest.mark.parametrize("feed", [feed_turns, feed_batches], ids=["turns", "drops"])
def test_rss_is_flat_after_segments_are_released(core, feed):
    segments = SEGMENTS[flushsink.BACKEND][feed]
    # a small reservation: the heap path; the default one (mmap) is tested below
    sink = core.Sink(AudioFormat("pcm_s16le", 24000), prealloc_seconds=0.05)
    warm = segments // 5
    feed(sink, 0, warm)
    before = rss()
    feed(sink, warm, segments - warm)
    growth = rss() - before
    stats = sink.stats
    assert stats.segments == segments and stats.open_segments == 0 and stats.open_bytes == 0
    # 2 MiB of allocator noise plus 64 bytes/segment: 7 MB for 80,000 segments, 2.5 MB for
    # 8,000, against 80 MB and 8 MB had each segment leaked its 1 kB buffer
    n = segments - warm
    assert growth < 2 * 2**20 + 64 * n, f"RSS grew {growth} bytes over {n} segments"


@pytest.mark.skipif(_speedups is None, reason="compiled core not built")
def test_reservations_are_released_with_their_segments():
    # the default 10 s reservation (882 kB at 44.1 kHz, an mmap each): 10,000 segments would
    # be 8.4 GB of address space if one were kept, and RSS would show the touched pages
    sink = _speedups.Sink(AudioFormat("pcm_s16le", 44100))
    feed_turns(sink, 0, 2_000)
    before = rss()
    feed_turns(sink, 2_000, 8_000)
    assert rss() - before < 4 * 2**20


@pytest.mark.skipif(_speedups is None, reason="compiled core not built")
def test_a_thousand_open_reservations_are_not_resident():
    sink = _speedups.Sink(AudioFormat("pcm_s16le", 44100), prealloc_seconds=10.0)
    before = rss()
    for i in range(1000):
        sink.feed(b'{"type":"chunk","context_id":"c%d","data":"AAAA"}' % i)
    opened = rss() - before
    sink.close()
    # 1000 x 10 s x 88.2 kB/s = 841 MiB reserved; resident: the touched page of each and
    # the Python objects, a few kB per context
    assert opened < 32 * 2**20, opened


# --- open segments that hold no audio ---------------------------------------------------------
#
# The caps count audio bytes only, and a chunk with empty data (or a timestamps frame) for a
# new flush_id opens a segment of 0 bytes, so nothing limits how many there are. Regression:
# the compiled core used to malloc the whole prealloc reservation when a segment opened
# (882 kB at 44.1 kHz s16le, an mmap with its first page touched): 4.3 kB resident and
# 882 kB of address space per ~60-byte frame, and MemoryError from feed() under an
# address-space limit after ~4,700 frames. A segment now reserves with its first audio.

def _empty_chunks(sink, count: int) -> None:
    for i in range(count):
        sink.feed(b'{"type":"chunk","context_id":"a","flush_id":%d,"data":""}' % i)


def test_open_segments_without_audio_cost_no_reservation(core):
    sink = core.Sink(AudioFormat("pcm_s16le", 44100), max_total_bytes=1000)
    before = rss()
    _empty_chunks(sink, 20_000)
    grown = rss() - before
    sink.close()
    assert grown < 20_000 * 1024, f"{grown / 20_000:.0f} bytes per empty open segment"


def run_under_address_limit(sink: str, body: str, gib: int) -> None:
    """In a subprocess: ``sink = <sink>``, then the address space limited to ``gib`` GiB,
    then ``body`` (Python source), which exits 3 on MemoryError."""
    import subprocess
    import textwrap
    script = (
        "import resource, sys\n"
        "from flushsink import _speedups, CapacityError, FrameError\n"
        "from flushsink.formats import AudioFormat\n"
        f"sink = {sink}\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({gib} * 2**30, {gib} * 2**30))\n"
        + textwrap.dedent(body))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(_speedups is None, reason="compiled core not built")
def test_empty_segments_under_an_address_space_limit_raise_only_documented_errors():
    run_under_address_limit("_speedups.Sink(AudioFormat('pcm_s16le', 44100), max_total_bytes=1000)", """
        try:
            for i in range(20_000):
                sink.feed(b'{"type":"chunk","context_id":"a","flush_id":%d,"data":""}' % i)
        except (CapacityError, FrameError):
            pass
        except MemoryError:
            print('MemoryError after', i, 'frames'); sys.exit(3)
        """, 3)


@pytest.mark.skipif(_speedups is None, reason="compiled core not built")
def test_open_segments_with_audio_under_an_address_space_limit():
    """Regression: each segment that got audio reserved its whole prealloc (882 kB at
    44.1 kHz), so 50,000 open segments asked for 44 GB of address space and failed with
    MemoryError under ulimit -v. The unused reservations of all open segments now stay
    within max_total_bytes (docs/sink.md), here the default 1 GiB."""
    run_under_address_limit("_speedups.Sink(AudioFormat('pcm_s16le', 44100))", """
        try:
            for i in range(50_000):
                sink.feed(b'{"type":"chunk","context_id":"a","flush_id":%d,"data":"AAAA"}' % i)
        except MemoryError:
            print('MemoryError after', i, 'frames'); sys.exit(3)
        assert sink.stats.open_segments == 50_000, sink.stats
        assert len(sink.close()) == 50_000
        """, 4)
