"""The local ElevenLabs TTS websocket emulator, driven by a plain ``websockets`` client.

Audio is checked byte for byte against ``render()`` (base64 decoded with the stdlib), with
the format each ``output_format`` names written out here rather than taken from the
emulator's table; alignment is checked against ``render_timestamps``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from flushsink.emulator import ElevenLabsEmulator, ElevenLabsLog, render, render_timestamps
from flushsink.emulator.elevenlabs import DEFAULT_CONTEXT_ID, MAX_CONTEXTS, Generation
from flushsink.formats import AudioFormat

VOICE_ID = "21m00Tcm4TlvDq8ikWAM"
PCM24 = AudioFormat("pcm_s16le", 24000)
TIMEOUT = 5.0
#: What SDK 2.78.0's convert_realtime sends first (providers.md 4.4, verified).
SDK_INIT = {"text": " ", "try_trigger_generation": True, "voice_settings": None,
            "generation_config": {"chunk_length_schedule": [50]}}
UNPARSABLE = ("Could not parse input message, make sure it is a json and follows the schema "
              "outlined in protocol.")
AUDIO_KEYS = ["audio", "isFinal", "normalizedAlignment", "alignment"]
T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 4 * TIMEOUT))


def dumps(messages: Iterable[dict[str, Any] | str]) -> list[str]:
    return [m if isinstance(m, str) else json.dumps(m) for m in messages]


# The readers call recv() bare (run() bounds the whole test): websockets' asyncio client
# before 15.0 drops the messages still buffered at the close when recv() runs under
# wait_for, and the emulator closes right after its last message.
async def read_until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], ConnectionClosed]:
    """Every message up to the end of the connection, and how it ended."""
    messages = []
    while True:
        try:
            messages.append(json.loads(await ws.recv()))
        except ConnectionClosed as exc:
            return messages, exc


async def read_until_final(ws: ClientConnection, context_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Messages until every listed context got its ``isFinal``."""
    pending = set(context_ids)
    messages = []
    while pending:
        message = json.loads(await ws.recv())
        messages.append(message)
        if message.get("isFinal") is True:
            pending.discard(message["contextId"])
    return messages


async def converse(url: str, messages: Iterable[dict[str, Any] | str], **options: Any
                   ) -> tuple[list[dict[str, Any]], ConnectionClosed]:
    """Send every message, then read until the server closes."""
    async with connect(url, open_timeout=TIMEOUT, **options) as ws:
        for message in dumps(messages):
            await ws.send(message)
        return await read_until_closed(ws)


def audio_of(messages: list[dict[str, Any]], context_id: str | None = None) -> bytes:
    return b"".join(
        base64.b64decode(m["audio"]) for m in messages
        if m.get("audio") and (context_id is None or m["contextId"] == context_id)
    )


# --- stream-input --------------------------------------------------------------------------


def test_single_stream_speaks_everything_at_the_end_then_isfinal_and_close_1000():
    parts = ["Hello there. ", "How are ", "you today? "]

    async def scenario():
        async with ElevenLabsEmulator() as emu:
            url = emu.endpoint(VOICE_ID, model_id="eleven_flash_v2_5", output_format="pcm_24000")
            messages, closed = await converse(
                url, [SDK_INIT, *({"text": p, "try_trigger_generation": True} for p in parts), {"text": ""}]
            )
            await asyncio.sleep(0.05)  # the server's log closes after the client's
            return messages, closed, emu.connections

    messages, closed, logs = run(scenario())
    assert (closed.rcvd.code, closed.rcvd.reason) == (1000, "")
    assert messages[-1] == {"isFinal": True}
    audio_messages = messages[:-1]
    assert audio_messages and all(list(m) == AUDIO_KEYS and m["isFinal"] is None for m in audio_messages)
    assert audio_of(messages) == render("".join(parts), VOICE_ID, PCM24)
    [log] = logs
    assert isinstance(log, ElevenLabsLog)
    assert (log.voice_id, log.multi, log.query["model_id"]) == (VOICE_ID, False, "eleven_flash_v2_5")
    assert log.generations == [Generation(None, " " + "".join(parts), 1.0)]
    assert log.sent == {"audio": len(audio_messages), "final": 1}
    assert log.audio_bytes_sent == len(audio_of(messages))
    assert (log.messages_received, log.close_code, log.closed) == (5, 1000, True)


