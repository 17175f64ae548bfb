"""The official ``openai`` SDK's realtime client (GA and beta, async and sync) against
flushsink's OpenAI Realtime emulator, unchanged apart from the URL.

Skipped unless ``openai`` is installed (``openai[realtime]==3.51.0``, which pins
``websockets<16``: a venv of its own). This is the check that the emulator speaks what the
SDK expects: the SDK parses every event into its own typed models, and the audio it hands
over decodes to exactly what ``render`` predicts. It is also the check that flushsink's
Sink reads what the SDK reads: every frame the SDK parsed (kept by wrapping the
connection's own ``recv_bytes``) goes to ``Sink(envelope=OPENAI_REALTIME)``, whose segment
of each response must hold exactly the SDK's decoded deltas of that response.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
from collections import defaultdict
from typing import Any

import pytest

openai = pytest.importorskip("openai")

from openai import AsyncOpenAI, OpenAI  # noqa: E402
from openai.types import realtime as ga_types  # noqa: E402
from openai.types.beta import realtime as beta_types  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

from flushsink import ContextDone, SegmentReady, ServerError, Sink  # noqa: E402
from flushsink.emulator import OpenAIRealtimeEmulator, render  # noqa: E402
from flushsink.envelopes import OPENAI_REALTIME  # noqa: E402
from flushsink.formats import AudioFormat  # noqa: E402

API_KEY = "sk-test"
MODEL = "gpt-realtime"
TIMEOUT = 10.0
TEXT = "Hello there, friend. How are you today?"

#: (GA format object, beta name, the flushsink format of the audio)
FORMATS = [
    pytest.param({"type": "audio/pcm", "rate": 24000}, "pcm16", AudioFormat("pcm_s16le", 24000), id="pcm"),
    pytest.param({"type": "audio/pcmu"}, "g711_ulaw", AudioFormat("pcm_mulaw", 8000), id="pcmu"),
    pytest.param({"type": "audio/pcma"}, "g711_alaw", AudioFormat("pcm_alaw", 8000), id="pcma"),
]
USER_ITEM = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": TEXT}]}


def session_for(api: str, ga_format: dict[str, Any], beta_format: str, voice: str) -> dict[str, Any]:
    """A ``session.update`` body of each shape, choosing the output format and voice."""
    if api == "ga":
        return {"type": "realtime", "output_modalities": ["audio"],
                "audio": {"output": {"format": ga_format, "voice": voice}}}
    return {"modalities": ["text", "audio"], "output_audio_format": beta_format, "voice": voice}


def names(api: str) -> tuple[Any, str, str]:
    """The SDK's type module and the audio delta / transcript done event types of ``api``."""
    if api == "ga":
        return ga_types, "response.output_audio.delta", "response.output_audio_transcript.done"
    return beta_types, "response.audio.delta", "response.audio_transcript.done"


def check_response(api: str, events: list[Any], fmt: AudioFormat, voice: str) -> None:
    """What the SDK handed over: typed events, the audio ``render`` predicts, the transcript."""
    types, delta_type, transcript_done = names(api)
    assert isinstance(events[0], types.SessionCreatedEvent)
    assert [e.type for e in events[1:3]] == ["session.updated",
                                            "conversation.item.added" if api == "ga" else "conversation.item.created"]
    deltas = [e for e in events if e.type == delta_type]
    assert deltas and all(isinstance(e, types.ResponseAudioDeltaEvent) for e in deltas)
    assert b"".join(base64.b64decode(e.delta) for e in deltas) == render(TEXT, voice, fmt)
    assert [e.transcript for e in events if e.type == transcript_done] == [TEXT]
    done = events[-1]
    assert isinstance(done, types.ResponseDoneEvent)
    assert done.response.status == "completed"
    assert done.response.output[0].content[0].transcript == TEXT
    # One response, one item: every delta names them.
    assert {(e.response_id, e.item_id) for e in deltas} == {(done.response.id, done.response.output[0].id)}


def recording(conn: Any) -> list[bytes]:
    """Keep every frame ``conn`` receives, as the SDK received it: the connection's own
    ``recv_bytes`` (which its ``recv`` and iteration call, then ``parse_event``) is wrapped,
    so the frames are exactly those the SDK's events were parsed from."""
    frames: list[bytes] = []
    receive = conn.recv_bytes
    if inspect.iscoroutinefunction(receive):
        async def recv_bytes() -> bytes:
            frames.append(await receive())
            return frames[-1]
    else:
        def recv_bytes() -> bytes:
            frames.append(receive())
            return frames[-1]
    conn.recv_bytes = recv_bytes
    return frames


