#!/usr/bin/env python3
"""CPU per audio chunk of the voice-agent frameworks' Cartesia services, stock and with
flushsink's drop-in receive path, for pipecat and LiveKit Agents, in one run.

  pipecat  pipecat.services.cartesia.tts.CartesiaTTSService (pipecat-ai 1.14.0) next to
           flushsink.integrations.pipecat.CartesiaTTSService (overrides _process_messages)
  livekit  livekit.plugins.cartesia.TTS (livekit-plugins-cartesia 1.8.9) next to
           flushsink.integrations.livekit.TTS (its SynthesizeStream overrides _run)

Every service runs once per round, in an order that rotates from round to round, so a
drift of the shared machine hits all of them alike; medians over rounds; each ratio is a
ratio of medians of the same run. Every run is checked before it counts: the audio that
came out must be the emulator's, byte for byte.

The text: ten sentences (four with --quick), about 63 s (24 s) of the emulator's speech,
24 kHz pcm_s16le, in 20 and 100 ms chunks, with word timestamps. It reaches the server
one sentence per request (max_buffer_delay_ms 0), as both frameworks send an LLM's reply,
so each sentence is a segment: word timestamps and chunks, a flush_done, and after the
last one done. The divisor of every number is the number of chunk frames.

1. RECEIVE PATH, in memory. The frames are recorded once per chunk size from flushsink's
   emulator (flushsink.emulator.Emulator, in this process, before anything is timed),
   each a `str` as websockets and aiohttp give it, and go through each service:

   pipecat  the service's own _process_messages(), with _get_websocket() returning an
            async iterator over the frames, and the frames' context registered with
            create_audio_context() so every frame is taken (audio_context_available).
            What the loop hands on, append_to_audio_context() (TTSAudioRawFrame,
            WordTimestamp, TTSStoppedFrame into the context's queue), is pipecat's code,
            the same for both services, and inside the timed region; the queue is
            drained and checked after it.
   livekit  a real tts.stream(): push_text(text), end_input(), every SynthesizedAudio
            event iterated, on the plugin's own connection pool, whose socket is a fake:
            send_str() records the requests (checked to be the recording's sentences)
            and, at the last one (continue: false), queues the recording's frames with
            the context id rewritten to the stream's, which receive(timeout=...) returns
            as aiohttp.WSMessage(TEXT, frame, None). The rewriting is timed apart and
            subtracted. The rest of a stream (sentence tokenizer, requests, LiveKit's
            AudioEmitter re-framing the audio into 200 ms frames, the event channel) is
            inside the timed region and the same for both plugins.

   Measured: time.process_time() from the start of the loop (the stream's creation for
   LiveKit) to its end, / chunk frames.

2. END TO END. The emulator in a child process (an Emulator per chunk size, this script
   with --serve, so its CPU is not counted), each service on a socket it keeps open,
   speaking the text once per run. pipecat: a running pipeline (the service, then a
   processor noting its audio), the text queued as an LLM reply (LLMFullResponseStartFrame,
   LLMTextFrame, LLMFullResponseEndFrame: pipecat's aggregator sends it sentence by
   sentence), timed to the TTSStoppedFrame. LiveKit: a new stream per run on the pooled
   socket. Both are checked to send the recording's requests and get its audio.
   Measured: CPU of this (the client) process per chunk (process_time over the utterance
   / chunk frames), and the first audio: wall time from queueing the reply / creating the
   stream to the first TTSAudioRawFrame / SynthesizedAudio event (LiveKit's first event
   is its emitter's first 200 ms frame: 10 chunks of 20 ms, 2 of 100 ms). Mostly the
   emulator rendering the first sentence, and the same work for stock and drop-in.

   --pace fast (the default): the emulator sends each frame as soon as it is rendered, so
   a client slower than the emulator finds several frames per wake-up of its event loop,
   and a faster one fewer: the client CPU per chunk depends on the batching as well as on
   the work per frame. --pace 20 (20x real time; 3 s per run of the full text, so give
   fewer --e2e-rounds) makes every frame a wake-up of its own, as at Cartesia's pace.

The frameworks' imports leave some 160,000 objects behind; they are frozen
(gc.freeze()) before measuring, so the gc.collect() before each run is cheap and no run
pays for a full collection of the imports.

Usage: python benchmarks/bench_frameworks.py [--quick] [--json] [--rounds N]
       [--e2e-rounds N] [--chunk-ms 20,100] [--only receive|e2e]
       [--frameworks pipecat,livekit] [--pace fast|FACTOR]
About 1 min (--quick 15 s) on 2 vCPUs. Needs websockets and numpy (the emulator); a
framework that is not installed is skipped with a note. Meant for the compiled core
(the header prints flushsink's BACKEND).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import logging
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (pins OPENBLAS_NUM_THREADS before numpy loads)

RATE = 24000
VOICE = "bench-voice"
OUTPUT_FORMAT = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": RATE}
CHUNK_MS = "20,100"
# Sentences long enough that LiveKit's sentence tokenizer (blingfire, which joins short
# ones) and pipecat's text aggregator both send each as a request of its own
TEXT = (
    "Every morning the harbour wakes up well before the rest of the town does. "
    "The gulls argue loudly over the first fishing boats coming in past the lighthouse. "
    "By nine o'clock the market square is crowded with traders calling out their prices. "
    "Somebody always complains about the weather, and somebody else always agrees with them. "
    "Around noon the streets go quiet while the heat settles over the old stone houses. "
    "In the afternoon the children run down to the beach as soon as school lets them out. "
    "The fishermen mend their nets in the shade and talk about the catch of the season. "
    "When evening comes the cafes fill up and the lights come on along the waterfront. "
    "Late at night only the sound of the waves remains, patient and steady against the pier. "
    "Then the whole thing begins again, a little different every single day of the year."
)
QUICK_SENTENCES = 4
ROUNDS, QUICK_ROUNDS = 21, 9  # receive path
E2E_ROUNDS, QUICK_E2E_ROUNDS = 15, 5
# The recorded frames' context id: as long as LiveKit's shortuuid(), replaced per stream
CONTEXT_ID = "bench0000000"
# No retries: a failed attempt must fail the run, not be timed twice
LIVEKIT_CONNECT = dict(max_retry=0, timeout=30.0)
PACKAGES = ("pipecat-ai", "livekit-agents", "livekit-plugins-cartesia", "aiohttp",
            "websockets", "numpy")

notes: list[str] = []


def sentences_of(text: str) -> list[str]:
    return [s.strip() for s in re.findall(r"[^.!?]+[.!?]", text)]


# --- the frames -----------------------------------------------------------------------------

class Recording(NamedTuple):
    """What the emulator sent for the text, one `str` per frame, and what it holds."""
    chunk_ms: int
    sentences: list[str]
    frames: list[str]
    chunks: int  # chunk frames: the divisor of every number per chunk
    pcm: bytes  # the audio of the chunks, in order

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for frame in self.frames:
            kind = json.loads(frame)["type"]
            kinds[kind] = kinds.get(kind, 0) + 1
        return (f"{self.chunk_ms} ms: {len(self.pcm) / (2 * RATE):.1f} s of audio, "
                + ", ".join(f"{n} {kind}" for kind, n in kinds.items())
                + f", {sum(map(len, self.frames)) / 1e6:.2f} MB")


async def record(chunk_ms: int, sentences: list[str]) -> Recording:
    """The frames the emulator answers with when the text comes one sentence per request,
    as LiveKit's plugin sends it (transcript = sentence + " ", then " " to end)."""
    import websockets

    from flushsink import AudioFormat
    from flushsink.emulator import Emulator, render

    requests = [(s + " ", True) for s in sentences] + [(" ", False)]
    frames: list[str] = []
    async with Emulator(chunk_ms=chunk_ms) as emu:
        async with websockets.connect(emu.ws_url, compression=None, max_size=2**24) as ws:
            for transcript, more in requests:
                await ws.send(json.dumps({
                    "context_id": CONTEXT_ID, "model_id": "sonic-3", "transcript": transcript,
                    "voice": {"mode": "id", "id": VOICE}, "output_format": OUTPUT_FORMAT,
                    "add_timestamps": True, "max_buffer_delay_ms": 0, "continue": more}))
            while not frames or json.loads(frames[-1])["type"] not in ("done", "error"):
                frames.append(await ws.recv())
    messages = [json.loads(f) for f in frames]
    assert messages[-1]["type"] == "done", messages[-1]
    pcm = b"".join(base64.b64decode(m["data"]) for m in messages if m["type"] == "chunk")
    fmt = AudioFormat("pcm_s16le", RATE)
    assert pcm == b"".join(render(s, VOICE, fmt) for s in sentences), "recording != render()"
    chunks = sum(m["type"] == "chunk" for m in messages)
    return Recording(chunk_ms, sentences, frames, chunks, pcm)