def test_flush_generates_the_buffer_including_the_flushing_message_text():
    async def scenario():
        async with ElevenLabsEmulator() as emu:
            messages, closed = await converse(emu.endpoint(VOICE_ID, output_format="pcm_24000"), [
                {"text": " "}, {"text": "Stay hungry, "}, {"text": "stay foolish. ", "flush": True},
                {"text": " ", "flush": True},  # nothing buffered: no generation
                {"text": "Goodbye now. "}, {"text": ""},
            ])
            return messages, closed, emu.connections[0]

    messages, closed, log = run(scenario())
    assert closed.rcvd.code == 1000 and messages[-1] == {"isFinal": True}
    assert audio_of(messages) == (render("Stay hungry, stay foolish.", VOICE_ID, PCM24)
                                  + render("Goodbye now.", VOICE_ID, PCM24))
    assert [g.text for g in log.generations] == [" Stay hungry, stay foolish. ", "Goodbye now. "]


def test_audio_arrives_after_a_flush_without_ending_the_stream():
    async def scenario():
        async with ElevenLabsEmulator() as emu, connect(
            emu.endpoint(VOICE_ID, output_format="pcm_24000")
        ) as ws:
            for message in dumps([{"text": " "}, {"text": "One two three. ", "flush": True}]):
                await ws.send(message)
            expected = render("One two three.", VOICE_ID, PCM24)
            received = b""
            while len(received) < len(expected):
                message = json.loads(await ws.recv())
                assert message["isFinal"] is None
                received += base64.b64decode(message["audio"])
            with pytest.raises(asyncio.TimeoutError):  # no isFinal: the stream stays open
                await asyncio.wait_for(ws.recv(), 0.2)
            await ws.send(json.dumps({"text": ""}))
            rest, closed = await read_until_closed(ws)
            return received == expected, rest, closed.rcvd.code

    assert run(scenario()) == (True, [{"isFinal": True}], 1000)


@pytest.mark.parametrize(
    "output_format, fmt",
    [
        ("pcm_8000", AudioFormat("pcm_s16le", 8000)),
        ("pcm_16000", AudioFormat("pcm_s16le", 16000)),
        ("pcm_22050", AudioFormat("pcm_s16le", 22050)),
        ("pcm_24000", AudioFormat("pcm_s16le", 24000)),
        ("pcm_32000", AudioFormat("pcm_s16le", 32000)),
        ("pcm_44100", AudioFormat("pcm_s16le", 44100)),
        ("pcm_48000", AudioFormat("pcm_s16le", 48000)),
        ("ulaw_8000", AudioFormat("pcm_mulaw", 8000)),
    ],
)
def test_each_output_format_streams_the_rendered_audio(output_format: str, fmt: AudioFormat):
    text = "Formats, rates and encodings."

    async def scenario():
        async with ElevenLabsEmulator() as emu:
            return await converse(emu.endpoint(VOICE_ID, output_format=output_format),
                                  [{"text": " "}, {"text": text}, {"text": ""}])

    messages, closed = run(scenario())
    assert closed.rcvd.code == 1000
    assert audio_of(messages) == render(text, VOICE_ID, fmt)


def test_voice_settings_speed_is_the_render_speed():
    async def scenario():
        async with ElevenLabsEmulator() as emu:
            return await converse(emu.endpoint(VOICE_ID, output_format="pcm_16000"), [
                {"text": " ", "voice_settings": {"stability": 0.5, "similarity_boost": 0.8, "speed": 1.2}},
                {"text": "Quickly now. "}, {"text": ""},
            ])

    messages, _ = run(scenario())
    assert audio_of(messages) == render("Quickly now.", VOICE_ID, AudioFormat("pcm_s16le", 16000), speed=1.2)


