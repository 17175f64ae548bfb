"""The built-in envelopes describe the frames each provider's emulator really sends: a
reference router driven by nothing but the envelope (json.loads, the dotted paths,
base64) gets back each emulator's rendered audio, per context and segment. The Sink's
own reading of envelopes (issue 16 item 1) is held to the same router."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any, Optional

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from flushsink.emulator import (ElevenLabsEmulator, Emulator, OpenAIRealtimeEmulator, render,
                                stream_call)
from flushsink.envelopes import (BUILT_IN, CARTESIA, ELEVENLABS, OPENAI_REALTIME, TWILIO_MEDIA,
                                 Envelope)
from flushsink import SegmentReady, Sink
from flushsink.formats import AudioFormat

TIMEOUT = 10.0


def at(obj: Any, path: Optional[str]) -> Any:
    """The value at a dotted path, None when any step is missing."""
    if path is None:
        return None
    for name in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


def route(envelope: Envelope, frames: list[str]) -> dict[tuple[Any, Any], bytes]:
    """Audio per (context, segment), as the reference router and the Sink both read it
    by the envelope (they must agree)."""
    audio = reference_route(envelope, frames)
    assert sink_route(envelope, frames) == audio
    return audio


def sink_route(envelope: Envelope, frames: list[str]) -> dict[tuple[Any, Any], bytes]:
    sink = Sink(AudioFormat("pcm_s16le", 8000), envelope=envelope)
    events = [event for frame in frames for event in sink.feed(frame)] + list(sink.close())
    return {(e.segment.context_id, e.segment.flush_id):
            e.segment.samples.tobytes() + e.segment.trailing_bytes
            for e in events if isinstance(e, SegmentReady) and e.segment.nbytes}


def reference_route(envelope: Envelope, frames: list[str]) -> dict[tuple[Any, Any], bytes]:
    """Audio per (context, segment), in arrival order, as the envelope says to read it; a
    segment without a key is the context's current one, counted from 0 and moved on by
    the segment-end types."""
    audio: dict[tuple[Any, Any], bytes] = {}
    current: dict[Any, int] = {}
    decode = base64.b64decode if envelope.audio_encoding == "base64" else binascii.unhexlify
    for frame in frames:
        message = json.loads(frame)
        context = at(message, envelope.context_key)
        if context is None:
            context = at(message, envelope.context_fallback_key)
        if envelope.type_key is None:
            data = at(message, envelope.audio_key)
            kind = "audio" if data is not None else None
            if at(message, envelope.final_key) is True:
                kind = "context_end"
        else:
            kind = envelope.kind_of(at(message, envelope.type_key))
        segment = at(message, envelope.segment_key)
        if segment is None:
            segment = current.setdefault(context, 0)
        if kind == "audio":
            key = (context, segment)
            audio[key] = audio.get(key, b"") + decode(at(message, envelope.audio_key))
        elif kind == "segment_end" and envelope.segment_key is None:
            current[context] = current.get(context, 0) + 1
    return audio


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_the_built_ins_are_valid_and_named():
    assert set(BUILT_IN) == {"cartesia", "elevenlabs", "openai-realtime", "twilio-media"}
    assert all(BUILT_IN[name].name == name for name in BUILT_IN)
    assert OPENAI_REALTIME.kind_of("response.audio.delta") == "audio"  # beta
    assert OPENAI_REALTIME.kind_of("response.output_audio.done") == "segment_end"
    assert CARTESIA.kind_of("phoneme_timestamps") == "phoneme_timestamps"
    assert CARTESIA.kind_of("something new") is None


@pytest.mark.parametrize("change, word", [
    ({"audio_key": ""}, "audio_key"),
    ({"audio_key": "a..b"}, "audio_key"),
    ({"audio_key": ".".join("a" * 17)}, "audio_key"),
    ({"audio_key": "x" * 65}, "audio_key"),
    ({"audio_key": "d\u00e4ta"}, "audio_key"),
    ({"context_key": "data.id"}, "overlap"),
    ({"segment_key": "type"}, "overlap"),
    ({"final_key": "isFinal"}, "final_key"),
    ({"context_key": 5}, "context_key"),
    ({"segment_end_types": ("chunk",)}, "both"),
    ({"audio_types": ()}, "audio_types"),
    ({"audio_encoding": "base32"}, "audio_encoding"),
    ({"type_key": None}, "type values"),
    ({"name": ""}, "name"),
])
def test_a_bad_envelope_is_refused_naming_the_field(change, word):
    fields = {name: getattr(CARTESIA, name) for name in CARTESIA.__dataclass_fields__}
    fields.update(change)
    with pytest.raises(ValueError, match=word):
        Envelope(**fields)


def test_cartesia_frames():
    fmt = AudioFormat("pcm_s16le", 24000)
    texts = {"a": ["Stay hungry, ", "stay foolish."], "b": ["Another context."]}

    async def scenario():
        frames = []
        async with Emulator() as emu, connect(emu.ws_url) as ws:
            for cid, pieces in texts.items():
                for i, text in enumerate(pieces):
                    await ws.send(json.dumps({
                        "context_id": cid, "model_id": "sonic-3", "transcript": text,
                        "voice": "v", "output_format": fmt.to_output_format(),
                        "continue": i < len(pieces) - 1, "flush": i < len(pieces) - 1}))
            done = set()
            while done != set(texts):
                frames.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
                message = json.loads(frames[-1])
                if message["type"] == "done":
                    done.add(message["context_id"])
        return frames

    audio = route(CARTESIA, run(scenario()))
    assert audio == {("a", 1): render("Stay hungry, ", "v", fmt),
                     ("a", 2): render("stay foolish.", "v", fmt),
                     ("b", 1): render("Another context.", "v", fmt)}


@pytest.mark.parametrize("beta", [False, True])
def test_openai_realtime_frames(beta):
    fmt = AudioFormat("pcm_s16le", 24000)

    async def scenario():
        frames = []
        headers = {"OpenAI-Beta": "realtime=v1"} if beta else {}
        async with OpenAIRealtimeEmulator() as emu, connect(
                emu.ws_url + "?model=m", additional_headers=headers) as ws:
            for text in ("First answer.", "Second answer."):
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user",
                    "content": [{"type": "input_text", "text": text}]}}))
                await ws.send(json.dumps({"type": "response.create"}))
                while json.loads(frame := await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] \
                        != "response.done":
                    frames.append(frame)
                frames.append(frame)
        return frames

    audio = route(OPENAI_REALTIME, run(scenario()))
    assert list(audio.values()) == [render("First answer.", "alloy", fmt),
                                    render("Second answer.", "alloy", fmt)]
    assert len({context for context, _ in audio}) == 2  # a response each
    assert all(segment == 0 for _, segment in audio)  # the item's: one audio part each


def test_elevenlabs_multi_stream_frames():
    fmt = AudioFormat("pcm_s16le", 16000)

    async def scenario():
        frames = []
        async with ElevenLabsEmulator() as emu, connect(
                emu.endpoint("v", multi=True, output_format="pcm_16000")) as ws:
            for cid, text in (("x", "One context. "), ("y", "And another. ")):
                await ws.send(json.dumps({"text": " ", "context_id": cid}))
                await ws.send(json.dumps({"text": text, "context_id": cid, "flush": True}))
                await ws.send(json.dumps({"context_id": cid, "close_context": True}))
            finals = 0
            while finals < 2:
                frames.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
                finals += json.loads(frames[-1]).get("isFinal") is True
        return frames

    audio = route(ELEVENLABS, run(scenario()))
    assert audio == {("x", 0): render("One context.", "v", fmt),
                     ("y", 0): render("And another.", "v", fmt)}


def test_twilio_media_frames():
    received: list[str] = []

    async def scenario():
        async def handler(ws):
            async for frame in ws:
                received.append(frame)

        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            log = await stream_call(f"ws://127.0.0.1:{port}", "Hello there.", pace="fast")
            while not any(json.loads(f)["event"] == "stop" for f in received):
                await asyncio.sleep(0.01)
            return log

    log = run(scenario())
    audio = route(TWILIO_MEDIA, received)
    expected = render("Hello there.", "caller", AudioFormat("pcm_mulaw", 8000))
    [(key, got)] = audio.items()
    assert key == (log.stream_sid, 0)
    assert got[:len(expected)] == expected and set(got[len(expected):]) <= {0xFF}
