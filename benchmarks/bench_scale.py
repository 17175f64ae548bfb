#!/usr/bin/env python3
"""Scale: 1,000 concurrent contexts on 10 sockets, with flushsink's asyncio client, paced in
real time and as fast as the emulator goes. Reports the client's CPU per frame (and what
it is made of: user/system time, wake-ups, page faults), audio seconds received per wall
second, and the client's peak RSS against the PCM it held; checks every segment against
flushsink.emulator.render().

Pacings (--pacing, both by default, each with its own server child process):
  realtime  every frame at the time the emulator's real-time pacing (Emulator(pace=
            "realtime")) gives it: a chunk once the audio before it has played, counted
            from the context's first request. The emulator itself cannot do that for
            1,000 contexts on a small machine (it synthesizes audio as it goes: paced,
            it falls behind at 200-360 s of audio per second), so a sender renders the
            emulator's frames beforehand (the same audio, chunks, members and order)
            and sends each frame with its own send() at its time. The contexts start
            spread evenly over one chunk (100 ms), so their chunks arrive spread out as
            independent conversations' would, not in one burst per 100 ms: the case
            where each read finds few frames. "sender lateness p99" says how closely
            the pace was kept. Target (issue 12 item 5): <= 20 us of client CPU per frame.
  fast      the emulator (`flushsink serve --pace fast`): frames as fast as it makes them
            (it uses a whole core; the client gets them in a trickle).

Processes: each measured client run is a fresh child process, so its RSS readings are
its own. The parent only starts, stops and reports.

Workload: context i (voice i % 4) sends two short sentences: the first with flush=true,
then the second and no_more_inputs; so every context makes two segments (flush_id 1 ended
by flush_done, flush_id 2 ended by done), 100 ms chunks of pcm_s16le 44.1 kHz. All first
segments are open at the same time.

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

CPU: time.process_time of the client over the run (from the first request to the last
segment), divided by the frames the Sinks accepted; user and system time and the
voluntary context switches (each one the event loop going to sleep and being woken:
a wake-up) and minor page faults from getrusage over the same span.

Memory: base = RSS after imports, after the 10 sockets connected and the 1,000 contexts
were made, before any audio (VmRSS), after which VmHWM is reset; peak = VmHWM at the end
of the run, before anything is checked. The target (issue 12 item 2): peak <= base +
1.3 x PCM held. The check (every segment's flush id, completeness, length and crc32
against render()'s audio, rendered once per server) runs after the peak is read.

Usage: python benchmarks/bench_scale.py [--contexts 1000] [--sockets 10]
       [--seconds-per-context 3] [--repeats 2] [--modes held,released]
       [--pacing realtime,fast] [--loop asyncio|uvloop] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import heapq
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

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
TARGET_US_PER_FRAME = 20.0  # client CPU per frame, real-time pacing (issue 12, item 5)
# client configurations: (event loop, options for flushsink.connect, what it is)
VARIANTS = {
    "default": ("asyncio", {}, "flushsink.connect's defaults on asyncio's own loop"),
    "no-coalesce": ("asyncio", {"coalesce_reads": 0}, "coalesce_reads=0: every frame read "
                                                       "as it comes"),
    "uvloop": ("uvloop", {}, "the defaults on uvloop (pip install flushsink[uvloop]; "
                             "uvloop.run(main()))"),
    "uvloop-no-coalesce": ("uvloop", {"coalesce_reads": 0}, "uvloop, coalesce_reads=0"),
}
notes: list[str] = []
PACINGS = {
    "realtime": "pre-rendered frames sent each at its time of the emulator's real-time "
                "pacing (a child process); contexts start spread over one chunk (100 ms)",
    "fast": "flushsink serve --pace fast (the emulator, as fast as it makes audio; a child process)",
}
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


# --- what every segment must be ------------------------------------------------------------------

def rendered(work: list[tuple[str, str, str]]) -> list[tuple[bytes, bytes]]:
    """The audio of both segments of every context, as the emulator streams it."""
    from flushsink import AudioFormat
    from flushsink.emulator import render

    fmt = AudioFormat("pcm_s16le", RATE)
    return [(render(first, voice, fmt), render(second, voice, fmt))
            for voice, first, second in work]


def digests(audio: list[tuple[bytes, bytes]]) -> list[list[list[int]]]:
    """[length, crc32] of both segments of every context, what the check compares."""
    return [[[len(pcm), zlib.crc32(pcm)] for pcm in pair] for pair in audio]


# --- the real-time sender (a child process) -----------------------------------------------------
# The emulator makes each segment's audio when asked (its synthesis is most of its cost:
# rendering the 2,870 s of this workload takes about 7.5 s of CPU here), so it cannot send
# 1,000 contexts in real time on a small machine: paced, it falls behind at about 200-360
# s of audio per second and its frames trickle out as fast as it makes them. This sender
# renders every context's frames before the run (the emulator's exact frames: the same
# audio, chunking, frame members and order) and sends each one on its own at the time the
# emulator's real-time pacing gives it, counted from the context's first request.

def timeline(context_id: str, audio: tuple[bytes, bytes], step: int) -> list[tuple[float, bytes]]:
    """(seconds after the context's first request, framed message) of one context, as the
    emulator paces it (Emulator(pace="realtime")): a chunk is sent when the audio before
    it has played; segment 1 ends with flush_done once its audio has played, segment 2
    starts then and ends with done."""
    from bench_e2e import _framed

    bytes_per_second = RATE * 2
    cid = json.dumps(context_id)
    rng = random.Random(context_id)
    frames: list[tuple[float, bytes]] = []
    start = 0.0
    for flush_id, pcm in enumerate(audio, 1):
        for offset in range(0, len(pcm), step):
            data = base64.b64encode(pcm[offset:offset + step]).decode("ascii")
            frames.append((start + offset / bytes_per_second, _framed(
                f'{{"type": "chunk", "context_id": {cid}, "status_code": 206, "done": false, '
                f'"step_time": {rng.uniform(20, 80):.3f}, "flush_id": {flush_id}, '
                f'"data": "{data}"}}')))
        start += len(pcm) / bytes_per_second
        if flush_id == 1:
            frames.append((start, _framed(
                f'{{"type": "flush_done", "context_id": {cid}, "status_code": 206, '
                f'"done": false, "data": "", "flush_id": 1, "flush_done": true}}')))
    frames.append((start, _framed(
        f'{{"type": "done", "context_id": {cid}, "status_code": 206, "done": true}}')))
    return frames


class PacedSender:
    """A plain-socket websocket server that sends each context's pre-built timeline in
    real time: one thread per connection reads the client's requests, one scheduler
    thread sends every frame of every connection at its time, each with its own send
    (so the client sees frames arrive as a paced server sends them, not in batches)."""

    def __init__(self, timelines: dict[str, list[tuple[float, bytes]]], stats_path: str) -> None:
        self.timelines = timelines
        self.stats_path = stats_path
        self.heap: list[tuple[float, int, Any, bytes]] = []
        self.wake = threading.Condition()
        self.sequence = 0
        self.late: list[float] = []  # seconds each frame went out after its time

    def start(self, context_id: str, conn: Any) -> None:
        frames = self.timelines.get(context_id)
        if frames is None:
            return
        now = time.monotonic()
        with self.wake:
            for offset, frame in frames:
                self.sequence += 1
                heapq.heappush(self.heap, (now + offset, self.sequence, conn, frame))
            self.wake.notify()

    def schedule(self) -> None:
        while True:
            with self.wake:
                while not self.heap:
                    self.wake.wait()
                due, _, conn, frame = self.heap[0]
                delay = due - time.monotonic()
                if delay > 0:
                    self.wake.wait(delay)
                    continue
                heapq.heappop(self.heap)
                finished = not self.heap
            self.late.append(-delay)
            conn.send(frame)
            if finished:  # a run's last frame: how closely the pace was kept
                self.report()

    def report(self) -> None:
        late = sorted(self.late)
        self.late = []
        with open(self.stats_path, "a") as f:
            f.write(json.dumps({"frames": len(late), "late_p50_ms": late[len(late) // 2] * 1e3,
                                "late_p99_ms": late[len(late) * 99 // 100] * 1e3,
                                "late_max_ms": late[-1] * 1e3}) + "\n")

    def serve(self, listener: Any) -> None:
        threading.Thread(target=self.schedule, name="pacer", daemon=True).start()
        while True:
            sock, _ = listener.accept()
            threading.Thread(target=self.handle, args=(sock,), daemon=True).start()

    def handle(self, sock: Any) -> None:
        from bench_e2e import _frame_header, accept_websocket

        conn = _PacedConnection(sock)
        try:
            reader = accept_websocket(sock)
            if reader is None:
                return
            sock.settimeout(None)
            while True:
                frame = reader.next()
                if frame is None:
                    return
                opcode, payload = frame
                if opcode == 0x1:
                    message = json.loads(payload)
                    if message.get("transcript") and message["context_id"] not in conn.started:
                        conn.started.add(message["context_id"])
                        self.start(message["context_id"], conn)
                elif opcode == 0x8:  # echo the close, then end the TCP connection
                    conn.send(_frame_header(0x8, len(payload[:2])) + payload[:2])
                    return
                elif opcode == 0x9:
                    conn.send(_frame_header(0xA, len(payload)) + payload)
        except (OSError, ValueError, KeyError, StopIteration):
            return
        finally:
            conn.close()


class _PacedConnection:
    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.closed = False
        self.started: set[str] = set()

    def send(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.sock.close()


def paced_main(contexts: int, seconds: float, digest_path: str, stats_path: str) -> None:
    """The real-time sender's main: render, write the digests, print the port, serve."""
    import socket

    _common.exit_when_parent_goes()
    work = plan(contexts, seconds)
    audio = rendered(work)
    with open(digest_path, "w") as f:
        json.dump(digests(audio), f)
    step = round(RATE * CHUNK_MS / 1000) * 2  # Emulator.chunk_bytes for pcm_s16le
    sender = PacedSender({f"ctx-{i}": timeline(f"ctx-{i}", pair, step)
                          for i, pair in enumerate(audio)}, stats_path)
    del audio
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    sender.serve(listener)


# --- the client (a child process per run) --------------------------------------------------------

async def _client_run(url: str, mode: str, sockets: int, work: list[tuple[str, str, str]],
                      receive_timeout: float, stagger: float,
                      options: dict[str, Any]) -> dict[str, Any]:
    import flushsink

    rss_imports = _common.rss_bytes()
    clients = [flushsink.connect(url, api_key="bench", receive_timeout=receive_timeout, **options)
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
    consumer = 0.0  # CPU seconds the released loop spends on its own crc32s

    async def sample_open_bytes() -> None:
        nonlocal max_open
        while running:
            max_open = max(max_open, sum(c.sink.stats.open_bytes for c in clients))
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def one(index: int, ctx: Any, first: str, second: str) -> Any:
        if stagger:
            await asyncio.sleep(stagger * index / len(work))
        await ctx.push(first, flush=True)
        await ctx.push(second)
        await ctx.no_more_inputs()
        if mode == "held":
            return [segment async for segment in ctx.segments()]
        # released: what a consumer keeps of a segment it has written or played
        nonlocal consumer
        digests = []
        async for segment in ctx.segments():
            start = time.thread_time()
            digests.append((segment.flush_id, segment.complete, segment.nbytes,
                            zlib.crc32(segment.pcm())))
            consumer += time.thread_time() - start
            del segment  # done with it: whatever still holds its audio is flushsink's
        return digests

    # (only released runs need the open audio; the sampler's wake-ups are not the client's)
    sampler = asyncio.create_task(sample_open_bytes()) if mode == "released" else None
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(one(i, ctx, first, second)
                                     for i, (ctx, (_, first, second)) in enumerate(zip(contexts, work))))
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = _common.peak_rss_bytes()  # before anything else allocates
    running = False
    if sampler is not None:
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
            "cpu": cpu, "wall": wall, "consumer_cpu": consumer,
            "user": usage.ru_utime - usage0.ru_utime,
            "sys": usage.ru_stime - usage0.ru_stime,
            # a voluntary context switch is the loop going to sleep in epoll_wait and
            # being woken by the next read (or a timer): the wake-ups
            "wakeups": usage.ru_nvcsw - usage0.ru_nvcsw,
            "page_faults": usage.ru_minflt - usage0.ru_minflt,
            "loop": _loop_name()}


