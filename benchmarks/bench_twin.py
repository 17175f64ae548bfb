#!/usr/bin/env python3
"""The pure-Python twin next to the naive standard-library receive loop, in one process.

Issue 12, item 4: the twin (``flushsink._fallback.Sink``) must be at least as fast as the
loop a user writes without flushsink, at every size:

    message = json.loads(frame)
    if message["type"] == "chunk":
        segments[(context_id, flush_id)] += base64.b64decode(message["data"])
    elif message["type"] == "flush_done":
        segment = segments.pop((context_id, flush_id))

Workload: one 10 s pcm_s16le segment per run at 16, 24 and 44.1 kHz in 20, 100 and 500
ms chunks, sent as the server sends them and ended by flush_done, in two member orders:

  data last     {"type","context_id","status_code","done","step_time","flush_id","data"}
  data second   {"type","data","status_code","done","step_time","flush_id","context_id"}

Both pipelines must yield the exact PCM the frames were made from (checked before
anything is timed). Reported: ns per chunk message = CPU time of the whole segment (its
chunks, the flush_done, handing the segment over) / number of chunks; the median of
interleaved rounds (each round runs every pipeline once per config, in a rotating order,
so drifts of a shared machine hit all of them alike). The clock is the thread's CPU
time (CLOCK_THREAD_CPUTIME_ID): wall time on a shared machine counts other processes.

Pipelines:
  naive stdlib      the loop above (json.loads + base64.b64decode + a bytearray per
                    (context_id, flush_id))
  twin              the installed flushsink._fallback.Sink
  twin, exact path  the same Sink with its standard-library fast path switched off
                    (every frame through the exact scanner: the errors' path)
  twin @REV         --baseline REV: _fallback.py of that git revision (or a file),
                    imported next to the installed one, for before/after in one run

Usage: python benchmarks/bench_twin.py [--rounds N] [--quick] [--json] [--baseline REV|FILE]
"""

from __future__ import annotations

import argparse
import base64
import gc
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402  (pins OPENBLAS_NUM_THREADS before numpy is imported)

RATES = (16000, 24000, 44100)
CHUNK_MS = (20, 100, 500)
LAYOUTS = ("data last", "data second")
SEGMENT_SECONDS = 10.0


# --- workload ------------------------------------------------------------------------------

def segment_frames(rate: int, chunk_ms: int, layout: str) -> dict:
    rng = random.Random(rate * 1000 + chunk_ms)
    context_id = str(uuid.UUID(int=rng.getrandbits(128)))
    per_chunk = rate * chunk_ms // 1000 * 2
    # random PCM: no runs a decoder could shortcut
    pcm = rng.randbytes(int(SEGMENT_SECONDS * rate) * 2)
    frames = []
    for start in range(0, len(pcm), per_chunk):
        data = base64.b64encode(pcm[start:start + per_chunk]).decode("ascii")
        envelope = {"status_code": 206, "done": False,
                    "step_time": round(rng.uniform(20.0, 80.0), 6), "flush_id": 1}
        if layout == "data last":
            message = {"type": "chunk", "context_id": context_id, **envelope, "data": data}
        else:
            message = {"type": "chunk", "data": data, **envelope, "context_id": context_id}
        frames.append(json.dumps(message).encode())
    frames.append(json.dumps({"type": "flush_done", "context_id": context_id,
                              "status_code": 206, "done": False, "flush_done": True,
                              "flush_id": 1}).encode())
    return {"frames": frames, "pcm": pcm, "rate": rate, "chunks": len(frames) - 1}


# --- pipelines -----------------------------------------------------------------------------

class NaiveStdlib:
    name = "naive stdlib"

    def setup(self, work: dict) -> None:
        self.frames = work["frames"]
        self.segments: dict = {}

    def run(self) -> bytearray:
        done = _common.route_naively(self.frames, json.loads, base64.b64decode, self.segments)
        return done if done is not None else bytearray()


class Twin:
    def __init__(self, name: str, module, fast: bool = True) -> None:
        self.name, self.module, self.fast = name, module, fast

    def setup(self, work: dict) -> None:
        from flushsink import AudioFormat
        self.frames = work["frames"]
        self.sink = self.module.Sink(AudioFormat("pcm_s16le", work["rate"]))
        if not self.fast:
            self.sink._fast_path = False

    def run(self) -> memoryview:
        feed = self.sink.feed
        for frame in self.frames:
            events = feed(frame)
        return events[0].segment.pcm()


def load_baseline(spec: str):
    """_fallback.py of a git revision (or a file) as the module flushsink._twin_baseline:
    its relative imports then resolve in the installed package, as the original's do."""
    path = Path(spec)
    if not path.is_file():
        source = subprocess.run(["git", "show", f"{spec}:src/flushsink/_fallback.py"],
                                cwd=HERE.parent, check=True, capture_output=True).stdout
        path = Path(tempfile.mkdtemp()) / "_fallback.py"
        path.write_bytes(source)
    name = "flushsink._twin_baseline"
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