def sink_events(frames: list[bytes], fmt: AudioFormat) -> list[Any]:
    sink = Sink(fmt, envelope=OPENAI_REALTIME)
    return [event for frame in frames for event in sink.feed(frame)]


def check_sink(api: str, events: list[Any], frames: list[bytes], fmt: AudioFormat) -> None:
    """The Sink, fed the frames the SDK parsed into ``events``: per response, one segment
    holding exactly the SDK's deltas of that response, then the response's end."""
    assert len(frames) == len(events)  # one frame per event the SDK handed over
    _, delta_type, _ = names(api)
    sdk_audio: dict[str, bytes] = defaultdict(bytes)
    for event in events:
        if event.type == delta_type:
            sdk_audio[event.response_id] += base64.b64decode(event.delta)
    received = sink_events(frames, fmt)
    segments = [e.segment for e in received if isinstance(e, SegmentReady)]
    assert {s.context_id: bytes(s.pcm()) for s in segments} == sdk_audio
    assert len(segments) == len(sdk_audio)  # one audio part per response
    assert all(s.complete and s.format == fmt and s.flush_id == 0 for s in segments)
    responses = [e.response.id for e in events if e.type == "response.done"]
    assert [e.context_id for e in received if isinstance(e, ContextDone)] == responses


def connection_of(client: Any, api: str) -> Any:
    return (client.realtime if api == "ga" else client.beta.realtime).connect(model=MODEL)


async def converse_async(emu: OpenAIRealtimeEmulator, api: str,
                         session: dict[str, Any]) -> tuple[list[Any], list[bytes]]:
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=emu.url + "/v1")
    events = []
    async with connection_of(client, api) as conn:
        frames = recording(conn)
        await conn.session.update(session=session)
        await conn.conversation.item.create(item=USER_ITEM)
        await conn.response.create()
        async for event in conn:
            events.append(event)
            if event.type == "response.done":
                break
    return events, frames


def converse_sync(emu: OpenAIRealtimeEmulator, api: str,
                  session: dict[str, Any]) -> tuple[list[Any], list[bytes]]:
    client = OpenAI(api_key=API_KEY, websocket_base_url=emu.url + "/v1")
    events = []
    with connection_of(client, api) as conn:
        frames = recording(conn)
        conn.session.update(session=session)
        conn.conversation.item.create(item=USER_ITEM)
        conn.response.create()
        for event in conn:
            events.append(event)
            if event.type == "response.done":
                break
    return events, frames


@pytest.mark.parametrize("ga_format, beta_format, fmt", FORMATS)
@pytest.mark.parametrize("api", ["ga", "beta"])
def test_async_client(api: str, ga_format: dict[str, Any], beta_format: str, fmt: AudioFormat) -> None:
    voice = "marin" if api == "ga" else "verse"

    async def main() -> tuple[list[Any], list[bytes], Any]:
        async with OpenAIRealtimeEmulator(api_key=API_KEY) as emu:
            events, frames = await converse_async(emu, api, session_for(api, ga_format, beta_format, voice))
            return events, frames, emu.connections[0]

    events, frames, log = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    check_response(api, events, fmt, voice)
    check_sink(api, events, frames, fmt)
    assert log.beta == (api == "beta") and log.model == MODEL
    assert log.path == f"/v1/realtime?model={MODEL}"
    assert log.headers["authorization"] == f"Bearer {API_KEY}"
    assert log.headers["user-agent"] == f"AsyncOpenAI/Python {openai.__version__}"
    assert "sec-websocket-extensions" not in log.headers  # the SDK offers no compression
    assert log.headers.get("openai-beta") == ("realtime=v1" if api == "beta" else None)
    assert [m["type"] for m in log.received] == ["session.update", "conversation.item.create", "response.create"]


@pytest.mark.parametrize("ga_format, beta_format, fmt", FORMATS)
@pytest.mark.parametrize("api", ["ga", "beta"])
def test_sync_client(api: str, ga_format: dict[str, Any], beta_format: str, fmt: AudioFormat) -> None:
    with OpenAIRealtimeEmulator(api_key=API_KEY).running_in_thread() as emu:
        events, frames = converse_sync(emu, api, session_for(api, ga_format, beta_format, "alloy"))
        log = emu.connections[0]
    check_response(api, events, fmt, "alloy")
    check_sink(api, events, frames, fmt)
    assert log.headers["user-agent"] == f"OpenAI/Python {openai.__version__}"