# --- alignment --------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format, rate, width", [("pcm_44100", 44100, 2), ("ulaw_8000", 8000, 1)])
def test_alignment_tiles_each_message_and_follows_the_word_layout(output_format: str, rate: int, width: int):
    text = "The quick brown fox -- jumps over 12 lazy dogs!  Twice, really?"

    async def scenario():
        async with ElevenLabsEmulator(chunk_ms=50) as emu:
            return await converse(emu.endpoint(VOICE_ID, output_format=output_format),
                                  [{"text": " "}, {"text": text}, {"text": ""}])

    messages, _ = run(scenario())
    audio_messages = [m for m in messages if m.get("audio")]
    assert len(audio_messages) > 5
    chars: list[str] = []
    absolute_starts: list[int] = []
    samples_before = 0
    for index, message in enumerate(audio_messages):
        alignment = message["alignment"]
        assert message["normalizedAlignment"] == alignment  # no text normalisation
        assert list(alignment) == ["chars", "charStartTimesMs", "charDurationsMs"]
        starts, durations = alignment["charStartTimesMs"], alignment["charDurationsMs"]
        assert len(alignment["chars"]) == len(starts) == len(durations) > 0
        assert all(isinstance(t, int) and t >= 0 for t in starts + durations)
        # Relative to the message, contiguous, and spanning exactly its audio (in floor ms).
        samples = len(base64.b64decode(message["audio"])) // width
        assert starts[0] == 0
        assert all(starts[i + 1] == starts[i] + durations[i] for i in range(len(starts) - 1))
        first_ms, end_ms = samples_before * 1000 // rate, (samples_before + samples) * 1000 // rate
        assert starts[-1] + durations[-1] == end_ms - first_ms
        if index < len(audio_messages) - 1:
            assert samples >= 50 * rate // 1000  # chunk_ms, cut at a character boundary
        chars += alignment["chars"]
        absolute_starts += [first_ms + start for start in starts]
        samples_before += samples
    assert "".join(chars) == " ".join(text.split())
    # Each word's first character starts where the renderer puts the word's burst.
    word_starts = [absolute_starts[i] for i, ch in enumerate(chars)
                   if ch.isalnum() and (i == 0 or chars[i - 1] == " ")]
    expected = [round(start * rate) * 1000 // rate for _, start, _ in render_timestamps(text, VOICE_ID, rate)]
    assert word_starts == expected


# --- multi-stream-input --------------------------------------------------------------------


def test_contexts_stream_concurrently_and_close_context_ends_each_with_one_isfinal():
    texts = {"a": "The first context speaks here. ", "b": "And the second one, at once. "}

    async def scenario():
        async with ElevenLabsEmulator(chunk_ms=20) as emu:
            async with connect(emu.endpoint(VOICE_ID, multi=True, output_format="pcm_16000")) as ws:
                for context_id, text in texts.items():
                    await ws.send(json.dumps({"text": " ", "context_id": context_id, "voice_settings": None}))
                    await ws.send(json.dumps({"text": text, "context_id": context_id}))
                for context_id in texts:
                    await ws.send(json.dumps({"context_id": context_id, "flush": True}))
                    await ws.send(json.dumps({"context_id": context_id, "close_context": True}))
                return await read_until_final(ws, texts), emu.connections[0]

    messages, log = run(scenario())
    fmt = AudioFormat("pcm_s16le", 16000)
    order = [m["contextId"] for m in messages]
    assert order.index("b") < order.index("a") + order.count("a") - 1  # interleaved, not one after the other
    for context_id, text in texts.items():
        own = [m for m in messages if m["contextId"] == context_id]
        assert own[-1] == {"isFinal": True, "contextId": context_id}
        assert all(list(m) == [*AUDIO_KEYS, "contextId"] and m["isFinal"] is None for m in own[:-1])
        assert audio_of(own) == render(text, VOICE_ID, fmt)
    assert log.multi and [g.context_id for g in log.generations] == ["a", "b"]


def test_flush_alone_gives_no_isfinal_and_close_context_drops_unflushed_text():
    async def scenario():
        async with ElevenLabsEmulator() as emu, connect(
            emu.endpoint(VOICE_ID, multi=True, output_format="pcm_24000")
        ) as ws:
            for message in dumps([{"text": " ", "context_id": "c"},
                                  {"text": "Spoken words. ", "context_id": "c", "flush": True},
                                  {"text": "Never spoken. ", "context_id": "c"}]):
                await ws.send(message)
            expected = render("Spoken words.", VOICE_ID, PCM24)
            received = b""
            while len(received) < len(expected):
                received += base64.b64decode(json.loads(await ws.recv())["audio"])
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)
            await ws.send(json.dumps({"context_id": "c", "close_context": True}))
            final = json.loads(await ws.recv())
            return received == expected, final, emu.connections[0].generations

    same, final, generations = run(scenario())
    assert same and final == {"isFinal": True, "contextId": "c"}
    assert [g.text for g in generations] == [" Spoken words. "]


