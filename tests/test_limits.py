"""Cartesia's limits, as the emulator enforces them and the clients report them
(docs/protocol.md 1.4, 2.5, 3.6): the concurrency limit (a 429 error event for a context
past it, HTTP 429 for a socket past ten times it), unknown voices (404 from API version
2026-03-01), contexts that expire 1 s after their last audio, input to an ended context;
and the clients' answers: RateLimited (ContextRateLimited, ConnectionRateLimited) and
``retry=`` for the handshake."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect

import flushsink
from flushsink import sync
from flushsink.emulator import Emulator, render
from flushsink.errors import (
    ConnectionRateLimited,
    ContextFailed,
    ContextRateLimited,
    HandshakeError,
    RateLimited,
)
from flushsink.formats import AudioFormat

VOICE_ID = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
S16 = AudioFormat("pcm_s16le", 44100)
TIMEOUT = 5.0
CLIENTS = ["asyncio", "sync"]


def request(context_id: str, transcript: str, *, voice: Any = VOICE_ID, end: bool = False,
            flush: bool = False) -> str:
    message = {"context_id": context_id, "model_id": "sonic-3", "transcript": transcript,
               "voice": voice,
               "output_format": {"container": "raw", "encoding": "pcm_s16le",
                                 "sample_rate": 44100},
               "continue": not end}
    if flush:
        message["flush"] = True
    return json.dumps(message)


async def until(ws, kind: str, context_id: str) -> list[dict[str, Any]]:
    """Frames up to and with the first of ``kind`` for ``context_id`` (or its error)."""
    frames = []
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        frames.append(frame)
        if frame.get("context_id") == context_id and frame["type"] in (kind, "error"):
            return frames


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


# --- the emulator ------------------------------------------------------------------------

def test_a_context_past_the_concurrency_limit_gets_a_429_error_for_it():
    async def scenario():
        async with Emulator(concurrency_limit=2) as emu:
            async with ws_connect(emu.ws_url) as one, ws_connect(emu.ws_url) as two:
                # two open contexts (more input could follow), on two sockets: the limit
                # counts the account's contexts, not a socket's
                await one.send(request("a", "First. ", flush=True))
                await until(one, "flush_done", "a")
                await two.send(request("b", "Second. ", flush=True))
                await until(two, "flush_done", "b")
                await two.send(request("c", "Third.", end=True))
                refused = (await until(two, "done", "c"))[-1]
                # a context that ends frees its place
                await one.send(request("a", "", end=True))
                await until(one, "done", "a")
                await two.send(request("d", "Fourth.", end=True))
                fourth = await until(two, "done", "d")
                return refused, fourth

    refused, fourth = run(scenario())
    assert (refused["type"], refused["status_code"], refused["done"]) == ("error", 429, True)
    assert refused["context_id"] == "c" and "concurrent" in refused["error"]
    assert fourth[-1]["type"] == "done"


def test_structured_429_names_the_documented_code():
    async def scenario():
        async with Emulator(concurrency_limit=1) as emu:
            url = emu.ws_url + "?cartesia_version=2026-08-14"
            async with ws_connect(url) as ws:
                await ws.send(request("a", "Open. ", flush=True))
                await until(ws, "flush_done", "a")
                await ws.send(request("b", "Refused.", end=True))
                return (await until(ws, "done", "b"))[-1]

    error = run(scenario())
    assert (error["status_code"], error["error_code"], error["title"]) == (
        429, "concurrency_limited", "Too many concurrent requests")


def test_sockets_past_ten_times_the_limit_get_http_429_with_retry_after():
    with Emulator(concurrency_limit=1, retry_after=2).running_in_thread() as emu:
        clients = [sync.connect(emu.url) for _ in range(10)]
        try:
            for client in clients:
                client.connect()
            with pytest.raises(ConnectionRateLimited) as info:
                sync.connect(emu.url).connect()
            clients.pop().close()  # one socket fewer: there is room again
            deadline = time.monotonic() + TIMEOUT
            while emu._open_sockets >= 10 and time.monotonic() < deadline:
                time.sleep(0.01)
            clients.append(sync.connect(emu.url))
            clients[-1].connect()
        finally:
            for client in clients:
                client.close()
    assert info.value.status == 429 and info.value.retry_after == 2.0
    assert [r.status for r in emu.rejected] == [429]


@pytest.mark.parametrize("version,status", [("2026-03-01", 404), ("2025-11-04", 400)])
def test_an_unknown_voice_is_404_from_2026_03_01(version, status):
    async def scenario():
        async with Emulator(voices=[VOICE_ID, "other-voice"]) as emu:
            async with ws_connect(emu.ws_url, additional_headers={"Cartesia-Version": version}) as ws:
                await ws.send(request("a", "Nobody.", voice={"id": "no-such-voice"}, end=True))
                error = (await until(ws, "done", "a"))[-1]
                await ws.send(request("b", "Somebody.", voice="other-voice", end=True))
                return error, await until(ws, "done", "b")

    error, frames = run(scenario())
    assert (error["type"], error["status_code"], error["context_id"]) == ("error", status, "a")
    assert "no-such-voice" in json.dumps(error)
    audio = b"".join(__import__("base64").b64decode(f["data"]) for f in frames
                     if f["type"] == "chunk")
    assert audio == render("Somebody.", "other-voice", S16)


@pytest.mark.slow
def test_an_open_context_expires_after_its_last_audio():
    # (margins of half a second either way, for a loaded machine)
    async def scenario():
        async with Emulator(context_expiry=0.6) as emu:
            async with ws_connect(emu.ws_url) as ws:
                await ws.send(request("a", "Soon. ", flush=True))
                await until(ws, "flush_done", "a")
                await asyncio.sleep(0.05)  # within the expiry: the context goes on
                await ws.send(request("a", "Again. ", flush=True))
                again = await until(ws, "flush_done", "a")
                await asyncio.sleep(1.2)  # past it
                await ws.send(request("a", "Too late.", end=True))
                late = await until(ws, "done", "a")
                return again, late

    again, late = run(scenario())
    assert again[-1]["type"] == "flush_done" and again[-1]["flush_id"] == 2
    assert [f["type"] for f in late] == ["error"]  # no audio
    assert late[0]["context_id"] == "a" and "expired" in late[0]["error"]


def test_expired_contexts_no_longer_count_against_the_limit():
    async def scenario():
        async with Emulator(concurrency_limit=1, context_expiry=0.2) as emu:
            async with ws_connect(emu.ws_url) as ws:
                await ws.send(request("a", "Left open. ", flush=True))
                await until(ws, "flush_done", "a")
                await asyncio.sleep(0.4)
                await ws.send(request("b", "My turn.", end=True))
                return await until(ws, "done", "b")

    assert run(scenario())[-1]["type"] == "done"


# --- the clients ---------------------------------------------------------------------------

def hold_a_context_open(url: str):
    """A raw socket with one open context on it (for a limit of 1)."""
    async def opened():
        ws = await ws_connect(url)
        await ws.send(request("held", "Holding. ", flush=True))
        await until(ws, "flush_done", "held")
        return ws
    return opened()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_context_past_the_limit_fails_with_context_rate_limited(client):
    async def scenario():
        async with Emulator(concurrency_limit=1, context_expiry=None) as emu:
            held = await hold_a_context_open(emu.ws_url)
            try:
                if client == "asyncio":
                    async with flushsink.connect(emu.url) as tts:
                        ctx = tts.context(voice=VOICE_ID)
                        await ctx.push("Refused.")
                        await ctx.no_more_inputs()
                        with pytest.raises(ContextRateLimited) as info:
                            await ctx.collect()
                else:
                    def use_sync():
                        with sync.connect(emu.url) as tts:
                            ctx = tts.context(voice=VOICE_ID)
                            ctx.push("Refused.")
                            ctx.no_more_inputs()
                            with pytest.raises(ContextRateLimited) as info:
                                ctx.collect()
                            return info
                    info = await asyncio.to_thread(use_sync)
            finally:
                await held.close()
            return info.value

    error = run(scenario())
    assert isinstance(error, RateLimited) and isinstance(error, ContextFailed)
    assert not isinstance(error, HandshakeError)
    assert error.event.status_code == 429 and error.event.context_id in str(error)


class RefusesFirst(Emulator):
    """Refuses the first ``refusals`` handshakes with HTTP 429."""

    def __init__(self, refusals: int, **options: Any) -> None:
        super().__init__(**options)
        self.refusals = refusals

    def _process_request(self, connection, request):
        if len(self.rejected) < self.refusals:
            return self._reject(connection, 429, request.path, "Too many connections")
        return super()._process_request(connection, request)


def open_client(client: str, url: str, **options) -> int:
    """Open and close a connection; the handshakes it retried."""
    if client == "asyncio":
        async def main():
            async with flushsink.connect(url, **options) as tts:
                await tts.connect()
                return tts.handshake_retries
        return run(main())
    with sync.connect(url, **options) as tts:
        tts.connect()
        return tts.handshake_retries


@pytest.mark.parametrize("client", CLIENTS)
def test_retry_rides_out_a_429_honouring_retry_after(client):
    with RefusesFirst(2, retry_after=0.2).running_in_thread() as emu:
        started = time.monotonic()
        retries = open_client(client, emu.url, retry=3)
        took = time.monotonic() - started
    assert retries == 2 and len(emu.connections) == 1
    assert took >= 0.4  # both waits were Retry-After's, not a shorter backoff


@pytest.mark.parametrize("client", CLIENTS)
def test_without_retry_or_past_its_attempts_the_429_is_raised(client):
    with RefusesFirst(2, retry_after=0).running_in_thread() as emu:
        with pytest.raises(ConnectionRateLimited):
            open_client(client, emu.url)  # no retry: the default
        with pytest.raises(ConnectionRateLimited):
            open_client(client, emu.url, retry=1)  # one attempt in all
    assert len(emu.rejected) == 2 and emu.connections == []


@pytest.mark.parametrize("client", CLIENTS)
def test_a_retry_after_longer_than_the_cap_is_not_waited_for(client):
    with RefusesFirst(1, retry_after=60).running_in_thread() as emu:
        started = time.monotonic()
        with pytest.raises(ConnectionRateLimited) as info:
            open_client(client, emu.url, retry=flushsink.Retry(attempts=5, max_backoff=1))
        assert time.monotonic() - started < 5
    assert info.value.retry_after == 60


@pytest.mark.parametrize("client", CLIENTS)
def test_a_bad_key_is_not_retried(client):
    with Emulator(api_key="right").running_in_thread() as emu:
        with pytest.raises(flushsink.AuthenticationError):
            open_client(client, emu.url, api_key="wrong", retry=5)
    assert len(emu.rejected) == 1


def test_backoff_is_capped_exponential_with_full_jitter():
    error = ConnectionRateLimited("refused", 429)
    cause = OSError("refused")
    policy = flushsink.Retry(attempts=10, backoff=0.5, max_backoff=4.0, jitter=False)
    assert [policy.delay(k, error, cause) for k in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay(9, error, cause) is None  # the tenth attempt was the last
    jittered = flushsink.Retry(attempts=10, backoff=0.5, max_backoff=4.0)
    delays = [jittered.delay(3, error, cause) for _ in range(200)]
    assert all(0 <= d <= 4.0 for d in delays) and len(set(delays)) > 100
    with pytest.raises(flushsink.ConfigError):
        flushsink.Retry(attempts=0)


def test_say_reports_a_context_rate_limit_in_one_line(tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "flushsink", "serve", "--port", "0",
                               "--concurrency-limit", "1"], stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"ws://\S+", server.stdout.readline()).group(0)

        async def scenario():
            held = await hold_a_context_open(url)
            try:
                return await asyncio.to_thread(
                    subprocess.run, [sys.executable, "-m", "flushsink", "say", "Refused.",
                                     "--url", url, "--out", "o"],
                    cwd=tmp_path, capture_output=True, text=True, timeout=60)
            finally:
                await held.close()

        result = run(scenario())
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stdout.close()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("flushsink: ")]
    assert "429" in line or "concurrent" in line
    assert "limit of concurrent contexts" in line


def test_rate_limit_errors_survive_pickling():
    """They cross process boundaries (multiprocessing, concurrent.futures) whole."""
    import pickle

    from flushsink.segments import ContextError

    event = ContextError("ctx", "too many", status_code=429, error_code="concurrency_limited")
    for error in (ContextRateLimited(event), ContextFailed(event),
                  ConnectionRateLimited("refused", 429, retry_after=2.0)):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert getattr(copy, "event", None) == getattr(error, "event", None)
        assert getattr(copy, "retry_after", None) == getattr(error, "retry_after", None)


def test_a_host_that_does_not_resolve_or_failing_tls_is_not_retried():
    import socket
    import ssl

    policy = flushsink.Retry(attempts=5)
    error = HandshakeError("cannot connect")
    assert policy.delay(0, error, ConnectionRefusedError()) is not None  # may pass
    assert policy.delay(0, error, socket.gaierror(-2, "Name or service not known")) is None
    assert policy.delay(0, error, ssl.SSLCertVerificationError("bad certificate")) is None
