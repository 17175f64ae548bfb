"""The local Cartesia TTS websocket emulator, driven by a plain ``websockets`` client.

Audio is checked byte for byte against ``render()``; base64 is decoded with the stdlib so
that these tests do not depend on the code the emulator exists to test.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect as sync_connect

from flushsink.emulator import (
    DEFAULT_VERSION,
    Emulator,
    Fault,
    parse_faults,
    render,
    render_phoneme_timestamps,
    render_samples,
    render_timestamps,
)
from flushsink.formats import ENCODINGS, SAMPLE_RATES, AudioFormat, decode_g711

VOICE_ID = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
VOICE = {"mode": "id", "id": VOICE_ID}
S16 = AudioFormat("pcm_s16le", 44100)
TIMEOUT = 5.0
LEGACY_EMPTY = (
    "transcript empty or contains only punctuation: "
    "first transcript for WS is empty or contains only punctuation"
)
DONE = {"type": "done", "context_id": "c", "status_code": 206, "done": True}
T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 4 * TIMEOUT))


def request(
    context_id: str, transcript: str, *, fmt: AudioFormat = S16, end: bool = False, **fields: Any
) -> str:
    """A generation request shaped like the ones SDK 3.2.0 sends."""
    message = {
        "context_id": context_id,
        "model_id": "sonic-latest",
        "transcript": transcript,
        "voice": VOICE,
        "output_format": fmt.to_output_format(),
        "continue": not end,
        "language": "en",
    }
    message.update(fields)
    return json.dumps(message)


def seed(context_id: str = "c", **fields: Any) -> list[str]:
    """The seed example (docs/protocol.md, section 2.7)."""
    return [
        request(context_id, "Stay hungry, ", **fields),
        request(context_id, "", flush=True, **fields),
        request(context_id, "stay foolish.", **fields),
        request(context_id, "", end=True, **fields),
    ]


async def collect(ws: ClientConnection, context_ids: Iterable[str] = ("c",)) -> list[dict[str, Any]]:
    """Read frames until every listed context got ``done`` or ``error``."""
    pending = set(context_ids)
    frames = []
    while pending:
        frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        frames.append(frame)
        if frame["type"] in ("done", "error"):
            pending.discard(frame.get("context_id"))
    return frames


async def exchange(
    url: str, messages: list[str], context_ids: Iterable[str] = ("c",), **options: Any
) -> list[dict[str, Any]]:
    async with connect(url, open_timeout=TIMEOUT, **options) as ws:
        for message in messages:
            await ws.send(message)
        return await collect(ws, context_ids)


async def read_until_closed(ws: ClientConnection) -> tuple[list[str], ConnectionClosed]:
    """Every raw frame up to the end of the connection, and how it ended."""
    raws = []
    while True:
        try:
            raws.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
        except ConnectionClosed as exc:
            return raws, exc


async def seed_until_closed(url: str, **options: Any) -> tuple[list[str], ConnectionClosed]:
    """Send the seed example, then read until the connection ends (for faults that end it)."""
    async with connect(url, open_timeout=TIMEOUT, **options) as ws:
        for message in seed():
            await ws.send(message)
        return await read_until_closed(ws)


def audio_by_flush(frames: list[dict[str, Any]], context_id: str = "c") -> dict[Any, bytes]:
    audio: dict[Any, bytes] = {}
    for frame in frames:
        if frame["type"] == "chunk" and frame["context_id"] == context_id:
            key = frame.get("flush_id")
            audio[key] = audio.get(key, b"") + base64.b64decode(frame["data"], validate=True)
    return audio


def kinds(frames: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(type, flush_id) per frame with consecutive repeats collapsed: the shape of a stream."""
    shape: list[tuple[str, Any]] = []
    for frame in frames:
        item = (frame["type"], frame.get("flush_id"))
        if not shape or shape[-1] != item:
            shape.append(item)
    return shape


# --- render -------------------------------------------------------------------------------

TEXT = "Stay hungry, stay foolish. It's 2024 - okay?"


@pytest.mark.parametrize("rate", SAMPLE_RATES)
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_render_every_encoding_and_rate(encoding: str, rate: int) -> None:
    fmt = AudioFormat(encoding, rate)
    samples = render_samples(TEXT, VOICE_ID, rate)
    audio = render(TEXT, VOICE_ID, fmt)
    assert audio == render(TEXT, VOICE_ID, fmt)
    assert len(audio) == samples.size * fmt.sample_width
    assert 2.5 < samples.size / rate < 6  # about the length of speaking the text
    assert np.abs(samples).max() <= 0.3
    values = np.frombuffer(audio, dtype=fmt.dtype)
    if encoding == "pcm_f32le":
        assert np.array_equal(values, samples.astype("<f4"))
    elif encoding == "pcm_s16le":
        assert np.array_equal(values, np.rint(samples * 32767).astype("<i2"))
    else:  # G.711 codes expand back to the 16-bit signal within the coarsest step
        expanded = decode_g711(values, encoding).astype(np.int32)
        assert np.abs(expanded - np.rint(samples * 32767)).max() < 600


@pytest.mark.parametrize("blank", ["", " ", "\n\t ", "  ...  "])
def test_render_blank_text_is_empty(blank: str) -> None:
    for encoding in ENCODINGS:
        assert render(blank, VOICE_ID, AudioFormat(encoding, 24000)) == b""
    assert render_timestamps(blank, VOICE_ID, 24000) == []


