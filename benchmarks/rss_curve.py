"""Resident memory while a Sink finishes many segments and the caller lets them go.

    python benchmarks/rss_curve.py [--segments 100000] [--every 10000] [--pattern contexts]
                                   [--core compiled|pure] [--json]

Patterns (every segment is released by the caller as soon as it is handed over):

- ``contexts``: each segment in a context of its own (chunk, flush_done, done): the
  everyday shape, one context per conversation turn. The sink remembers the last
  ``max_ended_contexts`` ended ids (10,000), so state stops growing after those.
- ``flushes``: one context that never ends, a flush per segment. The context keeps the
  set of its finished labels (to drop late frames), one entry per segment, until it ends.
- ``open``: 1,000 contexts open at once, each with a 10 s reservation (prealloc), then
  closed: the reservation must cost address space, not resident memory.

Prints RSS (from /proc/self/statm) every ``--every`` segments, the growth after the first
checkpoint (the warm-up: allocator pools, the ended-ids memory filling), and bytes per
segment over that stretch. Linux only.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import platform
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def frames_for(pattern: str, i: int, audio_b64: str) -> list[bytes]:
    if pattern == "contexts":
        cid = f"turn-{i}"
        return [b'{"type":"chunk","context_id":"%s","flush_id":1,"data":"%s"}'
                % (cid.encode(), audio_b64.encode()),
                b'{"type":"flush_done","context_id":"%s","flush_id":1}' % cid.encode(),
                b'{"type":"done","context_id":"%s"}' % cid.encode()]
    return [b'{"type":"chunk","context_id":"long","flush_id":%d,"data":"%s"}'
            % (i, audio_b64.encode()),
            b'{"type":"flush_done","context_id":"long","flush_id":%d}' % i]


def run_curve(core, pattern: str, segments: int, every: int, chunk_bytes: int,
              prealloc: float) -> list[tuple[int, int]]:
    from flushsink.formats import AudioFormat
    sink = core.Sink(AudioFormat("pcm_s16le", 44100), prealloc_seconds=prealloc)
    audio_b64 = base64.b64encode(bytes(range(256)) * (chunk_bytes // 256) +
                                 bytes(chunk_bytes % 256)).decode()
    feed = sink.feed
    curve = [(0, rss_bytes())]
    for i in range(1, segments + 1):
        for frame in frames_for(pattern, i, audio_b64):
            events = feed(frame)
        del events
        if i % every == 0:
            gc.collect()
            curve.append((i, rss_bytes()))
    return curve


def run_open(core, contexts: int, prealloc: float) -> list[tuple[int, int]]:
    from flushsink.formats import AudioFormat
    sink = core.Sink(AudioFormat("pcm_s16le", 44100), prealloc_seconds=prealloc)
    curve = [(0, rss_bytes())]
    for i in range(contexts):
        sink.feed(b'{"type":"chunk","context_id":"c%d","flush_id":1,"data":"AAAA"}' % i)
    curve.append((contexts, rss_bytes()))
    events = sink.close("done")
    del events
    gc.collect()
    curve.append((contexts, rss_bytes()))
    return curve


def pick_core(name: str):
    if name == "pure":
        from flushsink import _fallback
        return _fallback
    from flushsink import _speedups
    return _speedups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--pattern", choices=["contexts", "flushes", "open"], default="contexts")
    parser.add_argument("--core", choices=["compiled", "pure"], default="compiled")
    parser.add_argument("--chunk-bytes", type=int, default=64)
    parser.add_argument("--prealloc", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    core = pick_core(args.core)
    import numpy
    import flushsink
    header = {"python": platform.python_version(), "numpy": numpy.__version__,
              "flushsink": flushsink.__version__, "core": args.core,
              "simd": core.simd_path(), "machine": platform.machine(),
              "pattern": args.pattern, "chunk_bytes": args.chunk_bytes,
              "prealloc_seconds": args.prealloc}
    started = time.perf_counter()
    if args.pattern == "open":
        curve = run_open(core, 1000, args.prealloc)
    else:
        curve = run_curve(core, args.pattern, args.segments, args.every, args.chunk_bytes,
                          args.prealloc)
    elapsed = time.perf_counter() - started
    warm_n, warm_rss = curve[1]
    last_n, last_rss = curve[-1]
    per_segment = (last_rss - warm_rss) / (last_n - warm_n) if last_n > warm_n else 0.0
    if args.json:
        print(json.dumps({"env": header, "curve": curve, "seconds": elapsed,
                          "growth_after_warmup": last_rss - warm_rss,
                          "bytes_per_segment": per_segment}))
        return 0
    print(" ".join(f"{k}={v}" for k, v in header.items()))
    if args.pattern == "open":
        labels = ["before", "1000 contexts open", "after close()"]
        for label, (_, rss) in zip(labels, curve):
            print(f"  {label:>20}  {rss / 2**20:8.1f} MiB")
        print(f"  reserved {1000 * args.prealloc:.0f} s of audio "
              f"({1000 * args.prealloc * 88200 / 2**20:.0f} MiB of address space); resident "
              f"growth {(curve[1][1] - curve[0][1]) / 2**20:.1f} MiB")
        return 0
    print(f"{'segments':>10} {'RSS MiB':>9} {'since warm-up':>14}")
    for n, rss in curve:
        since = "" if n < warm_n else f"{(rss - warm_rss) / 2**20:+.2f} MiB"
        print(f"{n:>10} {rss / 2**20:9.1f} {since:>14}")
    print(f"{last_n - warm_n} segments after warm-up: {per_segment:+.1f} bytes/segment; "
          f"{last_n / elapsed:,.0f} segments/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