# --- the frameworks -------------------------------------------------------------------------

class Service(NamedTuple):
    framework: str  # "pipecat" or "livekit"
    name: str  # "stock" or "flushsink"
    cls: type


def load_services(wanted: list[str]) -> list[Service]:
    """The services of the frameworks that import, quiet; a note for each that does not."""
    services: list[Service] = []
    if "pipecat" in wanted:
        try:
            from loguru import logger

            logger.remove()  # pipecat logs at import, and every frame it queues at DEBUG
            from pipecat.services.cartesia.tts import CartesiaTTSService as Stock

            from flushsink.integrations.pipecat import CartesiaTTSService as DropIn
        except ImportError as e:
            notes.append(f"pipecat skipped, not importable ({e}): pip install 'flushsink[pipecat]'")
        else:
            services += [Service("pipecat", "stock", Stock),
                         Service("pipecat", "flushsink", DropIn)]
    if "livekit" in wanted:
        try:
            from livekit.plugins.cartesia import TTS as Stock

            from flushsink.integrations.livekit import TTS as DropIn
        except ImportError as e:
            notes.append(f"livekit skipped, not importable ({e}): pip install 'flushsink[livekit]'")
        else:
            logging.getLogger("livekit").setLevel(logging.CRITICAL)
            services += [Service("livekit", "stock", Stock),
                         Service("livekit", "flushsink", DropIn)]
    return services


