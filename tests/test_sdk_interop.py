"""The official ``cartesia`` SDK (3.2.0 or 4.2.0) against the emulator, unchanged apart from the URL.

Skipped unless ``cartesia`` is installed (the extras ``sdk`` and ``sdk4``); ``make test-sdk``
runs it with each SDK, in a venv of its own. This is the check that the emulator really
speaks the protocol real clients expect. What differs between the two SDKs (the API version
each sends, so the error shape it gets; the voice forms each types) follows the SDK installed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest

cartesia = pytest.importorskip("cartesia")

import flushsink  # noqa: E402
from flushsink.emulator import ConnectionLog, Emulator, render, render_timestamps  # noqa: E402
from flushsink.formats import AudioFormat  # noqa: E402

VOICE_ID = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
VOICE = {"mode": "id", "id": VOICE_ID}
TIMEOUT = 5.0
NO_DEFLATE = {"compression": None}
LEGACY_EMPTY = (  # docs/protocol.md 2.6, the real server's text
    "transcript empty or contains only punctuation: "
    "first transcript for WS is empty or contains only punctuation"
)

SDK_MAJOR = int(cartesia.__version__.split(".")[0])
#: The ``cartesia-version`` header each SDK sends (docs/protocol.md 1.3: read in each
#: package and captured); None for an SDK this suite does not know, which fails its tests.
SENT_VERSION = {3: "2025-11-04", 4: "2026-08-14"}.get(SDK_MAJOR)
#: The first API version whose errors are structured (docs/protocol.md 3.6, documented).
STRUCTURED_SINCE = "2026-03-01"
#: The voice forms an SDK's users pass; each goes on the wire as it is. 3.x types
#: ``{"mode": "id", ...}``; 4.x types the bare id or ``{"id": ...}`` (its migration guide), and
#: code written for 3.x still passes the old form (docs/protocol.md 2.1).
VOICE_FORMS = [pytest.param(VOICE, id="mode-id")]
if SDK_MAJOR >= 4:
    VOICE_FORMS += [pytest.param(VOICE_ID, id="bare"), pytest.param({"id": VOICE_ID}, id="id")]


def flushsink_flushes(url: str, fmt: AudioFormat, parts: list[str], api_key: str) -> dict[int, bytes]:
    """flushsink's segments for the same flow: each part, then a flush (none after the last)."""
    with flushsink.sync.connect(url, api_key, receive_timeout=TIMEOUT) as tts:
        ctx = tts.context(voice=VOICE, output_format=fmt.to_output_format(), language="en")
        for i, part in enumerate(parts):
            ctx.push(part)
            if i < len(parts) - 1:
                ctx.flush()
        ctx.no_more_inputs()
        return {s.flush_id: s.samples.tobytes() for s in ctx.collect() if s.complete}


def context_options(fmt: AudioFormat, voice: Any = VOICE, **extra: Any) -> dict[str, Any]:
    """What the seed example passes to ``ws.context(...)``."""
    return dict(
        model_id="sonic-latest",
        voice=voice,
        output_format=fmt.to_output_format(),
        language="en",
        timeout=TIMEOUT,
        **extra,
    )


@pytest.mark.parametrize("voice", VOICE_FORMS)
@pytest.mark.parametrize(
    "compression, connection_options",
    [(None, NO_DEFLATE), (None, {}), ("deflate", {})],  # the SDK offers deflate unless told not to
)
def test_seed_example_with_the_sync_client(
    compression: str | None, connection_options: dict[str, Any], voice: Any
) -> None:
    fmt = AudioFormat("pcm_s16le", 44100)
    audio: dict[int, bytes] = defaultdict(bytes)
    flushes = []
    with Emulator(api_key="sk_test", compression=compression).running_in_thread() as emu:
        client = cartesia.Cartesia(api_key="sk_test", websocket_base_url=emu.url)
        with client.tts.websocket_connect(websocket_connection_options=connection_options) as ws:
            ctx = ws.context(**context_options(fmt, voice))
            ctx.push("Stay hungry, ")
            ctx.push("", flush=True)
            ctx.push("stay foolish.")
            ctx.no_more_inputs()
            for response in ctx.receive():  # as examples.py does it
                if response.type == "chunk" and response.audio:
                    audio[response.flush_id or 0] += response.audio
                elif response.type == "flush_done":
                    flushes.append(response.flush_id)
                elif response.type == "error":
                    pytest.fail(f"unexpected error {response}")
        log = emu.connections[0]
        ours = flushsink_flushes(emu.url, fmt, ["Stay hungry, ", "stay foolish."], "sk_test")
    assert flushes == [1]
    assert dict(audio) == {
        1: render("Stay hungry, ", VOICE_ID, fmt),
        2: render("stay foolish.", VOICE_ID, fmt),
    }
    assert dict(audio) == ours
    assert log.headers["authorization"] == "Bearer sk_test"
    assert log.headers["cartesia-version"] == log.version == SENT_VERSION
    assert [m["transcript"] for m in log.received] == ["Stay hungry, ", "", "stay foolish.", ""]
    assert [m["voice"] for m in log.received] == [voice] * 4
    assert [m.get("flush") for m in log.received] == [None, True, None, None]