def test_close_context_lets_queued_generations_finish_first():
    async def scenario():
        async with ElevenLabsEmulator() as emu, connect(
            emu.endpoint(VOICE_ID, multi=True, output_format="pcm_24000")
        ) as ws:
            for message in dumps([{"text": " ", "context_id": "c"},
                                  {"text": "Long enough to still be streaming. ", "context_id": "c",
                                   "flush": True},
                                  {"text": "Then this. ", "context_id": "c", "flush": True,
                                   "close_context": True}]):
                await ws.send(message)
            return await read_until_final(ws, ["c"])

    messages = run(scenario())
    assert messages[-1] == {"isFinal": True, "contextId": "c"}
    assert audio_of(messages) == (render("Long enough to still be streaming.", VOICE_ID, PCM24)
                                  + render("Then this.", VOICE_ID, PCM24))


@pytest.mark.slow
def test_keep_alives_hold_the_socket_and_the_context_open():
    # keep-alives 0.4 s apart, four of them (1.6 s in all) against a 1 s timeout: only
    # they keep the socket open (a margin of 0.6 s each, for a loaded machine)
    async def scenario():
        async with ElevenLabsEmulator() as emu, connect(
            emu.endpoint(VOICE_ID, multi=True, output_format="pcm_24000", inactivity_timeout=1.0)
        ) as ws:
            await ws.send(json.dumps({"text": " ", "context_id": "c"}))
            await ws.send(json.dumps({"text": "Still here. ", "context_id": "c"}))
            keep_alives = [{"text": "", "context_id": "c"}, {"text": ""},
                           {"context_id": "ghost", "close_context": True},  # not open: ignored
                           {"text": "", "context_id": "c"}]
            for keep_alive in keep_alives:
                await asyncio.sleep(0.4)
                await ws.send(json.dumps(keep_alive))
            await ws.send(json.dumps({"context_id": "c", "flush": True, "close_context": True}))
            messages = await read_until_final(ws, ["c"])
            return messages, emu.connections[0]

    messages, log = run(scenario())
    assert {m["contextId"] for m in messages} == {"c"}
    assert audio_of(messages) == render("Still here.", VOICE_ID, PCM24)
    assert [g.context_id for g in log.generations] == ["c"]  # the bare {"text": ""} opened none


def test_audio_being_sent_holds_off_the_inactivity_timeout():
    text = "A few words"  # about 0.9 s of audio, sent over 0.45 s

    async def scenario():
        async with ElevenLabsEmulator(pace=2.0) as emu:
            url = emu.endpoint(VOICE_ID, output_format="pcm_24000", inactivity_timeout=0.25)
            return await converse(url, [{"text": " "}, {"text": text, "flush": True}])

    messages, closed = run(scenario())
    assert audio_of(messages[:-1]) == render(text, VOICE_ID, PCM24)
    assert messages[-1]["error"] == "input_timeout_exceeded" and closed.rcvd.code == 1008


def test_inactivity_timeout_sends_the_error_then_closes_1008():
    async def scenario():
        async with ElevenLabsEmulator() as emu, connect(
            emu.endpoint(VOICE_ID, output_format="pcm_24000", inactivity_timeout=0.2)
        ) as ws:
            await ws.send(json.dumps({"text": " "}))
            started = time.monotonic()
            messages, closed = await read_until_closed(ws)
            return messages, closed, time.monotonic() - started

    messages, closed, waited = run(scenario())
    message = ("Have not received a new text input within the timeout of 0.2 seconds. Streaming input "
               "terminated. Please make sure to either feed the input in the timely manner, or to send "
               'the end of input text (empty string "") when done.')
    assert messages == [{"message": message, "error": "input_timeout_exceeded", "code": 1008}]
    assert closed.rcvd.code == 1008 and message.encode().startswith(closed.rcvd.reason.encode())
    assert len(closed.rcvd.reason.encode()) == 123  # the reason is the message, cut to fit
    assert 0.15 < waited < 2.0