@pytest.mark.parametrize("api", ["ga", "beta"])
def test_cancel_mid_response(api: str) -> None:
    types, delta_type, _ = names(api)
    fmt = AudioFormat("pcm_s16le", 24000)

    async def main() -> tuple[list[Any], list[bytes]]:
        async with OpenAIRealtimeEmulator(pace="realtime", chunk_ms=50) as emu:
            client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=emu.url + "/v1")
            events = []
            async with connection_of(client, api) as conn:
                frames = recording(conn)
                await conn.conversation.item.create(item=USER_ITEM)
                await conn.response.create()
                async for event in conn:
                    events.append(event)
                    if event.type == delta_type and sum(e.type == delta_type for e in events) == 2:
                        await conn.response.cancel()
                    if event.type == "response.done":
                        return events, frames
            raise AssertionError("the connection ended before response.done")

    events, frames = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    done = events[-1]
    assert isinstance(done, types.ResponseDoneEvent)
    assert done.response.status == "cancelled"
    assert done.response.status_details.reason == "client_cancelled"
    audio = b"".join(base64.b64decode(e.delta) for e in events if e.type == delta_type)
    full = render(TEXT, "alloy", fmt)
    assert 0 < len(audio) < len(full) and full.startswith(audio)
    assert not [e for e in events if e.type == "error"]
    # the audio part still ends with its done event: the Sink's segment is the cut audio
    check_sink(api, events, frames, fmt)


@pytest.mark.parametrize("api", ["ga", "beta"])
def test_errors_reach_the_sdk_as_error_events(api: str) -> None:
    types, _, _ = names(api)
    error_type = types.RealtimeErrorEvent if api == "ga" else types.ErrorEvent

    async def main() -> tuple[list[Any], list[bytes]]:
        async with OpenAIRealtimeEmulator() as emu:
            client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=emu.url + "/v1")
            async with connection_of(client, api) as conn:
                frames = recording(conn)
                await conn.response.cancel(event_id="evt_cancel")
                await conn.send({"type": "session.update", "session": {"voice": ""}, "event_id": "evt_voice"})
                events = []
                async for event in conn:
                    events.append(event)
                    if sum(e.type == "error" for e in events) == 2:
                        return events, frames
            raise AssertionError("the connection ended early")

    events, frames = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    cancel, update = [e for e in events if e.type == "error"]
    assert isinstance(cancel, error_type)
    assert (cancel.error.code, cancel.error.event_id) == ("response_cancel_not_active", "evt_cancel")
    assert cancel.error.type == "invalid_request_error" and cancel.error.message
    # GA refuses a session without session.type; beta refuses the empty voice.
    expected = ("missing_required_parameter", "session.type") if api == "ga" else ("invalid_value", "session.voice")
    assert (update.error.code, update.error.param, update.error.event_id) == (*expected, "evt_voice")
    # The Sink reads the same errors: no response named, so ServerErrors.
    errors = [e for e in sink_events(frames, AudioFormat("pcm_s16le", 24000)) if isinstance(e, ServerError)]
    assert [(e.error_code, e.message) for e in errors] == [
        (cancel.error.code, cancel.error.message), (update.error.code, update.error.message)]


def test_a_wrong_key_fails_the_handshake() -> None:
    async def main() -> int:
        async with OpenAIRealtimeEmulator(api_key=API_KEY) as emu:
            client = AsyncOpenAI(api_key="sk-wrong", websocket_base_url=emu.url + "/v1")
            try:
                async with client.realtime.connect(model=MODEL):
                    pass
            except InvalidStatus as exc:  # the SDK lets websockets' exception through
                return exc.response.status_code
            raise AssertionError("connected with a wrong key")

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == 401


def test_http_base_url_maps_to_ws() -> None:
    async def main() -> list[Any]:
        async with OpenAIRealtimeEmulator() as emu:
            client = AsyncOpenAI(api_key=API_KEY, base_url=emu.url.replace("ws://", "http://") + "/v1")
            async with client.realtime.connect(model=MODEL) as conn:
                return [await conn.recv()]

    [created] = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert isinstance(created, ga_types.SessionCreatedEvent) and created.session.model == MODEL