@pytest.mark.parametrize(
    "query_version",
    [None, "2025-04-16", "2026-03-01"],  # LiveKit's (legacy errors); the first with structured ones
)
def test_timestamps_and_errors_parse_in_the_sdk(query_version: str | None) -> None:
    """The error takes the shape of the version the SDK sends: its header's, or the query's when
    the caller adds one (``extra_query``; the query wins, docs/protocol.md 1.3)."""
    fmt = AudioFormat("pcm_f32le", 24000)
    extra_query = {} if query_version is None else {"cartesia_version": query_version}
    with Emulator().running_in_thread() as emu:
        client = cartesia.Cartesia(api_key="sk_test", websocket_base_url=emu.url)
        with client.tts.websocket_connect(
            extra_query=extra_query, websocket_connection_options=NO_DEFLATE
        ) as ws:
            ctx = ws.context(**context_options(fmt, add_timestamps=True))
            ctx.push("Stay hungry, stay foolish.", continue_=False)
            words = [
                word
                for response in ctx.receive()
                if response.type == "timestamps"
                for word in response.word_timestamps.words
            ]
            failing = ws.context("failing", **context_options(fmt))
            failing.push("...")  # a punctuation-only first transcript
            (error,) = list(failing.receive())
        log = emu.connections[0]
    assert words == [w for w, _, _ in render_timestamps("Stay hungry, stay foolish.", VOICE_ID, 24000)]
    assert log.headers["cartesia-version"] == SENT_VERSION
    assert log.version == (query_version or SENT_VERSION)
    assert (error.type, error.context_id, error.status_code, error.done) == ("error", "failing", 400, True)
    if log.version >= STRUCTURED_SINCE:
        assert error.message == LEGACY_EMPTY
        assert isinstance(error.title, str) and error.title
        assert isinstance(error.error_code, str) and error.error_code
        assert error.request_id and "error" not in error.model_extra
    else:
        # Both SDKs model the structured shape; the legacy text only survives as an extra field.
        assert error.model_extra["error"] == LEGACY_EMPTY
        assert (error.message, error.title, error.error_code) == (None, None, None)


@pytest.mark.parametrize("voice", VOICE_FORMS)
def test_async_client_with_two_concurrent_contexts(voice: Any) -> None:
    fmt = AudioFormat("pcm_mulaw", 8000)
    texts = {
        "first": ["Stay hungry, ", "stay foolish."],
        "second": ["The quick brown fox ", "jumps over the lazy dog."],
    }

    async def speak(ws: Any, context_id: str, parts: list[str]) -> dict[int, bytes]:
        ctx = ws.context(context_id, **context_options(fmt, voice))
        for part in parts:
            await ctx.push(part)
            await ctx.push("", flush=True)
        await ctx.no_more_inputs()
        audio: dict[int, bytes] = defaultdict(bytes)
        async for response in ctx.receive():
            if response.type == "chunk" and response.audio:
                audio[response.flush_id] += response.audio
        return dict(audio)

    async def ours(url: str) -> dict[str, dict[int, bytes]]:
        async with flushsink.connect(url, receive_timeout=TIMEOUT) as tts:
            contexts = {cid: tts.context(voice=VOICE, output_format=fmt.to_output_format())
                        for cid in texts}
            for cid, parts in texts.items():
                for part in parts:
                    await contexts[cid].push(part)
                    await contexts[cid].flush()
            for ctx in contexts.values():
                await ctx.no_more_inputs()
            results = await asyncio.gather(*(ctx.collect() for ctx in contexts.values()))
        return {cid: {s.flush_id: s.samples.tobytes() for s in segments}
                for cid, segments in zip(texts, results)}

    async def scenario() -> tuple[
        dict[str, dict[int, bytes]], dict[str, dict[int, bytes]], ConnectionLog
    ]:
        async with Emulator(chunk_ms=20) as emu:
            client = cartesia.AsyncCartesia(api_key="sk_test", websocket_base_url=emu.url)
            async with client.tts.websocket_connect(websocket_connection_options=NO_DEFLATE) as ws:
                results = await asyncio.gather(*(speak(ws, cid, parts) for cid, parts in texts.items()))
            return dict(zip(texts, results, strict=True)), await ours(emu.url), emu.connections[0]

    received, flushsink_received, log = asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))
    assert log.headers["cartesia-version"] == log.version == SENT_VERSION
    assert [m["voice"] for m in log.received] == [voice] * 10  # two contexts, five requests each
    assert received == flushsink_received
    for context_id, parts in texts.items():
        assert received[context_id] == {i + 1: render(part, VOICE_ID, fmt) for i, part in enumerate(parts)}