def test_render_is_stable_across_processes() -> None:
    # Python's hash() differs per process; the audio must not.
    code = (
        "import hashlib; from flushsink.emulator import render; from flushsink.formats import AudioFormat; "
        f"print(hashlib.sha256(render({TEXT!r}, {VOICE_ID!r}, AudioFormat('pcm_s16le', 16000))).hexdigest())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=os.pathsep.join(sys.path))
    other = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert (
        other.stdout.strip()
        == hashlib.sha256(render(TEXT, VOICE_ID, AudioFormat("pcm_s16le", 16000))).hexdigest()
    )


# flushsink itself needs websockets (its clients); the oracle must not. So: flushsink is
# imported, then every websockets module is forgotten and its import refused.
RENDER_WITHOUT_WEBSOCKETS = """
import hashlib, importlib.abc, sys
import flushsink
from flushsink.formats import AudioFormat

class NoWebsockets(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "websockets" or name.startswith("websockets."):
            raise ImportError(f"{name} is blocked")
        return None

for name in [n for n in sys.modules if n == "websockets" or n.startswith("websockets.")]:
    del sys.modules[name]
sys.meta_path.insert(0, NoWebsockets())

from flushsink.emulator import render, render_phoneme_timestamps, render_timestamps
audio = render(sys.argv[1], sys.argv[2], AudioFormat("pcm_s16le", 16000))
words = render_timestamps(sys.argv[1], sys.argv[2], 16000)
phonemes = render_phoneme_timestamps(sys.argv[1], sys.argv[2], 16000)
loaded = sorted(n for n in sys.modules if n.startswith(("websockets", "flushsink.emulator.")))
try:
    from flushsink.emulator import Emulator
    server = "imported"
except ImportError:
    server = "blocked"
print(hashlib.sha256(audio).hexdigest(), len(words), len(phonemes), server, *loaded)
"""


def test_render_works_without_websockets() -> None:
    result = subprocess.run(
        [sys.executable, "-c", RENDER_WITHOUT_WEBSOCKETS, TEXT, VOICE_ID],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    digest, words, phonemes, server, *loaded = result.stdout.split()
    assert digest == hashlib.sha256(render(TEXT, VOICE_ID, AudioFormat("pcm_s16le", 16000))).hexdigest()
    assert int(words) == len(render_timestamps(TEXT, VOICE_ID, 16000))
    assert int(phonemes) == len(render_phoneme_timestamps(TEXT, VOICE_ID, 16000))
    assert loaded == ["flushsink.emulator.speech"]  # no server module, no websockets
    assert server == "blocked"  # the blocker did block: the server side needs websockets


def test_every_name_the_emulator_exports_resolves() -> None:
    import flushsink.emulator as package

    for name in [*package.__all__, "FaultSpec", "IDLE_CLOSE_REASON"]:
        assert getattr(package, name) is not None, name
        assert name in dir(package)
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_render_depends_on_voice_text_and_speed() -> None:
    base = render_samples(TEXT, VOICE_ID, 16000)
    assert not np.array_equal(base, render_samples(TEXT, "another-voice", 16000))
    assert not np.array_equal(base, render_samples(TEXT.replace("hungry", "thirsty"), VOICE_ID, 16000))
    faster = render_samples(TEXT, VOICE_ID, 16000, speed=1.5)
    assert faster.size == pytest.approx(base.size / 1.5, rel=0.01)
    # Whitespace only separates words, so a segment's text needs no normalising.
    assert np.array_equal(base, render_samples("  " + TEXT.replace(" ", " \n ") + " ", VOICE_ID, 16000))
    with pytest.raises(ValueError):
        render_samples(TEXT, VOICE_ID, 16000, speed=0)


def test_timestamps_match_the_audio() -> None:
    rate = 22050
    samples = render_samples(TEXT, VOICE_ID, rate)
    words = render_timestamps(TEXT, VOICE_ID, rate)
    # Tokens keep their punctuation; "-" has no letter, so it is a pause, not a word.
    assert [w for w, _, _ in words] == ["Stay", "hungry,", "stay", "foolish.", "It's", "2024", "okay?"]
    silent_from = 0
    for _, start, end in words:
        first, last = round(start * rate), round(end * rate)
        assert start * rate == pytest.approx(first, abs=1e-6) and end * rate == pytest.approx(last, abs=1e-6)
        assert not samples[silent_from:first].any()  # pauses are exact silence
        assert np.abs(samples[first:last]).max() > 0.1
        silent_from = last
    assert not samples[silent_from:].any()
    phonemes = render_phoneme_timestamps(TEXT, VOICE_ID, rate)
    assert "".join(p for p, _, _ in phonemes) == "stayhungrystayfoolishits2024okay"
    spans = iter(phonemes)
    for _, start, end in words:  # each word is split into its letters, end to end
        cursor = start
        while cursor < end:
            _, p_start, p_end = next(spans)
            assert p_start == cursor and p_end > p_start
            cursor = p_end
        assert cursor == end


def test_punctuation_lengthens_pauses() -> None:
    def gap(text: str) -> float:
        (_, _, end), (_, start, _) = render_timestamps(text, VOICE_ID, 16000)
        return start - end

    assert gap("one two") < gap("one, two") < gap("one. two")


# --- handshake ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, headers",
    [
        ("", {"Authorization": "Bearer sk_test"}),
        ("", {"X-API-Key": "sk_test"}),
        ("?api_key=sk_test", {}),
        ("?access_token=sk_test", {}),
        ("?api_key=wrong", {"X-API-Key": "sk_test"}),  # one right credential is enough
    ],
)
def test_auth_accepts_every_mechanism(query: str, headers: dict[str, str]) -> None:
    async def scenario() -> None:
        async with Emulator(api_key="sk_test") as emu:
            frames = await exchange(emu.ws_url + query, seed(), additional_headers=headers)
            assert frames[-1]["type"] == "done"
            assert emu.rejected == []

    run(scenario())


@pytest.mark.parametrize(
    "query, headers",
    [
        ("", {}),
        ("", {"Authorization": "Bearer nope"}),
        ("", {"X-API-Key": "nope"}),
        ("?api_key=nope", {}),
        ("", {"Authorization": "sk_test"}),
    ],
)
def test_auth_rejects_wrong_or_missing_key_with_401(query: str, headers: dict[str, str]) -> None:
    async def scenario() -> None:
        async with Emulator(api_key="sk_test") as emu:
            with pytest.raises(InvalidStatus) as caught:
                await connect(emu.ws_url + query, additional_headers=headers, open_timeout=TIMEOUT)
            assert caught.value.response.status_code == 401
            assert [r.status for r in emu.rejected] == [401]
            assert emu.connections == []

    run(scenario())


def test_without_api_key_anything_connects() -> None:
    async def scenario() -> None:
        async with Emulator() as emu:
            for headers in ({}, {"Authorization": "Bearer whatever"}):
                assert (await exchange(emu.ws_url, seed(), additional_headers=headers))[-1]["type"] == "done"
            assert emu.connections[1].headers["authorization"] == "Bearer whatever"

    run(scenario())


@pytest.mark.parametrize(
    "options, path, status",
    [
        ({"reject_429": True}, "/tts/websocket", 429),
        ({}, "/", 404),
        ({}, "/tts/websocket/extra", 404),
        ({}, "/tts/websocket?fault=explode", 400),
        ({}, "/tts/websocket?fault=drop@chunk:x", 400),
    ],
)
def test_handshake_rejections(options: dict[str, Any], path: str, status: int) -> None:
    async def scenario() -> None:
        async with Emulator(**options) as emu:
            with pytest.raises(InvalidStatus) as caught:
                await connect(emu.url + path, open_timeout=TIMEOUT)
            assert caught.value.response.status_code == status
            assert emu.rejected[0].status == status

    run(scenario())


def test_handshake_response_and_log() -> None:
    async def scenario() -> None:
        async with Emulator() as emu:
            async with connect(
                emu.ws_url + "?cartesia_version=2024-11-13", additional_headers={"X-Extra": "1"}
            ) as ws:
                assert "Sec-WebSocket-Extensions" not in ws.response.headers  # no deflate by default
                request_id = ws.response.headers["X-Request-Id"]
            log = emu.connections[0]
            assert log.request_id == request_id
            assert log.version == "2024-11-13"
            assert log.headers["x-extra"] == "1"
            assert log.path == "/tts/websocket?cartesia_version=2024-11-13"

    run(scenario())


def test_deflate_is_negotiated_only_when_enabled() -> None:
    async def scenario() -> None:
        async with Emulator(compression="deflate") as emu, connect(emu.ws_url) as ws:
            assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
            for message in seed():
                await ws.send(message)
            frames = await collect(ws)
        assert audio_by_flush(frames)[2] == render("stay foolish.", VOICE_ID, S16)

    run(scenario())


# --- the seed flow and flush ids ------------------------------------------------------------


def test_seed_flow() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(emu.ws_url, seed())

    frames = run(scenario())
    assert kinds(frames) == [("chunk", 1), ("flush_done", 1), ("chunk", 2), ("done", None)]
    audio = audio_by_flush(frames)
    assert audio == {1: render("Stay hungry, ", VOICE_ID, S16), 2: render("stay foolish.", VOICE_ID, S16)}
    chunk = frames[0]
    assert list(chunk) == ["type", "context_id", "status_code", "done", "step_time", "flush_id", "data"]
    assert (chunk["context_id"], chunk["status_code"], chunk["done"]) == ("c", 206, False)
    assert isinstance(chunk["step_time"], float)
    assert len(base64.b64decode(chunk["data"])) == 4410 * 2  # 100 ms per chunk by default
    flush_done = next(f for f in frames if f["type"] == "flush_done")
    assert flush_done == {
        "type": "flush_done",
        "context_id": "c",
        "status_code": 206,
        "done": False,
        "data": "",
        "flush_id": 1,
        "flush_done": True,
    }
    assert frames[-1] == DONE


@pytest.mark.parametrize("base", [0, 1, 7])
def test_flush_id_base(base: int) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with Emulator(flush_id_base=base) as emu:
            return await exchange(emu.ws_url, seed())

    frames = run(scenario())
    assert kinds(frames) == [("chunk", base), ("flush_done", base), ("chunk", base + 1), ("done", None)]


def test_flush_id_absent_from_chunks() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with Emulator(flush_id_on_chunks=False) as emu:
            return await exchange(emu.ws_url, seed(add_timestamps=True))

    frames = run(scenario())
    assert all("flush_id" not in f for f in frames if f["type"] in ("chunk", "timestamps"))
    assert [f["flush_id"] for f in frames if f["type"] == "flush_done"] == [1]
    cut = next(i for i, f in enumerate(frames) if f["type"] == "flush_done")
    assert audio_by_flush(frames[:cut]) == {None: render("Stay hungry, ", VOICE_ID, S16)}
    assert audio_by_flush(frames[cut:]) == {None: render("stay foolish.", VOICE_ID, S16)}


def test_flush_done_before_done_option() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with Emulator(flush_done_before_done=True) as emu:
            return await exchange(emu.ws_url, seed())

    frames = run(scenario())
    assert kinds(frames) == [("chunk", 1), ("flush_done", 1), ("chunk", 2), ("flush_done", 2), ("done", None)]


def test_text_accumulates_until_the_context_ends() -> None:
    messages = [
        request("c", "Stay "),
        request("c", "hungry, "),
        request("c", "stay foolish."),
        request("c", "", end=True),
    ]

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(emu.ws_url, messages)

    frames = run(scenario())
    assert kinds(frames) == [("chunk", 1), ("done", None)]
    assert audio_by_flush(frames) == {1: render("Stay hungry, stay foolish.", VOICE_ID, S16)}


def test_single_request_without_continue() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            message = json.loads(request("c", "Hello there."))
            del message["continue"]  # absent means false: the context ends
            return await exchange(emu.ws_url, [json.dumps(message)])

    assert audio_by_flush(run(scenario())) == {1: render("Hello there.", VOICE_ID, S16)}


def test_empty_flush_gives_an_empty_segment() -> None:
    messages = [
        request("c", "One."),
        request("c", "", flush=True),
        request("c", "", flush=True),
        request("c", "", end=True),
    ]

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(emu.ws_url, messages)

    assert kinds(run(scenario())) == [("chunk", 1), ("flush_done", 1), ("flush_done", 2), ("done", None)]


def test_zero_buffer_delay_flushes_every_transcript() -> None:
    parts = ["Stay hungry, ", "stay foolish. ", "Bye."]
    messages = [request("c", part, max_buffer_delay_ms=0) for part in parts]
    messages.append(request("c", " ", end=True, max_buffer_delay_ms=0))  # LiveKit's end marker

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(emu.ws_url, messages)

    frames = run(scenario())
    assert kinds(frames) == [
        ("chunk", 1),
        ("flush_done", 1),
        ("chunk", 2),
        ("flush_done", 2),
        ("chunk", 3),
        ("flush_done", 3),
        ("done", None),
    ]
    assert audio_by_flush(frames) == {i + 1: render(part, VOICE_ID, S16) for i, part in enumerate(parts)}


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_streamed_audio_in_every_encoding(encoding: str) -> None:
    fmt = AudioFormat(encoding, 8000)

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(emu.ws_url, seed(fmt=fmt))

    audio = audio_by_flush(run(scenario()))
    assert audio == {1: render("Stay hungry, ", VOICE_ID, fmt), 2: render("stay foolish.", VOICE_ID, fmt)}


def test_speed_from_generation_config() -> None:
    messages = [
        request(
            "c", "Stay hungry, stay foolish.", end=True, generation_config={"speed": 1.5, "emotion": "calm"}
        )
    ]

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(emu.ws_url, messages)

    assert audio_by_flush(run(scenario())) == {
        1: render("Stay hungry, stay foolish.", VOICE_ID, S16, speed=1.5)
    }


# --- chunking ---------------------------------------------------------------------------------


def test_chunk_size_follows_chunk_ms() -> None:
    fmt = AudioFormat("pcm_f32le", 24000)

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator(chunk_ms=20) as emu:
            return await exchange(emu.ws_url, [request("c", TEXT, fmt=fmt, end=True)])

    sizes = [len(base64.b64decode(f["data"])) for f in run(scenario()) if f["type"] == "chunk"]
    assert set(sizes[:-1]) == {480 * 4} and 0 < sizes[-1] <= 480 * 4
    assert sum(sizes) == len(render(TEXT, VOICE_ID, fmt))


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_f32le", "pcm_mulaw"])
def test_odd_chunks_split_samples(encoding: str) -> None:
    fmt = AudioFormat(encoding, 16000)

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator(odd_chunks=True, chunk_ms=10) as emu:
            return await exchange(emu.ws_url, [request("c", TEXT, fmt=fmt, end=True)])

    frames = run(scenario())
    sizes = [len(base64.b64decode(f["data"])) for f in frames if f["type"] == "chunk"]
    assert len(sizes) > 10 and all(size % 2 == 1 for size in sizes[:-1])
    assert audio_by_flush(frames) == {1: render(TEXT, VOICE_ID, fmt)}


# --- contexts, cancel, timestamps ------------------------------------------------------------


def test_contexts_stream_concurrently() -> None:
    texts = {"a": "Stay hungry, stay foolish. " * 2, "b": "The quick brown fox jumps over the lazy dog."}
    messages = [request(cid, text) for cid, text in texts.items()]
    messages += [request(cid, "", end=True) for cid in texts]

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator(chunk_ms=20) as emu:
            return await exchange(emu.ws_url, messages, context_ids=texts)

    frames = run(scenario())
    order = [f["context_id"] for f in frames if f["type"] == "chunk"]
    first_b, last_a = order.index("b"), len(order) - 1 - order[::-1].index("a")
    assert first_b < last_a  # interleaved, not one context after the other
    for cid, text in texts.items():
        assert audio_by_flush(frames, cid) == {1: render(text, VOICE_ID, S16)}
        assert sum(1 for f in frames if f["type"] == "done" and f["context_id"] == cid) == 1


@pytest.mark.parametrize("done_after_cancel", [True, False])
def test_cancel_stops_queued_input_but_finishes_the_running_segment(done_after_cancel: bool) -> None:
    first = "Stay hungry, stay foolish."

    async def scenario() -> tuple[list[dict[str, Any]], Emulator]:
        # Four times real time: the first segment streams for about 0.5 s.
        async with Emulator(pace=4.0, chunk_ms=20, done_after_cancel=done_after_cancel) as emu:
            async with connect(emu.ws_url) as ws:
                await ws.send(request("c", first))
                await ws.send(request("c", "", flush=True))
                frames = [json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))]
                assert frames[0]["type"] == "chunk"  # the first segment is running
                await ws.send(request("c", "This was queued. "))
                await ws.send(request("c", "", flush=True))
                await ws.send(request("c", "And this was buffered."))
                await ws.send(json.dumps({"context_id": "c", "cancel": True}))
                await ws.send(request("c", "Input after a cancel is refused.", end=True))
                # (collect stops at the done, or at the error when no done comes)
                frames += await collect(ws)
                if done_after_cancel:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
                with pytest.raises(asyncio.TimeoutError):
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 0.2)))
            return frames, emu

    frames, emu = run(scenario())
    # the input after the cancel gets an error, after whatever the context still sends
    expected = ([("chunk", 1), ("flush_done", 1)] + ([("done", None)] if done_after_cancel else [])
                + [("error", None)])
    assert kinds(frames) == expected
    assert (frames[-1]["context_id"], frames[-1]["status_code"]) == ("c", 400)
    assert "ended" in frames[-1]["error"]
    assert audio_by_flush(frames) == {1: render(first, VOICE_ID, S16)}
    log = emu.connections[0]
    assert log.cancels == ["c"]
    assert log.received_for("c")[-1]["transcript"] == "Input after a cancel is refused."


