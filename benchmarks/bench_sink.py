#!/usr/bin/env python3
"""Receive-path benchmark: flushsink's Sink next to the ways people decode Cartesia's
websocket audio today, and next to the floor, all measured in one process.

Main table: one 10 s segment of pcm_s16le audio per run, sent as chunk frames the way the
server sends them ({"type":"chunk","context_id":...,"status_code":206,"done":false,
"step_time":...,"flush_id":1,"data":"<base64>"}) and ended by flush_done, for 20, 100
and 500 ms chunks at 16, 24 and 44.1 kHz. Every pipeline turns the frames into the
segment's PCM (one buffer per (context_id, flush_id), handed over at flush_done); the
result is checked against the PCM the frames were made from before anything is timed.

The axes of issue 12 (flushsink's best kernel next to orjson+pybase64; --axis runs some):
  order        the same segment with `data` last, first, in the middle, and second with a
               string last (the docs' order: type, data, ..., flush_id, context_id)
  short        30 s of audio per run in segments of 0.5, 1.5, 3 and 10 s through one
               long-lived Sink, with minor page faults per message; then the same while
               another context of that Sink holds 200 MiB of audio open
  interleaved  100 contexts on one Sink, 2 x 1.5 s segments each at 24 kHz, frames
               interleaved one by one; orjson routes by (context_id, flush_id) alike
  cold         each run the next of enough distinct segments to make 96 MiB of frames
               (several times the last-level cache), next to one segment run hot
The axis of issue 14:
  stream       the main table's segments through the compiled Sink (AVX2 kernel) with
               stream=True, next to the same Sink without it, and with keep_audio=False;
               each consumer drops every chunk's events at once (target: a streaming
               chunk costs at most 1.3x a non-streaming one), and one that iterates
               them (`for event in sink.feed(frame)`, which keeps the last one until
               the next frame's), next to the same loop without stream
The axis of issue 16:
  provider     each built-in envelope's frames (Cartesia, OpenAI Realtime, ElevenLabs,
               Twilio media) at 20 and 100 ms: the compiled Sink with envelope= next to
               orjson+pybase64 and the stdlib with the same routing (target: >= 6x
               orjson+pybase64)
Each prints its own table, targets marked; benchmarks/README.md says what each measures.

Reported: ns per chunk message = time of the whole run (its chunks, the flush_done and
done frames, handing the segments over) / number of chunks; median over interleaved
repeats (each round runs every pipeline once per config, in a rotating order, so drifts
of a shared machine hit all pipelines alike). Per-run state (a new Sink, a dict of
buffers, fresh context ids) is made outside the timed region. The clock is the thread's
CPU time by default (--clock wall for perf_counter): on a shared machine wall time counts
other processes' time slices. Page faults: the thread's minor faults (getrusage) over all
timed runs / their chunk messages.

Pipelines:
  flushsink[<kernel>]   the compiled Sink on each base64 kernel this CPU supports
  flushsink pure        the pure-Python twin
  cartesia SDK          cartesia==3.2.0's receive path: parse_event (json.loads +
                        construct_type_unchecked into the WebsocketResponse union), the
                        routing by event.context_id, then event.audio (base64.b64decode)
                        onto a bytearray - what ctx.receive() hands the user, without the
                        asyncio queue hop (so the SDK number is a lower bound)
  stdlib                json.loads + base64.b64decode + bytearray
  orjson+pybase64       orjson.loads + pybase64.b64decode(validate=True) + bytearray
  simdjson+pybase64     pysimdjson's lazy Parser.parse + pybase64.b64decode(validate=True)
  floor                 a C call per message that reads every frame byte (checksum) and
                        memcpy's the message's PCM, decoded beforehand, into the segment:
                        no JSON, no base64 (benchmarks/_floor.c, built on the fly with
                        -O3 -march=native)
  floor, one C loop     the same for the whole segment in one C call (no Python call per
                        message): shown for reference only

Usage: python benchmarks/bench_sink.py [--axis main,order,short,interleaved,cold,stream,provider|all]
           [--rounds N] [--quick] [--json] [--only NAME,...] [--cold-mib N] [--clock cpu|wall]
Missing baseline packages are skipped with a note (pip install flushsink[bench]).
"""

from __future__ import annotations

import argparse
import base64
import gc
import itertools
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

# numpy (imported by flushsink) must not start BLAS threads: idle ones spin and steal one
# of the machine's cores from the measurement
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _cbuild  # noqa: E402
from _common import route_naively  # noqa: E402

RATES = (16000, 24000, 44100)
CHUNK_MS = (20, 100, 500)
SEGMENT_SECONDS = 10.0

# the targets (medians, same run)
TARGET_VS_SDK = 60.0
TARGET_VS_SIMDJSON = 6.0
TARGET_VS_FLOOR = 1.5          # for 100 and 500 ms chunks
TARGET_NS_20MS_44K = 150.0
TARGET_AVX2_VS_SDK = 40.0

notes: list[str] = []


# --- workload ------------------------------------------------------------------------------

# Member orders of a chunk frame. "data last" is what the server sends and what the main
# table measures; member order carries no meaning in JSON, so a server (or a proxy that
# re-serialises) may send any of the others. "docs order" is the order of the chunk example
# in Cartesia's API documentation: type and data first, a string (context_id) last.
ORDERS = {
    "data last": ("type", "context_id", "status_code", "done", "step_time", "flush_id", "data"),
    "data first": ("data", "type", "context_id", "status_code", "done", "step_time", "flush_id"),
    "data middle": ("type", "context_id", "status_code", "data", "done", "step_time", "flush_id"),
    "docs order": ("type", "data", "done", "status_code", "step_time", "flush_id", "context_id"),
}


def chunk_frame(context_id: str, flush_id: int, step_time: float, pcm: bytes,
                order: str = "data last") -> bytes:
    values = {"type": "chunk", "context_id": context_id, "status_code": 206, "done": False,
              "step_time": step_time, "flush_id": flush_id,
              "data": base64.b64encode(pcm).decode("ascii")}
    return json.dumps({key: values[key] for key in ORDERS[order]}).encode()


def flush_done_frame(context_id: str, flush_id: int) -> bytes:
    return json.dumps({
        "type": "flush_done", "context_id": context_id, "status_code": 206, "done": False,
        "flush_done": True, "flush_id": flush_id,
    }).encode()


def done_frame(context_id: str) -> bytes:
    return json.dumps({"type": "done", "context_id": context_id, "status_code": 206,
                       "done": True}).encode()


def segment_frames(sample_rate: int, chunk_ms: int, seconds: float = SEGMENT_SECONDS,
                   order: str = "data last", seed=None):
    """(frames, per-frame PCM, whole PCM, context_id) of one s16le segment. The same
    (rate, chunk_ms, seed) gives the same audio, context id and step times in every order."""
    rng = random.Random(sample_rate * 1000 + chunk_ms if seed is None else seed)
    context_id = str(uuid.UUID(int=rng.getrandbits(128)))
    per_chunk = sample_rate * chunk_ms // 1000 * 2
    total = int(seconds * sample_rate) * 2
    # speech-like amplitude does not matter to any decoder; random bytes are the worst case
    # for nothing and keep the PCM honest (no long runs a decoder could shortcut)
    pcm = rng.randbytes(total)
    frames, pieces = [], []
    for start in range(0, total, per_chunk):
        piece = pcm[start:start + per_chunk]
        frames.append(chunk_frame(context_id, 1, round(rng.uniform(20.0, 80.0), 6), piece, order))
        pieces.append(piece)
    frames.append(flush_done_frame(context_id, 1))
    pieces.append(b"")
    return frames, pieces, pcm, context_id


def segment_work(sample_rate: int, chunk_ms: int, seconds: float = SEGMENT_SECONDS,
                 order: str = "data last", seed=None) -> dict:
    """One segment as the unit of work of the main table (and the order and cold axes)."""
    frames, pieces, pcm, context_id = segment_frames(sample_rate, chunk_ms, seconds, order, seed)
    return {"frames": frames, "pieces": pieces, "pcm": pcm, "rate": sample_rate,
            "context_id": context_id, "chunks": len(frames) - 1}


