"""Run by tests/test_hostile.py in a subprocess of its own, so that ru_maxrss is this
flood's peak alone: a server sends one message as a TEXT frame and then a continuation
frame per byte, and a client (asyncio or sync) receives it.

    python -m helpers.fragment_flood asyncio|sync FRAGMENTS MAX_SIZE     (in tests/)

prints one JSON line: the peak RSS growth while receiving (bytes), the seconds it took,
the close code, and what the context ended with. The message is a valid chunk frame of
context "a", so a client that accepts it whole stores its audio.
"""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import socket
import sys
import time

import numpy as np

import flushsink
from flushsink import sync

from .rawserver import CLOSE, CONT, TEXT, RawServer, accept_websocket, frame


def flood_bytes(message: bytes) -> bytes:
    """The message as a TEXT frame of its first byte and a CONT frame per further byte,
    the last one with FIN: 3 bytes on the wire per byte of message, built without a
    Python object per frame."""
    n = len(message)
    wire = np.empty((n, 3), np.uint8)
    wire[:, 0] = CONT
    wire[:, 1] = 1
    wire[:, 2] = np.frombuffer(message, np.uint8)
    wire[0, 0] = TEXT
    wire[-1, 0] |= 0x80
    return wire.tobytes()


def chunk_message(size: int) -> bytes:
    head = b'{"type":"chunk","context_id":"a","flush_id":1,"data":"'
    tail = b'"}'
    audio = bytes((size - len(head) - len(tail)) // 4 * 3)
    return head + base64.b64encode(audio) + tail


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main() -> None:
    client, fragments, max_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    wire = flood_bytes(chunk_message(fragments))

    def handler(conn: socket.socket) -> None:
        accept_websocket(conn)
        conn.recv(65536)  # the client's first request
        try:
            conn.sendall(wire)
            conn.sendall(frame(CLOSE, b"\x03\xe8"))
        except OSError:
            pass  # the client refused the message and went away
        conn.shutdown(socket.SHUT_RDWR)

    fmt = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000}
    options = dict(max_size=max_size, receive_timeout=60)
    result: dict = {}
    with RawServer(handler) as server:
        before = rss_peak()
        started = time.monotonic()
        if client == "asyncio":
            async def run() -> None:
                async with flushsink.connect(server.url, **options) as tts:
                    ctx = tts.context(voice="v", context_id="a", output_format=fmt)
                    await ctx.push("text")
                    try:
                        result["segments"] = [len(s.samples) for s in await ctx.collect()]
                    except Exception as exc:  # noqa: BLE001 - reported
                        result["error"] = type(exc).__name__
                        result["message"] = str(exc)
                    result["close_code"] = tts.close_code
                    result["open_bytes"] = tts.sink.stats.open_bytes

            asyncio.run(run())
        else:
            with sync.connect(server.url, **options) as tts:
                ctx = tts.context(voice="v", context_id="a", output_format=fmt)
                ctx.push("text")
                try:
                    result["segments"] = [len(s.samples) for s in ctx.collect()]
                except Exception as exc:  # noqa: BLE001 - reported
                    result["error"] = type(exc).__name__
                    result["message"] = str(exc)
                result["close_code"] = tts.close_code
        result["seconds"] = time.monotonic() - started
        result["growth"] = rss_peak() - before
    print(json.dumps(result))


if __name__ == "__main__":
    main()