def test_cancel_of_unknown_or_finished_context_is_harmless() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            async with connect(emu.ws_url) as ws:
                await ws.send(json.dumps({"context_id": "nobody", "cancel": True}))
                for message in seed():
                    await ws.send(message)
                frames = await collect(ws)
                await ws.send(json.dumps({"context_id": "c", "cancel": True}))
                with pytest.raises(asyncio.TimeoutError):  # a cancel gets no answer
                    await asyncio.wait_for(ws.recv(), 0.2)
                await ws.send(request("c", "Late input on a finished context.", end=True))
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)))
            assert emu.connections[0].cancels == ["nobody", "c"]
            return frames

    frames = run(scenario())
    assert kinds(frames) == [("chunk", 1), ("flush_done", 1), ("chunk", 2), ("done", None),
                             ("error", None)]
    assert frames[-1]["context_id"] == "c" and "ended" in frames[-1]["error"]


def test_timestamps_are_in_context_time_and_interleaved() -> None:
    rate = S16.sample_rate
    segments = ["Stay hungry, ", "stay foolish."]

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator(chunk_ms=50) as emu:
            return await exchange(emu.ws_url, seed(add_timestamps=True, add_phoneme_timestamps=True))

    frames = run(scenario())
    offset = len(render(segments[0], VOICE_ID, S16)) // 2 / rate  # seconds before segment 2
    for flush_id, text, base in ((1, segments[0], 0.0), (2, segments[1], offset)):
        ours = [f for f in frames if f.get("flush_id") == flush_id]
        words = [
            (w, s, e)
            for f in ours
            if f["type"] == "timestamps"
            for w, s, e in zip(
                f["word_timestamps"]["words"],
                f["word_timestamps"]["start"],
                f["word_timestamps"]["end"],
                strict=True,
            )
        ]
        expected = [(w, base + s, base + e) for w, s, e in render_timestamps(text, VOICE_ID, rate)]
        assert [w for w, _, _ in words] == [w for w, _, _ in expected]
        assert [s for _, s, _ in words] == pytest.approx([s for _, s, _ in expected], abs=1e-9)
        assert [e for _, _, e in words] == pytest.approx([e for _, _, e in expected], abs=1e-9)
        phonemes = [
            p for f in ours if f["type"] == "phoneme_timestamps" for p in f["phoneme_timestamps"]["phonemes"]
        ]
        assert phonemes == [p for p, _, _ in render_phoneme_timestamps(text, VOICE_ID, rate)]
        # The first word's timestamps come before any audio; later ones arrive between chunks.
        types = [f["type"] for f in ours]
        assert types[0] == "timestamps"
        assert types.index("chunk") < len(types) - 1 - types[::-1].index("timestamps")


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where, version, shape, structured",
    [
        ("none", None, None, False),
        ("header", "2025-04-16", None, False),
        ("header", "2026-03-01", None, True),
        ("query", "2026-08-14", None, True),
        ("query", "2026-08-14", "legacy", False),
        ("none", None, "structured", True),
        ("both", "2026-08-14", None, True),  # the query's, over the header's 2025-04-16
    ],
)
def test_error_shape_follows_version(
    where: str, version: str | None, shape: str | None, structured: bool
) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], Emulator]:
        async with Emulator(error_shape=shape) as emu:
            url, headers = emu.ws_url, {}
            if where == "header":
                headers["Cartesia-Version"] = version
            elif where == "query":
                url += f"?cartesia_version={version}"
            elif where == "both":
                headers["Cartesia-Version"] = "2025-04-16"
                url += f"?cartesia_version={version}"
            frames = await exchange(url, [request("c", "", flush=True)], additional_headers=headers)
            return frames, emu

    frames, emu = run(scenario())
    assert emu.connections[0].version == (version or DEFAULT_VERSION)
    assert len(frames) == 1
    error = frames[0]
    if structured:
        assert list(error) == [
            "type",
            "done",
            "status_code",
            "error_code",
            "title",
            "message",
            "request_id",
            "context_id",
            "doc_url",
        ]
        assert (error["status_code"], error["done"], error["message"]) == (400, True, LEGACY_EMPTY)
        assert error["request_id"].startswith(emu.connections[0].request_id + ":c:")
    else:
        assert error == {
            "type": "error",
            "context_id": "c",
            "status_code": 400,
            "done": True,
            "error": LEGACY_EMPTY,
        }