def test_close_socket_finishes_flushed_audio_drops_the_rest_and_closes_1000():
    async def scenario():
        async with ElevenLabsEmulator() as emu:
            return await converse(emu.endpoint(VOICE_ID, multi=True, output_format="pcm_24000"), [
                {"text": " ", "context_id": "a"},
                {"text": "Flushed words. ", "context_id": "a", "flush": True},
                {"text": " ", "context_id": "b"}, {"text": "Unflushed words. ", "context_id": "b"},
                {"close_socket": True},
            ])

    messages, closed = run(scenario())
    assert closed.rcvd.code == 1000
    assert not any(m.get("isFinal") for m in messages)
    assert audio_of(messages, "a") == render("Flushed words.", VOICE_ID, PCM24)
    assert audio_of(messages, "b") == b""


def test_default_context_and_camel_case_context_id():
    async def scenario():
        async with ElevenLabsEmulator() as emu:
            async with connect(emu.endpoint(VOICE_ID, multi=True, output_format="pcm_24000")) as ws:
                for message in dumps([{"text": " "}, {"text": "Default one. ", "flush": True},
                                      {"close_context": True},
                                      {"text": " ", "contextId": "camel"},
                                      {"text": "Camel two. ", "contextId": "camel", "flush": True},
                                      {"contextId": "camel", "close_context": True}]):
                    await ws.send(message)
                return await read_until_final(ws, [DEFAULT_CONTEXT_ID, "camel"])

    messages = run(scenario())
    assert audio_of(messages, DEFAULT_CONTEXT_ID) == render("Default one.", VOICE_ID, PCM24)
    assert audio_of(messages, "camel") == render("Camel two.", VOICE_ID, PCM24)


def test_a_sixth_open_context_is_refused_but_a_closed_one_frees_its_slot():
    async def scenario():
        async with ElevenLabsEmulator() as emu, connect(
            emu.endpoint(VOICE_ID, multi=True, output_format="pcm_24000")
        ) as ws:
            for index in range(MAX_CONTEXTS):
                await ws.send(json.dumps({"text": " ", "context_id": f"c{index}"}))
            await ws.send(json.dumps({"context_id": "c0", "close_context": True}))
            assert json.loads(await ws.recv()) == {"isFinal": True, "contextId": "c0"}
            await ws.send(json.dumps({"text": " ", "context_id": "c0"}))  # a new context, same id
            await ws.send(json.dumps({"text": " ", "context_id": "c5"}))
            return await read_until_closed(ws)

    messages, closed = run(scenario())
    message = ("Maximum simultaneous contexts per WebSocket connection exceeded (5). "
               "Please close an existing context before opening a new one.")
    assert messages == [{"message": message, "error": "max_active_conversations", "code": 1008}]
    assert closed.rcvd.code == 1008 and closed.rcvd.reason == message[:123]


# --- errors and authentication --------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        "[1, 2]",
        json.dumps({"flush": True}),  # stream-input messages all carry text
        json.dumps({"text": 5}),
        json.dumps({"text": "hi", "flush": "yes"}),
    ],
)
def test_a_message_off_the_schema_is_an_error_then_close_1008(raw: str):
    async def scenario():
        async with ElevenLabsEmulator() as emu:
            return await converse(emu.endpoint(VOICE_ID, output_format="pcm_24000"), [{"text": " "}, raw])

    messages, closed = run(scenario())
    assert messages == [{"message": UNPARSABLE, "error": "invalid_input_message", "code": 1008}]
    assert (closed.rcvd.code, closed.rcvd.reason) == (1008, UNPARSABLE)


@pytest.mark.parametrize("output_format", [None, "mp3_44100_128", "opus_48000_64", "pcm_11025"])
def test_formats_the_emulator_does_not_render_are_refused_at_once(output_format: str | None):
    async def scenario():
        async with ElevenLabsEmulator() as emu:
            query = {} if output_format is None else {"output_format": output_format}
            async with connect(emu.endpoint(VOICE_ID, **query)) as ws:  # sends nothing
                return await read_until_closed(ws)

    [message], closed = run(scenario())
    assert (message["error"], message["code"], closed.rcvd.code) == ("unsupported_output_format", 1008, 1008)
    assert "pcm_24000" in message["message"] and (output_format or "mp3_44100_128") in message["message"]