class Run(NamedTuple):
    cpu: float  # seconds of process CPU in the timed region
    wall: float  # seconds
    first_audio: float | None = None  # seconds from the request to the first audio out


class _Clock:
    def __enter__(self) -> "_Clock":
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0


# Each subject below runs one utterance per run() and returns (Run, what came out);
# check() raises AssertionError if what came out is not the recording's audio.

# --- 1. receive path: pipecat ----------------------------------------------------------------

async def _replay(frames: list[str]):
    """What `async for message in websocket` gives: the frames, as `str`."""
    for frame in frames:
        yield frame


class PipecatReceive:
    """A pipecat service (no pipeline) whose receive loop reads the recording."""

    def __init__(self, cls: type, recording: Recording) -> None:
        self.recording = recording
        self.label = f"pipecat {cls.__module__}, receive path, {recording.chunk_ms} ms"
        self.service = cls(api_key="bench", url="ws://127.0.0.1:9/tts/websocket",
                           sample_rate=RATE, settings=cls.Settings(voice=VOICE))
        self.service._sample_rate = RATE  # what setup() takes from the pipeline
        self.service._get_websocket = lambda: _replay(recording.frames)
        if hasattr(self.service, "_new_sink"):  # the drop-in: its Sink, not the stock loop
            assert self.service._new_sink() is not None, f"{self.label}: no Sink"

    async def run(self) -> tuple[Run, list[Any]]:
        service, contexts = self.service, self.service._audio_context_manager
        await service.create_audio_context(CONTEXT_ID)
        gc.collect()
        with _Clock() as clock:
            await service._process_messages()
        queue = contexts._contexts[CONTEXT_ID]
        items = [queue.get_nowait() for _ in range(queue.qsize())]
        contexts.remove(CONTEXT_ID)
        contexts.reset()  # drops the context's turn in the playback queue (no player here)
        return Run(clock.cpu, clock.wall), items

    def check(self, items: list[Any]) -> None:
        from pipecat.frames.frames import TTSAudioRawFrame, TTSStoppedFrame

        audio = [i for i in items if isinstance(i, TTSAudioRawFrame)]
        words = [i for i in items if type(i).__name__ == "WordTimestamp"]
        assert len(audio) == self.recording.chunks, f"{self.label}: {len(audio)} audio frames"
        assert b"".join(f.audio for f in audio) == self.recording.pcm, f"{self.label}: audio"
        assert len(words) == len(self.recording.text.split()), f"{self.label}: {len(words)} words"
        assert isinstance(items[-2], TTSStoppedFrame) and items[-1] is None, f"{self.label}: end"