@pytest.mark.parametrize("first", ["", "   ", "...", " ,!? "])
def test_blank_or_punctuation_first_transcript_is_an_error(first: str) -> None:
    messages = [request("c", first), request("c", "Too late.", end=True), request("d", "Fine.", end=True)]

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(emu.ws_url, messages, context_ids=("c", "d"))

    frames = run(scenario())
    # terminal for its context only: the input after it gets an error of its own
    errors = [f for f in frames if f["context_id"] == "c"]
    assert [f["type"] for f in errors] == ["error", "error"]
    assert errors[0]["error"] == LEGACY_EMPTY and "ended" in errors[1]["error"]
    assert audio_by_flush(frames, "d") == {1: render("Fine.", VOICE_ID, S16)}


def test_later_punctuation_only_transcript_is_fine() -> None:
    messages = [request("c", "Wait"), request("c", "..."), request("c", "", end=True)]

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(emu.ws_url, messages)

    assert audio_by_flush(run(scenario())) == {1: render("Wait...", VOICE_ID, S16)}


@pytest.mark.parametrize(
    "change",
    [
        {"output_format": {"container": "mp3", "encoding": "pcm_s16le", "sample_rate": 44100}},
        {"output_format": {"container": "raw", "encoding": "pcm_s24le", "sample_rate": 44100}},
        {"output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 12345}},
        {"output_format": {"container": "raw", "encoding": "pcm_s16le"}},
        {"voice": {"mode": "embedding", "embedding": [0.1]}},
        {"output_format": {"container": "raw", "encoding": ["pcm_s16le"], "sample_rate": 44100}},
        {"output_format": {"container": "raw", "encoding": {"a": 1}, "sample_rate": 44100}},
        {"voice": {"mode": "id"}},
        {"voice": ""},
        {"max_buffer_delay_ms": -1},
        {"generation_config": {"speed": 3}},
        {"continue": "yes"},
        {"transcript": 5},
    ],
)
def test_invalid_request_is_an_error_for_its_context(change: dict[str, Any]) -> None:
    bad = json.loads(request("c", "Hello."))
    bad.update(change)

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(
                emu.ws_url, [json.dumps(bad), request("d", "Fine.", end=True)], context_ids=("c", "d")
            )

    frames = run(scenario())
    error = next(f for f in frames if f["context_id"] == "c")
    assert (error["type"], error["status_code"], error["done"]) == ("error", 400, True)
    assert audio_by_flush(frames, "d") == {1: render("Fine.", VOICE_ID, S16)}


@pytest.mark.parametrize("voice", [VOICE_ID, {"id": VOICE_ID}, {"mode": "id", "id": VOICE_ID},
                                   {"id": VOICE_ID, "__experimental_controls": {"speed": 1}}])
def test_every_form_of_a_voice_id_is_taken(voice: Any) -> None:
    """A bare id (SDK 4.x's type), {"id": ...} (its migration guide), {"mode": "id", ...}
    (SDK 3.x): the same voice, the same audio. Extra keys of the object are ignored."""
    message = json.loads(request("c", "Hello.", end=True))
    message["voice"] = voice

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(emu.ws_url, [json.dumps(message)])

    assert audio_by_flush(run(scenario())) == {1: render("Hello.", VOICE_ID, S16)}


@pytest.mark.parametrize("field", ["model_id", "transcript", "voice", "output_format"])
def test_missing_required_field(field: str) -> None:
    bad = json.loads(request("c", "Hello.", end=True))
    del bad[field]

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(emu.ws_url, [json.dumps(bad)])

    (error,) = run(scenario())
    assert error["type"] == "error" and field in error["error"]


def test_error_after_a_segment_keeps_input_order() -> None:
    bad = json.loads(request("c", "x"))
    bad["output_format"] = {"container": "wav"}
    messages = [
        request("c", "Stay hungry, ", flush=True),
        json.dumps(bad),
        request("c", "Ignored.", end=True),
    ]

    async def scenario() -> list[dict[str, Any]]:
        async with Emulator() as emu:
            return await exchange(emu.ws_url, messages)

    frames = run(scenario())
    assert kinds(frames) == [("chunk", 1), ("flush_done", 1), ("error", None)]


@pytest.mark.parametrize(
    "message", ["{not json", "[1, 2]", '{"transcript": "no context"}', '{"context_id": 5}']
)
def test_connection_level_errors_keep_the_socket_open(message: str) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with Emulator(error_shape="structured") as emu:
            frames = await exchange(emu.ws_url, [message, *seed()])
            assert emu.connections[0].received[0] == (
                message if message == "{not json" else json.loads(message)
            )
            return frames

    frames = run(scenario())
    error = frames[0]
    assert error["type"] == "error" and error["done"] is True and "context_id" not in error
    assert kinds(frames[1:]) == [("chunk", 1), ("flush_done", 1), ("chunk", 2), ("done", None)]


# --- connection limits ----------------------------------------------------------------------


def test_idle_connection_is_closed() -> None:
    async def scenario() -> tuple[float, ConnectionClosed]:
        async with Emulator(idle_timeout=0.3) as emu, connect(emu.ws_url) as ws:
            await asyncio.sleep(0.2)
            await ws.send(request("c", "Hi.", end=True))  # traffic restarts the clock
            started = time.monotonic()
            raws, closed = await read_until_closed(ws)
            assert json.loads(raws[-1])["type"] == "done"
            return time.monotonic() - started, closed

    elapsed, closed = run(scenario())
    assert isinstance(closed, ConnectionClosedOK)
    assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "connection idle timeout")
    assert 0.25 < elapsed < 3


