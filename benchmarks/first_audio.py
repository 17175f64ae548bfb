#!/usr/bin/env python3
"""First-audio latency of flushsink's streaming clients against the emulator, next to a
bare websockets loop on the same server.

The emulator runs in a child process (``python -m flushsink serve --port 0``), in real
time or as fast as it goes (``--pace``). Each client opens one connection and speaks N
short texts one after another, one context each, reading ``audio()``; the latency of a
context is ``ctx.first_audio_s``: from its first request to its first AudioChunk. The
bare loop (websockets ``recv()``, nothing parsed but the frame's type) measures the same
span for the same requests, so the difference is what the client adds. The emulator
renders a text's first segment before sending its first chunk, so part of every number is
the server's.

Usage: python benchmarks/first_audio.py [--contexts N] [--pace fast|realtime] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402  (pins OPENBLAS_NUM_THREADS before numpy loads)

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
FORMAT = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000}
TEXTS = ["Hello there.", "How can I help you today?", "One moment, please.",
         "Your table is booked for eight."]


def text(i: int) -> str:
    return TEXTS[i % len(TEXTS)]


async def bare(url: str, n: int) -> list[float]:
    from websockets.asyncio.client import connect

    spans = []
    async with connect(url + "/tts/websocket", compression=None) as ws:
        for i in range(n):
            context_id = str(uuid.uuid4())
            request = json.dumps({"context_id": context_id, "model_id": "sonic-latest",
                                  "transcript": text(i), "voice": {"mode": "id", "id": VOICE},
                                  "output_format": FORMAT, "continue": False})
            sent = time.monotonic()
            await ws.send(request)
            first = None
            while True:
                frame = await ws.recv()
                if first is None and '"type": "chunk"' in frame:
                    first = time.monotonic() - sent
                if '"type": "done"' in frame:
                    break
            spans.append(first)
    return spans


async def flushsink_async(url: str, n: int) -> list[float]:
    import flushsink

    spans = []
    async with flushsink.connect(url, api_key="bench", stream=True) as tts:
        await tts.connect()
        for i in range(n):
            ctx = tts.context(voice=VOICE, output_format=FORMAT)
            await ctx.push(text(i))
            await ctx.no_more_inputs()
            async for _ in ctx.audio():
                pass
            spans.append(ctx.first_audio_s)
    return spans


def flushsink_sync(url: str, n: int) -> list[float]:
    import flushsink.sync

    spans = []
    with flushsink.sync.connect(url, api_key="bench", stream=True) as tts:
        tts.connect()
        for i in range(n):
            ctx = tts.context(voice=VOICE, output_format=FORMAT)
            ctx.push(text(i))
            ctx.no_more_inputs()
            for _ in ctx.audio():
                pass
            spans.append(ctx.first_audio_s)
    return spans


def summary(spans: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in spans)
    return {"median_ms": round(statistics.median(ms), 2),
            "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 2), "max_ms": round(ms[-1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=40)
    parser.add_argument("--pace", default="realtime")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "flushsink", "serve", "--port", "0",
                               "--pace", args.pace], stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"ws://[^/\s]+", server.stdout.readline()).group(0)
        # alternate, so that a drift of the shared machine hits every client alike
        runs = {"websockets recv (bare)": lambda: asyncio.run(bare(url, args.contexts)),
                "flushsink asyncio, audio()": lambda: asyncio.run(flushsink_async(url, args.contexts)),
                "flushsink sync, audio()": lambda: flushsink_sync(url, args.contexts)}
        spans: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(2):
            for name, run in runs.items():
                spans[name] += run()
        results = {name: summary(values) for name, values in spans.items()}
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()
    if args.json:
        print(json.dumps({"env": _common.environment(), "pace": args.pace,
                          "contexts": 2 * args.contexts, "results": results}, indent=2))
        return
    print(f"first audio, emulator pace {args.pace}, {2 * args.contexts} contexts per client, "
          f"{_common.cpu_description()}")
    print(f"{'':32} {'median':>9} {'p90':>9} {'max':>9}")
    for name, cell in results.items():
        print(f"{name:32} {cell['median_ms']:>7.2f}ms {cell['p90_ms']:>7.2f}ms "
              f"{cell['max_ms']:>7.2f}ms")


if __name__ == "__main__":
    main()
