"""The seed scenario on a websocket loop of your own, with flushsink only as the receiver.

Against the embedded emulator, then against Cartesia (with CARTESIA_API_KEY set):

    python examples/seed_own_loop.py
    python examples/seed_own_loop.py --url wss://api.cartesia.ai/tts/websocket

This is what a pipecat or LiveKit TTS service does: it owns the connection and sends the
requests; flushsink replaces the json.loads + base64.b64decode + "append and write a file
on flush_done" part. Every received frame goes to ``Sink.feed`` as bytes, and the events
it returns say when a segment is finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import flushsink
from flushsink.emulator import Emulator

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
FORMAT = flushsink.AudioFormat("pcm_s16le", 44100)


async def speak(url: str, out: str) -> None:
    sink = flushsink.Sink(FORMAT)  # the format the requests below ask for
    writer = flushsink.FileWriter(out)
    context_id = str(uuid.uuid4())
    request = {"context_id": context_id, "model_id": "sonic-latest",
               "voice": {"mode": "id", "id": VOICE},
               "output_format": FORMAT.to_output_format(), "language": "en"}
    headers = {"Cartesia-Version": "2025-11-04"}
    if os.environ.get("CARTESIA_API_KEY"):  # the emulator accepts a missing key
        headers["X-API-Key"] = os.environ["CARTESIA_API_KEY"]

    async with connect(url, additional_headers=headers) as ws:
        # "flush": true closes the first segment; "continue": false ends the context.
        await ws.send(json.dumps({**request, "transcript": "Stay hungry, ", "continue": True}))
        await ws.send(json.dumps({**request, "transcript": "", "continue": True, "flush": True}))
        await ws.send(json.dumps({**request, "transcript": "stay foolish.", "continue": True}))
        await ws.send(json.dumps({**request, "transcript": "", "continue": False}))
        try:
            while True:
                # decode=False: the frame stays bytes, which the Sink scans without
                # building a str (and validates as UTF-8 itself).
                frame = await ws.recv(decode=False)
                # An audio chunk returns () and is decoded straight into its segment;
                # a malformed frame raises FrameError and changes nothing.
                for event in sink.feed(frame):
                    if isinstance(event, flushsink.SegmentReady):
                        segment = event.segment
                        writer(event)  # atomic: OUT/<context_id>/<flush_id>.wav
                        print(f"flush {segment.flush_id}: {segment.duration:.2f} s "
                              f"-> {segment.path}")
                    elif isinstance(event, flushsink.ContextDone):
                        return
                    elif isinstance(event, (flushsink.ContextError, flushsink.ServerError)):
                        raise SystemExit(f"server error: {event.message}")
        except ConnectionClosed:
            # Keep what arrived: open segments are finished as incomplete and written
            # as NAME.partial.wav.
            for ready in sink.close("connection closed"):
                writer(ready)
            raise


async def main(url: str | None, out: str) -> None:
    if url is not None:
        await speak(url, out)
        return
    async with Emulator() as emu:  # a local Cartesia look-alike on 127.0.0.1
        print(f"no --url: using the embedded emulator at {emu.ws_url}", file=sys.stderr)
        await speak(emu.ws_url, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The seed scenario on your own websocket loop.")
    parser.add_argument("--url", help="TTS websocket URL, with its path (default: start the "
                                      "embedded emulator)")
    parser.add_argument("--out", default="out", help="output directory (default: %(default)s)")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.out))