def test_message_over_max_size_closes_with_1009() -> None:
    async def scenario() -> ConnectionClosed:
        async with Emulator(max_size=1000) as emu, connect(emu.ws_url) as ws:
            await ws.send(request("c", "word " * 300, end=True))
            return (await read_until_closed(ws))[1]

    assert run(scenario()).rcvd.code == 1009


def test_realtime_pace() -> None:
    text = "Stay hungry, stay foolish."
    seconds = len(render(text, VOICE_ID, S16)) / S16.bytes_per_second

    async def scenario() -> float:
        async with Emulator(pace=8.0) as emu:
            started = time.monotonic()
            await exchange(emu.ws_url, [request("c", text, end=True)])
            return time.monotonic() - started

    assert run(scenario()) >= seconds / 8.0 * 0.9


# --- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize("after", [0, 1, 3])
def test_drop_after_k_chunks(after: int) -> None:
    async def scenario() -> tuple[list[str], ConnectionClosed, Emulator]:
        async with Emulator(faults=f"drop@chunk:{after}") as emu:
            raws, closed = await seed_until_closed(emu.ws_url)
            return raws, closed, emu

    raws, closed, emu = run(scenario())
    assert isinstance(closed, ConnectionClosedError) and closed.rcvd is None  # no close frame
    assert [json.loads(r)["type"] for r in raws] == ["chunk"] * after
    assert emu.connections[0].fired == [Fault("drop", point="chunk", after=after)]