@pytest.mark.parametrize("value", ["0", "181", "soon", "nan"])
def test_an_inactivity_timeout_out_of_range_is_refused(value: str):
    async def scenario():
        async with ElevenLabsEmulator() as emu:
            url = emu.endpoint(VOICE_ID, output_format="pcm_24000", inactivity_timeout=value)
            async with connect(url) as ws:
                return await read_until_closed(ws)

    [message], closed = run(scenario())
    assert message["error"] == "invalid_request" and "inactivity_timeout" in message["message"]
    assert closed.rcvd.code == 1008


@pytest.mark.parametrize(
    "messages, error",
    [
        ([{"text": " ", "voice_settings": {"speed": 1.0}}, {"text": "Hi ", "voice_settings": {"speed": 1.1}}],
         "invalid_voice_settings"),
        ([{"text": " ", "voice_settings": None}, {"text": "Hi ", "voice_settings": {"speed": 1.0}}],
         "invalid_voice_settings"),
        ([{"text": " ", "voice_settings": {"speed": 2.0}}], "invalid_voice_settings"),
        ([{"text": " ", "voice_settings": "fast"}], "invalid_voice_settings"),
    ],
)
def test_voice_settings_are_fixed_by_the_first_message(messages: list[dict[str, Any]], error: str):
    async def scenario():
        async with ElevenLabsEmulator() as emu:
            return await converse(emu.endpoint(VOICE_ID, output_format="pcm_24000"), messages)

    [message], closed = run(scenario())
    assert message["error"] == error and closed.rcvd.code == 1008


def test_voice_settings_repeated_unchanged_are_accepted():
    settings = {"stability": 0.5, "similarity_boost": 0.75}

    async def scenario():
        async with ElevenLabsEmulator() as emu:
            return await converse(emu.endpoint(VOICE_ID, output_format="pcm_24000"), [
                {"text": " ", "voice_settings": settings},
                {"text": "Same again. ", "voice_settings": settings},
                {"text": ""},
            ])

    messages, closed = run(scenario())
    assert closed.rcvd.code == 1000 and audio_of(messages) == render("Same again.", VOICE_ID, PCM24)


@pytest.mark.parametrize(
    "headers, query, first",
    [
        ({"xi-api-key": "secret"}, {}, {}),
        ({}, {"authorization": "Bearer secret"}, {}),
        ({}, {}, {"xi_api_key": "secret"}),
        ({}, {}, {"xi-api-key": "secret"}),  # the single endpoint's documented spelling
        ({}, {}, {"authorization": "Bearer secret"}),
        ({"xi-api-key": "wrong"}, {}, {"xi_api_key": "secret"}),  # any key presented may match
    ],
)
def test_the_api_key_is_accepted_from_each_place(headers: dict[str, str], query: dict[str, str],
                                                 first: dict[str, str]):
    async def scenario():
        async with ElevenLabsEmulator(api_key="secret") as emu:
            return await converse(emu.endpoint(VOICE_ID, output_format="pcm_24000", **query),
                                  [{"text": " ", **first}, {"text": "Let me in. "}, {"text": ""}],
                                  additional_headers=headers)

    messages, closed = run(scenario())
    assert closed.rcvd.code == 1000 and audio_of(messages) == render("Let me in.", VOICE_ID, PCM24)


@pytest.mark.parametrize(
    "headers, first", [({"xi-api-key": "wrong"}, {}), ({}, {}), ({}, {"xi_api_key": "wrong"})]
)
def test_a_wrong_or_missing_key_is_an_error_then_close_1008(headers: dict[str, str], first: dict[str, str]):
    async def scenario():
        async with ElevenLabsEmulator(api_key="secret") as emu:
            return [await converse(emu.endpoint(VOICE_ID, multi=multi, output_format="pcm_24000"),
                                   [{"text": " ", **first}], additional_headers=headers)
                    for multi in (False, True)]

    for messages, closed in run(scenario()):
        assert messages == [{"message": "Invalid API key", "error": "invalid_api_key", "code": 1008}]
        assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "Invalid API key")


