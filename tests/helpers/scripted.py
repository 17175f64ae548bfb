"""A loopback websocket server that plays a script, for the frames the emulator cannot
send, and the frames such scripts are made of; test_hostile.py and test_faults.py run
flushsink's clients against it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading

from websockets.asyncio.server import serve

import flushsink

TIMEOUT = 10


# --- frames by hand -------------------------------------------------------------------------

def b64(audio: bytes) -> str:
    return base64.b64encode(audio).decode("ascii")


def chunk(cid, fid, audio: bytes, **extra) -> bytes:
    frame = {"type": "chunk", "context_id": cid, "status_code": 206, "done": False}
    if fid is not None:
        frame["flush_id"] = fid
    frame["data"] = b64(audio)
    frame.update(extra)
    return json.dumps(frame).encode()


def flush_done(cid, fid) -> bytes:
    return json.dumps({"type": "flush_done", "context_id": cid, "status_code": 206, "done": False,
                       "data": "", "flush_id": fid, "flush_done": True}).encode()


def done(cid) -> bytes:
    return json.dumps({"type": "done", "context_id": cid, "status_code": 206, "done": True}).encode()


def audio_of(cid: str, part: int, n: int = 96) -> bytes:
    return bytes((hash((cid, part)) + k * 7) & 0xFF for k in range(n))


# --- the server ------------------------------------------------------------------------------

class ScriptedServer:
    """Loopback websocket server that waits for ``wait_for`` client messages, then plays a
    script: bytes (sent as a text frame, valid UTF-8 or not), ("binary", bytes),
    ("close", code), ("abort",), ("sleep", seconds), ("wait", n) for n more client
    messages. Stopped on exit; every wait is bounded."""

    def __init__(self, script, wait_for: int = 1) -> None:
        self.script = script
        self.wait_for = wait_for
        self.received: list = []

    async def __aenter__(self) -> "ScriptedServer":
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=None)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), TIMEOUT)

    async def _recv(self, ws, n: int) -> None:
        for _ in range(n):
            self.received.append(await asyncio.wait_for(ws.recv(), TIMEOUT))

    async def _handle(self, ws) -> None:
        await self._recv(ws, self.wait_for)
        for step in self.script:
            if isinstance(step, bytes):
                await ws.send(step, text=True)
            elif step[0] == "binary":
                await ws.send(step[1])
            elif step[0] == "close":
                await ws.close(step[1], "scripted")
                return
            elif step[0] == "abort":
                ws.transport.abort()
                return
            elif step[0] == "sleep":
                await asyncio.sleep(step[1])
            elif step[0] == "wait":
                await self._recv(ws, step[1])
        try:
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        except asyncio.TimeoutError:
            pass

    def running_in_thread(self):
        """For the sync client: the server on a loop in a thread; a context manager."""
        return _Threaded(self)


class _Threaded:
    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None

    def __enter__(self) -> ScriptedServer:
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),),
                                       daemon=True)
        self.thread.start()
        assert self.ready.wait(TIMEOUT)
        return self.server

    async def _main(self) -> None:
        self.stop = asyncio.Event()
        async with self.server:
            self.ready.set()
            await self.stop.wait()

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(TIMEOUT)
        self.loop.close()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def collect_all(contexts):
    """Each context's segments, or the exception it ended with."""
    results = {}
    for ctx in contexts:
        segments = []
        try:
            async for segment in ctx.segments(timeout=TIMEOUT):
                segments.append(segment)
        except Exception as exc:  # noqa: BLE001 - the test looks at which one
            results[ctx.context_id] = (segments, exc)
        else:
            results[ctx.context_id] = (segments, None)
    return results


async def run_script(script, *, ids=("a", "b"), wait_for=None, **options):
    async with ScriptedServer(script, wait_for=len(ids) if wait_for is None else wait_for) as server:
        async with flushsink.connect(server.url, receive_timeout=TIMEOUT, **options) as tts:
            contexts = [tts.context(voice="v", context_id=cid,
                                    output_format={"container": "raw", "encoding": "pcm_s16le",
                                                   "sample_rate": 24000}) for cid in ids]
            for ctx in contexts:
                await ctx.push("text")
            results = await collect_all(contexts)
            return results, tts