@pytest.mark.parametrize(
    "point, expected",
    [("flush_done", [("chunk", 1)]), ("done", [("chunk", 1), ("flush_done", 1), ("chunk", 2)])],
)
def test_drop_before_flush_done_or_done(point: str, expected: list[tuple[str, Any]]) -> None:
    async def scenario() -> tuple[list[str], ConnectionClosed]:
        async with Emulator(faults=f"drop@{point}") as emu:
            return await seed_until_closed(emu.ws_url)

    raws, closed = run(scenario())
    frames = [json.loads(r) for r in raws]
    assert closed.rcvd is None and kinds(frames) == expected
    assert audio_by_flush(frames)[1] == render("Stay hungry, ", VOICE_ID, S16)  # complete before the drop


def test_close_fault_sends_a_close_frame() -> None:
    async def scenario() -> ConnectionClosed:
        async with Emulator(faults="close:1011@chunk:1") as emu:
            return (await seed_until_closed(emu.ws_url))[1]

    closed = run(scenario())
    assert (closed.rcvd.code, closed.rcvd.reason) == (1011, "emulator fault")


def _stream_with_fault(fault: str, **options: Any) -> list[str]:
    async def scenario() -> list[str]:
        async with Emulator(faults=fault, **options) as emu:
            async with connect(emu.ws_url, max_size=None) as ws:
                for message in seed():
                    await ws.send(message)
                raws = []
                while not raws or raws[-1] != json.dumps(DONE):
                    raws.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert [str(f) for f in emu.connections[0].fired] == [fault]
            return raws

    return run(scenario())


