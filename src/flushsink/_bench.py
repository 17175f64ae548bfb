"""``flushsink bench``: a quick, self-contained comparison of the Sink with the loop
people write by hand. The full benchmark with every baseline is benchmarks/bench_sink.py."""

from __future__ import annotations

import base64
import json
import statistics
import time
from typing import Callable, cast

import numpy as np

from ._accel import BACKEND, SIMD, Sink
from .formats import AudioFormat
from .segments import SegmentReady


def segment_frames(seconds: float, chunk_ms: float, sample_rate: int,
                   context_id: str = "bench") -> tuple[list[bytes], bytes]:
    """Chunk frames of one s16le segment ending in flush_done, and its PCM."""
    rng = np.random.default_rng(7)
    pcm = rng.integers(-3000, 3000, int(seconds * sample_rate), dtype="<i2").tobytes()
    step = int(sample_rate * chunk_ms / 1000) * 2
    frames = [json.dumps({"type": "chunk", "context_id": context_id, "status_code": 206,
                          "done": False, "step_time": 41.7, "flush_id": 1,
                          "data": base64.b64encode(pcm[i:i + step]).decode()}).encode()
              for i in range(0, len(pcm), step)]
    frames.append(json.dumps({"type": "flush_done", "context_id": context_id,
                              "status_code": 206, "done": False, "flush_done": True,
                              "flush_id": 1}).encode())
    return frames, pcm


def _with_sink(frames: list[bytes], sample_rate: int) -> bytes:
    sink = Sink(AudioFormat("pcm_s16le", sample_rate))
    feed = sink.feed
    for frame in frames:
        events = feed(frame)
    return bytes(cast(SegmentReady, events[0]).segment.pcm())


def _stdlib(frames: list[bytes], sample_rate: int) -> bytes:
    audio = bytearray()
    for frame in frames:
        message = json.loads(frame)
        if message["type"] == "chunk":
            audio += base64.b64decode(message["data"])
    return bytes(audio)


def _time(fn: Callable[[list[bytes], int], bytes], frames: list[bytes], rate: int) -> float:
    started = time.perf_counter()
    fn(frames, rate)
    return time.perf_counter() - started


def run_quick_bench(seconds: float = 10.0, chunk_ms: float = 100.0, sample_rate: int = 44100,
                    repeats: int = 15) -> dict[str, float]:
    frames, pcm = segment_frames(seconds, chunk_ms, sample_rate)
    for fn in (_with_sink, _stdlib):
        assert fn(frames, sample_rate) == pcm, fn.__name__
    times: dict[str, list[float]] = {"flushsink": [], "stdlib": []}
    for _ in range(repeats):  # interleaved, so drifts of a shared machine hit both alike
        times["flushsink"].append(_time(_with_sink, frames, sample_rate))
        times["stdlib"].append(_time(_stdlib, frames, sample_rate))
    per_message = {name: statistics.median(t) / len(frames) * 1e9 for name, t in times.items()}
    print(f"flushsink core={BACKEND} simd={SIMD}; {len(frames)} frames of {chunk_ms:g} ms "
          f"at {sample_rate} Hz s16le, median of {repeats}")
    print(f"  flushsink.Sink.feed            {per_message['flushsink']:10.0f} ns/message")
    print(f"  json.loads + base64.b64decode  {per_message['stdlib']:10.0f} ns/message")
    print(f"  ratio                          {per_message['stdlib'] / per_message['flushsink']:10.1f}x")
    return per_message
