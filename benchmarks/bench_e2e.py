#!/usr/bin/env python3
"""End-to-end client CPU per chunk message over loopback: flushsink's clients next to the
websocket receive alone, the official SDK's receive loop and hand-written loops, with the
frames sent in one burst and paced one at a time.

A pre-framed sender runs in a separate process (so its CPU is not counted as the
client's): a plain-socket websocket server on 127.0.0.1 that answers the handshake
(declining permessage-deflate), reads the client's first generation request, and writes
N chunk frames for the context id the client chose, then flush_done and done, all
framed in advance. The request's transcript names the workload ("e2e rate=44100
chunk_ms=100 chunks=2000 seed=100 ..."); the audio is pseudo-random s16le bytes the
client can regenerate to check what it received.

  burst   every frame handed to the kernel with one sendall: the client always finds
          frames waiting, and each read brings up to a MiB of them
  paced   one frame every --paced-gap-ms (1 ms), each with its own sendall: far longer
          than any row spends on a message, so each read finds one frame and costs an
          event-loop wake-up, as when a server paces a context's audio in real time
          (500 messages per run; only the rows the targets compare)

Measured: CPU time of the client process (time.process_time: every thread, user and
system) from just before the first request is sent to the moment the last frame has
been handled, divided by the number of chunk messages. Connecting and closing are
outside the timed region. Every configuration runs every client once per round, in a
rotating order, so a drift of the shared machine hits every client alike; medians over
rounds; the ratios are ratios of medians of the same run.

Clients (asyncio, uvloop where installed, then sync):
  ws recv alone        websockets recv(decode=False) in a loop, frames discarded: the floor
                       any client on websockets pays
  ws recv + Sink.feed  the README's "your own websocket loop": recv(decode=False) into
                       flushsink.Sink.feed, segments kept (no Session, no client object)
  flushsink            flushsink.connect(...), one context, push + no_more_inputs,
                       `async for segment in ctx.segments()` (segments kept); defaults,
                       so coalesce_reads is 5 ms
  ... (released)      the same two, but each segment is dropped once it has arrived (what
                       a voice server that plays or writes each segment does): its buffer
                       goes back to the Sink's warm pool, so the next segment's audio lands
                       in memory that is already mapped. "kept" holds the whole run's audio
                       (100-200 s) and pays for fresh pages and cold cache lines; the
                       receive alone stores nothing. Released rows check each segment's
                       flush id, length and first and last 32 bytes (kept rows check all).
  flushsink (coalesce_reads=0)  every frame read as it arrives (what coalescing buys)
  flushsink (stream)   connect(..., stream=True) with a Sink(stream=True, keep_audio=False):
                       `async for chunk in ctx.audio()`, what a voice server runs; each
                       chunk is let go once looked at (its start, length and first and
                       last 16 bytes kept for the check), as a server that sends it on
                       would (appending every chunk to one growing bytearray instead
                       costs that bytearray's page faults, 10.8 per 500 ms message)
  uvloop:...           the same asyncio code run with uvloop.run()
  cartesia SDK         cartesia 3.2.0 AsyncCartesia(...).tts.websocket_connect(), ctx.push,
                       `async for response in ctx.receive()` with
                       `if response.type == "chunk" and response.audio: audio += response.audio`
                       as the SDK's examples do (two base64 decodes per chunk: the property
                       is not cached)
  cartesia SDK, .audio once   the same, reading response.audio once per chunk
  orjson+pybase64      recv + orjson.loads + pybase64.b64decode(validate=True) into a
                       bytearray per segment
  json+base64          the same with the standard library
  sync: ws recv alone, flushsink.sync, cartesia SDK (sync ctx.receive()), orjson+pybase64

Targets (issue 12 item 5): flushsink / ws recv alone <= 1.00 at 20, 100 and 500 ms, burst
and paced, kept, released and (issue 14) streamed, for each event loop; and (issue item 4)
SDK (examples' loop) / flushsink >= 5 at 100 ms.

Usage: python benchmarks/bench_e2e.py [--rounds N] [--quick] [--json] [--only a,b]
       [--chunk-ms 20,100,500] [--scale X] [--paced-gap-ms 1 (0: no paced runs)]
Needs websockets; the SDK, orjson, pybase64 and uvloop rows are skipped with a note when
missing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import gc
import hashlib
import json
import random
import resource
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (pins OPENBLAS_NUM_THREADS before numpy loads)

RATE = 44100
SAMPLE_WIDTH = 2
# chunk ms -> chunk messages per run: about 0.1-0.3 s of client CPU per run, and at least
# 100 s of audio, so per-run constants (one request, a task) vanish in the per-message cost
CHUNKS = {20: 5000, 100: 2000, 500: 1000}
VOICE_ID = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
OUTPUT_FORMAT = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": RATE}
MAX_SIZE = 16 * 2**20
# a flush per sentence or two, as TTS users flush: segments, not one huge buffer (one
# 200 s segment would put its buffer beyond glibc's mmap threshold: see the README notes)
SEGMENT_SECONDS = 5.0
TARGET_OVERHEAD = 1.00   # flushsink / ws recv alone, at most (issue 12 item 5)
TARGET_VS_SDK = 5.0      # SDK / flushsink, at least (100 ms chunks)
SERVER_LIFETIME_S = 3600
# paced runs: messages per run (whole segments) and the gap between frames; the gap is
# far longer than any row's cost per message, so each read finds one frame
PACED_CHUNKS = 500
PACED_GAP_MS = 1.0
PACED_CLIENTS = ("ws recv alone", "flushsink", "flushsink (released)",
                 "flushsink (coalesce_reads=0)", "flushsink (stream)")

notes: list[str] = []


class Workload(NamedTuple):
    chunk_ms: int
    chunks: int
    seed: int
    segment_chunks: int  # chunks per flush (segment): the sender sends flush_done after each
    gap_us: int = 0  # 0: every frame in one sendall (burst); else one frame per gap (paced)

    @property
    def transcript(self) -> str:
        return (f"e2e rate={RATE} chunk_ms={self.chunk_ms} chunks={self.chunks} "
                f"seed={self.seed} segment_chunks={self.segment_chunks} gap_us={self.gap_us}")

    @property
    def label(self) -> str:
        """The column: chunk size, and whether the frames came paced."""
        return f"{self.chunk_ms} ms paced" if self.gap_us else f"{self.chunk_ms} ms"

    @property
    def kind(self) -> str:
        return "paced" if self.gap_us else "burst"

    @classmethod
    def parse(cls, transcript: str) -> "Workload":
        fields = dict(item.split("=", 1) for item in transcript.split()[1:])
        if int(fields["rate"]) != RATE:
            raise ValueError(f"unsupported rate in {transcript!r}")
        return cls(int(fields["chunk_ms"]), int(fields["chunks"]), int(fields["seed"]),
                   int(fields["segment_chunks"]), int(fields["gap_us"]))

    @classmethod
    def make(cls, chunk_ms: int, chunks: int, segment_seconds: float,
             gap_us: int = 0) -> "Workload":
        per_segment = max(1, round(segment_seconds * 1000 / chunk_ms))
        chunks = max(per_segment, chunks // per_segment * per_segment)  # whole segments
        return cls(chunk_ms, chunks, chunk_ms, per_segment, gap_us)

    @property
    def chunk_bytes(self) -> int:
        return RATE * self.chunk_ms // 1000 * SAMPLE_WIDTH

    @property
    def segments(self) -> int:
        return -(-self.chunks // self.segment_chunks)

    @property
    def frames(self) -> int:
        """Frames the sender sends: the chunks, a flush_done per segment, the done."""
        return self.chunks + self.segments + 1

    def pcm(self) -> bytes:
        """The audio of the whole run (pseudo-random: no decoder can shortcut it)."""
        return random.Random(self.seed).randbytes(self.chunk_bytes * self.chunks)


# --- the pre-framed sender (runs in its own process) -------------------------------------------

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _frame_header(opcode: int, length: int) -> bytes:
    """An unmasked server frame header (FIN set)."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return bytes((0x80 | opcode, 126)) + length.to_bytes(2, "big")
    return bytes((0x80 | opcode, 127)) + length.to_bytes(8, "big")