def test_malformed_json_fault() -> None:
    raws = _stream_with_fault("malformed_json@chunk:1")
    bad = []
    for raw in raws:
        try:
            json.loads(raw)
        except ValueError:
            bad.append(raw)
    assert bad == ['{"type": "chunk", "context_id": "c", "data": "AAAA']
    assert raws.index(bad[0]) == 1
    frames = [json.loads(r) for r in raws if r not in bad]
    assert audio_by_flush(frames) == {
        1: render("Stay hungry, ", VOICE_ID, S16),
        2: render("stay foolish.", VOICE_ID, S16),
    }


def test_bad_base64_fault() -> None:
    frames = [json.loads(r) for r in _stream_with_fault("bad_base64@chunk:2")]
    bad = [f for f in frames if f["type"] == "chunk" and f["data"] == "@@@@"]
    assert len(bad) == 1 and frames.index(bad[0]) == 2 and bad[0]["flush_id"] == 1
    with pytest.raises(binascii.Error):
        base64.b64decode(bad[0]["data"], validate=True)
    good = [f for f in frames if f is not bad[0]]
    assert audio_by_flush(good)[1] == render("Stay hungry, ", VOICE_ID, S16)


@pytest.mark.parametrize("size", [5000, 5001, 5003, 100])
def test_oversized_fault(size: int) -> None:
    raws = _stream_with_fault(f"oversized:{size}@chunk:1")
    injected = raws[1]
    frame = json.loads(injected)
    assert frame["type"] == "chunk" and frame["flush_id"] == 1
    assert not base64.b64decode(frame["data"], validate=True).strip(b"\0")
    if size >= 200:
        assert len(injected.encode()) == size
    else:  # smaller than an empty chunk frame: the smallest frame is sent
        assert frame["data"] == ""


def test_oversized_frame_trips_the_client_limit() -> None:
    async def scenario() -> ConnectionClosed:
        async with Emulator(faults="oversized:4096@chunk:0") as emu:
            return (await seed_until_closed(emu.ws_url, max_size=4000))[1]

    closed = run(scenario())
    assert closed.sent is not None and closed.sent.code == 1009


def test_flood_contexts_fault() -> None:
    frames = [json.loads(r) for r in _stream_with_fault("flood_contexts:50@chunk:0", flush_id_base=0)]
    flood = [f for f in frames if f["context_id"].startswith("flood-")]
    assert [f["type"] for f in flood] == ["chunk"] * 50 + ["done"] * 50
    assert {f["context_id"] for f in flood} == {f"flood-{i}" for i in range(50)}
    assert all(f["flush_id"] == 0 for f in flood if f["type"] == "chunk")
    rest = [f for f in frames if f not in flood]
    assert audio_by_flush(rest) == {
        0: render("Stay hungry, ", VOICE_ID, S16),
        1: render("stay foolish.", VOICE_ID, S16),
    }