def _loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]  # asyncio or uvloop


def _check(mode: str, expected: list[list[list[int]]], results: list[Any]) -> int:
    """Every segment of every context, complete and sample-exact (its length and crc32
    those of render()'s audio); returns the segments checked."""
    checked = 0
    for i, (want, segments) in enumerate(zip(expected, results)):
        assert len(segments) == 2, f"context ctx-{i}: {len(segments)} segments, expected 2"
        for flush_id, (length, crc), got in zip((1, 2), want, segments):
            if mode == "held":
                got = (got.flush_id, got.complete, got.nbytes, zlib.crc32(got.pcm()))
            assert tuple(got) == (flush_id, True, length, crc), \
                f"context ctx-{i} segment {flush_id}: audio differs from render()"
            checked += 1
    return checked


def client_main(url: str, mode: str, sockets: int, contexts: int, seconds: float,
                receive_timeout: float, stagger: float, digest_path: str, loop: str,
                options: dict[str, Any]) -> None:
    _common.exit_when_parent_goes()
    work = plan(contexts, seconds)
    coro = _client_run(url, mode, sockets, work, receive_timeout, stagger, options)
    if loop == "uvloop":
        import uvloop

        run = uvloop.run(coro)
    else:
        run = asyncio.run(coro)
    results = run.pop("results")
    with open(digest_path) as f:
        run["segments_checked"] = _check(mode, json.load(f), results)
    run["audio_seconds"] = run["received"] / (RATE * 2)
    print("RESULT " + json.dumps(run), flush=True)