# --- 1. receive path: LiveKit ------------------------------------------------------------------

class _ReplaySocket:
    """The aiohttp websocket the plugin's pool hands out, in memory. send_str() records
    the requests; at the last one (continue: false) the recording's frames, rewritten
    for its context id, become aiohttp messages that receive() returns one by one
    (waiting only while there are none, as a socket would)."""

    def __init__(self, frames: list[str]) -> None:
        import aiohttp

        self._text, self._message = aiohttp.WSMsgType.TEXT, aiohttp.WSMessage
        self._frames = frames
        self._pending: deque = deque()
        self._arrived = asyncio.Event()
        self.requests: list[dict[str, Any]] = []
        self.rewrite_cpu = 0.0  # CPU spent making the messages: not the plugin's
        self.closed, self.close_code = False, None

    async def send_str(self, data: str) -> None:
        request = json.loads(data)
        self.requests.append(request)
        if request.get("continue"):
            return
        start = time.process_time()
        cid, text, message = request["context_id"], self._text, self._message
        self._pending.extend(message(text, f.replace(CONTEXT_ID, cid, 1), None)
                             for f in self._frames)
        self.rewrite_cpu += time.process_time() - start
        self._arrived.set()

    async def receive(self, timeout: float | None = None) -> Any:
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        return self._pending.popleft()

    async def close(self, **kwargs: Any) -> bool:
        self.closed = True
        return True


class LivekitReceive:
    """A LiveKit TTS whose pooled socket is a _ReplaySocket of the recording."""

    def __init__(self, cls: type, recording: Recording) -> None:
        self.recording = recording
        self.label = f"livekit {cls.__module__}, receive path, {recording.chunk_ms} ms"
        self.socket = socket = _ReplaySocket(recording.frames)

        class Replaying(cls):
            async def _connect_ws(self, timeout: float) -> Any:
                return socket

        self.tts = Replaying(api_key="bench", base_url="ws://127.0.0.1:9", voice=VOICE,
                             sample_rate=RATE)

    async def run(self) -> tuple[Run, list[Any]]:
        from livekit.agents import APIConnectOptions

        options = APIConnectOptions(**LIVEKIT_CONNECT)
        self.socket.requests.clear()
        self.socket.rewrite_cpu = 0.0
        gc.collect()
        with _Clock() as clock:
            stream = self.tts.stream(conn_options=options)
            stream.push_text(self.recording.text)
            stream.end_input()
            events = [event async for event in stream]
            await stream.aclose()
        return Run(clock.cpu - self.socket.rewrite_cpu, clock.wall), events

    def check(self, events: list[Any]) -> None:
        sent = [r["transcript"] for r in self.socket.requests]
        want = [s + " " for s in self.recording.sentences] + [" "]
        assert sent == want, f"{self.label}: sent {sent!r}, the recording has {want!r}"
        audio = b"".join(bytes(e.frame.data) for e in events)
        assert audio == self.recording.pcm, f"{self.label}: {len(audio)} bytes of audio"
        assert events[-1].is_final, f"{self.label}: no final frame"

    async def close(self) -> None:
        await self.tts.aclose()


