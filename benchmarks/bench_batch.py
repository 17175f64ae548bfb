#!/usr/bin/env python3
"""Batch synthesis (issue 17): rows per second and audio seconds per second of
``flushsink batch`` for 1 and 2 shards, and of the Ray runner for 1 and 2 actors.

Server: the Cartesia emulator in a process of its own (``flushsink serve --pace fast``:
no real-time pacing, so the job, not the server's clock, sets the pace; with
``--concurrency-limit N`` it refuses contexts past N with 429s, as a plan does).

Runs (each into a fresh destination, ``--repeats`` times, the median reported):
  1 shard    one ``python -m flushsink batch INPUT --out DEST`` process
  2 shards   two processes, ``--shard 0/2`` and ``--shard 1/2``, sharing one DEST; the
             wall time is from the start of the first to the end of the last
  ray N      ``flushsink.batch.ray.run`` on a local Ray cluster (127.0.0.1 only) with N
             actors (``--ray``); the cluster's start is not counted, each run's actor
             pool start is
Destinations: a local directory (default), and S3 on moto's server on 127.0.0.1
(``--s3``, where obstore and moto are installed).

Each run is checked: every row in the manifest exactly once, and a sample of WAVs equal to
``flushsink.emulator.render``. rows/s = input rows / wall seconds; audio s/s = seconds of
audio stored / wall seconds. The machine's cores are shared by the server, the job's
processes and (with --s3) the S3 server: on 2 cores these numbers say what the job costs
next to a server on the same machine, not what a real provider would allow.

    python benchmarks/bench_batch.py                     # 1000 rows, directory, 1 and 2 shards
    python benchmarks/bench_batch.py --s3 --ray --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import child_process, environment, median, print_environment, spread  # noqa: E402

import numpy as np  # noqa: E402

from flushsink.batch import LocalStore, open_store, read_wav_info, summarize  # noqa: E402
from flushsink.batch import audio_path  # noqa: E402
from flushsink.emulator import render  # noqa: E402
from flushsink.formats import AudioFormat  # noqa: E402

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
SENTENCES = ("The quick brown fox jumps over the lazy dog.",
             "A batch job turns a table of texts into audio files.",
             "Every row is stored once, whatever stops the job.",
             "Resume reads the manifest and lists the audio.")


def write_input(path: str, rows: int) -> dict[str, str]:
    expected = {}
    with open(path, "w", encoding="utf-8") as file:
        for i in range(rows):
            text = f"{SENTENCES[i % len(SENTENCES)]} Row {i}."
            expected[f"row-{i:06d}"] = text
            file.write(json.dumps({"id": f"row-{i:06d}", "text": text}) + "\n")
    return expected


def check(dest: str, expected: dict[str, str], fmt: AudioFormat) -> dict[str, Any]:
    store = open_store(dest)
    totals = summarize(store)
    assert totals["rows"] == len(expected), (totals["rows"], len(expected))
    assert totals["files"] == len(expected) and totals["duplicate_files"] == 0, totals
    for row_id in list(expected)[:: max(1, len(expected) // 20)]:
        wav = store.get(audio_path(row_id, 0))
        info = read_wav_info(wav)
        assert info.format == fmt
        pcm = np.frombuffer(wav[-info.frames * 2:], "<i2")
        assert np.array_equal(pcm, np.frombuffer(render(expected[row_id], VOICE, fmt), "<i2"))
    return totals


def run_shards(source: str, dest: str, url: str, shards: int, args: argparse.Namespace,
               env: dict[str, str]) -> float:
    base = [sys.executable, "-m", "flushsink", "batch", source, "--out", dest, "--url", url,
            "--concurrency", str(args.concurrency), "--sockets", str(args.sockets),
            "--sample-rate", str(args.sample_rate), "--quiet"]
    start = time.perf_counter()
    procs = [subprocess.Popen(base + ["--shard", f"{i}/{shards}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(shards)]
    for proc in procs:
        _, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"a shard exited with {proc.returncode}: {err.strip()[-500:]}")
    return time.perf_counter() - start


def run_ray(source: str, dest: str, url: str, actors: int, args: argparse.Namespace) -> float:
    from flushsink.batch import ray as batch_ray

    start = time.perf_counter()
    summary = batch_ray.run(source, dest, url=url, num_actors=actors,
                            concurrency_per_actor=args.concurrency,
                            sockets_per_actor=args.sockets,
                            output_format=AudioFormat("pcm_s16le", args.sample_rate))
    elapsed = time.perf_counter() - start
    assert summary["job"]["complete"] and summary["job"]["rows_failed"] == 0
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8, help="per process (per actor)")
    parser.add_argument("--sockets", type=int, default=2)
    parser.add_argument("--sample-rate", type=int, default=24000)
    parser.add_argument("--concurrency-limit", type=int, default=None,
                        help="the emulator refuses contexts past this many (429)")
    parser.add_argument("--s3", action="store_true", help="also an S3 destination (moto)")
    parser.add_argument("--ray", action="store_true", help="also the Ray runner, 1 and 2 actors")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args()

    fmt = AudioFormat("pcm_s16le", args.sample_rate)
    env_info = environment({
        "workload": f"{args.rows} rows of one sentence (~4 s of audio each), pcm_s16le "
                    f"{args.sample_rate} Hz; --concurrency {args.concurrency} --sockets "
                    f"{args.sockets} per process; server: flushsink serve --pace fast"
                    + (f" --concurrency-limit {args.concurrency_limit}"
                       if args.concurrency_limit else "") + " (its own process)",
        "repeats": f"{args.repeats}, median (spread: min/max vs median)",
    })
    print_environment(env_info)
    work = tempfile.mkdtemp(prefix="bench_batch-")
    results: list[dict[str, Any]] = []
    moto = None
    try:
        source = os.path.join(work, "rows.jsonl")
        expected = write_input(source, args.rows)
        serve = [sys.executable, "-m", "flushsink", "serve", "--port", "0", "--pace", "fast"]
        if args.concurrency_limit:
            serve += ["--concurrency-limit", str(args.concurrency_limit)]
        with child_process(serve, "flushsink emulator listening on ") as (_, rest):
            url = rest.split()[0]
            kinds = ["dir"]
            env = dict(os.environ)
            if args.s3:
                import logging

                from moto.server import ThreadedMotoServer

                logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request

                moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
                moto.start()
                host, port = moto.get_host_and_port()
                env.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="x",
                           AWS_SECRET_ACCESS_KEY="x", AWS_REGION="us-east-1")
                os.environ.update({k: env[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                       "AWS_SECRET_ACCESS_KEY", "AWS_REGION")})
                kinds.append("s3")
            runs: list[tuple[str, str, int]] = [(kind, "shards", n) for kind in kinds
                                                for n in (1, 2)]
            if args.ray:
                runs += [("dir", "ray", n) for n in (1, 2)]
            counter = 0
            ray: Any = None
            for kind, runner, n in runs:
                if runner == "ray" and ray is None:
                    # started after the shard runs, so its idle processes do not share
                    # their cores
                    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # 127.0.0.1 only
                    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
                    import ray

                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False,
                             _node_ip_address="127.0.0.1", log_to_driver=False,
                             configure_logging=False)
                    context = ray.data.DataContext.get_current()
                    context.enable_progress_bars = False
                    context.print_on_execution_start = False
                walls, seconds = [], 0.0
                for _ in range(args.repeats):
                    counter += 1
                    if kind == "s3":
                        import urllib.request
                        bucket = f"bench-{os.getpid()}-{counter}"
                        urllib.request.urlopen(urllib.request.Request(
                            f"{env['AWS_ENDPOINT_URL']}/{bucket}", method="PUT"), timeout=10).read()
                        dest = f"s3://{bucket}/job"
                    else:
                        dest = os.path.join(work, f"out-{counter}")
                    if runner == "shards":
                        wall = run_shards(source, dest, url, n, args, env)
                    else:
                        wall = run_ray(source, dest, url, n, args)
                    totals = check(dest, expected, fmt)
                    seconds = totals["audio_seconds"]
                    walls.append(wall)
                    if kind == "dir":
                        shutil.rmtree(dest, ignore_errors=True)
                wall = median(walls)
                label = f"{n} shard{'s' * (n > 1)}" if runner == "shards" else f"ray, {n} actor{'s' * (n > 1)}"
                results.append({"destination": kind, "runner": runner, "n": n, "rows": args.rows,
                                "wall_s": round(wall, 3), "rows_per_s": round(args.rows / wall, 1),
                                "audio_s_per_s": round(seconds / wall, 1),
                                "audio_s": round(seconds, 1), "spread": spread(walls),
                                "label": label})
                r = results[-1]
                print(f"{kind:<4} {label:<16} {r['wall_s']:>8.2f} s {r['rows_per_s']:>9.1f} rows/s "
                      f"{r['audio_s_per_s']:>9.1f} audio s/s  {r['spread']}", flush=True)
            if ray is not None:
                ray.shutdown()
    finally:
        if moto is not None:
            moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'destination':<12}{'run':<18}{'wall s':>8}{'rows/s':>10}{'audio s/s':>11}  spread")
    for r in results:
        print(f"{r['destination']:<12}{r['label']:<18}{r['wall_s']:>8.2f}{r['rows_per_s']:>10.1f}"
              f"{r['audio_s_per_s']:>11.1f}  {r['spread']}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"environment": env_info, "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
