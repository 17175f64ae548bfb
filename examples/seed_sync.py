"""The seed scenario with the blocking client: two flush segments, two WAV files.

Against the embedded emulator, then against Cartesia (with CARTESIA_API_KEY set):

    python examples/seed_sync.py
    python examples/seed_sync.py --url wss://api.cartesia.ai/tts/websocket

The same calls as examples/seed_async.py without ``await``: for scripts, notebooks and
threaded servers. A background thread receives the frames; ``segments()`` blocks until
the next segment is finished and written.
"""

from __future__ import annotations

import argparse
import sys

import flushsink
from flushsink.emulator import Emulator

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
OUTPUT_FORMAT = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 44100}


def speak(url: str, out: str) -> None:
    # The API key comes from CARTESIA_API_KEY (or api_key=...); the emulator needs none.
    with flushsink.sync.connect(url, writer=flushsink.FileWriter(out)) as tts:
        ctx = tts.context(model_id="sonic-latest", voice={"mode": "id", "id": VOICE},
                          output_format=OUTPUT_FORMAT, language="en")
        ctx.push("Stay hungry, ")
        ctx.flush()  # ends the first segment: the server answers with flush_done
        ctx.push("stay foolish.")
        ctx.no_more_inputs()  # the last segment ends with the context's done
        for segment in ctx.segments():
            print(f"flush {segment.flush_id}: {segment.duration:.2f} s -> {segment.path}")


def main(url: str | None, out: str) -> None:
    if url is not None:
        speak(url, out)
        return
    # The emulator is an asyncio server: running_in_thread() gives it a loop of its own.
    with Emulator().running_in_thread() as emu:
        print(f"no --url: using the embedded emulator at {emu.ws_url}", file=sys.stderr)
        speak(emu.url, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The seed scenario with the blocking client.")
    parser.add_argument("--url", help="TTS websocket URL (default: start the embedded emulator)")
    parser.add_argument("--out", default="out", help="output directory (default: %(default)s)")
    args = parser.parse_args()
    main(args.url, args.out)