def test_flood_flushes_fault() -> None:
    frames = [json.loads(r) for r in _stream_with_fault("flood_flushes:20@flush_done")]
    flood = [f for f in frames if f["context_id"] == "flood"]
    assert kinds(flood) == [item for i in range(1, 21) for item in (("chunk", i), ("flush_done", i))] + [
        ("done", None)
    ]
    assert kinds([f for f in frames if f["context_id"] == "c"]) == [
        ("chunk", 1),
        ("flush_done", 1),
        ("chunk", 2),
        ("done", None),
    ]


def test_fault_chosen_per_connection_by_query() -> None:
    async def scenario() -> tuple[ConnectionClosed, list[dict[str, Any]], Emulator]:
        async with Emulator() as emu:
            _, closed = await seed_until_closed(emu.ws_url + "?fault=drop@chunk:2")
            frames = await exchange(emu.ws_url, seed())
            return closed, frames, emu

    closed, frames, emu = run(scenario())
    assert closed.rcvd is None
    assert kinds(frames) == [("chunk", 1), ("flush_done", 1), ("chunk", 2), ("done", None)]
    assert [log.faults for log in emu.connections] == [(Fault("drop", after=2),), ()]


def test_fault_specs() -> None:
    assert Fault.parse("drop") == Fault("drop", None, "chunk", 0)
    assert Fault.parse("oversized:100@chunk:2") == Fault("oversized", 100, "chunk", 2)
    assert Fault.parse(" close@done ") == Fault("close", None, "done")
    for spec in ["drop@chunk:3", "close:4000@flush_done", "flood_contexts:9@done"]:
        assert str(Fault.parse(spec)) == spec
    assert parse_faults("drop@done, bad_base64") == (Fault("drop", point="done"), Fault("bad_base64"))
    assert parse_faults(["drop", Fault("malformed_json")]) == (Fault("drop"), Fault("malformed_json"))
    assert parse_faults("") == ()
    for bad in [
        "explode",
        "drop:3",
        "oversized",
        "oversized:-1",
        "drop@start",
        "drop@done:2",
        "close:999",
        "drop@chunk:x",
    ]:
        with pytest.raises(ValueError):
            Fault.parse(bad)


@pytest.mark.parametrize(
    "options",
    [
        {"pace": "slow"},
        {"pace": 0},
        {"chunk_ms": 0},
        {"idle_timeout": 0},
        {"compression": "zstd"},
        {"error_shape": "json"},
        {"faults": "nope"},
        {"flush_id_base": 1.0},
    ],
)
def test_invalid_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Emulator(**options)


# --- running it -------------------------------------------------------------------------------


def test_stats_count_what_was_seen() -> None:
    async def scenario() -> Emulator:
        async with Emulator() as emu:
            await exchange(emu.ws_url, seed())
            async with connect(emu.ws_url) as ws:
                await ws.send(json.dumps({"context_id": "x", "cancel": True}))
        return emu

    emu = run(scenario())
    stats = emu.stats
    audio = len(render("Stay hungry, ", VOICE_ID, S16)) + len(render("stay foolish.", VOICE_ID, S16))
    assert (stats.connections, stats.rejected, stats.messages_received, stats.cancels) == (2, 0, 5, 1)
    assert stats.audio_bytes_sent == audio and stats.chunks_sent == emu.connections[0].sent["chunk"]
    assert emu.connections[0].sent["flush_done"] == 1 and emu.connections[0].sent["done"] == 1
    assert all(log.closed for log in emu.connections)
    with pytest.raises(RuntimeError):
        _ = emu.port  # stopped


def test_counts_without_recording_messages() -> None:
    async def scenario() -> Emulator:
        async with Emulator(record_messages=False) as emu:
            await exchange(emu.ws_url, seed())
            async with connect(emu.ws_url) as ws:
                await ws.send(json.dumps({"context_id": "x", "cancel": True}))
        return emu

    emu = run(scenario())
    assert (emu.stats.messages_received, emu.stats.cancels) == (5, 1)
    assert all(log.received == [] for log in emu.connections)


def test_thread_runner_serves_sync_clients() -> None:
    with Emulator(flush_id_base=0).running_in_thread() as emu:
        url = emu.ws_url
        with sync_connect(url, open_timeout=TIMEOUT) as ws:
            for message in seed():
                ws.send(message)
            frames = []
            while not frames or frames[-1]["type"] != "done":
                frames.append(json.loads(ws.recv(timeout=TIMEOUT)))
    assert audio_by_flush(frames) == {
        0: render("Stay hungry, ", VOICE_ID, S16),
        1: render("stay foolish.", VOICE_ID, S16),
    }
    assert not any(t.name == "flushsink-emulator" for t in threading.enumerate())
    with pytest.raises(OSError):
        sync_connect(url, open_timeout=1).close()


def test_serve_forever_until_cancelled() -> None:
    async def scenario() -> None:
        emulator = Emulator()
        bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(emulator.serve_forever(ready=lambda emu: bound.set_result(emu.ws_url)))
        url = await asyncio.wait_for(bound, TIMEOUT)
        assert (await exchange(url, seed()))[-1]["type"] == "done"
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(server, TIMEOUT)
        with pytest.raises(OSError):
            await connect(url, open_timeout=1)

    run(scenario())