# --- 2. end to end ------------------------------------------------------------------------------

def pace_arg(text: str) -> str:
    """--pace: "fast" or a positive speed factor (kept as text for the child's argv)."""
    if text != "fast" and not float(text) > 0:
        raise ValueError(text)
    return text


def serve(chunk_sizes: list[int], pace: str) -> None:
    """The child process: an emulator per chunk size, until the parent goes."""
    from flushsink.emulator import Emulator

    _common.exit_when_parent_goes()

    async def main() -> None:
        emulators = [Emulator(chunk_ms=ms, idle_timeout=None, record_messages=False,
                              pace=pace if pace == "fast" else float(pace))
                     for ms in chunk_sizes]
        for emu in emulators:
            await emu.start()
        print("PORTS", " ".join(f"{ms}={emu.port}" for ms, emu in zip(chunk_sizes, emulators)),
              flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


class PipecatLive:
    """A running pipeline, the service then a processor noting its audio, on a socket to
    the emulator; each run is one LLM reply of the text."""

    def __init__(self, cls: type, port: int, recording: Recording) -> None:
        from pipecat.frames.frames import TTSAudioRawFrame, TTSStoppedFrame
        from pipecat.processors.frame_processor import FrameProcessor

        self.recording = recording
        self.label = f"pipecat {cls.__module__}, end to end, {recording.chunk_ms} ms"
        self.audio: list[bytes] = []
        self.first_audio: float | None = None
        self.stopped = asyncio.Event()
        live = self

        class Listener(FrameProcessor):
            async def process_frame(self, frame: Any, direction: Any) -> None:
                await super().process_frame(frame, direction)
                if isinstance(frame, TTSAudioRawFrame):
                    if live.first_audio is None:
                        live.first_audio = time.perf_counter()
                    live.audio.append(frame.audio)
                elif isinstance(frame, TTSStoppedFrame):
                    live.stopped.set()
                await self.push_frame(frame, direction)

        self.service = cls(api_key="bench", url=f"ws://127.0.0.1:{port}/tts/websocket",
                           sample_rate=RATE, settings=cls.Settings(voice=VOICE))
        self.listener = Listener()

    async def start(self) -> None:
        from pipecat.pipeline.pipeline import Pipeline
        from pipecat.pipeline.worker import PipelineParams, PipelineWorker
        from pipecat.workers.runner import WorkerRunner

        self.worker = PipelineWorker(Pipeline([self.service, self.listener]),
                                     cancel_on_idle_timeout=False, params=PipelineParams())
        started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")
        async def _started(worker: Any, frame: Any) -> None:
            started.set()

        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(self.worker)
        self.runner_task = asyncio.create_task(runner.run())
        await asyncio.wait_for(started.wait(), 30)

    async def run(self) -> tuple[Run, list[bytes]]:
        from pipecat.frames.frames import (
            LLMFullResponseEndFrame,
            LLMFullResponseStartFrame,
            LLMTextFrame,
        )

        self.audio, self.first_audio = [], None
        self.stopped.clear()
        gc.collect()
        with _Clock() as clock:
            for frame in (LLMFullResponseStartFrame(), LLMTextFrame(self.recording.text),
                          LLMFullResponseEndFrame()):
                await self.worker.queue_frame(frame)
            await asyncio.wait_for(self.stopped.wait(), 60)
        first = None if self.first_audio is None else self.first_audio - clock.wall0
        return Run(clock.cpu, clock.wall, first), self.audio

    def check(self, audio: list[bytes]) -> None:
        # one TTSAudioRawFrame per chunk frame: the emulator sent the recording's chunks
        assert len(audio) == self.recording.chunks, f"{self.label}: {len(audio)} audio frames"
        assert b"".join(audio) == self.recording.pcm, f"{self.label}: audio differs"

    async def close(self) -> None:
        from pipecat.frames.frames import EndFrame

        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self.runner_task, 30)


