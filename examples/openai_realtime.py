"""Speak texts with OpenAI Realtime on a websocket loop of your own, flushsink as the receiver.

With OpenAI (OPENAI_API_KEY set), a server of your own, or the embedded emulator:

    python examples/openai_realtime.py "Hello there." "How are you today?"
    python examples/openai_realtime.py --url "ws://127.0.0.1:8080/v1/realtime?model=gpt-realtime" "Hi."
    python examples/openai_realtime.py --emulator "Hello there."

It asks for the output format once (session.update), then for each TEXT sends it as a user
message with response.create, and writes the response's audio to
OUT/<response_id>/<n>.wav, one file per audio part (n counts from 0; a spoken response has
one). The session's instructions ask the model to say the message back; the emulator always
does, so its audio is exactly render(TEXT, voice, format).

The receive loop is where flushsink comes in: every frame goes to a Sink made with the
OPENAI_REALTIME envelope, which decodes each ``response.output_audio.delta`` straight into
its response's segment (no json.loads, no base64.b64decode, no bytes joined in Python) and
says when a segment or a response is finished. Every other event comes back as
``Unknown`` with its parsed payload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import flushsink
from flushsink.emulator import OpenAIRealtimeEmulator
from flushsink.envelopes import OPENAI_REALTIME

OPENAI_URL = "wss://api.openai.com/v1/realtime"
#: --format: the GA session's output format object, and what its audio is.
FORMATS = {
    "pcm": ({"type": "audio/pcm", "rate": 24000}, flushsink.AudioFormat("pcm_s16le", 24000)),
    "pcmu": ({"type": "audio/pcmu"}, flushsink.AudioFormat("pcm_mulaw", 8000)),
    "pcma": ({"type": "audio/pcma"}, flushsink.AudioFormat("pcm_alaw", 8000)),
}
INSTRUCTIONS = "Say the user's message back to them word for word, and nothing else."


async def respond(ws: ClientConnection, sink: flushsink.Sink, writer: flushsink.FileWriter) -> None:
    """Read frames until the response in progress is done, writing each finished segment."""
    while True:
        # decode=False: the Sink scans the frame as bytes (and checks its UTF-8 itself).
        for event in sink.feed(await ws.recv(decode=False)):
            if isinstance(event, flushsink.SegmentReady):
                writer(event)  # atomic; the response id is made safe as a file name
                segment = event.segment
                print(f"{segment.context_id} part {segment.flush_id}: "
                      f"{segment.duration:.2f} s -> {segment.path}")
            elif isinstance(event, flushsink.ContextDone):  # response.done
                return
            elif isinstance(event, (flushsink.ContextError, flushsink.ServerError)):
                raise SystemExit(f"server error {event.error_code}: {event.message}")
            elif isinstance(event, flushsink.Unknown) and \
                    event.type == "response.output_audio_transcript.done":
                print(f"{event.context_id} said: {event.message.get('transcript')!r}")


async def speak(url: str, texts: list[str], voice: str, fmt_name: str, out: str,
                api_key: str | None) -> None:
    format_object, fmt = FORMATS[fmt_name]
    sink = flushsink.Sink(fmt, envelope=OPENAI_REALTIME)
    writer = flushsink.FileWriter(out)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    session: dict[str, Any] = {"type": "realtime", "output_modalities": ["audio"],
                               "instructions": INSTRUCTIONS,
                               "audio": {"output": {"format": format_object, "voice": voice}}}
    async with connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        try:
            for text in texts:  # one response at a time: the server refuses a second one
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": text}]}}))
                await ws.send(json.dumps({"type": "response.create"}))
                await respond(ws, sink, writer)
        except ConnectionClosed:
            # Keep what arrived: open segments finish incomplete, as NAME.partial.wav.
            for ready in sink.close("connection closed"):
                print(f"{ready.segment.context_id}: incomplete -> {writer(ready)}")
            raise SystemExit("the connection closed before the responses were done") from None


async def main(args: argparse.Namespace) -> None:
    if args.emulator:
        async with OpenAIRealtimeEmulator() as emu:  # a local look-alike on 127.0.0.1
            print(f"--emulator: using the embedded emulator at {emu.ws_url}", file=sys.stderr)
            await speak(f"{emu.ws_url}?model={args.model}", args.texts, args.voice,
                        args.format, args.out, None)
        return
    url = args.url or f"{OPENAI_URL}?model={args.model}"
    await speak(url, args.texts, args.voice, args.format, args.out, os.environ.get("OPENAI_API_KEY"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Speak each TEXT with OpenAI Realtime; "
                                                 "write each response's audio to a WAV file.")
    parser.add_argument("texts", nargs="+", metavar="TEXT")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a Realtime websocket URL, with its path and query "
                                     "(default: OpenAI's, which needs OPENAI_API_KEY)")
    where.add_argument("--emulator", action="store_true",
                       help="start flushsink's OpenAI Realtime emulator and use it")
    parser.add_argument("--model", default="gpt-realtime", help="default: %(default)s")
    parser.add_argument("--voice", default="alloy", help="default: %(default)s")
    parser.add_argument("--format", choices=FORMATS, default="pcm",
                        help="pcm (s16le 24 kHz), pcmu or pcma (G.711 8 kHz); default: %(default)s")
    parser.add_argument("--out", default="out", help="output directory (default: %(default)s)")
    args = parser.parse_args()
    if not (args.url or args.emulator or os.environ.get("OPENAI_API_KEY")):
        parser.error("set OPENAI_API_KEY to reach OpenAI, or pass --url or --emulator")
    asyncio.run(main(args))
