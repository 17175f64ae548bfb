#!/usr/bin/env python3
"""Scale: 1,000 concurrent contexts on 10 sockets against the emulator, with flushsink's
asyncio client. Reports audio seconds received per wall second, client CPU share, and
the client's peak RSS against the PCM it held; checks every sample against
flushsink.emulator.render().

Processes: the emulator (`flushsink serve --pace fast`, 100 ms chunks, pcm_s16le 44.1 kHz)
runs in one child process; each measured client run is a fresh child process, so its
RSS readings are its own. The parent only starts, stops and reports.

Workload: context i (voice i % 4) sends two short sentences: the first with flush=true,
then the second and no_more_inputs; so every context makes two segments (flush_id 1 ended
by flush_done, flush_id 2 ended by done). All 1,000 contexts are started at once and the
emulator interleaves their chunks, so all first segments are open at the same time.

Modes:
  held      every segment is kept until the end (what `await ctx.collect()` does): the
            PCM held is all the audio received, so peak RSS can be compared with it
  released  each segment is checksummed (crc32) and dropped as it arrives (what a
            writer or a player does; the loop deletes its own reference): the client
            should then hold only the segments still open, whose audio flushsink must
            buffer; their sum (sink.stats.open_bytes over the 10 sockets) is sampled
            every 10 ms and its peak is the PCM held. Both modes are reported because
            they answer different questions: "held" checks that flushsink's buffers
            cost no more than the audio in them (preallocation is address space, trimmed
            at handover); "released" checks that nothing keeps audio alive after the
            consumer let go of it.

Memory: base = RSS after imports, after the 10 sockets connected and the 1,000 contexts
were made, before any audio (VmRSS), after which VmHWM is reset; peak = VmHWM at the end
of the run, before anything is checked. The target (issue item 5): peak <= base + 1.3 x
PCM held. The check (render every segment and compare) runs after the peak is read.

Usage: python benchmarks/bench_scale.py [--contexts 1000] [--sockets 10]
       [--seconds-per-context 3] [--repeats 2] [--modes held,released] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (pins OPENBLAS_NUM_THREADS before numpy loads)

RATE = 44100
CHUNK_MS = 100
OUTPUT_FORMAT = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": RATE}
VOICES = ("6ccbfb76-1fc6-48f7-b71d-91ac6298247b", "a0e99841-438c-4a64-b679-ae501e7d6091",
          "79a125e8-cd45-4c13-8a67-188112f4dd22", "2ee87190-8f84-4925-97da-e52547f9462c")
WORDS = ("stay hungry foolish morning river window garden silver planet market "
         "quiet simple yellow orange coffee number letter family future history "
         "people moment system program problem evening forest mountain ocean summer").split()
SECONDS_PER_WORD = 0.55  # the emulator's average for these words, pause included
TARGET_RSS_FACTOR = 1.3
SAMPLE_EVERY_S = 0.01


def plan(contexts: int, seconds_per_context: float, seed: int = 5) -> list[tuple[str, str, str]]:
    """(voice, first sentence, second sentence) of every context."""
    rng = random.Random(seed)
    words = max(2, round(seconds_per_context / SECONDS_PER_WORD))
    out = []
    for i in range(contexts):
        first = max(1, words // 2)
        sentence = [rng.choice(WORDS) for _ in range(words)]
        out.append((VOICES[i % len(VOICES)],
                    " ".join(sentence[:first]).capitalize() + ". ",
                    " ".join(sentence[first:]).capitalize() + "."))
    return out


# --- the client (a child process per run) --------------------------------------------------------

async def _client_run(url: str, mode: str, sockets: int, work: list[tuple[str, str, str]],
                      receive_timeout: float) -> dict[str, Any]:
    import flushsink

    rss_imports = _common.rss_bytes()
    clients = [flushsink.connect(url, api_key="bench", receive_timeout=receive_timeout)
               for _ in range(sockets)]
    for client in clients:
        await client.connect()
    contexts = [clients[i % sockets].context(voice=voice, output_format=OUTPUT_FORMAT,
                                             context_id=f"ctx-{i}")
                for i, (voice, _, _) in enumerate(work)]
    gc.collect()
    base = _common.rss_bytes()
    peak_reset = _common.reset_peak_rss()
    max_open = 0
    running = True

    async def sample_open_bytes() -> None:
        nonlocal max_open
        while running:
            max_open = max(max_open, sum(c.sink.stats.open_bytes for c in clients))
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def one(ctx: Any, first: str, second: str) -> Any:
        await ctx.push(first, flush=True)
        await ctx.push(second)
        await ctx.no_more_inputs()
        if mode == "held":
            return [segment async for segment in ctx.segments()]
        # released: what a consumer keeps of a segment it has written or played
        digests = []
        async for segment in ctx.segments():
            digests.append((segment.flush_id, segment.complete, segment.nbytes,
                            zlib.crc32(segment.pcm())))
            del segment  # done with it: whatever still holds its audio is flushsink's
        return digests

    sampler = asyncio.create_task(sample_open_bytes())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(one(ctx, first, second)
                                     for ctx, (_, first, second) in zip(contexts, work)))
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    peak = _common.peak_rss_bytes()  # before anything else allocates
    running = False
    await sampler
    if mode == "held":
        held = sum(s.nbytes for segments in results for s in segments)
    else:
        held = max_open
    received = sum(s.nbytes if mode == "held" else s[2] for segments in results for s in segments)
    frames = sum(c.sink.stats.frames for c in clients)
    rejected = sum(c.sink.stats.rejected_frames + c.session.rejected_frames for c in clients)
    for client in clients:
        await client.close()
    return {"results": results, "rss_imports": rss_imports, "base": base, "peak": peak,
            "peak_reset": peak_reset, "held": held, "max_open": max_open,
            "received": received, "frames": frames, "rejected": rejected,
            "cpu": cpu, "wall": wall}


def _check(mode: str, work: list[tuple[str, str, str]], results: list[Any]) -> int:
    """Every segment of every context, complete and sample-exact; returns the segments
    checked."""
    from flushsink import AudioFormat
    from flushsink.emulator import render

    fmt = AudioFormat("pcm_s16le", RATE)
    checked = 0
    for i, ((voice, first, second), segments) in enumerate(zip(work, results)):
        for flush_id, text, got in zip((1, 2), (first, second), segments):
            expected = render(text, voice, fmt)
            if mode == "held":
                ok = (got.flush_id == flush_id and got.complete
                      and bytes(got.pcm()) == expected)
            else:
                ok = got == (flush_id, True, len(expected), zlib.crc32(expected))
            assert ok, f"context ctx-{i} segment {flush_id}: audio differs from render()"
            checked += 1
        assert len(segments) == 2, f"context ctx-{i}: {len(segments)} segments, expected 2"
    return checked


def client_main(url: str, mode: str, sockets: int, contexts: int, seconds: float,
                receive_timeout: float) -> None:
    _common.exit_when_parent_goes()
    work = plan(contexts, seconds)
    run = asyncio.run(_client_run(url, mode, sockets, work, receive_timeout))
    results = run.pop("results")
    run["segments_checked"] = _check(mode, work, results)
    run["audio_seconds"] = run["received"] / (RATE * 2)
    print("RESULT " + json.dumps(run), flush=True)


# --- the parent ---------------------------------------------------------------------------------

def process_cpu_seconds(pid: int) -> float:
    """utime + stime of another process (Linux /proc), for the emulator's share."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def run_client(url: str, mode: str, args: argparse.Namespace, server_pid: int) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--client", mode, "--url", url,
            "--sockets", str(args.sockets), "--contexts", str(args.contexts),
            "--seconds-per-context", str(args.seconds_per_context),
            "--receive-timeout", str(args.receive_timeout)]
    server0 = process_cpu_seconds(server_pid)
    with _common.child_process(argv, "RESULT ", timeout=args.run_timeout) as (proc, line):
        result = json.loads(line)
        proc.wait(30)
    result["server_cpu"] = process_cpu_seconds(server_pid) - server0
    return result


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    table = {}
    for mode, results in runs.items():
        med = _common.median
        base = med([r["base"] for r in results])
        peak = med([r["peak"] for r in results])
        held = med([r["held"] for r in results])
        factor = med([(r["peak"] - r["base"]) / r["held"] for r in results])
        table[mode] = {
            "runs": len(results),
            "audio_seconds": round(med([r["audio_seconds"] for r in results]), 1),
            "audio_s_per_wall_s": round(med([r["audio_seconds"] / r["wall"] for r in results]), 1),
            "wall_s": round(med([r["wall"] for r in results]), 2),
            "client_cpu_share": round(med([r["cpu"] / r["wall"] for r in results]), 3),
            "server_cpu_share": round(med([r["server_cpu"] / r["wall"] for r in results]), 3),
            "client_cpu_us_per_frame": round(med([r["cpu"] / r["frames"] * 1e6 for r in results]), 2),
            "rss_after_imports_mb": round(med([r["rss_imports"] for r in results]) / 2**20, 1),
            "base_mb": round(base / 2**20, 1),
            "pcm_held_mb": round(held / 2**20, 1),
            "peak_rss_mb": round(peak / 2**20, 1),
            "peak_minus_base_over_held": round(factor, 3),
            "target_peak_mb": round((base + TARGET_RSS_FACTOR * held) / 2**20, 1),
            "met": all(r["peak"] <= r["base"] + TARGET_RSS_FACTOR * r["held"] for r in results),
            "segments_checked": min(r["segments_checked"] for r in results),
            "rejected_frames": max(r["rejected"] for r in results),
        }
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=1000)
    parser.add_argument("--sockets", type=int, default=10)
    parser.add_argument("--seconds-per-context", type=float, default=3.0,
                        help="audio per context, roughly (two sentences)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, interleaved")
    parser.add_argument("--modes", default="held,released")
    parser.add_argument("--receive-timeout", type=float, default=600.0)
    parser.add_argument("--run-timeout", type=float, default=900.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _common.exit_when_parent_goes()
        from flushsink.cli import main as cli_main
        sys.exit(cli_main(["serve", "--port", "0", "--pace", "fast", "--chunk-ms", str(CHUNK_MS),
                           "--idle-timeout", "0"]))
    if args.client:
        client_main(args.url, args.client, args.sockets, args.contexts,
                    args.seconds_per_context, args.receive_timeout)
        return
    modes = [m.strip() for m in args.modes.split(",")]
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    env = _common.environment({
        "workload": f"{args.contexts} contexts on {args.sockets} sockets, 2 segments each, "
                    f"~{args.seconds_per_context:g} s of pcm_s16le {RATE} Hz per context, "
                    f"{CHUNK_MS} ms chunks",
        "server": "flushsink serve --pace fast (emulator) in a child process",
        "client": "flushsink.connect (asyncio), a fresh child process per run",
    })
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    with _common.child_process([sys.executable, __file__, "--serve"],
                               "flushsink emulator listening on ") as (server, rest):
        url = rest.split()[0]
        for r in range(args.repeats):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                result = run_client(url, mode, args, server.pid)
                runs[mode].append(result)
                log(f"{mode} run {len(runs[mode])}: {result['audio_seconds']:.0f} s of audio in "
                    f"{result['wall']:.1f} s, peak {result['peak'] / 2**20:.0f} MB")
    table = summarize(runs)
    if args.json:
        json.dump({"environment": env, "target": f"peak RSS <= base + {TARGET_RSS_FACTOR} x PCM held",
                   "results": table, "runs": runs}, sys.stdout, indent=2)
        print()
        return
    _common.print_environment(env)
    rows = [
        ("runs", "runs", "{}"),
        ("audio received, s", "audio_seconds", "{:.1f}"),
        ("audio s per wall s", "audio_s_per_wall_s", "{:.1f}"),
        ("wall, s", "wall_s", "{:.2f}"),
        ("client CPU share (of one core)", "client_cpu_share", "{:.3f}"),
        ("emulator CPU share", "server_cpu_share", "{:.3f}"),
        ("client CPU us per frame", "client_cpu_us_per_frame", "{:.2f}"),
        ("RSS after imports, MB", "rss_after_imports_mb", "{:.1f}"),
        ("base RSS (connected, no audio), MB", "base_mb", "{:.1f}"),
        ("PCM held, MB", "pcm_held_mb", "{:.1f}"),
        ("peak RSS, MB", "peak_rss_mb", "{:.1f}"),
        ("(peak - base) / PCM held", "peak_minus_base_over_held", "{:.3f}"),
        (f"target: base + {TARGET_RSS_FACTOR} x held, MB", "target_peak_mb", "{:.1f}"),
        ("target met (every run)", "met", "{}"),
        ("segments checked against render()", "segments_checked", "{}"),
        ("rejected frames", "rejected_frames", "{}"),
    ]
    print("medians over runs; PCM held: held = all segments kept, released = peak of the "
          "open segments' audio")
    print(f"{'':<40}" + "".join(f"{m:>14}" for m in modes))
    for title, key, fmt in rows:
        print(f"{title:<40}" + "".join(f"{fmt.format(table[m][key]):>14}" for m in modes))


if __name__ == "__main__":
    main()