class LivekitLive:
    """A LiveKit TTS on the emulator: a stream per run on its pooled socket."""

    def __init__(self, cls: type, port: int, recording: Recording) -> None:
        self.cls, self.port, self.recording = cls, port, recording
        self.label = f"livekit {cls.__module__}, end to end, {recording.chunk_ms} ms"

    async def start(self) -> None:
        import aiohttp

        sent = self.sent = []

        class Noting(self.cls):
            """Notes the transcripts it sends (ten calls a run), for the check."""

            async def _connect_ws(self, timeout: float) -> Any:
                ws = await super()._connect_ws(timeout)
                send_str = ws.send_str

                async def noting(data: str, *args: Any, **kwargs: Any) -> None:
                    sent.append(json.loads(data)["transcript"])
                    await send_str(data, *args, **kwargs)

                ws.send_str = noting
                return ws

        self.http = aiohttp.ClientSession()
        self.tts = Noting(api_key="bench", base_url=f"ws://127.0.0.1:{self.port}",
                          voice=VOICE, sample_rate=RATE, http_session=self.http)

    async def run(self) -> tuple[Run, bytes]:
        from livekit.agents import APIConnectOptions

        options = APIConnectOptions(**LIVEKIT_CONNECT)
        first, events = None, []
        self.sent.clear()
        gc.collect()
        with _Clock() as clock:
            stream = self.tts.stream(conn_options=options)
            stream.push_text(self.recording.text)
            stream.end_input()
            async for event in stream:
                if first is None:
                    first = time.perf_counter() - clock.wall0
                events.append(event)
            await stream.aclose()
        return Run(clock.cpu, clock.wall, first), b"".join(bytes(e.frame.data) for e in events)

    def check(self, audio: bytes) -> None:
        # LiveKit re-frames the audio, so its chunks are not counted here: the same
        # requests as the recording's get the recording's chunks
        want = [s + " " for s in self.recording.sentences] + [" "]
        assert self.sent == want, f"{self.label}: sent {self.sent!r}, the recording has {want!r}"
        assert audio == self.recording.pcm, f"{self.label}: {len(audio)} bytes of audio"

    async def close(self) -> None:
        await self.tts.aclose()
        await self.http.close()


# --- the rounds ---------------------------------------------------------------------------------

Key = tuple[str, str, int]  # (framework, service name, chunk ms)