# --- measuring -----------------------------------------------------------------------------

clock = time.thread_time_ns


def clock_overhead() -> float:
    reads = []
    for _ in range(501):
        start = clock()
        reads.append(clock() - start)
    return statistics.median(reads)


def time_once(pipeline, work: dict, overhead: float) -> float:
    pipeline.setup(work)
    start = clock()
    pipeline.run()
    return clock() - start - overhead


def measure(pipelines, works: dict, rounds: int, log) -> dict:
    overhead = clock_overhead()
    inner = {}
    for key, work in works.items():
        for p in pipelines:
            p.setup(work)
            # what each returns (a bytearray, a view of the segment) is compared outside
            # the timed region: neither copies the segment in it
            assert bytes(p.run()) == work["pcm"], f"{p.name} gave wrong PCM at {key}"
            one = min(time_once(p, work, overhead) for _ in range(3))
            # short runs repeat within a round, to stay well above the clock's noise
            inner[(p.name, key)] = max(1, min(20, int(3e6 // max(one, 1))))
    samples: dict = {(p.name, key): [] for p in pipelines for key in works}
    for r in range(rounds):
        for key, work in works.items():
            order = pipelines[r % len(pipelines):] + pipelines[:r % len(pipelines)]
            for p in order:
                for _ in range(inner[(p.name, key)]):
                    samples[(p.name, key)].append(time_once(p, work, overhead) / work["chunks"])
        log(f"  round {r + 1}/{rounds}")
    return {k: statistics.median(v) for k, v in samples.items()}


def label(key) -> str:
    rate, ms, layout = key
    return f"{rate / 1000:g}k/{ms}ms/{layout}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true", help="3 rounds, 44.1 kHz only")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--baseline", metavar="REV|FILE",
                        help="also time _fallback.py of this git revision (or file)")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    rates = (44100,) if args.quick else RATES

    from flushsink import _fallback
    pipelines: list = [NaiveStdlib(), Twin("twin", _fallback)]
    if hasattr(_fallback.Sink(), "_fast_path"):
        pipelines.append(Twin("twin, exact path", _fallback, fast=False))
    if args.baseline:
        pipelines.append(Twin(f"twin @{args.baseline}", load_baseline(args.baseline)))
    env = _common.environment({
        "clock": "thread CPU time (CLOCK_THREAD_CPUTIME_ID), read cost subtracted",
        "workload": f"{SEGMENT_SECONDS:g} s pcm_s16le segment per run; median ns per chunk "
                    f"message over {rounds} interleaved rounds",
    })
    works = {(rate, ms, layout): segment_frames(rate, ms, layout)
             for layout in LAYOUTS for rate in rates for ms in CHUNK_MS}
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    gc.collect()
    results = measure(pipelines, works, rounds, log)
    naive = pipelines[0].name
    ratios = {p.name: {label(k): results[(p.name, k)] / results[(naive, k)] for k in works}
              for p in pipelines[1:]}
    if args.json:
        json.dump({"environment": env, "rounds": rounds, "unit": "ns per chunk message",
                   "results": {p.name: {label(k): round(results[(p.name, k)], 1) for k in works}
                               for p in pipelines},
                   "ratio_to_naive": {name: {k: round(v, 3) for k, v in row.items()}
                                      for name, row in ratios.items()}},
                  sys.stdout, indent=2)
        print()
        return
    _common.print_environment(env)
    widths = [max(len(p.name), 9) + 2 for p in pipelines]
    print(f"{'ns per chunk message':24}"
          + "".join(f"{p.name:>{w}}" for p, w in zip(pipelines, widths)))
    for key in works:
        print(f"{label(key):24}" + "".join(f"{results[(p.name, key)]:>{w},.0f}"
                                           for p, w in zip(pipelines, widths)))
    print()
    print(f"{'ratio to naive stdlib':24}" + "".join(f"{p.name:>{w}}" for p, w in
                                                    zip(pipelines[1:], widths[1:])))
    for key in works:
        print(f"{label(key):24}" + "".join(f"{ratios[p.name][label(key)]:>{w - 1}.2f}x"
                                           for p, w in zip(pipelines[1:], widths[1:])))
    print()
    worst = max(ratios["twin"].items(), key=lambda item: item[1])
    verdict = "met" if worst[1] <= 1.0 else "MISSED"
    print(f"twin <= naive stdlib at every size: {verdict} (worst {worst[1]:.2f}x at {worst[0]})")
    for p in pipelines[2:]:
        gains = [results[(p.name, k)] / results[("twin", k)] for k in works]
        print(f"{p.name} / twin: {min(gains):.2f}x to {max(gains):.2f}x "
              f"(median {statistics.median(gains):.2f}x)")


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main()