def stream_work(sample_rate: int, chunk_ms: int, segment_seconds: float, segments: int,
                contexts: int = 1, seed: int = 0, interleave: bool = True) -> dict:
    """A stream of frames: each context sends `segments` segments (chunks, flush_done with
    flush_id 1, 2, ...) and then done; with several contexts their frames are interleaved one
    by one, as a server that generates them at the same time sends them (or, interleave=False,
    one context after the other). The same seed gives the same frames in either order."""
    rng = random.Random(seed)
    per_chunk = sample_rate * chunk_ms // 1000 * 2
    segment_bytes = int(segment_seconds * sample_rate) * 2
    streams, expected, names, chunks = [], {}, [], 0
    for _ in range(contexts):
        context_id = str(uuid.UUID(int=rng.getrandbits(128)))
        names.append(context_id)
        frames = []
        for flush_id in range(1, segments + 1):
            pcm = rng.randbytes(segment_bytes)
            expected[(context_id, flush_id)] = pcm
            for start in range(0, segment_bytes, per_chunk):
                frames.append(chunk_frame(context_id, flush_id, round(rng.uniform(20.0, 80.0), 6),
                                          pcm[start:start + per_chunk]))
                chunks += 1
            frames.append(flush_done_frame(context_id, flush_id))
        frames.append(done_frame(context_id))
        streams.append(frames)
    if interleave:
        ordered = [f for group in itertools.zip_longest(*streams) for f in group if f is not None]
    else:
        ordered = [f for frames in streams for f in frames]
    # copies made in stream order lie in memory in that order, as a socket's reads would;
    # the frames as built lie context by context
    frames = [bytes(memoryview(f)) for f in ordered]
    return {"frames": frames, "segments": expected, "contexts": names, "rate": sample_rate,
            "chunks": chunks}


_fresh_ids = itertools.count(1)


def renamed(work) -> tuple[list, dict]:
    """The stream's frames with a fresh id for each context, and {old id: new id}. A sink that
    lives across runs remembers ended contexts and drops their late frames, so each replay
    must be a new context; a uuid's text has the same length whatever its value."""
    frames, names = work["frames"], {}
    for old in work["contexts"]:
        new = str(uuid.UUID(int=next(_fresh_ids)))
        names[old] = new
        frames = [f.replace(old.encode(), new.encode()) for f in frames]
    return frames, names


def check_segments(name, got: dict, names, work):
    """Every (context, flush) segment, exactly, and nothing else."""
    if names is not None:
        back = {new: old for old, new in names.items()}
        got = {(back[cid], fid): pcm for (cid, fid), pcm in got.items()}
    expected = work["segments"]
    assert got.keys() == expected.keys(), \
        f"{name}: {len(got)} segments, expected {len(expected)}"
    for key, pcm in expected.items():
        assert got[key] == pcm, f"{name} gave wrong PCM for {key} ({len(got[key])} vs {len(pcm)} bytes)"


# --- pipelines -----------------------------------------------------------------------------
# Each pipeline: setup(work) makes fresh per-run state (untimed); run() processes the whole
# segment and returns what the user gets; as_bytes(result) converts it for the check.

class Pipeline:
    name = ""

    def setup(self, work):
        self.work = work

    def run(self):
        raise NotImplementedError

    def as_bytes(self, result) -> bytes:
        return bytes(result)

    def check(self, work):
        """One untimed run: the PCM the user gets must be what the frames were made from."""
        self.setup(work)
        got = self.as_bytes(self.run())
        assert got == work["pcm"], f"{self.name} gave wrong PCM ({len(got)} vs {len(work['pcm'])} bytes)"


class FlushsinkCompiled(Pipeline):
    def __init__(self, speedups, kernel):
        self.speedups = speedups
        self.kernel = kernel
        self.name = f"flushsink[{kernel}]"

    def setup(self, work):
        from flushsink import AudioFormat
        self.speedups._set_simd_path(self.kernel)
        self.frames = work["frames"]
        self.sink = self.speedups.Sink(AudioFormat("pcm_s16le", work["rate"]))

    def run(self):
        feed = self.sink.feed
        for frame in self.frames:
            events = feed(frame)
        return events[0].segment.pcm()


class FlushsinkStreaming(FlushsinkCompiled):
    """The compiled Sink fed by a consumer that drops each chunk's events at once, with
    or without stream=True (the same loop both ways, so that only the Sink differs)."""

    def __init__(self, speedups, kernel, stream: bool, keep_audio: bool = True,
                 keep_last: bool = False):
        super().__init__(speedups, kernel)
        self.stream, self.keep_audio, self.keep_last = stream, keep_audio, keep_last
        self.name = f"flushsink[{kernel}]" + (
            ", stream" if stream else ", not streaming") + (
            "" if keep_audio else ", keep_audio=False") + (
            ", for-loop consumer" if keep_last else "")

    def setup(self, work):
        from flushsink import AudioFormat
        self.speedups._set_simd_path(self.kernel)
        self.chunks = work["frames"][:-1]
        self.last = work["frames"][-1]  # flush_done
        self.sink = self.speedups.Sink(AudioFormat("pcm_s16le", work["rate"]),
                                       stream=self.stream, keep_audio=self.keep_audio)

    def run(self):
        feed = self.sink.feed
        if self.keep_last:  # the loop variable holds the last chunk while the next comes
            event = None
            for frame in self.chunks:
                for event in feed(frame):
                    pass
            del event
        else:
            for frame in self.chunks:
                feed(frame)
        return feed(self.last)[0].segment

    def check(self, work):
        self.setup(work)
        pieces = []
        for frame in self.chunks:
            pieces += [bytes(e.data) for e in self.sink.feed(frame)]
        segment = self.sink.feed(self.last)[0].segment
        if self.stream:
            assert b"".join(pieces) == work["pcm"], f"{self.name}: the chunks are wrong"
        if self.keep_audio:
            assert segment.pcm() == work["pcm"], f"{self.name} gave wrong PCM"
        assert segment.sample_count * 2 == len(work["pcm"])


class FlushsinkPure(FlushsinkCompiled):
    """The same feed loop (run) on the pure-Python twin."""

    name = "flushsink pure"

    def __init__(self):
        pass

    def setup(self, work):
        from flushsink import AudioFormat, _fallback
        self.frames = work["frames"]
        self.sink = _fallback.Sink(AudioFormat("pcm_s16le", work["rate"]))


class CartesiaSDK(Pipeline):
    name = "cartesia SDK"

    def __init__(self):
        from cartesia.lib._tts import AsyncTTSResourceConnection
        # the connection's own method (it does not use self): json.loads, then
        # construct_type_unchecked into the WebsocketResponse discriminated union
        self.parse_event = AsyncTTSResourceConnection.parse_event

    def setup(self, work):
        self.frames = work["frames"]
        self.queues = {work["context_id"]: None}     # the SDK routes by registered context
        self.segments = {}

    def run(self):
        parse_event, queues, segments = self.parse_event, self.queues, self.segments
        done = None
        for frame in self.frames:
            event = parse_event(None, frame)
            event_ctx = event.context_id if hasattr(event, "context_id") else None
            if event_ctx is None or event_ctx not in queues:
                continue
            if event.type == "chunk":
                key = (event_ctx, event.flush_id)
                segment = segments.get(key)
                if segment is None:
                    segment = segments[key] = bytearray()
                audio = event.audio
                if audio:
                    segment += audio
            elif event.type == "flush_done":
                done = segments.pop((event_ctx, event.flush_id))
        return done


class JsonB64(Pipeline):
    """loads + b64decode + a bytearray per (context_id, flush_id)."""

    def __init__(self, name, loads, b64decode):
        self.name = name
        self.loads = loads
        self.b64decode = b64decode

    def setup(self, work):
        self.frames = work["frames"]
        self.segments = {}

    def run(self):
        return route_naively(self.frames, self.loads, self.b64decode, self.segments)


class SimdjsonPybase64(JsonB64):
    """The same naive loop with pysimdjson's lazy parser."""

    def __init__(self, simdjson, pybase64):
        decode = pybase64.b64decode
        super().__init__("simdjson+pybase64", simdjson.Parser().parse,
                         lambda data: decode(data, validate=True))


class Floor(Pipeline):
    name = "floor"

    def __init__(self, floor):
        self.floor = floor

    def setup(self, work):
        self.pairs = list(zip(work["frames"], work["pieces"]))
        self.capacity = len(work["pcm"])

    def run(self):
        floor = self.floor
        floor.begin(self.capacity)
        feed = floor.feed
        for frame, pcm in self.pairs:
            feed(frame, pcm)
        return floor.finish()

    def as_bytes(self, result) -> bytes:
        return self.floor.result()


class FloorLoop(Floor):
    name = "floor, one C loop"

    def setup(self, work):
        self.frames = list(work["frames"])
        self.pieces = list(work["pieces"])
        self.capacity = len(work["pcm"])

    def run(self):
        floor = self.floor
        floor.begin(self.capacity)
        floor.loop(self.frames, self.pieces)
        return floor.finish()