async def alternate(subjects: dict[Key, Any], rounds: int, log: Callable[[str], None],
                    what: str) -> dict[Key, list[Run]]:
    """A checked warm-up run of each subject, then `rounds` rounds of one checked run
    each, the order rotating from round to round."""
    for subject in subjects.values():
        subject.check((await subject.run())[1])
    log(f"{what}: {len(subjects)} services checked; measuring {rounds} rounds")
    results: dict[Key, list[Run]] = {key: [] for key in subjects}
    keys = list(subjects)
    for r in range(rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            run, out = await subjects[key].run()
            subjects[key].check(out)
            results[key].append(run)
    return results


async def measure_receive(services: list[Service], recordings: dict[int, Recording],
                          rounds: int, log: Callable[[str], None]) -> dict[Key, list[Run]]:
    subjects: dict[Key, Any] = {}
    for ms, recording in recordings.items():
        for s in services:
            make = PipecatReceive if s.framework == "pipecat" else LivekitReceive
            subjects[(s.framework, s.name, ms)] = make(s.cls, recording)
    results = await alternate(subjects, rounds, log, "receive path")
    for subject in subjects.values():
        if isinstance(subject, LivekitReceive):
            await subject.close()
    return results


async def measure_e2e(services: list[Service], recordings: dict[int, Recording],
                      ports: dict[int, int], rounds: int,
                      log: Callable[[str], None]) -> dict[Key, list[Run]]:
    results: dict[Key, list[Run]] = {}
    for ms, recording in recordings.items():  # one chunk size at a time
        subjects: dict[Key, Any] = {}
        for s in services:
            make = PipecatLive if s.framework == "pipecat" else LivekitLive
            subjects[(s.framework, s.name, ms)] = make(s.cls, ports[ms], recording)
        for subject in subjects.values():
            await subject.start()
        try:
            results.update(await alternate(subjects, rounds, log, f"end to end, {ms} ms"))
        finally:
            for subject in subjects.values():
                await subject.close()
    return results


# --- report ---------------------------------------------------------------------------------------

def summarize(results: dict[Key, list[Run]], recordings: dict[int, Recording]) -> dict[str, Any]:
    """framework -> "<ms> ms" -> each service's CPU us per chunk (median, spread), wall
    and first audio (medians), then stock / flushsink and the difference per chunk."""
    table: dict[str, Any] = {}
    for (framework, name, ms), runs in results.items():
        chunks = recordings[ms].chunks
        cpus = [run.cpu for run in runs]
        cell: dict[str, Any] = {
            "cpu_us_per_chunk": round(_common.median(cpus) / chunks * 1e6, 2),
            "spread": _common.spread(cpus),
            "wall_ms": round(_common.median([run.wall for run in runs]) * 1e3, 1),
        }
        firsts = [run.first_audio for run in runs if run.first_audio is not None]
        if firsts:
            cell["first_audio_ms"] = round(_common.median(firsts) * 1e3, 2)
            cell["first_audio_spread"] = _common.spread(firsts)
        table.setdefault(framework, {}).setdefault(f"{ms} ms", {"chunks": chunks})[name] = cell
    for sizes in table.values():
        for cells in sizes.values():
            if "stock" in cells and "flushsink" in cells:
                stock = cells["stock"]["cpu_us_per_chunk"]
                ours = cells["flushsink"]["cpu_us_per_chunk"]
                cells["stock / flushsink"] = round(stock / ours, 2)
                cells["saved_us_per_chunk"] = round(stock - ours, 2)
    return table


def print_table(title: str, table: dict[str, Any], first_audio: bool) -> None:
    print(title)
    sizes = sorted({size for cells in table.values() for size in cells},
                   key=lambda size: int(size.split()[0]))
    chunks = {size: cells[size]["chunks"] for cells in table.values() for size in cells}
    head = f"{'':<28}" + "".join(f"{f'{size} ({chunks[size]} chunks)':>26}" for size in sizes)
    print(head)
    print("-" * len(head))

    def row(framework: str, label: str, cell: Callable[[dict[str, Any]], str | None]) -> None:
        """One line: `cell` makes the text of a chunk size's cells (None: nothing there)."""
        texts = [cell(table[framework].get(size, {})) for size in sizes]
        if any(texts):
            print(f"{framework + ' ' + label:<28}" + "".join(f"{t or '-':>26}" for t in texts))

    for framework in table:
        for name in ("stock", "flushsink"):
            row(framework, f"{name}, us/chunk", lambda c: (
                f"{c[name]['cpu_us_per_chunk']:.2f} {c[name]['spread']:>9}" if name in c else None))
        row(framework, "stock / flushsink", lambda c: (
            f"{c['stock / flushsink']:.2f}x{'':>10}" if "stock / flushsink" in c else None))
        row(framework, "saved, us/chunk", lambda c: (
            f"{c['saved_us_per_chunk']:.2f}{'':>10}" if "saved_us_per_chunk" in c else None))
    if first_audio:
        print("first audio, ms (median; min/max vs median)")
        for framework in table:
            for name in ("stock", "flushsink"):
                row(framework, name, lambda c: (
                    f"{c[name]['first_audio_ms']:.2f} {c[name]['first_audio_spread']:>9}"
                    if "first_audio_ms" in c.get(name, {}) else None))
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int,
                        help=f"receive-path rounds (default {ROUNDS}, --quick {QUICK_ROUNDS})")
    parser.add_argument("--e2e-rounds", type=int, help=f"end-to-end rounds (default "
                        f"{E2E_ROUNDS}, --quick {QUICK_E2E_ROUNDS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"the first {QUICK_SENTENCES} sentences, fewer rounds")
    parser.add_argument("--pace", default="fast", type=pace_arg,
                        help="the emulator's pace end to end: fast (default: as fast as it "
                             "renders) or a speed factor (20: 20x real time)")
    parser.add_argument("--chunk-ms", default=CHUNK_MS, help="default %(default)s")
    parser.add_argument("--only", choices=("receive", "e2e"), help="one of the two measurements")
    parser.add_argument("--frameworks", default="pipecat,livekit", help="default %(default)s")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve([int(ms) for ms in args.serve.split(",")], args.pace)
        return
    started = time.perf_counter()
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    e2e_rounds = args.e2e_rounds or (QUICK_E2E_ROUNDS if args.quick else E2E_ROUNDS)
    sizes = [int(ms) for ms in args.chunk_ms.split(",")]
    sentences = sentences_of(TEXT)[:QUICK_SENTENCES] if args.quick else sentences_of(TEXT)

    import flushsink

    services = load_services([f.strip() for f in args.frameworks.split(",")])
    env = _common.environment({
        "backend": f"flushsink.BACKEND == {flushsink.BACKEND!r}",
        "clock": "time.process_time of this process (all threads, user+sys)",
        "emulator": "end to end: a child process, pace " + (
            "fast (each frame sent as soon as rendered)" if args.pace == "fast"
            else f"{args.pace}x real time"),
    })
    env["packages"] = ", ".join(f"{k} {v}" for k, v in _common.package_versions(PACKAGES).items())
    if flushsink.BACKEND != "compiled":
        notes.append(f"flushsink's core is {flushsink.BACKEND!r}, not the compiled one: "
                     "build it (pip install -e .) or put the in-tree build on PYTHONPATH")
    recordings = {ms: asyncio.run(record(ms, sentences)) for ms in sizes}
    env["frames"] = "; ".join(r.describe() for r in recordings.values())
    gc.collect()
    gc.freeze()  # the imports' objects (see the docstring)

    report: dict[str, Any] = {}
    if services and args.only in (None, "receive"):
        results = asyncio.run(measure_receive(services, recordings, rounds, log))
        report["receive path"] = summarize(results, recordings)
    if services and args.only in (None, "e2e"):
        child = [sys.executable, __file__, "--serve", ",".join(map(str, sizes)),
                 "--pace", args.pace]
        with _common.child_process(child, "PORTS ") as (_, line):
            ports = {int(k): int(v) for k, v in (item.split("=") for item in line.split())}
            results = asyncio.run(measure_e2e(services, recordings, ports, e2e_rounds, log))
        report["end to end"] = summarize(results, recordings)
    elapsed = time.perf_counter() - started

    if args.json:
        counts = {"receive path": rounds, "end to end": e2e_rounds}
        json.dump({"environment": env, "rounds": {k: n for k, n in counts.items() if k in report},
                   "unit": "process CPU us per chunk frame", "results": report,
                   "seconds": round(elapsed, 1), "notes": notes}, sys.stdout, indent=2)
        print()
        return
    _common.print_environment(env)
    if "receive path" in report:
        print_table("RECEIVE PATH: the recorded frames through each service's receive loop, in "
                    f"memory; process CPU us per chunk, median of {rounds} rounds (min/max vs "
                    "median)", report["receive path"], first_audio=False)
    if "end to end" in report:
        print_table("END TO END: the emulator in a child process, the text spoken once per run; "
                    f"client process CPU us per chunk, median of {e2e_rounds} rounds (min/max vs "
                    "median)", report["end to end"], first_audio=True)
    for note in notes:
        print(f"note: {note}")
    print(f"({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
