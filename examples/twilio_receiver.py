"""Receive a Twilio Media Stream: a websocket server that takes each call's inbound audio
(mu-law, 8 kHz) and writes it to OUT/<streamSid>.wav.

Without --port it calls itself once with flushsink's Twilio sender
(flushsink.emulator.twilio), which says TEXT in the emulator's synthetic voice; with
--port it waits for real calls (point a TwiML ``<Connect><Stream url="wss://...">`` at it,
through a TLS tunnel):

    python examples/twilio_receiver.py
    python examples/twilio_receiver.py --port 8080

Every frame of a call goes to a Sink made with the TWILIO_MEDIA envelope: it decodes each
``media`` event's base64 payload straight into the call's segment (no json.loads, no
base64.b64decode) and finishes the segment at ``stop``. A call's context is its
``streamSid``; ``connected``, ``start``, ``mark`` and ``dtmf`` come back as ``Unknown``.
With ``<Connect><Stream>`` Twilio sends the inbound track only; the envelope reads no
track, so a ``<Start><Stream track="both_tracks">`` call would mix both into one segment.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve

import flushsink
from flushsink.emulator import stream_call
from flushsink.envelopes import TWILIO_MEDIA
from flushsink.formats import AudioFormat, wav_header, wav_padding

MULAW_8K = AudioFormat("pcm_mulaw", 8000)  # the only format a Media Stream carries
TEXT = "Hello, I would like to book a table for two at eight."


async def receive_call(ws: ServerConnection, out: Path) -> Path | None:
    """Read one call until ``stop`` (or the close); write its inbound audio as a WAV file."""
    sink = flushsink.Sink(MULAW_8K, envelope=TWILIO_MEDIA)
    async for frame in ws:
        for event in sink.feed(frame):
            if isinstance(event, flushsink.SegmentReady):  # at stop: the call's audio
                return write_call(event.segment, out)
    # closed without stop: keep what arrived (the segment is finished incomplete)
    for ready in sink.close("closed without stop"):
        return write_call(ready.segment, out)
    return None


def write_call(call: flushsink.Segment, out: Path) -> Path:
    audio = call.pcm()  # the mu-law bytes: a view of the segment, no copy
    out.mkdir(parents=True, exist_ok=True)
    # the id comes from the network: only letters, digits, - and _ make the file name, so
    # that no id ("../x", "/etc/y") can put a file outside OUT
    name = re.sub(r"[^A-Za-z0-9_-]", "_", call.context_id or "")[:64] or "call"
    path = out / f"{name}.wav"
    path.write_bytes(wav_header(MULAW_8K, len(audio)) + audio + wav_padding(len(audio)))
    print(f"{call.context_id}: {call.duration:.2f} s -> {path}")
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