@pytest.mark.parametrize(
    "path", ["/v1/text-to-speech/v/stream", "/v1/text-to-speech//stream-input", "/tts/websocket"]
)
def test_other_paths_get_404(path: str):
    async def scenario():
        async with ElevenLabsEmulator() as emu:
            with pytest.raises(InvalidStatus) as caught:
                async with connect(emu.url + path, open_timeout=TIMEOUT):
                    pass
            return caught.value.response.status_code, emu.rejected, emu.connections

    status, rejected, connections = run(scenario())
    assert status == 404 and [r.status for r in rejected] == [404] and connections == []


# --- the server itself -----------------------------------------------------------------------


@pytest.mark.parametrize("pace, ratio", [("realtime", 1.0), (4.0, 4.0)])
def test_pace_keeps_audio_seconds_per_second(pace: str | float, ratio: float):
    text = "Go" if pace == "realtime" else "A few more words, paced."
    seconds = len(render(text, VOICE_ID, PCM24)) / PCM24.bytes_per_second / ratio

    async def scenario():
        async with ElevenLabsEmulator(pace=pace) as emu:
            started = time.monotonic()
            messages, _ = await converse(emu.endpoint(VOICE_ID, output_format="pcm_24000"),
                                         [{"text": " "}, {"text": text}, {"text": ""}])
            return messages, time.monotonic() - started

    messages, elapsed = run(scenario())
    assert audio_of(messages) == render(text, VOICE_ID, PCM24)
    assert seconds * 0.9 <= elapsed < seconds + 2.0


def test_endpoint_urls_and_running_in_a_thread():
    emu = ElevenLabsEmulator()
    with emu.running_in_thread():
        assert emu.endpoint("a b/c", multi=True, output_format="ulaw_8000", sync_alignment=True) == (
            f"ws://127.0.0.1:{emu.port}/v1/text-to-speech/a%20b%2Fc/multi-stream-input"
            "?output_format=ulaw_8000&sync_alignment=true"
        )
        assert emu.endpoint(VOICE_ID) == f"{emu.url}/v1/text-to-speech/{VOICE_ID}/stream-input"


def test_record_messages_off_keeps_the_counts_only():
    async def scenario():
        async with ElevenLabsEmulator(record_messages=False) as emu:
            await converse(emu.endpoint(VOICE_ID, output_format="pcm_24000"),
                           [{"text": " "}, {"text": "Unrecorded. "}, {"text": ""}])
            await asyncio.sleep(0.05)
            return emu.connections[0]

    log = run(scenario())
    assert (log.received, log.generations, log.messages_received, log.sent["final"]) == ([], [], 3, 1)
    assert log.audio_bytes_sent == len(render("Unrecorded.", VOICE_ID, PCM24))


@pytest.mark.parametrize(
    "options",
    [{"api_key": ""}, {"chunk_ms": 0}, {"chunk_ms": float("nan")}, {"max_contexts": 0},
     {"max_contexts": True}, {"compression": "gzip"}, {"pace": "slow"}, {"pace": 0}],
)
def test_bad_options_are_refused(options: dict[str, Any]):
    with pytest.raises(ValueError):
        ElevenLabsEmulator(**options)


def test_text_buffered_past_the_bound_is_refused():
    """The renderer's memory grows with the text: a stream buffers at most
    MAX_BUFFERED_TEXT characters without a flush (the emulator's own bound)."""
    from flushsink.emulator.elevenlabs import MAX_BUFFERED_TEXT

    async def scenario():
        async with ElevenLabsEmulator() as emu, connect(
            emu.endpoint(VOICE_ID, output_format="pcm_24000")
        ) as ws:
            await ws.send(json.dumps({"text": " "}))
            await ws.send(json.dumps({"text": "a " * (MAX_BUFFERED_TEXT // 2)}))
            return await read_until_closed(ws)

    messages, closed = run(scenario())
    assert [m.get("error") for m in messages] == ["input_too_long"]
    assert closed.rcvd.code == 1008