class StreamFlushsink(FlushsinkCompiled):
    """The compiled Sink on a stream of any number of contexts and segments. A work with a
    "sink" feeds that long-lived Sink (fresh context ids each run, announced with set_format
    as the clients do); otherwise each run gets a new Sink. Each segment is let go as soon
    as it is handed over, as by a caller that plays or writes it."""

    def setup(self, work):
        from flushsink import AudioFormat
        self.speedups._set_simd_path(self.kernel)
        format = AudioFormat("pcm_s16le", work["rate"])
        self.sink = work.get("sink")
        if self.sink is None:
            self.sink = self.speedups.Sink(format)
            self.frames, self.names = work["frames"], None
        else:
            self.frames, self.names = renamed(work)
            for context_id in self.names.values():
                self.sink.set_format(context_id, format)

    def run(self):
        feed = self.sink.feed
        for frame in self.frames:
            feed(frame)

    def check(self, work):
        from flushsink import SegmentReady
        self.setup(work)
        got = {}
        for frame in self.frames:
            for event in self.sink.feed(frame):
                if isinstance(event, SegmentReady):
                    segment = event.segment
                    assert segment.complete, f"{self.name}: {segment!r}"
                    got[(segment.context_id, segment.flush_id)] = bytes(segment.pcm())
        check_segments(self.name, got, self.names, work)


class StreamJsonB64(Pipeline):
    """JsonB64's routing on a stream: a dict of bytearrays keyed by (context_id, flush_id),
    a segment popped (and let go) at its flush_done."""

    def __init__(self, name, loads, b64decode):
        self.name = name
        self.loads = loads
        self.b64decode = b64decode

    def setup(self, work):
        self.segments = {}
        if work.get("sink") is None:
            self.frames, self.names = work["frames"], None
        else:   # the same fresh frames as flushsink gets, so both read them alike
            self.frames, self.names = renamed(work)

    def run(self, handed=None):
        route_naively(self.frames, self.loads, self.b64decode, self.segments, handed)

    def check(self, work):
        self.setup(work)
        got = {}
        self.run(got)
        assert not self.segments, f"{self.name}: segments left open"
        check_segments(self.name, got, self.names, work)


def build_floor():
    source = HERE / "_floor.c"
    for flags in (["-O3", "-march=native"], ["-O3"]):
        try:
            return _cbuild.build("_flushsink_floor", source, flags), " ".join(flags)
        except OSError as exc:
            error = exc
    notes.append(f"floor skipped: could not build benchmarks/_floor.c ({error})")
    return None, None


def make_pipelines(floor: bool = True):
    pipelines = []
    versions = {}
    try:
        import flushsink
        versions["flushsink"] = f"{flushsink.__version__} (core {flushsink.BACKEND}, default simd {flushsink.SIMD})"
    except ImportError as exc:
        sys.exit(f"flushsink is not importable: {exc}")
    try:
        from flushsink import _speedups
    except ImportError as exc:
        _speedups = None
        notes.append(f"flushsink compiled core skipped: {exc}")
    kernels = []
    if _speedups is not None:
        default = _speedups.simd_path()
        for kernel in ("avx512", "avx2", "scalar"):
            try:
                _speedups._set_simd_path(kernel)
            except ValueError:
                notes.append(f"flushsink[{kernel}] skipped: not supported by this CPU")
                continue
            kernels.append(kernel)
            pipelines.append(FlushsinkCompiled(_speedups, kernel))
        _speedups._set_simd_path(default)
    versions["simd kernels"] = ", ".join(kernels) or "none"
    pipelines.append(FlushsinkPure())
    try:
        import cartesia
        versions["cartesia"] = cartesia.__version__
        if cartesia.__version__ != "3.2.0":
            notes.append(f"cartesia {cartesia.__version__} installed; the issue measures 3.2.0")
        pipelines.append(CartesiaSDK())
    except ImportError as exc:
        notes.append(f"cartesia SDK skipped: {exc} (pip install 'cartesia[websockets]==3.2.0')")
    pipelines.append(JsonB64("stdlib", json.loads, base64.b64decode))
    try:
        import pybase64
        versions["pybase64"] = pybase64.get_version()
    except ImportError as exc:
        pybase64 = None
        notes.append(f"pybase64 pipelines skipped: {exc}")
    try:
        import orjson
        versions["orjson"] = orjson.__version__
        if pybase64 is not None:
            decode = pybase64.b64decode
            pipelines.append(JsonB64("orjson+pybase64", orjson.loads,
                                     lambda data: decode(data, validate=True)))
    except ImportError as exc:
        notes.append(f"orjson+pybase64 skipped: {exc}")
    try:
        import simdjson
        from importlib.metadata import version
        versions["pysimdjson"] = version("pysimdjson")
        if pybase64 is not None:
            pipelines.append(SimdjsonPybase64(simdjson, pybase64))
    except ImportError as exc:
        notes.append(f"simdjson+pybase64 skipped: {exc} (pip install pysimdjson)")
    floor, flags = build_floor() if floor else (None, None)
    if floor is not None:
        versions["floor"] = f"benchmarks/_floor.c, {_cbuild.compiler()} {flags}"
        pipelines.append(Floor(floor))
        pipelines.append(FloorLoop(floor))
    return pipelines, versions


# --- environment ---------------------------------------------------------------------------

