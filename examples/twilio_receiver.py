"""Receive a Twilio Media Stream: a websocket server that takes each call's inbound audio
(mu-law, 8 kHz) and writes it to OUT/<streamSid>.wav.

Without --port it calls itself once with flushsink's Twilio sender
(flushsink.emulator.twilio), which says TEXT in the emulator's synthetic voice; with
--port it waits for real calls (point a TwiML ``<Connect><Stream url="wss://...">`` at it,
through a TLS tunnel):

    python examples/twilio_receiver.py
    python examples/twilio_receiver.py --port 8080

The loop in ``receive_call`` reads Twilio's JSON envelope with the standard library (json
and base64). flushsink's Sink does not read Twilio's envelope yet (issue 16, item 1); once
it does, a Sink will replace this loop and decode the payloads in C straight into the
call's segment, as it does for Cartesia's frames.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import sys
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve

from flushsink.emulator import stream_call
from flushsink.formats import AudioFormat, wav_header, wav_padding

MULAW_8K = AudioFormat("pcm_mulaw", 8000)  # the only format a Media Stream carries
TEXT = "Hello, I would like to book a table for two at eight."


async def receive_call(ws: ServerConnection, out: Path) -> Path | None:
    """Read one call until ``stop`` (or the close); write its inbound audio as a WAV file."""
    stream_sid: str | None = None
    audio = bytearray()
    async for raw in ws:
        message = json.loads(raw)
        event = message["event"]
        if event == "start":
            stream_sid = message["start"]["streamSid"]
        elif event == "media" and message["media"]["track"] == "inbound":
            audio += base64.b64decode(message["media"]["payload"])
        elif event == "stop":
            break
        # connected, mark and dtmf carry no audio
    if stream_sid is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    # the id comes from the network: only letters, digits, - and _ make the file name, so
    # that no id ("../x", "/etc/y") can put a file outside OUT
    name = re.sub(r"[^A-Za-z0-9_-]", "_", stream_sid)[:64] or "call"
    path = out / f"{name}.wav"
    path.write_bytes(wav_header(MULAW_8K, len(audio)) + audio + wav_padding(len(audio)))
    print(f"{stream_sid}: {len(audio) / MULAW_8K.sample_rate:.2f} s -> {path}")
    return path


async def main(port: int | None, out: Path, text: str) -> None:
    calls: list[asyncio.Task[Path | None]] = []

    async def handler(ws: ServerConnection) -> None:
        task = asyncio.create_task(receive_call(ws, out))
        calls.append(task)
        await task

    async with serve(handler, "127.0.0.1" if port is None else "0.0.0.0", port or 0) as server:
        if port is not None:
            print(f"waiting for calls on ws://0.0.0.0:{port}", file=sys.stderr)
            await server.serve_forever()
            return
        url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/media"
        print(f"no --port: calling {url} with flushsink's Twilio sender", file=sys.stderr)
        await stream_call(url, text, pace="fast")
        await asyncio.gather(*calls)  # the file is written once the handler has read stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write each Twilio call's inbound audio to a WAV file.")
    parser.add_argument("--port", type=int, help="listen for real calls (default: call itself once)")
    parser.add_argument("--out", type=Path, default=Path("calls"), help="output directory (default: %(default)s)")
    parser.add_argument("--text", default=TEXT, help="what the self-call says (default: a booking request)")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.out, args.text))