# --- the parent ---------------------------------------------------------------------------------

def process_cpu_seconds(pid: int) -> float:
    """utime + stime of another process (Linux /proc), for the server's share."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class Server(NamedTuple):
    pacing: str
    url: str
    pid: int
    digest_path: str
    stats_path: str  # the real-time sender's pace, one line per run ("" for the emulator)


def run_client(server: Server, mode: str, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    stagger = CHUNK_MS / 1000 if server.pacing == "realtime" else 0.0
    loop, options = VARIANTS[variant][:2]
    argv = [sys.executable, __file__, "--client", mode, "--url", server.url,
            "--sockets", str(args.sockets), "--contexts", str(args.contexts),
            "--seconds-per-context", str(args.seconds_per_context),
            "--receive-timeout", str(args.receive_timeout), "--stagger", str(stagger),
            "--digests", server.digest_path]
    server0 = process_cpu_seconds(server.pid)
    reports = _stats_lines(server.stats_path)
    argv += ["--loop", loop, "--client-options", json.dumps(options)]
    with _common.child_process(argv, "RESULT ", timeout=args.run_timeout) as (proc, line):
        result = json.loads(line)
        proc.wait(30)
    result["server_cpu"] = process_cpu_seconds(server.pid) - server0
    if stagger:
        with open(server.digest_path) as f:
            lengths = [sum(length for length, _ in pair) for pair in json.load(f)]
        result["real_time_wall"] = max(stagger * i / len(lengths) + n / (RATE * 2)
                                       for i, n in enumerate(lengths))
    if server.stats_path:
        deadline = time.monotonic() + 5
        while len(_stats_lines(server.stats_path)) == len(reports) and time.monotonic() < deadline:
            time.sleep(0.01)
        new = _stats_lines(server.stats_path)[len(reports):]
        if new:
            result["pace"] = json.loads(new[-1])
    return result


def _stats_lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError:
        return []


@contextlib.contextmanager
def start_server(pacing: str, args: argparse.Namespace, work_dir: str,
                 log: Callable[[str], None]) -> Iterator[Server]:
    digest_path = os.path.join(work_dir, f"digests-{pacing}.json")
    if pacing == "realtime":
        stats_path = os.path.join(work_dir, "pace.jsonl")
        argv = [sys.executable, __file__, "--serve-paced", "--contexts", str(args.contexts),
                "--seconds-per-context", str(args.seconds_per_context),
                "--digests", digest_path, "--pace-stats", stats_path]
        log("real-time sender: rendering every context's audio (about 10 s)")
        with _common.child_process(argv, "PORT ", timeout=600) as (proc, port):
            yield Server(pacing, f"ws://127.0.0.1:{port}", proc.pid, digest_path, stats_path)
        return
    log("emulator: rendering the expected audio for the check (about 8 s)")
    with open(digest_path, "w") as f:
        json.dump(digests(rendered(plan(args.contexts, args.seconds_per_context))), f)
    with _common.child_process([sys.executable, __file__, "--serve"],
                               "flushsink emulator listening on ") as (proc, rest):
        yield Server(pacing, rest.split()[0], proc.pid, digest_path, "")


def describe(variant: str) -> str:
    """What a configuration is, with the installed flushsink's default coalesce_reads."""
    if variant != "default":
        return VARIANTS[variant][2]
    import inspect

    from flushsink.client import Client

    default = inspect.signature(Client.__init__).parameters.get("coalesce_reads")
    what = ("no coalesce_reads in this flushsink" if default is None
            else f"coalesce_reads {default.default * 1000:g} ms")
    return f"flushsink.connect's defaults on asyncio's own loop ({what})"


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Medians per column ("mode / pacing" for the default client, "mode / pacing /
    variant" for the others)."""
    table = {}
    for column, results in runs.items():
        med = _common.median
        base = med([r["base"] for r in results])
        peak = med([r["peak"] for r in results])
        held = med([r["held"] for r in results])
        factor = med([(r["peak"] - r["base"]) / r["held"] for r in results])
        # the client's CPU: the process's, less what the released loop spent on crc32s
        per_frame = med([(r["cpu"] - r["consumer_cpu"]) / r["frames"] * 1e6 for r in results])
        paces = [r["pace"] for r in results if "pace" in r]
        table[column] = {
            "runs": len(results),
            "audio_seconds": round(med([r["audio_seconds"] for r in results]), 1),
            "audio_s_per_wall_s": round(med([r["audio_seconds"] / r["wall"] for r in results]), 1),
            "wall_s": round(med([r["wall"] for r in results]), 2),
            "real_time_wall_s": (round(results[0]["real_time_wall"], 2)
                                 if "real_time_wall" in results[0] else None),
            "client_cpu_share": round(med([r["cpu"] / r["wall"] for r in results]), 3),
            "server_cpu_share": round(med([r["server_cpu"] / r["wall"] for r in results]), 3),
            "client_cpu_us_per_frame": round(per_frame, 2),
            "client_cpu_us_per_frame_spread": _common.spread(
                [(r["cpu"] - r["consumer_cpu"]) / r["frames"] * 1e6 for r in results]),
            "consumer_us_per_frame": round(med([r["consumer_cpu"] / r["frames"] * 1e6
                                                for r in results]), 2),
            "user_us_per_frame": round(med([r["user"] / r["frames"] * 1e6 for r in results]), 2),
            "sys_us_per_frame": round(med([r["sys"] / r["frames"] * 1e6 for r in results]), 2),
            "wakeups_per_frame": round(med([r["wakeups"] / r["frames"] for r in results]), 3),
            "page_faults_per_frame": round(med([r["page_faults"] / r["frames"] for r in results]), 2),
            "sender_late_p99_ms": round(med([p["late_p99_ms"] for p in paces]), 2) if paces else None,
            "rss_after_imports_mb": round(med([r["rss_imports"] for r in results]) / 2**20, 1),
            "base_mb": round(base / 2**20, 1),
            "pcm_held_mb": round(held / 2**20, 1),
            "peak_rss_mb": round(peak / 2**20, 1),
            "peak_minus_base_over_held": round(factor, 3),
            "target_peak_mb": round((base + TARGET_RSS_FACTOR * held) / 2**20, 1),
            "met": all(r["peak"] <= r["base"] + TARGET_RSS_FACTOR * r["held"] for r in results),
            "segments_checked": min(r["segments_checked"] for r in results),
            "rejected_frames": max(r["rejected"] for r in results),
            "loop": results[0]["loop"],
        }
    return table


def targets(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    verdicts = {}
    for column, row in table.items():
        if column.count("/") > 1:
            continue  # the other configurations: reported, not judged
        verdicts[f"{column}: peak RSS <= base + {TARGET_RSS_FACTOR} x PCM held (every run)"] = {
            "value": row["peak_minus_base_over_held"], "met": row["met"]}
        if column.endswith("/ realtime"):
            value = row["client_cpu_us_per_frame"]
            verdicts[f"{column}: client CPU <= {TARGET_US_PER_FRAME:g} us per frame"] = {
                "value": value, "met": value <= TARGET_US_PER_FRAME}
    return verdicts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=1000)
    parser.add_argument("--sockets", type=int, default=10)
    parser.add_argument("--seconds-per-context", type=float, default=3.0,
                        help="audio per context, roughly (two sentences)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, interleaved")
    parser.add_argument("--modes", default="held,released")
    parser.add_argument("--pacing", default="realtime,fast",
                        help="realtime (pre-rendered frames sent at the emulator's real-time "
                             "pace), fast (the emulator, --pace fast); comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="client configurations to run at real-time pacing, besides "
                             "the default one: " + "; ".join(
                                 f"{name} = {desc}" for name, (_, _, desc) in VARIANTS.items()))
    parser.add_argument("--loop", default="asyncio", choices=("asyncio", "uvloop"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--client-options", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--receive-timeout", type=float, default=600.0)
    parser.add_argument("--run-timeout", type=float, default=900.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-paced", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--stagger", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--digests", help=argparse.SUPPRESS)
    parser.add_argument("--pace-stats", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _common.exit_when_parent_goes()
        from flushsink.cli import main as cli_main
        sys.exit(cli_main(["serve", "--port", "0", "--pace", "fast", "--chunk-ms", str(CHUNK_MS),
                           "--idle-timeout", "0"]))
    if args.serve_paced:
        paced_main(args.contexts, args.seconds_per_context, args.digests, args.pace_stats)
        return
    if args.client:
        client_main(args.url, args.client, args.sockets, args.contexts,
                    args.seconds_per_context, args.receive_timeout, args.stagger, args.digests,
                    args.loop, json.loads(args.client_options))
        return
    modes = [m.strip() for m in args.modes.split(",")]
    pacings = [p.strip() for p in args.pacing.split(",")]
    for pacing in pacings:
        if pacing not in PACINGS:
            parser.error(f"--pacing: {pacing!r} is none of {', '.join(PACINGS)}")
    variants = ["default"] + [v.strip() for v in args.variants.split(",")
                              if v.strip() and v.strip() != "default"]
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"--variants: {variant!r} is none of {', '.join(VARIANTS)}")
    if any(VARIANTS[v][0] == "uvloop" for v in variants):
        try:
            import uvloop  # noqa: F401
        except ImportError:
            notes.append("uvloop not installed: its configurations skipped (pip install uvloop)")
            variants = [v for v in variants if VARIANTS[v][0] != "uvloop"]
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    env = _common.environment({
        "workload": f"{args.contexts} contexts on {args.sockets} sockets, 2 segments each, "
                    f"~{args.seconds_per_context:g} s of pcm_s16le {RATE} Hz per context, "
                    f"{CHUNK_MS} ms chunks",
        "servers": "; ".join(f"{p}: {PACINGS[p]}" for p in pacings),
        "client": "flushsink.connect (asyncio), a fresh child process per run",
        "page first touch": f"{_common.first_touch_us():.2f} us of CPU per 4 KiB (the kernel's "
                            f"part of storing audio in fresh memory)",
    })
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_scale-") as work_dir:
        for pacing in pacings:
            # the other configurations run where the wake-ups are: real-time pacing
            runs_here = [(v, m) for v in (variants if pacing == "realtime" else ["default"])
                         for m in modes]
            with start_server(pacing, args, work_dir, log) as server:
                for r in range(args.repeats):
                    shift = r % len(runs_here)  # a rotating order: drifts hit all alike
                    for variant, mode in runs_here[shift:] + runs_here[:shift]:
                        column = f"{mode} / {pacing}" + (
                            "" if variant == "default" else f" / {variant}")
                        result = run_client(server, mode, variant, args)
                        runs.setdefault(column, []).append(result)
                        log(f"{column} run {len(runs[column])}: {result['audio_seconds']:.0f} s "
                            f"of audio in {result['wall']:.1f} s, "
                            f"{(result['cpu'] - result['consumer_cpu']) / result['frames'] * 1e6:.1f} "
                            f"us CPU per frame, "
                            f"peak {result['peak'] / 2**20:.0f} MB")
    table = summarize(runs)
    verdicts = targets(table)
    if args.json:
        json.dump({"environment": env, "variants": {v: describe(v) for v in variants},
                   "results": table, "targets": verdicts, "runs": runs, "notes": notes},
                  sys.stdout, indent=2)
        print()
        return
    _common.print_environment(env)
    rows = [
        ("runs", "runs", "{}"),
        ("client event loop", "loop", "{}"),
        ("audio received, s", "audio_seconds", "{:.1f}"),
        ("audio s per wall s", "audio_s_per_wall_s", "{:.1f}"),
        ("wall, s", "wall_s", "{:.2f}"),
        ("  at exact real time, s", "real_time_wall_s", "{:.2f}"),
        ("sender lateness p99, ms", "sender_late_p99_ms", "{}"),
        ("client CPU share (of one core)", "client_cpu_share", "{:.3f}"),
        ("server CPU share", "server_cpu_share", "{:.3f}"),
        ("client CPU us per frame", "client_cpu_us_per_frame", "{:.2f}"),
        ("  spread (min/max vs median)", "client_cpu_us_per_frame_spread", "{}"),
        ("  + the loop's own crc32s (not counted)", "consumer_us_per_frame", "{:.2f}"),
        ("  user / sys us per frame", ("user_us_per_frame", "sys_us_per_frame"), "{:.1f} / {:.1f}"),
        ("  wake-ups per frame", "wakeups_per_frame", "{:.3f}"),
        ("  page faults per frame", "page_faults_per_frame", "{:.2f}"),
        ("RSS after imports, MB", "rss_after_imports_mb", "{:.1f}"),
        ("base RSS (connected, no audio), MB", "base_mb", "{:.1f}"),
        ("PCM held, MB", "pcm_held_mb", "{:.1f}"),
        ("peak RSS, MB", "peak_rss_mb", "{:.1f}"),
        ("(peak - base) / PCM held", "peak_minus_base_over_held", "{:.3f}"),
        (f"target: base + {TARGET_RSS_FACTOR} x held, MB", "target_peak_mb", "{:.1f}"),
        ("segments checked against render()", "segments_checked", "{}"),
        ("rejected frames", "rejected_frames", "{}"),
    ]
    columns = [c for c in table if c.count("/") == 1]
    width = max(18, *(len(c) + 2 for c in columns))
    print("medians over runs; PCM held: held = all segments kept, released = peak of the "
          "open segments' audio")
    print(f"{'':<36}" + "".join(f"{c:>{width}}" for c in columns))
    for title, key, fmt in rows:
        cells = []
        for c in columns:
            row = table[c]
            value = fmt.format(*(row[k] for k in key)) if isinstance(key, tuple) else (
                "-" if row[key] is None else fmt.format(row[key]))
            cells.append(f"{value:>{width}}")
        print(f"{title:<36}" + "".join(cells))
    others = [c for c in table if c.count("/") > 1]
    if others:
        print()
        print("client configurations at real-time pacing (same sender, runs interleaved with "
              "the default's above)")
        head = (f"{'configuration':<28}{'mode':<10}{'CPU us/frame':>13}{'spread':>11}"
                f"{'user/sys us':>14}{'wake-ups/fr':>12}{'faults/fr':>10}")
        print(head)
        print("-" * len(head))
        for variant in variants:
            for mode in modes:
                column = f"{mode} / realtime" + ("" if variant == "default" else f" / {variant}")
                row = table.get(column)
                if row is None:
                    continue
                print(f"{variant:<28}{mode:<10}{row['client_cpu_us_per_frame']:>13.2f}"
                      f"{row['client_cpu_us_per_frame_spread']:>11}"
                      f"{row['user_us_per_frame']:>7.1f}/{row['sys_us_per_frame']:<6.1f}"
                      f"{row['wakeups_per_frame']:>12.3f}{row['page_faults_per_frame']:>10.2f}")
        for variant in variants:
            print(f"  {variant}: {describe(variant)}")
    print()
    print("targets")
    for name, verdict in verdicts.items():
        print(f"  {'MET ' if verdict['met'] else 'MISS'}  {name}: {verdict['value']}")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