def cpu_description() -> str:
    model = platform.processor() or platform.machine()
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("", platform.machine(), "x86_64"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512bw", "avx512vbmi") if f in flags]
    cores = os.cpu_count()
    return f"{model}, {cores} CPUs, {' '.join(simd) or 'no AVX2/AVX-512'}"


def cache_description() -> str:
    """Data and unified caches of CPU 0 (the cold axis needs a working set past the last)."""
    caches = []
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            if kind == "Instruction":
                continue
            level = (index / "level").read_text().strip()
            size = (index / "size").read_text().strip()
            shared = (index / "shared_cpu_list").read_text().strip()
        except OSError:
            continue
        caches.append(f"L{level}{'d' if kind == 'Data' else ''} {size} (cpus {shared})")
    return ", ".join(caches) or "unknown"


def compiler_version() -> str:
    cc = _cbuild.compiler()
    if not cc:
        return "none"
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return cc


# --- measuring -----------------------------------------------------------------------------

# The clock. On a shared machine wall time includes the slices other processes take: a run
# of a few ms is often preempted and then looks 2-3x slower. The thread's CPU time does not
# count them (it still counts our own page faults and system calls), so it is the default;
# reading it costs a system call, whose median cost is measured and subtracted.
CLOCKS = {"cpu": time.thread_time_ns, "wall": time.perf_counter_ns}
clock = time.thread_time_ns
clock_overhead = 0


def set_clock(name: str) -> str:
    global clock, clock_overhead
    clock = CLOCKS[name]
    empty = []
    for _ in range(501):
        start = clock()
        empty.append(clock() - start)
    clock_overhead = statistics.median(empty)
    label = ("thread CPU time (CLOCK_THREAD_CPUTIME_ID)" if name == "cpu"
             else "wall time (perf_counter)")
    return f"{label}, {clock_overhead:.0f} ns read cost subtracted"


try:
    RUSAGE = resource.RUSAGE_THREAD     # Linux: this thread's page faults only
except AttributeError:
    RUSAGE = resource.RUSAGE_SELF


def minor_faults() -> int:
    return resource.getrusage(RUSAGE).ru_minflt


def next_unit(work) -> dict:
    """The work of one run. A work with a "cycle" hands out its segments in turn, one per
    run whichever pipeline runs it, so a segment comes back only after all the others."""
    cycle = work.get("cycle")
    if cycle is None:
        return work
    unit = cycle[work["pos"] % len(cycle)]
    work["pos"] += 1
    return unit


def time_once(pipeline, work) -> tuple[float, int, int]:
    """(ns, minor page faults, chunk messages) of one run; setup is not timed."""
    unit = next_unit(work)
    pipeline.setup(unit)
    faults = minor_faults()
    start = clock()
    pipeline.run()
    elapsed = clock() - start - clock_overhead
    return elapsed, minor_faults() - faults, unit["chunks"]


def measure(pipelines, works: dict, rounds: int, log, budget_ns: float = 2e6) -> dict:
    """{(pipeline name, work key): (median ns per chunk message, minor faults per chunk
    message)}. A work may name the pipelines it is for ("pipelines"; by default all), and
    ask for an untimed run before each pipeline's runs of a round ("rewarm")."""
    def runs_on(p, work):
        wanted = work.get("pipelines")
        return wanted is None or p.name in wanted

    # correctness first, and a warm-up; then how many runs per round keep short runs
    # above the timer's noise
    inner = {}
    for key, work in works.items():
        for p in pipelines:
            if not runs_on(p, work):
                continue
            for unit in work.get("cycle", [work]):
                p.check(unit)
            one = min(time_once(p, work)[0] for _ in range(3))
            inner[(p.name, key)] = max(1, min(25, int(budget_ns // max(one, 1))))
    samples = {k: [] for k in inner}
    faults = dict.fromkeys(inner, 0)
    messages = dict.fromkeys(inner, 0)
    for r in range(rounds):
        for key, work in works.items():
            order = pipelines[r % len(pipelines):] + pipelines[:r % len(pipelines)]
            for p in order:
                if (p.name, key) not in inner:
                    continue
                if work.get("rewarm"):      # back in cache after whatever ran before
                    p.setup(next_unit(work))
                    p.run()
                for _ in range(inner[(p.name, key)]):
                    ns, faulted, chunks = time_once(p, work)
                    samples[(p.name, key)].append(ns / chunks)
                    faults[(p.name, key)] += faulted
                    messages[(p.name, key)] += chunks
        log(f"  round {r + 1}/{rounds}")
    # faults are summed, not a median: a fault every few runs is what there is to see
    return {k: (statistics.median(v), faults[k] / messages[k]) for k, v in samples.items()}


# --- report --------------------------------------------------------------------------------

def config_label(key) -> str:
    rate, ms = key
    return f"{rate / 1000:g}k/{ms}ms"


def fmt_ns(ns: float) -> str:
    if ns >= 100_000:
        return f"{ns / 1000:,.0f}us"
    if ns >= 10_000:
        return f"{ns / 1000:.1f}us"
    return f"{ns:,.0f}"


def ratios(results, pipelines, configs):
    names = {p.name for p in pipelines}
    best = next((n for n in ("flushsink[avx512]", "flushsink[avx2]", "flushsink[scalar]")
                 if n in names), None)
    rows, verdicts = [], []

    def ratio(a, b, key):
        if a not in names or b not in names:
            return None
        return results[(a, key)] / results[(b, key)]

    if best is None:
        return rows, verdicts, best
    checks = [
        (f"cartesia SDK / {best}", "cartesia SDK", best, TARGET_VS_SDK, "min", None),
        (f"simdjson+pybase64 / {best}", "simdjson+pybase64", best, TARGET_VS_SIMDJSON, "min", None),
        (f"{best} / floor", best, "floor", TARGET_VS_FLOOR, "max", (100, 500)),
        ("cartesia SDK / flushsink[avx2]", "cartesia SDK", "flushsink[avx2]", TARGET_AVX2_VS_SDK, "min", None),
        (f"stdlib / {best}", "stdlib", best, None, None, None),
        (f"orjson+pybase64 / {best}", "orjson+pybase64", best, None, None, None),
        (f"{best} / floor, one C loop", best, "floor, one C loop", None, None, None),
    ]
    for label, a, b, target, sense, only_ms in checks:
        values = {key: ratio(a, b, key) for key in configs}
        if all(v is None for v in values.values()):
            continue
        rows.append((label, values, target, sense, only_ms))
        if target is None:
            continue
        for key, v in values.items():
            if v is None or (only_ms and key[1] not in only_ms):
                continue
            ok = v >= target if sense == "min" else v <= target
            verdicts.append({"target": f"{label} {'>=' if sense == 'min' else '<='} {target:g}",
                             "config": config_label(key), "value": round(v, 2), "met": ok})
    if best in names and (44100, 20) in configs:
        v = results[(best, (44100, 20))]
        verdicts.append({"target": f"{best} <= {TARGET_NS_20MS_44K:g} ns per 20 ms chunk at 44.1 kHz",
                         "config": "44.1k/20ms", "value": round(v, 1), "met": v <= TARGET_NS_20MS_44K})
    return rows, verdicts, best


def print_header(env):
    print("flushsink receive-path benchmark")
    for k, v in env.items():
        print(f"  {k:14} {v}")
    print()


def print_main(results, pipelines, configs, rounds):
    print(f"main table: a 10 s pcm_s16le segment per run, chunk frames + flush_done; "
          f"median ns per chunk message over {rounds} interleaved rounds")
    print()
    width = max(len(p.name) for p in pipelines) + 2
    header = "".join(f"{config_label(k):>12}" for k in configs)
    print(f"{'ns/message':{width}}{header}")
    for p in pipelines:
        print(f"{p.name:{width}}" + "".join(f"{fmt_ns(results[(p.name, k)]):>12}" for k in configs))
    rows, verdicts, best = ratios(results, pipelines, configs)
    if rows:
        print()
        print(f"{'ratios':{width + 18}}" + header)
        for label, values, target, sense, only_ms in rows:
            tgt = "" if target is None else f" ({'>=' if sense == 'min' else '<='}{target:g})"
            cells = "".join(
                f"{'' if values[k] is None else f'{values[k]:.2f}x':>12}" for k in configs)
            print(f"{label + tgt:{width + 18}}{cells}")
    if verdicts:
        print()
        met = [v for v in verdicts if v["met"]]
        missed = [v for v in verdicts if not v["met"]]
        print(f"targets: {len(met)} of {len(verdicts)} met")
        for v in missed:
            print(f"  MISSED  {v['target']}  at {v['config']}: {v['value']}")
    print()
    return verdicts


def axis_main(pipelines, rounds, quick, log, args):
    """Today's table: every pipeline, one 10 s data-last segment, frames hot in cache."""
    configs = [(r, ms) for r in ((44100,) if quick else RATES) for ms in CHUNK_MS]
    if args.only:
        wanted = set(args.only.split(","))
        pipelines = [p for p in pipelines if p.name in wanted or p.name.split("[")[0] in wanted]
    works = {key: segment_work(*key) for key in configs}
    gc.collect()
    measured = measure(pipelines, works, rounds, log)
    results = {k: v[0] for k, v in measured.items()}
    _, verdicts, _ = ratios(results, pipelines, configs)
    for v in verdicts:
        v["axis"] = "main"
    print_main(results, pipelines, configs, rounds)
    return {
        "unit": "ns per chunk message", "configs": [config_label(k) for k in configs],
        "results": {p.name: {config_label(k): round(results[(p.name, k)], 1) for k in configs}
                    for p in pipelines},
        "faults_per_message": {p.name: {config_label(k): round(measured[(p.name, k)][1], 4)
                                        for k in configs} for p in pipelines},
        "targets": verdicts,
    }


# --- the axes of issue 12 ----------------------------------------------------------------------
# Each axis prints its own table (ns per chunk message, then ratios and page faults, a
# target's cells marked "!" when missed) and returns the same numbers for --json.

def fmt_ratio(v: float) -> str:
    return f"{v:.2f}x"


def fmt_faults(v: float) -> str:
    return f"{v:.3f}"


class Table:
    def __init__(self, axis: str, title: str, columns: list[str]):
        self.axis, self.title, self.columns = axis, title, columns
        self.sections: list[tuple[str, list]] = []
        self.verdicts: list[dict] = []

    def section(self, heading: str):
        self.sections.append((heading, []))

    def row(self, label: str, values: dict, fmt=fmt_ns, target=None):
        """values: {column: number or None}; target: (">=" | "<=" | "<", bound)."""
        marks = {}
        if target is not None:
            op, bound = target
            label = f"{label} ({op}{bound:g})"
            for col, v in values.items():
                if v is None:
                    continue
                met = {">=": v >= bound, "<=": v <= bound, "<": v < bound}[op]
                marks[col] = met
                self.verdicts.append({"axis": self.axis, "target": label, "config": col,
                                      "value": round(v, 4), "met": met})
        self.sections[-1][1].append((label, values, fmt, marks))

    def print(self):
        print(self.title)
        print()
        width = max(len(label) for _, rows in self.sections for label, *_ in rows)
        width = max(width, *(len(h) for h, _ in self.sections)) + 2
        cell = max(12, max(len(c) for c in self.columns) + 3)
        for heading, rows in self.sections:
            print(f"{heading:{width}}" + "".join(f"{c:>{cell}}" for c in self.columns))
            for label, values, fmt, marks in rows:
                cells = []
                for col in self.columns:
                    v = values.get(col)
                    text = "" if v is None else fmt(v) + ("" if marks.get(col, True) else "!")
                    cells.append(f"{text:>{cell}}")
                print(f"{label:{width}}" + "".join(cells))
            print()
        met = sum(v["met"] for v in self.verdicts)
        if self.verdicts:
            print(f"targets ({self.axis}): {met} of {len(self.verdicts)} met"
                  + ("  (! = missed)" if met < len(self.verdicts) else ""))
            missed: dict[str, list[str]] = {}
            for v in self.verdicts:
                if not v["met"]:
                    missed.setdefault(v["target"], []).append(v["config"])
            for target, configs in missed.items():
                print(f"  MISSED  {target}  at {', '.join(configs)}")
            print()

    def as_json(self) -> dict:
        return {
            "title": self.title, "columns": self.columns,
            "sections": {heading: {label: {c: (None if v is None else round(v, 4))
                                           for c, v in values.items()}
                                   for label, values, _, _ in rows}
                         for heading, rows in self.sections},
            "targets": self.verdicts,
        }


def best_flushsink(pipelines):
    for kernel in ("avx512", "avx2", "scalar"):
        for p in pipelines:
            if p.name == f"flushsink[{kernel}]":
                return p
    return None


def named(pipelines, name):
    return next((p for p in pipelines if p.name == name), None)


def axis_pipelines(pipelines, axis):
    """The best flushsink kernel and orjson+pybase64: the pair issue 12's targets compare."""
    fs, oj = best_flushsink(pipelines), named(pipelines, "orjson+pybase64")
    if fs is None:
        notes.append(f"{axis} axis skipped: no compiled core")
    if oj is None:
        notes.append(f"{axis} axis: orjson+pybase64 missing, its rows and ratios are left out")
    return fs, oj


def emit(table: Table, args, extra=None) -> dict:
    table.print()       # into the worker's captured stdout; the parent shows it or not
    data = table.as_json()
    data.update(extra or {})
    return data


# --- member order -------------------------------------------------------------------------------

TARGET_ORDER_VS_LAST = 1.3       # flushsink, any member order / data last
TARGET_ORDER_VS_ORJSON = 6.0     # orjson+pybase64 / flushsink, in every order


def axis_order(pipelines, rounds, quick, log, args):
    """The chunk frame in each member order of ORDERS: same audio, same step times."""
    fs, oj = axis_pipelines(pipelines, "order")
    if fs is None:
        return {"targets": []}
    pair = [p for p in (fs, oj) if p is not None]
    configs = [(r, ms) for r in ((44100,) if quick else RATES) for ms in CHUNK_MS]
    works = {(order, *key): segment_work(*key, order=order) for order in ORDERS for key in configs}
    gc.collect()
    measured = measure(pair, works, rounds, log)
    columns = [config_label(k) for k in configs]

    def values(name, order, ref=None, ref_order=None):
        out = {}
        for key, col in zip(configs, columns):
            v = measured[(name, (order, *key))][0]
            if ref is not None:
                v = v / measured[(ref, (ref_order or order, *key))][0]
            out[col] = v
        return out

    table = Table("order", "member order: a 10 s segment per run whose chunk frames put `data` "
                  f"last / first / in the middle / second (docs order: type, data, ..., flush_id, "
                  f"context_id); median ns per chunk message over {rounds} interleaved rounds",
                  columns)
    table.section("ns/message")
    for p in pair:
        for order in ORDERS:
            table.row(f"{p.name}, {order}", values(p.name, order))
    table.section("ratios")
    for order in ORDERS:
        if order != "data last":
            table.row(f"{fs.name}: {order} / data last", values(fs.name, order, fs.name, "data last"),
                      fmt_ratio, ("<=", TARGET_ORDER_VS_LAST))
    if oj is not None:
        for order in ORDERS:
            table.row(f"{oj.name} / {fs.name}, {order}", values(oj.name, order, fs.name),
                      fmt_ratio, (">=", TARGET_ORDER_VS_ORJSON))
        table.row(f"{oj.name}: docs order / data last",
                  values(oj.name, "docs order", oj.name, "data last"), fmt_ratio)
    table.section("page faults/message")
    for p in pair:
        for order in ORDERS:
            table.row(f"{p.name}, {order}", {col: measured[(p.name, (order, *key))][1]
                                             for key, col in zip(configs, columns)}, fmt_faults)
    return emit(table, args, {"orders": {k: list(v) for k, v in ORDERS.items()}})


# --- short segments, and 200 MiB open -----------------------------------------------------------

SHORT_SECONDS = (0.5, 1.5, 3.0, 10.0)     # the last is the reference
SHORT_AUDIO_SECONDS = 30.0                # audio per run, whatever the segment length
SHORT_RATES = (24000, 44100)
SHORT_CHUNK_MS = (20, 100)
HELD_BYTES = 200 * 2**20
TARGET_SHORT_VS_10S = 1.5
TARGET_FAULTS = 0.1                       # minor page faults per chunk message


def hold_open(sink, total_bytes: int, sample_rate: int = 44100, segment_seconds: int = 10) -> dict:
    """Open segments of one more context of `sink`, never flushed, totalling at least
    total_bytes of audio: segment_seconds each, in chunks of 1 s."""
    from flushsink import AudioFormat
    context_id = "held-" + str(uuid.UUID(int=random.Random(7).getrandbits(128)))
    sink.set_format(context_id, AudioFormat("pcm_s16le", sample_rate))
    block = random.Random(8).randbytes(sample_rate * 2)
    count = -(-total_bytes // (len(block) * segment_seconds))
    for flush_id in range(1, count + 1):
        frame = chunk_frame(context_id, flush_id, 50.0, block)
        for _ in range(segment_seconds):
            sink.feed(frame)
    held = {"context_id": context_id, "segments": count, "bytes": count * segment_seconds * len(block),
            "block": block, "chunks_per_segment": segment_seconds}
    assert sink.stats.open_bytes >= held["bytes"], sink.stats
    return held


def release_held(sink, held: dict):
    """Close the sink; the held segments must have come through the timed runs intact."""
    segments = [e.segment for e in sink.close() if e.segment.context_id == held["context_id"]]
    assert len(segments) == held["segments"], f"{len(segments)} held segments, expected {held['segments']}"
    whole = held["block"] * held["chunks_per_segment"]
    for segment in segments:
        assert bytes(segment.pcm()) == whole, f"held segment {segment.flush_id} changed"


def pool_state(speedups) -> str:
    try:
        count, size = speedups._pool_state()
    except AttributeError:
        return "unknown"
    return f"{count} buffers, {size / 2**20:.1f} MiB"


def short_part(pipelines, rounds, quick, log, variant: str, seconds: float) -> dict:
    """One segment length of the short axis, plain or with 200 MiB open, in this process
    alone: glibc's mmap threshold (hence whether a fresh segment buffer faults) depends on
    what the process freed before, so a length measured after 10 s segments were freed
    would not fault as a process that only ever gets short segments does."""
    fs, oj = axis_pipelines(pipelines, "short")
    sfs = StreamFlushsink(fs.speedups, fs.kernel)
    pair = [sfs] + ([StreamJsonB64(oj.name, oj.loads, oj.b64decode)] if oj is not None else [])
    rates = (24000,) if quick else SHORT_RATES
    configs = [(r, ms) for r in rates for ms in SHORT_CHUNK_MS]
    from flushsink import AudioFormat
    sink = fs.speedups.Sink(AudioFormat("pcm_s16le", 44100))
    held = hold_open(sink, HELD_BYTES) if variant == "held" else None
    works = {(seconds, *key): {**stream_work(*key, seconds, round(SHORT_AUDIO_SECONDS / seconds),
                                             seed=int(seconds * 10) * 10**6 + key[0] + key[1]),
                               "sink": sink}
             for key in configs}
    gc.collect()
    measured = measure(pair if variant == "plain" else [sfs], works, rounds, log)
    part = {"measured": encode_measured(measured), "pool": pool_state(fs.speedups)}
    if held is not None:
        release_held(sink, held)
        part["held"] = {"segments": held["segments"], "bytes": held["bytes"]}
    return part


def axis_short(pipelines, rounds, quick, log, args):
    """Many short segments through one long-lived Sink, 30 s of audio per run whatever the
    segment length, so each length reads the same frame bytes; then the same with 200 MiB
    of audio open in another context of that sink. Each length and variant runs in a
    process of its own (short_part)."""
    fs, oj = axis_pipelines(pipelines, "short")
    if fs is None:
        return {"targets": []}
    sfs = StreamFlushsink(fs.speedups, fs.kernel)
    pair = [sfs] + ([StreamJsonB64(oj.name, oj.loads, oj.b64decode)] if oj is not None else [])
    rates = (24000,) if quick else SHORT_RATES
    configs = [(r, ms) for r in rates for ms in SHORT_CHUNK_MS]
    columns = [config_label(k) for k in configs]
    results = {"plain": {}, "held": {}}
    held_info = None
    for variant in ("plain", "held"):
        for seconds in SHORT_SECONDS:
            part = run_isolated({"part": "short", "variant": variant, "seconds": seconds}, args)
            results[variant].update(decode_measured(part["measured"]))
            results[f"{variant} pool {seconds:g}"] = part["pool"]
            held_info = part.get("held", held_info)

    def cells(variant, name, seconds, what=0, ref_seconds=None):
        out = {}
        for key, col in zip(configs, columns):
            v = results[variant][(name, (seconds, *key))][what]
            if ref_seconds is not None:
                v = v / results[variant][(name, (ref_seconds, *key))][what]
            out[col] = v
        return out

    def seconds_label(seconds):
        return f"{seconds:g} s"

    data = {}
    for variant in ("plain", "held"):
        if variant == "plain":
            title = (f"short segments: {SHORT_AUDIO_SECONDS:g} s of audio per run in segments of "
                     f"{', '.join(map(seconds_label, SHORT_SECONDS))}, one context per run (then done), "
                     f"one long-lived Sink, each length in a process of its own; median ns per "
                     f"chunk message over {rounds} interleaved rounds, minor page faults per chunk "
                     f"message over all timed runs")
        else:
            title = (f"short segments with {held_info['bytes'] / 2**20:.0f} MiB of audio open: the same, "
                     f"while another context of the same Sink holds {held_info['segments']} open "
                     f"10 s segments at 44.1 kHz")
        runners = pair if variant == "plain" else [sfs]
        table = Table("short" if variant == "plain" else "short, 200 MiB open", title, columns)
        table.section("ns/message")
        for p in runners:
            for seconds in SHORT_SECONDS:
                table.row(f"{p.name}, {seconds_label(seconds)} segments", cells(variant, p.name, seconds))
        table.section("ratios")
        for p in runners:
            for seconds in SHORT_SECONDS[:-1]:
                label = f"{p.name}: {seconds_label(seconds)} / 10 s"
                if p is sfs:
                    table.row(label, cells(variant, p.name, seconds, 0, 10.0), fmt_ratio,
                              ("<=", TARGET_SHORT_VS_10S))
                else:
                    table.row(label, cells(variant, p.name, seconds, 0, 10.0), fmt_ratio)
        if oj is not None and variant == "plain":
            for seconds in SHORT_SECONDS:
                table.row(f"{oj.name} / {sfs.name}, {seconds_label(seconds)}",
                          {c: a / b for (c, a), b in zip(cells(variant, oj.name, seconds).items(),
                                                          cells(variant, sfs.name, seconds).values())},
                          fmt_ratio)
        table.section("page faults/message")
        for p in runners:
            for seconds in SHORT_SECONDS:
                label = f"{p.name}, {seconds_label(seconds)} segments"
                table.row(label, cells(variant, p.name, seconds, 1), fmt_faults,
                          ("<", TARGET_FAULTS) if p is sfs else None)
        extra = {"buffer pool after": {f"{seconds:g} s": results[f"{variant} pool {seconds:g}"]
                                       for seconds in SHORT_SECONDS}}
        if variant == "held":
            extra["held"] = {"segments": held_info["segments"], "bytes": held_info["bytes"]}
        data[variant] = emit(table, args, extra)
    return {"plain": data["plain"], "held": data["held"],
            "targets": data["plain"]["targets"] + data["held"]["targets"]}


# --- interleaved contexts -----------------------------------------------------------------------

INTERLEAVED_CONTEXTS = 100
INTERLEAVED_RATE = 24000
INTERLEAVED_SECONDS = 1.5
INTERLEAVED_SEGMENTS = 2                  # per context
INTERLEAVED_CHUNK_MS = (20, 100)
TARGET_INTERLEAVED_VS_ORJSON = 5.0


def axis_interleaved(pipelines, rounds, quick, log, args):
    """100 contexts at once on one Sink, their frames interleaved one by one; next to the
    same frames one context after the other, which tells the cost of switching contexts
    from that of the run's larger working set."""
    fs, oj = axis_pipelines(pipelines, "interleaved")
    if fs is None:
        return {"targets": []}
    sfs = StreamFlushsink(fs.speedups, fs.kernel)
    pair = [sfs] + ([StreamJsonB64(oj.name, oj.loads, oj.b64decode)] if oj is not None else [])
    segments = 1 if quick else INTERLEAVED_SEGMENTS
    modes = ("interleaved", "sequential")
    works = {(mode, ms): stream_work(INTERLEAVED_RATE, ms, INTERLEAVED_SECONDS, segments,
                                     contexts=INTERLEAVED_CONTEXTS, seed=ms,
                                     interleave=mode == "interleaved")
             for mode in modes for ms in INTERLEAVED_CHUNK_MS}
    gc.collect()
    measured = measure(pair, works, rounds, log)
    columns = [config_label((INTERLEAVED_RATE, ms)) for ms in INTERLEAVED_CHUNK_MS]

    def cells(name, mode, what=0, ref=None, ref_mode=None):
        out = {}
        for ms, col in zip(INTERLEAVED_CHUNK_MS, columns):
            v = measured[(name, (mode, ms))][what]
            if ref is not None:
                v = v / measured[(ref, (ref_mode or mode, ms))][what]
            out[col] = v
        return out

    frame_mib = {ms: sum(map(len, works[("interleaved", ms)]["frames"])) / 2**20
                 for ms in INTERLEAVED_CHUNK_MS}
    table = Table("interleaved", f"interleaved: {INTERLEAVED_CONTEXTS} contexts on one Sink (a new "
                  f"Sink per run), {segments} x {INTERLEAVED_SECONDS:g} s segments each then done, "
                  f"their frames interleaved one by one (sequential: the same frames one context "
                  f"after the other); "
                  + ", ".join(f"{frame_mib[ms]:.0f} MiB of frames at {ms} ms" for ms in INTERLEAVED_CHUNK_MS)
                  + f"; median ns per chunk message over {rounds} interleaved rounds", columns)
    table.section("ns/message")
    for p in pair:
        for mode in modes:
            table.row(f"{p.name}, {mode}", cells(p.name, mode))
    table.section("ratios")
    if oj is not None:
        table.row(f"{oj.name} / {sfs.name}, interleaved", cells(oj.name, "interleaved", 0, sfs.name),
                  fmt_ratio, (">=", TARGET_INTERLEAVED_VS_ORJSON))
        table.row(f"{oj.name} / {sfs.name}, sequential", cells(oj.name, "sequential", 0, sfs.name),
                  fmt_ratio)
    for p in pair:
        table.row(f"{p.name}: interleaved / sequential",
                  cells(p.name, "interleaved", 0, p.name, "sequential"), fmt_ratio)
    table.section("page faults/message")
    for p in pair:
        for mode in modes:
            target = ("<", TARGET_FAULTS) if p is sfs and mode == "interleaved" else None
            table.row(f"{p.name}, {mode}", cells(p.name, mode, 1), fmt_faults, target)
    return emit(table, args, {"buffer pool after": pool_state(fs.speedups)})


# --- cache-cold frames ---------------------------------------------------------------------------

COLD_RATE = 44100
COLD_MIB = 96          # distinct frame bytes per chunk size, 3x this machine's 32 MiB L3


def axis_cold(pipelines, rounds, quick, log, args):
    """Frames read from memory: each run takes the next of enough distinct 10 s segments
    that their frames are several times the last-level cache, so a segment's frames were
    evicted since its last run (as a socket's reads of long ago). Next to it, one segment
    run again and again (warmed before each pipeline's runs of a round), as in the main
    table."""
    fs, oj = axis_pipelines(pipelines, "cold")
    if fs is None:
        return {"targets": []}
    floor = named(pipelines, "floor")
    runners = [p for p in (fs, oj, floor) if p is not None]
    cold_bytes = (64 if quick else args.cold_mib) * 2**20
    works, sizes = {}, {}
    for ms in CHUNK_MS:
        hot = segment_work(COLD_RATE, ms)
        hot["rewarm"] = True
        frame_bytes = sum(len(f) for f in hot["frames"])
        count = -(-cold_bytes // frame_bytes)
        cycle = [segment_work(COLD_RATE, ms, seed=(ms << 20) + i) for i in range(count)]
        works[("hot", ms)] = hot
        works[("cold", ms)] = {"cycle": cycle, "pos": 0}
        sizes[ms] = (count, count * frame_bytes)
        log(f"  {ms} ms: {count} segments, {count * frame_bytes / 2**20:.0f} MiB of frames")
    gc.collect()
    measured = measure(runners, works, rounds, log)
    columns = [config_label((COLD_RATE, ms)) for ms in CHUNK_MS]

    def cells(name, mode, ref=None, ref_mode=None):
        out = {}
        for ms, col in zip(CHUNK_MS, columns):
            v = measured[(name, (mode, ms))][0]
            if ref is not None:
                v = v / measured[(ref, (ref_mode or mode, ms))][0]
            out[col] = v
        return out

    segments = ", ".join(f"{count} segments / {size / 2**20:.0f} MiB at {ms} ms"
                         for ms, (count, size) in sizes.items())
    table = Table("cold", f"cache-cold: each run the next of {segments} of distinct frames, cycled "
                  f"(hot: one segment again, as in the main table); median ns per chunk message "
                  f"over {rounds} interleaved rounds", columns)
    table.section("ns/message")
    for p in runners:
        for mode in ("hot", "cold"):
            table.row(f"{p.name}, {mode}", cells(p.name, mode))
    table.section("ratios (no target in the issue)")
    for p in runners:
        table.row(f"{p.name}: cold / hot", cells(p.name, "cold", p.name, "hot"), fmt_ratio)
    if oj is not None:
        for mode in ("hot", "cold"):
            table.row(f"{oj.name} / {fs.name}, {mode}", cells(oj.name, mode, fs.name), fmt_ratio)
    if floor is not None:
        for mode in ("hot", "cold"):
            table.row(f"{fs.name} / floor, {mode}", cells(fs.name, mode, "floor"), fmt_ratio)
    return emit(table, args, {"working set": {config_label((COLD_RATE, ms)): {
        "segments": count, "frame_bytes": size} for ms, (count, size) in sizes.items()}})


# --- streaming (issue 14) -------------------------------------------------------------------

TARGET_STREAM_VS_PLAIN = 1.3     # a streaming chunk / a non-streaming one


def axis_stream(pipelines, rounds, quick, log, args):
    """The main table's segments through one compiled Sink kernel (AVX2 where the CPU has
    it), streaming and not, in the same process and rounds."""
    from flushsink import _speedups
    fs = named(pipelines, "flushsink[avx2]") or best_flushsink(pipelines)
    if fs is None:
        notes.append("stream axis skipped: no compiled core")
        return {"targets": []}
    plain = FlushsinkStreaming(_speedups, fs.kernel, stream=False)
    stream = FlushsinkStreaming(_speedups, fs.kernel, stream=True)
    bare = FlushsinkStreaming(_speedups, fs.kernel, stream=True, keep_audio=False)
    plain_looping = FlushsinkStreaming(_speedups, fs.kernel, stream=False, keep_last=True)
    looping = FlushsinkStreaming(_speedups, fs.kernel, stream=True, keep_last=True)
    runners = [plain, stream, plain_looping, looping, bare]
    configs = [(r, ms) for r in ((44100,) if quick else RATES) for ms in CHUNK_MS]
    works = {key: segment_work(*key) for key in configs}
    gc.collect()
    measured = measure(runners, works, rounds, log)
    columns = [config_label(k) for k in configs]

    def cells(name, ref=None):
        return {col: measured[(name, key)][0] / (measured[(ref, key)][0] if ref else 1)
                for key, col in zip(configs, columns)}

    table = Table("stream", f"streaming: a 10 s pcm_s16le segment per run (the main table's), "
                  f"each chunk's events dropped at once; median ns per chunk message over "
                  f"{rounds} interleaved rounds", columns)
    table.section("ns/message")
    for p in runners:
        table.row(p.name, cells(p.name))
    table.section("ratios")
    table.row(f"stream / not streaming", cells(stream.name, plain.name), fmt_ratio,
              ("<=", TARGET_STREAM_VS_PLAIN))
    table.row(f"stream / not streaming, for-loop consumers", cells(looping.name, plain_looping.name),
              fmt_ratio)
    table.row(f"keep_audio=False / not streaming", cells(bare.name, plain.name), fmt_ratio)
    table.section("page faults/message")
    for p in runners:
        table.row(p.name, {col: measured[(p.name, key)][1]
                           for key, col in zip(configs, columns)}, fmt_faults)
    return emit(table, args)


# --- providers (issue 16) ---------------------------------------------------------------------
# Each built-in envelope's frames, as its provider sends them (the members docs/providers.md
# lists, values varying as the real ones do), one 10 s segment per run; flushsink reads them
# with Sink(envelope=...), orjson+pybase64 with the same routing: the envelope's type (or,
# for ElevenLabs, its fields) says audio / end, the audio goes to a bytearray per context,
# handed over at the segment's end. Twilio's media streams are 8 kHz mu-law; the others
# 24 kHz s16le.

TARGET_PROVIDER_VS_ORJSON = 6.0
PROVIDER_CHUNK_MS = (20, 100)


def provider_frames(name: str, chunk_ms: int, seconds: float = SEGMENT_SECONDS) -> dict:
    """One segment of the provider's frames: chunks, then what ends segment and context."""
    rng = random.Random(f"{name}/{chunk_ms}")
    rate, width = (8000, 1) if name == "twilio-media" else (24000, 2)
    per_chunk = rate * chunk_ms // 1000 * width
    pcm = rng.randbytes(int(seconds * rate) * width)
    ids = str(uuid.UUID(int=rng.getrandbits(128))).replace("-", "")
    frames = []
    for n, start in enumerate(range(0, len(pcm), per_chunk)):
        data = base64.b64encode(pcm[start:start + per_chunk]).decode()
        if name == "cartesia":
            frames.append(chunk_frame(ids, 1, round(rng.uniform(20.0, 80.0), 6),
                                      pcm[start:start + per_chunk]))
            continue
        if name == "openai-realtime":
            obj = {"type": "response.output_audio.delta", "event_id": f"event_{rng.getrandbits(80):x}",
                   "response_id": f"resp_{ids[:20]}", "item_id": f"item_{ids[8:28]}",
                   "output_index": 0, "content_index": 0, "delta": data}
        elif name == "elevenlabs":
            # speech is about 15 characters a second: 0-2 per 20 ms chunk, 1-3 per 100 ms
            count = rng.randint(0, 2) if chunk_ms <= 20 else rng.randint(1, 3)
            chars = [rng.choice("abcdefgh ") for _ in range(count)]
            times = sorted(rng.randrange(n * chunk_ms, (n + 1) * chunk_ms) for _ in chars)
            alignment = {"charStartTimesMs": times, "charsDurationsMs": [rng.randrange(40, 90)
                                                                         for _ in chars],
                         "chars": chars}
            obj = {"audio": data, "isFinal": None, "normalizedAlignment": alignment,
                   "alignment": alignment, "contextId": ids}
        else:
            obj = {"event": "media", "sequenceNumber": str(n + 3),
                   "media": {"track": "outbound", "chunk": str(n + 1),
                             "timestamp": str(n * chunk_ms), "payload": data},
                   "streamSid": f"MZ{ids}"}
        frames.append(json.dumps(obj, separators=(",", ":")).encode())
    if name == "cartesia":
        frames += [flush_done_frame(ids, 1), done_frame(ids)]
    elif name == "openai-realtime":
        frames += [json.dumps({"type": "response.output_audio.done", "event_id": "event_x",
                               "response_id": f"resp_{ids[:20]}", "item_id": f"item_{ids[8:28]}",
                               "output_index": 0, "content_index": 0}).encode(),
                   json.dumps({"type": "response.done", "event_id": "event_y",
                               "response": {"id": f"resp_{ids[:20]}", "status": "completed"},
                               "response_id": f"resp_{ids[:20]}"}).encode()]
    elif name == "elevenlabs":
        frames.append(json.dumps({"isFinal": True, "contextId": ids}).encode())
    else:
        frames.append(json.dumps({"event": "stop", "sequenceNumber": str(len(frames) + 3),
                                  "streamSid": f"MZ{ids}", "stop": {"callSid": "CA1"}}).encode())
    chunks = len(frames) - (2 if name in ("cartesia", "openai-realtime") else 1)
    return {"frames": frames, "pcm": pcm, "rate": rate, "provider": name, "chunks": chunks,
            "encoding": "pcm_mulaw" if width == 1 else "pcm_s16le"}


class ProviderSink(Pipeline):
    """The compiled Sink reading the provider's envelope."""

    def __init__(self, speedups, kernel):
        self.speedups, self.kernel = speedups, kernel
        self.name = f"flushsink[{kernel}]"

    def setup(self, work):
        from flushsink import AudioFormat
        from flushsink.envelopes import BUILT_IN
        self.speedups._set_simd_path(self.kernel)
        self.frames = work["frames"]
        self.sink = self.speedups.Sink(AudioFormat(work["encoding"], work["rate"]),
                                       envelope=BUILT_IN[work["provider"]])

    def run(self):
        feed = self.sink.feed
        segments = []
        for frame in self.frames:
            for event in feed(frame):
                if hasattr(event, "segment"):
                    segments.append(event.segment.pcm())
        return b"".join(segments)


def _getter(path):
    """A reader of a dotted path, as someone would write it for that depth."""
    if path is None:
        return lambda message: None
    names = path.split(".")
    if len(names) == 1:
        name = names[0]
        return lambda message: message.get(name)
    if len(names) == 2:
        outer, inner = names
        return lambda message: (message.get(outer) or {}).get(inner)
    raise ValueError(path)


class ProviderJsonB64(Pipeline):
    """loads + b64decode with the envelope's routing: what each kind of frame is, a
    bytearray per context, handed over at the segment's (or context's) end."""

    def __init__(self, name, loads, b64decode):
        self.name, self.loads, self.b64decode = name, loads, b64decode

    def setup(self, work):
        from flushsink.envelopes import BUILT_IN
        envelope = BUILT_IN[work["provider"]]
        self.frames = work["frames"]
        self.kinds = envelope.type_kinds()
        self.typeless = envelope.type_key is None
        self.type_of, self.context_of, self.audio_of, self.final_of = (
            _getter(envelope.type_key), _getter(envelope.context_key),
            _getter(envelope.audio_key), _getter(envelope.final_key))

    def run(self):
        loads, b64decode, kinds = self.loads, self.b64decode, self.kinds
        type_of, context_of, audio_of, final_of = (self.type_of, self.context_of,
                                                   self.audio_of, self.final_of)
        typeless = self.typeless
        open_segments: dict = {}
        done = []
        for frame in self.frames:
            message = loads(frame)
            if typeless:
                audio = audio_of(message)
                kind = "audio" if audio is not None else \
                    "context_end" if final_of(message) is True else None
            else:
                kind = kinds.get(type_of(message))
            if kind == "audio":
                key = context_of(message)
                segment = open_segments.get(key)
                if segment is None:
                    segment = open_segments[key] = bytearray()
                segment += b64decode(audio_of(message))
            elif kind == "segment_end" or kind == "context_end":
                segment = open_segments.pop(context_of(message), None)
                if segment is not None:
                    done.append(segment)
        return b"".join(done)


def axis_provider(pipelines, rounds, quick, log, args):
    """Each built-in envelope's frames: the compiled Sink against orjson+pybase64 with the
    same routing (and the stdlib's json + base64), in the same process and rounds."""
    from flushsink import _speedups
    fs = best_flushsink(pipelines)
    if fs is None:
        notes.append("provider axis skipped: no compiled core")
        return {"targets": []}
    runners = [ProviderSink(_speedups, fs.kernel)]
    oj = named(pipelines, "orjson+pybase64")
    if oj is not None:
        runners.append(ProviderJsonB64(oj.name, oj.loads, oj.b64decode))
    runners.append(ProviderJsonB64("stdlib", json.loads, base64.b64decode))
    providers = ("cartesia", "openai-realtime", "elevenlabs", "twilio-media")
    configs = [(p, ms) for p in providers for ms in PROVIDER_CHUNK_MS]
    works = {key: provider_frames(*key) for key in configs}
    gc.collect()
    measured = measure(runners, works, rounds, log)
    columns = [f"{ms}ms" for ms in PROVIDER_CHUNK_MS]

    def cells(name, provider, ref=None):
        return {f"{ms}ms": measured[(name, (provider, ms))][0]
                / (measured[(ref, (provider, ms))][0] if ref else 1)
                for ms in PROVIDER_CHUNK_MS}

    table = Table("provider", f"providers: each built-in envelope's frames, a 10 s segment "
                  f"per run (Twilio 8 kHz mu-law, the others 24 kHz s16le); median ns per "
                  f"chunk message over {rounds} interleaved rounds", columns)
    table.section("ns/message")
    for provider in providers:
        for p in runners:
            table.row(f"{provider}: {p.name}", cells(p.name, provider))
    table.section("ratios")
    for provider in providers:
        if oj is not None:
            table.row(f"{provider}: {oj.name} / {fs.name}", cells(oj.name, provider, fs.name),
                      fmt_ratio, (">=", TARGET_PROVIDER_VS_ORJSON))
        table.row(f"{provider}: stdlib / {fs.name}", cells("stdlib", provider, fs.name),
                  fmt_ratio)
    table.section("page faults/message")
    for provider in providers:
        for p in runners:
            table.row(f"{provider}: {p.name}", {f"{ms}ms": measured[(p.name, (provider, ms))][1]
                                                for ms in PROVIDER_CHUNK_MS}, fmt_faults)
    return emit(table, args)


AXES = {"main": axis_main, "order": axis_order, "short": axis_short,
        "interleaved": axis_interleaved, "cold": axis_cold, "stream": axis_stream,
        "provider": axis_provider}


# --- one process per axis ------------------------------------------------------------------------
# Whether a new segment buffer faults depends on glibc's mmap threshold, which rises when the
# process frees a large mmapped block: an axis run after another would inherit that history.
# So each axis runs in a fresh interpreter (the same numbers alone or in a full run).

def encode_measured(measured: dict) -> list:
    return [[name, list(key) if isinstance(key, tuple) else key, ns, faults]
            for (name, key), (ns, faults) in measured.items()]


def decode_measured(rows: list) -> dict:
    return {(name, tuple(key) if isinstance(key, list) else key): (ns, faults)
            for name, key, ns, faults in rows}


def run_isolated(spec: dict, args) -> dict:
    """Run spec ({"axis": name} or {"part": ...}) in a child interpreter; its JSON result."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec),
            "--rounds", str(args.rounds), "--clock", args.clock, "--cold-mib", str(args.cold_mib)]
    if args.quick:
        argv.append("--quick")
    if args.only:
        argv += ["--only", args.only]
    if args.json:
        argv.append("--json")
    child = subprocess.run(argv, stdout=subprocess.PIPE, text=True)   # stderr: its progress
    if child.returncode != 0:
        raise SystemExit(f"{spec} failed (exit {child.returncode})")
    return json.loads(child.stdout)


def worker(spec: dict, args):
    import contextlib
    import io
    rounds = 3 if args.quick else args.rounds
    set_clock(args.clock)
    pipelines, _ = make_pipelines(floor=spec.get("axis") in ("main", "cold"))
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if "part" in spec:
        result = short_part(pipelines, rounds, args.quick, log, spec["variant"], spec["seconds"])
    else:
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            data = AXES[spec["axis"]](pipelines, rounds, args.quick, log, args)
        result = {"text": text.getvalue(), "data": data}
    result["notes"] = notes
    json.dump(result, sys.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--axis", default="all",
                        help="comma-separated axes to run: " + ", ".join(AXES) + " or all "
                             "(default)")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds and a smaller grid on every axis")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--only", help="comma-separated pipeline names (main table)")
    parser.add_argument("--cold-mib", type=int, default=COLD_MIB,
                        help="cold axis: MiB of distinct frames per chunk size (default "
                             f"{COLD_MIB}; make it several times the last-level cache)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: the thread's CPU time (default, robust on a shared "
                             "machine); wall: perf_counter")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker), args)
    axes = list(AXES) if args.axis == "all" else [a.strip() for a in args.axis.split(",")]
    for axis in axes:
        if axis not in AXES:
            parser.error(f"unknown axis {axis!r} (choose from {', '.join(AXES)}, all)")
    rounds = 3 if args.quick else args.rounds
    _, versions = make_pipelines()
    env = {
        "cpu": cpu_description(),
        "caches": cache_description(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min, at start)",
        "clock": set_clock(args.clock) + " (each axis in a process of its own)",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({platform.platform()})",
        **versions,
        "compiler": compiler_version(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", ""),
    }
    try:
        import numpy
        env["numpy"] = numpy.__version__
    except ImportError:
        pass
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if not args.json else (lambda msg: None)
    if not args.json:
        print_header(env)
        sys.stdout.flush()
    report = {"environment": env, "rounds": rounds, "axes": {}}
    started = time.monotonic()
    for axis in axes:
        log(f"axis {axis}")
        result = run_isolated({"axis": axis}, args)
        report["axes"][axis] = result["data"]
        notes.extend(n for n in result["notes"] if n not in notes)
        if not args.json:
            print(result["text"], end="")
            sys.stdout.flush()
    verdicts = [v for data in report["axes"].values() for v in data["targets"]]
    report["targets"] = verdicts
    report["notes"] = notes
    report["seconds"] = round(time.monotonic() - started, 1)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        if verdicts:
            met = sum(v["met"] for v in verdicts)
            print(f"all axes: {met} of {len(verdicts)} targets met ({report['seconds']:.0f} s)")
        for note in notes:
            print(f"note: {note}")


if __name__ == "__main__":
    main()