def _framed(text: str) -> bytes:
    payload = text.encode()
    return _frame_header(0x1, len(payload)) + payload


class _FrameReader:
    """Reads the client's (masked) frames from a blocking socket."""

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self.sock = sock
        self.buffer = bytearray(pending)

    def _need(self, n: int) -> bool:
        while len(self.buffer) < n:
            data = self.sock.recv(65536)
            if not data:
                return False
            self.buffer += data
        return True

    def next(self) -> tuple[int, bytes] | None:
        if not self._need(2):
            return None
        opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
        masked = self.buffer[1] & 0x80
        offset = 2
        if length == 126:
            if not self._need(4):
                return None
            length, offset = int.from_bytes(self.buffer[2:4], "big"), 4
        elif length == 127:
            if not self._need(10):
                return None
            length, offset = int.from_bytes(self.buffer[2:10], "big"), 10
        mask = b""
        if masked:
            if not self._need(offset + 4):
                return None
            mask, offset = bytes(self.buffer[offset:offset + 4]), offset + 4
        if not self._need(offset + length):
            return None
        payload = bytes(self.buffer[offset:offset + length])
        del self.buffer[:offset + length]
        if mask and payload:
            key = (mask * (length // 4 + 1))[:length]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
        return opcode, payload


_piece_cache: dict[Workload, list[str]] = {}
_cache_lock = threading.Lock()


def _base64_pieces(workload: Workload) -> list[str]:
    with _cache_lock:
        pieces = _piece_cache.get(workload)
        if pieces is None:
            pcm, step = workload.pcm(), workload.chunk_bytes
            pieces = [base64.b64encode(pcm[i:i + step]).decode("ascii")
                      for i in range(0, len(pcm), step)]
            if len(_piece_cache) > 4:
                _piece_cache.clear()
            _piece_cache[workload] = pieces
        return pieces


def stream_frames(context_id: str, workload: Workload) -> list[bytes]:
    """Every frame of the answer, framed, in the emulator's frame shapes: chunks with
    flush_id 1, 2, ... (segment_chunks each), a flush_done after each segment, then
    done."""
    cid = json.dumps(context_id)
    rng = random.Random(workload.seed)
    frames = []
    for index, data in enumerate(_base64_pieces(workload)):
        flush_id = index // workload.segment_chunks + 1
        frames.append(_framed(
            f'{{"type": "chunk", "context_id": {cid}, "status_code": 206, "done": false, '
            f'"step_time": {rng.uniform(20, 80):.3f}, "flush_id": {flush_id}, "data": "{data}"}}'))
        if (index + 1) % workload.segment_chunks == 0 or index + 1 == workload.chunks:
            frames.append(_framed(
                f'{{"type": "flush_done", "context_id": {cid}, "status_code": 206, '
                f'"done": false, "data": "", "flush_id": {flush_id}, "flush_done": true}}'))
    frames.append(_framed(f'{{"type": "done", "context_id": {cid}, "status_code": 206, '
                          f'"done": true}}'))
    return frames


def send_stream(sock: socket.socket, context_id: str, workload: Workload) -> None:
    """Burst: every frame in one sendall, so the client always finds frames waiting.
    Paced: frame i at start + i * gap, each with its own sendall, so that (the gap being
    far longer than a message costs the client) every read finds one frame, as when a
    server paces a context's audio in real time."""
    frames = stream_frames(context_id, workload)
    if not workload.gap_us:
        sock.sendall(b"".join(frames))
        return
    start, gap = time.perf_counter(), workload.gap_us / 1e6
    for index, frame in enumerate(frames):
        delay = start + index * gap - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sock.sendall(frame)


def accept_websocket(sock: socket.socket) -> _FrameReader | None:
    """Answer the opening handshake on ``sock`` (declining any extension) and return a
    reader of the client's frames; None if the client left first. Raises StopIteration
    for a request without Sec-WebSocket-Key."""
    sock.settimeout(120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b""
    while b"\r\n\r\n" not in request:
        data = sock.recv(4096)
        if not data or len(request) > 65536:
            return None
        request += data
    head, _, rest = request.partition(b"\r\n\r\n")
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
               if line.split(b":", 1)[0].strip().lower() == b"sec-websocket-key")
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
    # no Sec-WebSocket-Extensions: a deflate offer (the SDK's default) is declined
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return _FrameReader(sock, rest)


def _handle(sock: socket.socket) -> None:
    try:
        reader = accept_websocket(sock)
        if reader is None:
            return
        streamed = False
        while True:
            frame = reader.next()
            if frame is None:
                return
            opcode, payload = frame
            if opcode == 0x1 and not streamed:
                message = json.loads(payload)
                streamed = True
                send_stream(sock, message["context_id"], Workload.parse(message["transcript"]))
            elif opcode == 0x8:  # echo the close, then end the TCP connection (RFC 6455 7.1.1)
                sock.sendall(_frame_header(0x8, len(payload[:2])) + payload[:2])
                return
            elif opcode == 0x9:
                sock.sendall(_frame_header(0xA, len(payload)) + payload)
    except (OSError, ValueError, KeyError, StopIteration):
        return
    finally:
        sock.close()


def serve(lifetime: float = SERVER_LIFETIME_S) -> None:
    """The sender's main: print the port, accept until stdin closes or ``lifetime`` ends."""
    _common.exit_when_parent_goes()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    print("PORT", listener.getsockname()[1], flush=True)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        try:
            sock, _ = listener.accept()
        except socket.timeout:
            continue
        threading.Thread(target=_handle, args=(sock,), daemon=True).start()
    listener.close()


# --- clients -------------------------------------------------------------------------------------
# Each returns (cpu seconds, wall seconds, what it received) for one run of a workload.

class Run(NamedTuple):
    cpu: float
    wall: float
    received: Any  # what the check looks at
    faults: int = 0  # minor page faults of the process in the timed region


def _request(context_id: str, workload: Workload, continue_: bool = False) -> str:
    return json.dumps({"context_id": context_id, "model_id": "sonic-latest",
                       "transcript": workload.transcript,
                       "voice": {"mode": "id", "id": VOICE_ID}, "output_format": OUTPUT_FORMAT,
                       "continue": continue_})


class _Timer:
    def __enter__(self) -> "_Timer":
        self.faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0
        self.faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.faults0


async def ws_recv_async(url: str, workload: Workload) -> Run:
    from websockets.asyncio.client import connect

    frames = workload.frames
    async with connect(url, compression=None, max_size=MAX_SIZE) as ws:
        with _Timer() as t:
            await ws.send(_request(str(uuid.uuid4()), workload))
            for _ in range(frames):
                last = await ws.recv(decode=False)
    return Run(t.cpu, t.wall, ("frames", frames, last), t.faults)


def digest(segment: Any) -> tuple[int, int, bytes, bytes]:
    """What a released row keeps of a segment, for the check."""
    pcm = segment.pcm()
    return segment.flush_id, len(pcm), bytes(pcm[:32]), bytes(pcm[-32:])


def chunk_digest(chunk: Any) -> tuple[int, int, bytes, bytes]:
    """What a stream row keeps of a chunk, for the check: where it starts in its segment,
    its length, its first and last 16 bytes."""
    data = chunk.data
    return chunk.start, len(data), bytes(data[:16]), bytes(data[-16:])


def _keeping(keep: bool) -> tuple[str, Callable[[Any], Any]]:
    """What a row holds of each segment: the segment itself, or its digest (released)."""
    return ("segments", lambda segment: segment) if keep else ("digests", digest)


async def flushsink_async(url: str, workload: Workload, keep: bool = True,
                          **options: Any) -> Run:
    import flushsink

    kind, hold = _keeping(keep)
    async with flushsink.connect(url, api_key="bench", max_size=MAX_SIZE, **options) as tts:
        await tts.connect()
        ctx = tts.context(voice=VOICE_ID, output_format=OUTPUT_FORMAT)
        with _Timer() as t:
            await ctx.push(workload.transcript)
            await ctx.no_more_inputs()
            held = [hold(segment) async for segment in ctx.segments()]
    return Run(t.cpu, t.wall, (kind, held), t.faults)


async def flushsink_released_async(url: str, workload: Workload) -> Run:
    return await flushsink_async(url, workload, keep=False)


async def flushsink_uncoalesced_async(url: str, workload: Workload) -> Run:
    return await flushsink_async(url, workload, coalesce_reads=0)


async def flushsink_stream_async(url: str, workload: Workload) -> Run:
    import flushsink

    sink = flushsink.Sink(flushsink.AudioFormat("pcm_s16le", RATE), stream=True,
                          keep_audio=False)
    async with flushsink.connect(url, api_key="bench", max_size=MAX_SIZE, sink=sink) as tts:
        await tts.connect()
        ctx = tts.context(voice=VOICE_ID, output_format=OUTPUT_FORMAT)
        seen: list[tuple[int, int, bytes, bytes]] = []
        with _Timer() as t:
            await ctx.push(workload.transcript)
            await ctx.no_more_inputs()
            async for chunk in ctx.audio():
                seen.append(chunk_digest(chunk))
    return Run(t.cpu, t.wall, ("chunks", seen), t.faults)


async def sink_loop_async(url: str, workload: Workload, keep: bool = True) -> Run:
    """The README's "your own websocket loop": recv(decode=False) straight into Sink.feed."""
    import flushsink
    from websockets.asyncio.client import connect

    kind, hold = _keeping(keep)
    sink = flushsink.Sink(flushsink.AudioFormat("pcm_s16le", RATE))
    segments: list[Any] = []
    async with connect(url, compression=None, max_size=MAX_SIZE) as ws:
        with _Timer() as t:
            await ws.send(_request(str(uuid.uuid4()), workload))
            feed = sink.feed
            done = False
            while not done:
                for event in feed(await ws.recv(decode=False)):
                    if isinstance(event, flushsink.SegmentReady):
                        segments.append(hold(event.segment))
                    elif isinstance(event, (flushsink.ContextDone, flushsink.ContextError)):
                        done = True
    return Run(t.cpu, t.wall, (kind, segments), t.faults)


async def sink_loop_released_async(url: str, workload: Workload) -> Run:
    return await sink_loop_async(url, workload, keep=False)


def _sdk_async_client(url: str) -> Any:
    from cartesia import AsyncCartesia

    return AsyncCartesia(api_key="bench", websocket_base_url=url)


async def _sdk_async(url: str, workload: Workload, twice: bool) -> Run:
    client = _sdk_async_client(url)
    try:
        async with client.tts.websocket_connect() as connection:
            ctx = connection.context(model_id="sonic-latest", voice={"mode": "id", "id": VOICE_ID},
                                     output_format=OUTPUT_FORMAT)
            # the examples write each flush to its own file: files[response.flush_id or 0]
            buffers: dict[int, bytearray] = collections.defaultdict(bytearray)
            with _Timer() as t:
                await ctx.push(workload.transcript)
                await ctx.no_more_inputs()
                if twice:  # the examples' loop: the truthiness test decodes, the write decodes
                    async for response in ctx.receive():
                        if response.type == "chunk" and response.audio:
                            buffers[response.flush_id or 0] += response.audio
                else:
                    async for response in ctx.receive():
                        if response.type == "chunk":
                            chunk = response.audio
                            if chunk:
                                buffers[response.flush_id or 0] += chunk
    finally:
        await client.close()
    return Run(t.cpu, t.wall, ("pcm", b"".join(buffers[k] for k in sorted(buffers))), t.faults)


async def sdk_async(url: str, workload: Workload) -> Run:
    return await _sdk_async(url, workload, twice=True)


async def sdk_once_async(url: str, workload: Workload) -> Run:
    return await _sdk_async(url, workload, twice=False)


def _hand_loop_async(loads: Callable[[bytes], Any], b64decode: Callable[[Any], bytes]):
    async def run(url: str, workload: Workload) -> Run:
        from websockets.asyncio.client import connect

        segments: list[bytearray] = []
        async with connect(url, compression=None, max_size=MAX_SIZE) as ws:
            with _Timer() as t:
                await ws.send(_request(str(uuid.uuid4()), workload))
                audio = bytearray()
                while True:
                    message = loads(await ws.recv(decode=False))
                    kind = message["type"]
                    if kind == "chunk":
                        audio += b64decode(message["data"])
                    elif kind == "flush_done":
                        segments.append(audio)
                        audio = bytearray()
                    elif kind in ("done", "error"):
                        break
        return Run(t.cpu, t.wall, ("pcm", b"".join(segments) + audio), t.faults)
    return run


def ws_recv_sync(url: str, workload: Workload) -> Run:
    from websockets.sync.client import connect

    frames = workload.frames
    with connect(url, compression=None, max_size=MAX_SIZE) as ws:
        with _Timer() as t:
            ws.send(_request(str(uuid.uuid4()), workload))
            for _ in range(frames):
                last = ws.recv(decode=False)
    return Run(t.cpu, t.wall, ("frames", frames, last), t.faults)


def flushsink_sync(url: str, workload: Workload, keep: bool = True) -> Run:
    import flushsink.sync

    kind, hold = _keeping(keep)
    with flushsink.sync.connect(url, api_key="bench", max_size=MAX_SIZE) as tts:
        tts.connect()
        ctx = tts.context(voice=VOICE_ID, output_format=OUTPUT_FORMAT)
        with _Timer() as t:
            ctx.push(workload.transcript)
            ctx.no_more_inputs()
            held = [hold(segment) for segment in ctx.segments()]
    return Run(t.cpu, t.wall, (kind, held), t.faults)


def flushsink_released_sync(url: str, workload: Workload) -> Run:
    return flushsink_sync(url, workload, keep=False)


def flushsink_stream_sync(url: str, workload: Workload) -> Run:
    import flushsink.sync

    sink = flushsink.Sink(flushsink.AudioFormat("pcm_s16le", RATE), stream=True,
                          keep_audio=False)
    with flushsink.sync.connect(url, api_key="bench", max_size=MAX_SIZE, sink=sink) as tts:
        tts.connect()
        ctx = tts.context(voice=VOICE_ID, output_format=OUTPUT_FORMAT)
        seen: list[tuple[int, int, bytes, bytes]] = []
        with _Timer() as t:
            ctx.push(workload.transcript)
            ctx.no_more_inputs()
            for chunk in ctx.audio():
                seen.append(chunk_digest(chunk))
    return Run(t.cpu, t.wall, ("chunks", seen), t.faults)


def sdk_sync(url: str, workload: Workload) -> Run:
    from cartesia import Cartesia

    client = Cartesia(api_key="bench", websocket_base_url=url)
    try:
        with client.tts.websocket_connect() as connection:
            ctx = connection.context(model_id="sonic-latest", voice={"mode": "id", "id": VOICE_ID},
                                     output_format=OUTPUT_FORMAT)
            buffers: dict[int, bytearray] = collections.defaultdict(bytearray)
            with _Timer() as t:
                ctx.push(workload.transcript)
                ctx.no_more_inputs()
                for response in ctx.receive():
                    if response.type == "chunk" and response.audio:
                        buffers[response.flush_id or 0] += response.audio
    finally:
        client.close()
    return Run(t.cpu, t.wall, ("pcm", b"".join(buffers[k] for k in sorted(buffers))), t.faults)


def _hand_loop_sync(loads: Callable[[bytes], Any], b64decode: Callable[[Any], bytes]):
    def run(url: str, workload: Workload) -> Run:
        from websockets.sync.client import connect

        segments: list[bytearray] = []
        with connect(url, compression=None, max_size=MAX_SIZE) as ws:
            with _Timer() as t:
                ws.send(_request(str(uuid.uuid4()), workload))
                audio = bytearray()
                while True:
                    message = loads(ws.recv(decode=False))
                    kind = message["type"]
                    if kind == "chunk":
                        audio += b64decode(message["data"])
                    elif kind == "flush_done":
                        segments.append(audio)
                        audio = bytearray()
                    elif kind in ("done", "error"):
                        break
        return Run(t.cpu, t.wall, ("pcm", b"".join(segments) + audio), t.faults)
    return run


class Client(NamedTuple):
    name: str
    mode: str  # "async" or "sync"
    run: Callable[[str, Workload], Any]


def make_clients(only: list[str] | None) -> list[Client]:
    clients = [Client("ws recv alone", "async", ws_recv_async),
               Client("flushsink", "async", flushsink_async),
               Client("flushsink (released)", "async", flushsink_released_async),
               Client("flushsink (coalesce_reads=0)", "async", flushsink_uncoalesced_async),
               Client("flushsink (stream)", "async", flushsink_stream_async),
               Client("ws recv + Sink.feed", "async", sink_loop_async),
               Client("ws recv + Sink.feed (released)", "async", sink_loop_released_async)]
    try:
        import cartesia  # noqa: F401
        clients += [Client("cartesia SDK", "async", sdk_async),
                    Client("cartesia SDK, .audio once", "async", sdk_once_async)]
    except ImportError:
        notes.append("cartesia not installed: SDK rows skipped (pip install 'cartesia[websockets]==3.2.0')")
    fast = None
    try:
        import orjson
        import pybase64

        fast = (orjson.loads, lambda data: pybase64.b64decode(data, validate=True))
        clients.append(Client("orjson+pybase64", "async", _hand_loop_async(*fast)))
    except ImportError:
        notes.append("orjson or pybase64 not installed: their rows skipped")
    clients.append(Client("json+base64", "async", _hand_loop_async(json.loads, base64.b64decode)))
    try:
        import uvloop  # noqa: F401

        clients += [Client("ws recv alone", "uvloop", ws_recv_async),
                    Client("flushsink", "uvloop", flushsink_async),
                    Client("flushsink (released)", "uvloop", flushsink_released_async),
                    Client("flushsink (stream)", "uvloop", flushsink_stream_async)]
    except ImportError:
        notes.append("uvloop not installed: its rows skipped (pip install uvloop)")
    clients += [Client("ws recv alone", "sync", ws_recv_sync),
                Client("flushsink", "sync", flushsink_sync),
                Client("flushsink (released)", "sync", flushsink_released_sync),
                Client("flushsink (stream)", "sync", flushsink_stream_sync)]
    if any(c.name == "cartesia SDK" for c in clients):
        clients.append(Client("cartesia SDK", "sync", sdk_sync))
    if fast is not None:
        clients.append(Client("orjson+pybase64", "sync", _hand_loop_sync(*fast)))
    if only:
        wanted = {name.strip() for name in only}
        clients = [c for c in clients if c.name in wanted or f"{c.mode}:{c.name}" in wanted]
        if not clients:
            raise SystemExit("--only matched no client; see the names in the table (mode:name works too)")
    return clients


def run_once(client: Client, url: str, workload: Workload) -> Run:
    gc.collect()
    if client.mode == "async":
        return asyncio.run(client.run(url, workload))
    if client.mode == "uvloop":
        import uvloop

        return uvloop.run(client.run(url, workload))
    return client.run(url, workload)


def check(client: Client, workload: Workload, run: Run, expected: bytes) -> None:
    """Each client must have received all of the audio (or, for the bare receive, every
    frame up to the done)."""
    kind, *rest = run.received
    label = f"{client.mode} {client.name} at {workload.label}"
    if kind == "frames":
        frames, last = rest
        assert b'"type": "done"' in last, f"{label}: the last of {frames} frames is not done"
        return
    if kind == "digests":
        (digests,) = rest
        step, offset, want = workload.chunk_bytes * workload.segment_chunks, 0, []
        for flush_id in range(1, workload.segments + 1):
            piece = expected[offset:offset + step]
            offset += step
            want.append((flush_id, len(piece), piece[:32], piece[-32:]))
        assert digests == want, f"{label}: segments differ from what was sent"
        return
    if kind == "chunks":
        (seen,) = rest
        step, want, offset = workload.chunk_bytes, [], 0
        for start in range(0, len(expected), step):
            piece = expected[start:start + step]
            want.append((offset // SAMPLE_WIDTH, len(piece), piece[:16], piece[-16:]))
            offset += len(piece)
            if len(want) % workload.segment_chunks == 0:
                offset = 0  # each segment starts at sample 0
        assert seen == want, f"{label}: chunks differ from what was sent"
        return
    if kind == "segments":
        (segments,) = rest
        assert [s.flush_id for s in segments] == list(range(1, workload.segments + 1)), \
            f"{label}: flush ids {[s.flush_id for s in segments]}"
        assert all(s.complete for s in segments), f"{label}: incomplete segment"
        received = b"".join(bytes(s.pcm()) for s in segments)
    else:
        (received,) = rest
    assert received == expected, f"{label}: {len(received)} bytes received, {len(expected)} sent"


# --- report --------------------------------------------------------------------------------------

def key(client: Client) -> str:
    return f"{client.mode}:{client.name}"


def runs_workload(client: Client, workload: Workload) -> bool:
    """Paced runs take real time (messages x gap), so only the rows the targets compare
    get them."""
    return not workload.gap_us or client.name in PACED_CLIENTS


def measure(url: str, clients: list[Client], workloads: list[Workload], rounds: int,
            log: Callable[[str], None]) -> dict[tuple[str, str], list[Run]]:
    results: dict[tuple[str, str], list[Run]] = {}
    expected = {w: w.pcm() for w in workloads}
    for client in clients:  # warm-up round, checked: imports, first connections
        for workload in workloads:
            if runs_workload(client, workload):
                check(client, workload, run_once(client, url, workload), expected[workload])
    log(f"checked {len(clients)} clients x {len(workloads)} workloads; measuring {rounds} rounds")
    for r in range(rounds):
        for workload in workloads:
            shift = r % len(clients)
            for client in clients[shift:] + clients[:shift]:
                if not runs_workload(client, workload):
                    continue
                run = run_once(client, url, workload)
                check(client, workload, run, expected[workload])
                # Let the run's audio go once it is checked, as a program would when it
                # is done with it. Holding every run's audio to the end (1 GB and more)
                # made each later "kept" run fault in fresh pages or not depending on
                # what glibc happened to have free after the clients before it: the
                # same Sink.feed allocations faulted 0.01 or 2.4 times per 500 ms
                # message from one row to the next.
                results.setdefault((key(client), workload.label), []).append(
                    run._replace(received=None))
                del run
        log(f"round {r + 1}/{rounds} done")
    return results


def per_message_us(runs: list[Run], workload: Workload) -> float:
    return _common.median([run.cpu for run in runs]) / workload.chunks * 1e6


# (ratio name, numerator row, denominator row); the first nine are the targets' ratios
RATIOS = (
    ("flushsink / ws recv alone (async)", "async:flushsink", "async:ws recv alone"),
    ("flushsink (released) / ws recv alone (async)", "async:flushsink (released)",
     "async:ws recv alone"),
    ("flushsink.sync / ws recv alone (sync)", "sync:flushsink", "sync:ws recv alone"),
    ("flushsink.sync (released) / ws recv alone (sync)", "sync:flushsink (released)",
     "sync:ws recv alone"),
    ("flushsink / ws recv alone (uvloop)", "uvloop:flushsink", "uvloop:ws recv alone"),
    ("flushsink (released) / ws recv alone (uvloop)", "uvloop:flushsink (released)",
     "uvloop:ws recv alone"),
    ("flushsink (stream) / ws recv alone (async)", "async:flushsink (stream)",
     "async:ws recv alone"),
    ("flushsink.sync (stream) / ws recv alone (sync)", "sync:flushsink (stream)",
     "sync:ws recv alone"),
    ("flushsink (stream) / ws recv alone (uvloop)", "uvloop:flushsink (stream)",
     "uvloop:ws recv alone"),
    ("flushsink (coalesce_reads=0) / ws recv alone (async)",
     "async:flushsink (coalesce_reads=0)", "async:ws recv alone"),
    ("flushsink on uvloop / on asyncio", "uvloop:flushsink", "async:flushsink"),
    ("ws recv + Sink.feed / ws recv alone (async)", "async:ws recv + Sink.feed",
     "async:ws recv alone"),
    ("ws recv + Sink.feed (released) / ws recv alone (async)",
     "async:ws recv + Sink.feed (released)", "async:ws recv alone"),
    ("cartesia SDK / flushsink (async)", "async:cartesia SDK", "async:flushsink"),
    ("cartesia SDK .audio once / flushsink (async)", "async:cartesia SDK, .audio once",
     "async:flushsink"),
    ("cartesia SDK / flushsink (sync)", "sync:cartesia SDK", "sync:flushsink"),
    ("orjson+pybase64 / flushsink (async)", "async:orjson+pybase64", "async:flushsink"),
    ("json+base64 / flushsink (async)", "async:json+base64", "async:flushsink"),
    ("orjson+pybase64 / flushsink (sync)", "sync:orjson+pybase64", "sync:flushsink"),
)


def summarize(results, clients, workloads):
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for client in clients:
        rows = table.setdefault(key(client), {})
        for w in workloads:
            runs = results.get((key(client), w.label))
            if not runs:
                continue
            rows[w.label] = {
                "cpu_us_per_message": round(per_message_us(runs, w), 2),
                "spread": _common.spread([r.cpu for r in runs]),
                "wall_messages_per_s": round(w.chunks / _common.median([r.wall for r in runs])),
                "cpu_share": round(_common.median([r.cpu / r.wall for r in runs]), 2),
                "page_faults_per_message": round(_common.median([r.faults for r in runs]) / w.chunks, 2),
            }

    def us(row: str, label: str) -> float | None:
        cell = table.get(row, {}).get(label)
        return None if cell is None else cell["cpu_us_per_message"]

    ratios: dict[str, dict[str, float]] = {}
    for name, a, b in RATIOS:
        values = {w.label: round(us(a, w.label) / us(b, w.label), 3) for w in workloads
                  if us(a, w.label) is not None and us(b, w.label) is not None}
        if values:
            ratios[name] = values
    # what flushsink adds on top of the bare receive, in us per message
    added: dict[str, dict[str, float]] = {}
    for mode in ("async", "uvloop", "sync"):
        a, b = f"{mode}:flushsink", f"{mode}:ws recv alone"
        values = {w.label: round(us(a, w.label) - us(b, w.label), 2) for w in workloads
                  if us(a, w.label) is not None and us(b, w.label) is not None}
        if values:
            added[mode] = values
    targets = {}
    for name, _, _ in RATIOS[:9]:
        mode = "sync" if "(sync)" in name else "uvloop" if "(uvloop)" in name else "async"
        variant = next((v for v in ("released", "stream") if f"({v})" in name), "kept")
        for label, value in ratios.get(name, {}).items():
            targets[f"{mode} flushsink ({variant}) <= {TARGET_OVERHEAD:.2f}x ws recv alone "
                    f"at {label}"] = {"ratio": value, "met": value <= TARGET_OVERHEAD}
    for mode in ("async", "sync"):
        value = ratios.get(f"cartesia SDK / flushsink ({mode})", {}).get("100 ms")
        if value is not None:
            targets[f"{mode} SDK >= {TARGET_VS_SDK:.0f}x flushsink at 100 ms"] = {
                "ratio": value, "met": value >= TARGET_VS_SDK}
    return table, ratios, added, targets


def print_report(env, table, ratios, added, targets, workloads, rounds) -> None:
    _common.print_environment(env)
    for kind in ("burst", "paced"):
        group = [w for w in workloads if w.kind == kind]
        if not group:
            continue
        if kind == "burst":
            print(f"BURST: every frame sent at once, the client always finds frames waiting")
        else:
            print(f"PACED: one frame every {group[0].gap_us / 1000:g} ms, each read finds one "
                  f"frame (as when a server paces a context in real time)")
        print(f"client CPU per chunk message, us (median of {rounds} rounds; min/max vs "
              f"median), {RATE} Hz s16le; wall msg/s = median delivery rate")
        head = f"{'client':<34}" + "".join(
            f"{f'{w.chunk_ms} ms ({w.chunks} msgs)':>28}" for w in group)
        print(head)
        print("-" * len(head))
        for name, rows in table.items():
            if not any(w.label in rows for w in group):
                continue
            cells = "".join(
                f"{rows[w.label]['cpu_us_per_message']:>9.2f} {rows[w.label]['spread']:>8}"
                f"{rows[w.label]['wall_messages_per_s']:>9}/s" if w.label in rows else f"{'-':>28}"
                for w in group)
            print(f"{name:<34}{cells}")
        print()
        print("minor page faults per chunk message (median; new audio pages are faulted in "
              "one by one)")
        for name, rows in table.items():
            if any(w.label in rows for w in group):
                print(f"  {name:<32}" + "".join(
                    f"{rows[w.label]['page_faults_per_message']:>10.2f}" if w.label in rows
                    else f"{'-':>10}" for w in group))
        print()
        print("ratios of medians (same run)")
        for name, values in ratios.items():
            if any(w.label in values for w in group):
                print(f"  {name:<54}" + "".join(
                    f"{values[w.label]:>9.2f}x" if w.label in values else f"{'-':>10}"
                    for w in group))
        for mode, values in added.items():
            print(f"  {'flushsink adds, us/msg (' + mode + ')':<54}" + "".join(
                f"{values[w.label]:>+9.2f} " if w.label in values else f"{'-':>10}"
                for w in group))
        print()
    print("targets")
    for name, verdict in targets.items():
        print(f"  {'MET ' if verdict['met'] else 'MISS'}  {name}: {verdict['ratio']:.2f}x")
    for note in notes:
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 rounds, a quarter of the messages")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument("--chunk-ms", default="20,100,500")
    parser.add_argument("--segment-seconds", type=float, default=SEGMENT_SECONDS,
                        help="audio per flush (segment); default %(default)s")
    parser.add_argument("--paced-gap-ms", type=float, default=PACED_GAP_MS,
                        help="gap between the paced runs' frames (0: no paced runs); "
                             "default %(default)s")
    parser.add_argument("--only", help="comma-separated client names (or mode:name)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return
    rounds = 3 if args.quick else args.rounds
    scale = args.scale * (0.25 if args.quick else 1.0)
    sizes = [int(x) for x in args.chunk_ms.split(",")]
    workloads = [Workload.make(ms, max(10, int(CHUNKS.get(ms, 2000) * scale)), args.segment_seconds)
                 for ms in sizes]
    if args.paced_gap_ms > 0:
        gap_us = round(args.paced_gap_ms * 1000)
        workloads += [Workload.make(ms, max(10, int(PACED_CHUNKS * scale)), args.segment_seconds,
                                    gap_us) for ms in sizes]
    clients = make_clients(args.only.split(",") if args.only else None)
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    env = _common.environment({
        "server": "pre-framed sender in a child process (plain socket, deflate declined): "
                  "burst = one sendall per run, paced = one sendall per frame, "
                  f"{args.paced_gap_ms:g} ms apart",
        "clock": "time.process_time of the client process (all threads, user+sys)",
    })
    with _common.child_process([sys.executable, __file__, "--serve"], "PORT ") as (_, port):
        url = f"ws://127.0.0.1:{port}"
        results = measure(url, clients, workloads, rounds, log)
    table, ratios, added, targets = summarize(results, clients, workloads)
    if args.json:
        json.dump({"environment": env, "rounds": rounds,
                   "unit": "client CPU us per chunk message",
                   "workloads": {w.label: w._asdict() for w in workloads},
                   "results": table, "ratios": ratios, "flushsink_adds_us": added,
                   "targets": targets, "notes": notes}, sys.stdout, indent=2)
        print()
    else:
        print_report(env, table, ratios, added, targets, workloads, rounds)


if __name__ == "__main__":
    main()
