#!/usr/bin/env python3
"""Finalize cost per segment: flushsink's FileWriter next to the naive ways of writing a
WAV file, for a new file and for a file that already exists, with and without fsync.

Segment: 10 s of pcm_s16le at 44.1 kHz (882,000 bytes of audio, 882,044 bytes of WAV),
a real Segment handed over by a Sink. What is timed is one call that puts one segment in
its file (perf_counter, wall time: file work is kernel time and, with fsync, waiting for
the device; the CPU time of the same calls is reported too).

Writers:
  FileWriter             flushsink.FileWriter: header + PCM in one writev to a new hidden
                         temp file in the same directory, optional fsync (file, then
                         directory), os.replace onto the final name
  open+write             open(path, "wb"), write(header), write(pcm), close: on an existing
                         file, open truncates it (O_TRUNC) first
  wave module            wave.open(path, "wb"), setparams, writeframes(pcm), close
  (fsync rows: the naive writers flush and os.fsync the file before close, no directory fsync)

Cases (each write goes to its own name; a round's files are deleted between rounds,
outside the timed region): "new" writes a name that does not exist; "existing, on disk"
writes over a file of the same size that was written, then os.sync()'d, 0.2 s before
the round's writes (an old file: clean pages in the page cache, blocks on disk);
"existing, dirty" over one written just before and not yet written back (a name
reused at once: delayed-allocation pages, on ext4). Repeats interleave every
writer and case in rotating order; medians over all repeats.

Usage: python benchmarks/bench_finalize.py [--dir DIR] [--rounds N] [--per-round K]
                                           [--no-fsync] [--quick] [--json]
DIR defaults to a new temporary directory under the current directory (so the file
system is that of the project, not a tmpfs); it is removed at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Callable, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (pins OPENBLAS_NUM_THREADS before numpy loads)

import flushsink  # noqa: E402
from flushsink.formats import wav_header  # noqa: E402

RATE = 44100
SECONDS = 10.0
# "existing, on disk": written and fsync'd before the timed call (an old file); "existing,
# dirty": written just before, not yet written back (a name reused at once)
CASES = ("new", "existing, on disk", "existing, dirty")
SETTLE_S = 0.2  # after os.sync(), so the journal commit is not what the first write waits for


def make_segment() -> flushsink.Segment:
    """A 10 s s16le segment, fed to a Sink as 100 ms chunk frames and handed over."""
    pcm = os.urandom(int(RATE * SECONDS) * 2)
    sink = flushsink.Sink(flushsink.AudioFormat("pcm_s16le", RATE))
    step = RATE // 10 * 2
    for offset in range(0, len(pcm), step):
        sink.feed(json.dumps({"type": "chunk", "context_id": "finalize", "flush_id": 1,
                              "data": base64.b64encode(pcm[offset:offset + step]).decode()}))
    (event,) = sink.feed(b'{"type": "flush_done", "context_id": "finalize", "flush_id": 1}')
    segment = event.segment
    assert bytes(segment.pcm()) == pcm
    return segment


def fs_type(path: str) -> str:
    path, best, kind = os.path.realpath(path), "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                device, mount, fstype, options = line.split()[:4]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                    best, kind = mount, f"{fstype} on {device} ({mount}, {options})"
    except OSError:
        pass
    return kind


# --- writers -------------------------------------------------------------------------------
# Each takes (segment, path) and leaves a complete WAV file at path.

class Writer(NamedTuple):
    name: str
    fsync: bool
    write: Callable[[flushsink.Segment, str], None]


def filewriter(directory: str, fsync: bool) -> Callable[[flushsink.Segment, str], None]:
    writer = flushsink.FileWriter(directory, "{context_id}/{flush_id}.wav", fsync=fsync)

    def write(segment: flushsink.Segment, path: str) -> None:
        assert writer.write(segment) == path
    return write


def open_write(fsync: bool) -> Callable[[flushsink.Segment, str], None]:
    def write(segment: flushsink.Segment, path: str) -> None:
        pcm = segment.pcm()
        with open(path, "wb") as f:
            f.write(wav_header(segment.format, len(pcm)))
            f.write(pcm)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return write


def wave_module(fsync: bool) -> Callable[[flushsink.Segment, str], None]:
    def write(segment: flushsink.Segment, path: str) -> None:
        with open(path, "wb") as f:
            with wave.open(f, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(segment.format.sample_rate)
                w.writeframes(segment.pcm())
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return write


def make_writers(directory: str, with_fsync: bool) -> list[Writer]:
    writers = []
    for fsync in (False, True) if with_fsync else (False,):
        writers += [Writer("FileWriter", fsync, filewriter(directory, fsync)),
                    Writer("open+write", fsync, open_write(fsync)),
                    Writer("wave module", fsync, wave_module(fsync))]
    return writers


# --- measuring -----------------------------------------------------------------------------

def label(writer: Writer, case: str) -> str:
    return f"{writer.name}{', fsync' if writer.fsync else ''} / {case}"


def measure(directory: str, writers: list[Writer], base: flushsink.Segment, rounds: int,
            per_round: int, fsync_per_round: int, log: Callable[[str], None]):
    expected = bytes(wav_header(base.format, base.nbytes)) + bytes(base.pcm())
    results: dict[str, dict[str, list[float]]] = {}
    counter = 0
    jobs = [(w, case) for w in writers for case in CASES]
    for r in range(rounds):
        shift = r % len(jobs)
        for writer, case in jobs[shift:] + jobs[:shift]:
            # a context per (writer, case, round): FileWriter's "{context_id}/{flush_id}.wav"
            # and the naive writers' paths are the same, so every writer makes the same
            # directory work
            context = "-".join((f"r{r}", writer.name, str(int(writer.fsync)), case))
            context = "".join(ch if ch.isalnum() or ch == "-" else "_" for ch in context)
            folder = os.path.join(directory, context)
            os.makedirs(folder, exist_ok=True)
            wall, cpu = results.setdefault(label(writer, case), {"wall": [], "cpu": []}).values()
            count = fsync_per_round if writer.fsync else per_round
            names = list(range(counter + 1, counter + 1 + count))
            counter += count
            if case != "new":  # the targets exist, each its own file, pages in the page cache
                for flush_id in names:
                    with open(os.path.join(folder, f"{flush_id}.wav"), "wb") as f:
                        f.write(expected)
                if case == "existing, on disk":  # old files: written back and committed
                    os.sync()
                    time.sleep(SETTLE_S)
            for flush_id in names:
                segment = flushsink.Segment(context, flush_id, base.format, base.samples)
                path = os.path.join(folder, f"{flush_id}.wav")
                w0, c0 = time.perf_counter(), time.process_time()
                writer.write(segment, path)
                wall.append(time.perf_counter() - w0)
                cpu.append(time.process_time() - c0)
            for flush_id in names:  # outside the timed region: every file is right
                with open(os.path.join(folder, f"{flush_id}.wav"), "rb") as f:
                    assert f.read() == expected, f"{label(writer, case)}: wrong file content"
            shutil.rmtree(folder)
        log(f"round {r + 1}/{rounds} done")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="where to write (default: a temp dir under the cwd)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--per-round", type=int, default=20, help="writes per writer and round")
    parser.add_argument("--fsync-per-round", type=int, default=4)
    parser.add_argument("--no-fsync", action="store_true", help="skip the fsync rows")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    base = make_segment()
    parent = args.dir or os.getcwd()
    directory = tempfile.mkdtemp(prefix=".bench-finalize-", dir=parent)
    try:
        env = _common.environment({
            "file system": fs_type(directory),
            "segment": f"{SECONDS:g} s pcm_s16le {RATE} Hz: {base.nbytes} bytes of audio, "
                       f"{base.nbytes + 44} bytes of WAV",
            "clock": "perf_counter around one write (wall); CPU = process_time of the same call",
        })
        writers = make_writers(directory, not args.no_fsync)
        results = measure(directory, writers, base, rounds, args.per_round,
                          args.fsync_per_round, log)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    table = {name: {"wall_ms": round(_common.median(v["wall"]) * 1e3, 3),
                    "cpu_ms": round(_common.median(v["cpu"]) * 1e3, 3),
                    "spread": _common.spread(v["wall"]), "repeats": len(v["wall"])}
             for name, v in results.items()}
    ratios = {}
    for fsync in ("", ", fsync"):
        for case in CASES:
            mine = f"FileWriter{fsync} / {case}"
            for other in (f"open+write{fsync} / {case}", f"wave module{fsync} / {case}"):
                if other in table and mine in table:
                    ratios[f"{other} vs {mine}"] = round(
                        table[other]["wall_ms"] / table[mine]["wall_ms"], 2)
        for writer in ("FileWriter", "open+write"):
            new = f"{writer}{fsync} / new"
            for case in CASES[1:]:
                if new in table and f"{writer}{fsync} / {case}" in table:
                    ratios[f"{writer}{fsync} / {case} vs new"] = round(
                        table[f"{writer}{fsync} / {case}"]["wall_ms"] / table[new]["wall_ms"], 2)
    if args.json:
        json.dump({"environment": env, "rounds": rounds, "unit": "ms per segment (median)",
                   "results": table, "ratios": ratios}, sys.stdout, indent=2)
        print()
        return
    _common.print_environment(env)
    print(f"finalize one 10 s segment, ms (median of all repeats over {rounds} interleaved rounds)")
    print(f"{'writer / case':<40}{'wall ms':>9}{'spread':>11}{'cpu ms':>9}{'repeats':>9}")
    for name, row in table.items():
        print(f"{name:<40}{row['wall_ms']:>9.3f}{row['spread']:>11}{row['cpu_ms']:>9.3f}{row['repeats']:>9}")
    print()
    print("ratios of medians (wall; > 1 means the first is slower)")
    for name, value in ratios.items():
        print(f"  {name:<64}{value:>6.2f}x")


if __name__ == "__main__":
    main()
