"""The seed scenario with the asyncio client: two flush segments, two WAV files.

Against the embedded emulator, then against Cartesia (with CARTESIA_API_KEY set):

    python examples/seed_async.py
    python examples/seed_async.py --url wss://api.cartesia.ai/tts/websocket

"Stay hungry, " is pushed and flushed, so it becomes a segment of its own; "stay foolish."
follows and ``no_more_inputs`` ends the context. flushsink writes each segment to
OUT/<context_id>/<flush_id>.wav the moment the server finishes it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import flushsink
from flushsink.emulator import Emulator

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
OUTPUT_FORMAT = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 44100}


async def speak(url: str, out: str) -> None:
    # The API key comes from CARTESIA_API_KEY (or api_key=...); the emulator needs none.
    async with flushsink.connect(url, writer=flushsink.FileWriter(out)) as tts:
        ctx = tts.context(model_id="sonic-latest", voice={"mode": "id", "id": VOICE},
                          output_format=OUTPUT_FORMAT, language="en")
        await ctx.push("Stay hungry, ")
        await ctx.flush()  # ends the first segment: the server answers with flush_done
        await ctx.push("stay foolish.")
        await ctx.no_more_inputs()  # the last segment ends with the context's done
        # Segments arrive in order, already written; a server error or a dropped
        # connection raises here (ContextFailed, ConnectionLost).
        async for segment in ctx.segments():
            print(f"flush {segment.flush_id}: {segment.duration:.2f} s -> {segment.path}")


async def main(url: str | None, out: str) -> None:
    if url is not None:
        await speak(url, out)
        return
    async with Emulator() as emu:  # a local Cartesia look-alike on 127.0.0.1
        print(f"no --url: using the embedded emulator at {emu.ws_url}", file=sys.stderr)
        await speak(emu.url, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The seed scenario with the asyncio client.")
    parser.add_argument("--url", help="TTS websocket URL (default: start the embedded emulator)")
    parser.add_argument("--out", default="out", help="output directory (default: %(default)s)")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.out))
