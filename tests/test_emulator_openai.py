"""The local OpenAI Realtime emulator, driven by a plain ``websockets`` client.

Audio is checked byte for byte against ``render()``; base64 is decoded with the stdlib.
tests/sdk/test_openai_realtime_interop.py runs the official ``openai`` SDK against it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as sync_connect

from flushsink.emulator import OpenAIRealtimeEmulator, render
from flushsink.formats import AudioFormat

TIMEOUT = 5.0
TEXT = "Hello there, friend. How are you today?"
PCM = AudioFormat("pcm_s16le", 24000)
ULAW = AudioFormat("pcm_mulaw", 8000)
ALAW = AudioFormat("pcm_alaw", 8000)
BETA = {"OpenAI-Beta": "realtime=v1"}
T = TypeVar("T")

GA_RESPONSE = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    # audio and transcript deltas here
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]
BETA_RESPONSE = [
    "response.created",
    "response.output_item.added",
    "conversation.item.created",
    "response.content_part.added",
    "response.audio.done",
    "response.audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.done",
]
GA_DELTAS = ("response.output_audio.delta", "response.output_audio_transcript.delta")
BETA_DELTAS = ("response.audio.delta", "response.audio_transcript.delta")


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 4 * TIMEOUT))


def user_message(text: str, **fields: Any) -> dict[str, Any]:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return {"type": "conversation.item.create", "item": item, **fields}


def ga_output(fmt: Any = None, **output: Any) -> dict[str, Any]:
    if fmt is not None:
        output["format"] = fmt
    return {"type": "session.update", "session": {"type": "realtime", "audio": {"output": output}}}


async def read_until(ws: ClientConnection, last: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Events up to and including the first for which ``last`` is true."""
    events = []
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        events.append(event)
        if last(event):
            return events


def is_type(*types: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["type"] in types


async def exchange(
    emu: OpenAIRealtimeEmulator,
    events: list[dict[str, Any]],
    *,
    until: str = "response.done",
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Connect, send ``events``, return every server event up to ``until`` (session.created first)."""
    async with connect(emu.ws_url + "?model=gpt-realtime", additional_headers=headers, open_timeout=TIMEOUT) as ws:
        for event in events:
            await ws.send(json.dumps(event))
        return await read_until(ws, is_type(until))


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        base64.b64decode(e["delta"], validate=True)
        for e in events
        if e["type"] in ("response.output_audio.delta", "response.audio.delta")
    )


def transcript_of(events: list[dict[str, Any]]) -> str:
    return "".join(
        e["delta"]
        for e in events
        if e["type"] in ("response.output_audio_transcript.delta", "response.audio_transcript.delta")
    )


def response_events(events: list[dict[str, Any]], deltas: tuple[str, ...]) -> list[str]:
    """The event types from ``response.created`` on, without the deltas."""
    types = [e["type"] for e in events]
    return [t for t in types[types.index("response.created") :] if t not in deltas]


# --- the sequence ---------------------------------------------------------------------


def test_ga_session_item_and_response() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator(chunk_ms=50) as emu:
            return await exchange(emu, [user_message(TEXT, event_id="evt_1"), {"type": "response.create"}])

    events = run(main())
    created = events[0]
    assert created["type"] == "session.created"
    session = created["session"]
    assert session["type"] == "realtime" and session["model"] == "gpt-realtime"
    assert session["audio"]["output"] == {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0}
    assert [e["type"] for e in events[1:3]] == ["conversation.item.added", "conversation.item.done"]
    user_item = events[1]["item"]
    assert user_item["id"].startswith("item_") and user_item["role"] == "user"
    assert events[1]["previous_item_id"] is None
    assert response_events(events, GA_DELTAS) == GA_RESPONSE

    by_type = {e["type"]: e for e in events}
    response = by_type["response.created"]["response"]
    assert response["status"] == "in_progress" and response["output"] == []
    assert response["audio"]["output"]["voice"] == "alloy"
    item_id = by_type["response.output_item.added"]["item"]["id"]
    assert by_type["conversation.item.added"]["previous_item_id"] == user_item["id"]
    for event in events:
        if "item_id" in event:  # every delta and done of the content part
            assert (event["response_id"], event["item_id"]) == (response["id"], item_id)
            assert (event["output_index"], event["content_index"]) == (0, 0)

    assert audio_of(events) == render(TEXT, "alloy", PCM)
    assert transcript_of(events) == TEXT
    assert by_type["response.output_audio_transcript.done"]["transcript"] == TEXT
    assert by_type["response.content_part.done"]["part"] == {"type": "audio", "transcript": TEXT}
    done = by_type["response.done"]["response"]
    assert done["id"] == response["id"] and done["status"] == "completed" and done["status_details"] is None
    [item] = done["output"]
    assert item == by_type["response.output_item.done"]["item"] == by_type["conversation.item.done"]["item"]
    assert item["status"] == "completed" and item["role"] == "assistant"
    assert item["content"] == [{"type": "output_audio", "transcript": TEXT}]
    event_ids = [e["event_id"] for e in events]
    assert len(set(event_ids)) == len(event_ids) and all(i.startswith("event_") for i in event_ids)


def test_beta_names_when_the_client_asks_for_them() -> None:
    async def main() -> tuple[list[dict[str, Any]], Any]:
        async with OpenAIRealtimeEmulator() as emu:
            events = await exchange(emu, [user_message(TEXT), {"type": "response.create"}], headers=BETA)
            return events, emu.connections[0]

    events, log = run(main())
    assert log.beta
    session = events[0]["session"]
    assert (session["output_audio_format"], session["voice"], session["modalities"]) == ("pcm16", "alloy", ["text", "audio"])
    assert "type" not in session  # a beta session has no session.type
    assert events[1]["type"] == "conversation.item.created"
    assert response_events(events, BETA_DELTAS) == BETA_RESPONSE
    assert audio_of(events) == render(TEXT, "alloy", PCM)
    assert transcript_of(events) == TEXT
    done = events[-1]["response"]
    assert done["output_audio_format"] == "pcm16" and done["voice"] == "alloy"
    assert done["output"][0]["content"] == [{"type": "audio", "transcript": TEXT}]


def test_an_unrelated_beta_header_keeps_ga_names() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            return await exchange(emu, [user_message("Hi."), {"type": "response.create"}],
                                  headers={"OpenAI-Beta": "assistants=v2"})

    assert response_events(run(main()), GA_DELTAS) == GA_RESPONSE


def test_deltas_are_chunk_ms_of_audio_and_words_lead_their_audio() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator(chunk_ms=40) as emu:
            return await exchange(emu, [user_message(TEXT), {"type": "response.create"}])

    events = run(main())
    sizes = [len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta"]
    assert set(sizes[:-1]) == {24000 * 40 // 1000 * 2} and 0 < sizes[-1] <= sizes[0]
    # A transcript delta is one or more whole words, each sent before the first audio
    # delta that holds its start: the first event after content_part.added is text.
    deltas = [e for e in events if e["type"] in GA_DELTAS]
    assert deltas[0]["type"] == "response.output_audio_transcript.delta"
    assert deltas[0]["delta"] == "Hello "
    words = [e["delta"] for e in deltas if "transcript" in e["type"]]
    assert words == [word + " " for word in TEXT.split()[:-1]] + [TEXT.split()[-1]]


# --- formats, voice, speed ------------------------------------------------------------


@pytest.mark.parametrize(
    "session, fmt",
    [
        ({"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}}}}, PCM),
        ({"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm"}}}}, PCM),
        ({"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}}, ULAW),
        ({"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcma"}}}}, ALAW),
    ],
    ids=["pcm", "pcm-no-rate", "pcmu", "pcma"],
)
def test_ga_output_formats(session: dict[str, Any], fmt: AudioFormat) -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            update = {"type": "session.update", "session": session}
            return await exchange(emu, [update, user_message(TEXT), {"type": "response.create"}])

    events = run(main())
    updated = events[1]
    assert updated["type"] == "session.updated"
    assert updated["session"]["audio"]["output"]["format"] == session["audio"]["output"]["format"]
    assert events[-1]["response"]["audio"]["output"]["format"] == session["audio"]["output"]["format"]
    assert audio_of(events) == render(TEXT, "alloy", fmt)


@pytest.mark.parametrize("name, fmt", [("pcm16", PCM), ("g711_ulaw", ULAW), ("g711_alaw", ALAW)])
def test_beta_output_formats(name: str, fmt: AudioFormat) -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            update = {"type": "session.update", "session": {"output_audio_format": name}}
            return await exchange(emu, [update, user_message(TEXT), {"type": "response.create"}], headers=BETA)

    events = run(main())
    assert events[1]["session"]["output_audio_format"] == name
    assert audio_of(events) == render(TEXT, "alloy", fmt)


@pytest.mark.parametrize("name", [{"a": 1}, ["pcm16"], 16])
def test_a_beta_format_of_the_wrong_type_is_an_error(name: Any) -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            async with connect(emu.ws_url, open_timeout=TIMEOUT, additional_headers=BETA) as ws:
                await ws.send(json.dumps({"type": "session.update",
                                          "session": {"output_audio_format": name}}))
                return await read_until(ws, is_type("error"))

    error = run(main())[-1]["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "session.output_audio_format")


def test_switching_format_replaces_the_format_object_and_keeps_the_rest() -> None:
    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with OpenAIRealtimeEmulator() as emu:
            async with connect(emu.ws_url, open_timeout=TIMEOUT) as ws:
                await ws.send(json.dumps({"type": "session.update",
                                          "session": {"type": "realtime", "instructions": "Be brief."}}))
                await ws.send(json.dumps(ga_output({"type": "audio/pcmu"})))
                events = await read_until(ws, is_type("session.updated"))
                events += await read_until(ws, is_type("session.updated"))
            return events, await exchange(emu, [], until="session.created")

    events, other = run(main())
    session = events[-1]["session"]
    assert session["instructions"] == "Be brief."  # an earlier update stays
    assert session["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "alloy", "speed": 1.0}
    assert session["id"] == events[0]["session"]["id"]
    # Each connection has a session of its own.
    assert other[0]["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}


@pytest.mark.parametrize(
    "update, voice, speed",
    [
        (ga_output(voice="marin"), "marin", 1.0),
        (ga_output(voice={"id": "voice_1234"}, speed=1.25), "voice_1234", 1.25),
        (ga_output(speed=0.5), "alloy", 0.5),
    ],
    ids=["voice", "custom-voice-and-speed", "speed"],
)
def test_ga_voice_and_speed(update: dict[str, Any], voice: str, speed: float) -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            return await exchange(emu, [update, user_message(TEXT), {"type": "response.create"}])

    assert audio_of(run(main())) == render(TEXT, voice, PCM, speed=speed)


def test_beta_voice_and_speed_and_the_emulators_default_voice() -> None:
    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with OpenAIRealtimeEmulator(voice="sage") as emu:
            update = {"type": "session.update", "session": {"voice": "verse", "speed": 1.5}}
            beta = await exchange(emu, [update, user_message(TEXT), {"type": "response.create"}], headers=BETA)
            ga = await exchange(emu, [user_message(TEXT), {"type": "response.create"}])
            return beta, ga

    beta, ga = run(main())
    assert audio_of(beta) == render(TEXT, "verse", PCM, speed=1.5)
    assert ga[0]["session"]["audio"]["output"]["voice"] == "sage"
    assert audio_of(ga) == render(TEXT, "sage", PCM)


def test_the_voice_is_fixed_once_audio_was_sent_and_the_model_always() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            async with connect(emu.ws_url + "?model=gpt-realtime", open_timeout=TIMEOUT) as ws:
                update = ga_output(voice="marin")
                update["session"]["model"] = "another-model"
                await ws.send(json.dumps(update))  # before any audio: fine
                events = await read_until(ws, is_type("session.updated"))
                await ws.send(json.dumps(user_message("Hi.")))
                await ws.send(json.dumps({"type": "response.create"}))
                events += await read_until(ws, is_type("response.done"))
                await ws.send(json.dumps(ga_output(voice="cedar")))
                events += await read_until(ws, is_type("error", "session.updated"))
                await ws.send(json.dumps(ga_output(voice="marin", speed=1.5)))  # same voice: fine
                return events + await read_until(ws, is_type("error", "session.updated"))

    events = run(main())
    assert events[1]["session"]["audio"]["output"]["voice"] == "marin"
    assert events[1]["session"]["model"] == "gpt-realtime"
    assert audio_of(events) == render("Hi.", "marin", PCM)
    refused, accepted = events[-2], events[-1]
    assert refused["type"] == "error" and refused["error"]["code"] == "cannot_update_voice"
    assert accepted["type"] == "session.updated" and accepted["session"]["audio"]["output"]["speed"] == 1.5


# --- what the assistant says ----------------------------------------------------------


def test_the_last_user_message_is_spoken() -> None:
    two_parts = user_message("First part.")
    two_parts["item"]["content"].append({"type": "input_text", "text": "Second part."})
    assistant = {"type": "conversation.item.create",
                 "item": {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "No."}]}}

    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            return await exchange(emu, [user_message("Not this."), two_parts, assistant, {"type": "response.create"}])

    events = run(main())
    assert transcript_of(events) == "First part. Second part."
    assert audio_of(events) == render("First part. Second part.", "alloy", PCM)


def test_response_input_items_replace_the_conversation() -> None:
    inline = user_message("Out of band.")["item"]

    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            create = {"type": "response.create",
                      "response": {"conversation": "none", "input": [inline], "metadata": {"k": "v"}}}
            return await exchange(emu, [user_message(TEXT), create])

    events = run(main())
    assert audio_of(events) == render("Out of band.", "alloy", PCM)
    types = response_events(events, GA_DELTAS)
    assert "conversation.item.added" not in types and "conversation.item.done" not in types
    done = events[-1]["response"]
    assert done["conversation_id"] is None and done["metadata"] == {"k": "v"}


def test_reply_decides_what_is_said_and_responses_join_the_conversation() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator(reply=lambda text: f"You said: {text}") as emu:
            async with connect(emu.ws_url, open_timeout=TIMEOUT) as ws:
                await ws.send(json.dumps(user_message("one")))
                await ws.send(json.dumps({"type": "response.create"}))
                first = await read_until(ws, is_type("response.done"))
                await ws.send(json.dumps({"type": "response.create"}))  # no new user message
                return first + await read_until(ws, is_type("response.done"))

    events = run(main())
    done = [e for e in events if e["type"] == "response.done"]
    assert [d["response"]["output"][0]["content"][0]["transcript"] for d in done] == ["You said: one"] * 2
    # The second response's item follows the first response's in the conversation.
    added = [e for e in events if e["type"] == "conversation.item.added"]
    assert added[2]["previous_item_id"] == added[1]["item"]["id"]


def test_nothing_to_say_is_a_completed_response_without_audio() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            return await exchange(emu, [{"type": "response.create"}])

    events = run(main())
    assert response_events(events, GA_DELTAS) == GA_RESPONSE
    assert not [e for e in events if e["type"] in GA_DELTAS]
    assert events[-1]["response"]["status"] == "completed"
    assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == ""


def test_punctuation_only_is_transcript_without_audio() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            return await exchange(emu, [user_message("..."), {"type": "response.create"}])

    events = run(main())
    assert audio_of(events) == b"" == render("...", "alloy", PCM)
    assert transcript_of(events) == "..."


# --- conversation items ---------------------------------------------------------------


def test_items_chain_and_insert_after_previous_item_id() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            async with connect(emu.ws_url, open_timeout=TIMEOUT) as ws:
                await read_until(ws, is_type("session.created"))
                ids = []
                for text in ("a", "b"):
                    await ws.send(json.dumps(user_message(text)))
                    ids.append((await read_until(ws, is_type("conversation.item.done")))[-1]["item"]["id"])
                inserted = user_message("between", previous_item_id=ids[0])
                inserted["item"]["id"] = "item_mine"
                await ws.send(json.dumps(inserted))
                await ws.send(json.dumps({"type": "response.create"}))
                return await read_until(ws, is_type("response.done")) + [{"type": "ids", "ids": ids}]

    *events, ids = run(main())
    added = events[0]
    assert added["type"] == "conversation.item.added"
    assert (added["item"]["id"], added["previous_item_id"]) == ("item_mine", ids["ids"][0])
    assert transcript_of(events) == "b"  # still the last user message of the conversation


def test_beta_item_created() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            return await exchange(emu, [user_message("a")], headers=BETA, until="conversation.item.created")

    events = run(main())
    assert events[1]["type"] == "conversation.item.created"
    assert events[1]["item"]["status"] == "completed" and events[1]["item"]["object"] == "realtime.item"


# --- cancel ---------------------------------------------------------------------------


@pytest.mark.parametrize("headers, names", [(None, GA_RESPONSE), (BETA, BETA_RESPONSE)], ids=["ga", "beta"])
def test_cancel_stops_a_realtime_response(headers: dict[str, str] | None, names: list[str]) -> None:
    deltas = BETA_DELTAS if headers else GA_DELTAS

    async def main() -> tuple[list[dict[str, Any]], float, Any]:
        async with OpenAIRealtimeEmulator(pace="realtime", chunk_ms=50) as emu:
            async with connect(emu.ws_url, additional_headers=headers, open_timeout=TIMEOUT) as ws:
                await ws.send(json.dumps(user_message(TEXT)))
                await ws.send(json.dumps({"type": "response.create"}))
                events = await read_until(ws, is_type(deltas[0]))
                await ws.send(json.dumps({"type": "response.cancel", "event_id": "evt_cancel"}))
                started = time.monotonic()
                events += await read_until(ws, is_type("response.done"))
                return events, time.monotonic() - started, emu.connections[0]

    events, took, log = run(main())
    assert response_events(events, deltas) == names
    full = render(TEXT, "alloy", PCM)
    audio = audio_of(events)
    assert 0 < len(audio) < len(full) // 2 and full.startswith(audio)
    assert took < 1.0  # the cancel ends the pacing wait (the rest would take about 2 s)
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    [item] = done["output"]
    assert item["status"] == "incomplete"
    spoken = transcript_of(events)
    assert TEXT.startswith(spoken) and len(spoken) < len(TEXT)
    assert item["content"][0]["transcript"] == spoken
    assert not [e for e in events if e["type"] == "error"]
    assert list(log.responses.values()) == ["cancelled"]


def test_cancel_by_response_id_and_then_a_new_response() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator(pace=4.0, chunk_ms=50) as emu:
            async with connect(emu.ws_url, open_timeout=TIMEOUT) as ws:
                await ws.send(json.dumps(user_message(TEXT)))
                await ws.send(json.dumps({"type": "response.create"}))
                created = (await read_until(ws, is_type("response.created")))[-1]
                await ws.send(json.dumps({"type": "response.cancel", "response_id": "resp_other"}))
                wrong = (await read_until(ws, is_type("error")))[-1]
                await ws.send(json.dumps({"type": "response.cancel", "response_id": created["response"]["id"]}))
                cancelled = (await read_until(ws, is_type("response.done")))[-1]
                await ws.send(json.dumps(user_message("Again.")))
                await ws.send(json.dumps({"type": "response.create"}))
                return [wrong, cancelled] + await read_until(ws, is_type("response.done"))

    wrong, cancelled, *events = run(main())
    assert wrong["error"]["code"] == "response_cancel_not_active"
    assert cancelled["response"]["status"] == "cancelled"
    assert events[-1]["response"]["status"] == "completed"
    assert audio_of(events) == render("Again.", "alloy", PCM)


def test_cancel_with_nothing_in_progress_is_an_error() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            return await exchange(emu, [{"type": "response.cancel", "event_id": "evt_7"}], until="error")

    error = run(main())[-1]
    assert error["error"] == {
        "type": "invalid_request_error",
        "code": "response_cancel_not_active",
        "message": "Cancellation failed: no active response found",
        "param": None,
        "event_id": "evt_7",
    }


def test_one_response_at_a_time() -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator(pace=4.0, chunk_ms=50) as emu:
            async with connect(emu.ws_url, open_timeout=TIMEOUT) as ws:
                await ws.send(json.dumps(user_message("Hi there.")))
                await ws.send(json.dumps({"type": "response.create"}))
                await ws.send(json.dumps({"type": "response.create", "event_id": "evt_2"}))
                return await read_until(ws, is_type("response.done"))

    events = run(main())
    [error] = [e for e in events if e["type"] == "error"]
    response_id = events[[e["type"] for e in events].index("response.created")]["response"]["id"]
    assert error["error"]["code"] == "conversation_already_has_active_response"
    assert error["error"]["event_id"] == "evt_2" and response_id in error["error"]["message"]
    assert events[-1]["response"]["status"] == "completed"
    assert audio_of(events) == render("Hi there.", "alloy", PCM)


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, code, param",
    [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_value", None),
        ('{"event_id": "evt_x"}', "missing_required_parameter", "type"),
        ('{"type": "response.speak", "event_id": "evt_x"}', "invalid_value", "type"),
        ('{"type": "transcription_session.update", "event_id": "evt_x"}', "invalid_value", "type"),  # beta only
        ('{"type": "session.update", "event_id": "evt_x"}', "missing_required_parameter", "session"),
        ('{"type": "session.update", "session": {}, "event_id": "evt_x"}', "missing_required_parameter", "session.type"),
        ('{"type": "session.update", "session": {"type": "transcription"}}', "invalid_value", "session.type"),
        (json.dumps(ga_output({"type": "audio/opus"})), "invalid_value", "session.audio.output.format.type"),
        (json.dumps(ga_output({"type": "audio/pcm", "rate": 16000})), "invalid_value", "session.audio.output.format.rate"),
        # formats of the wrong JSON type: an error, not a crash of the connection (1011)
        (json.dumps(ga_output("audio/pcm")), "invalid_value", "session.audio.output.format"),
        (json.dumps(ga_output(["audio/pcm"])), "invalid_value", "session.audio.output.format"),
        (json.dumps(ga_output({"type": ["audio/pcm"]})), "invalid_value", "session.audio.output.format.type"),
        (json.dumps(ga_output(speed=2.0)), "invalid_value", "session.audio.output.speed"),
        (json.dumps(ga_output(voice="")), "invalid_value", "session.audio.output.voice"),
        ('{"type": "conversation.item.create"}', "missing_required_parameter", "item"),
        ('{"type": "conversation.item.create", "item": {"type": "note"}}', "invalid_value", "item.type"),
        ('{"type": "conversation.item.create", "item": {"type": "message", "role": "bot"}}', "invalid_value", "item.role"),
        (json.dumps(user_message("x", previous_item_id="item_nope")), "invalid_value", "previous_item_id"),
        ('{"type": "response.create", "response": "now"}', "invalid_value", "response"),
        # the emulator's bound on what it speaks (the renderer's memory grows with the text)
        (json.dumps({"type": "response.create", "response": {"input": [user_message("a " * 10_001)["item"]]}}),
         "invalid_value", "input"),
    ],
)
def test_errors_leave_the_session_usable(raw: str, code: str, param: str | None) -> None:
    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with OpenAIRealtimeEmulator() as emu:
            async with connect(emu.ws_url, open_timeout=TIMEOUT) as ws:
                await ws.send(raw)
                errors = await read_until(ws, is_type("error"))
                await ws.send(json.dumps(user_message("Still here.")))
                await ws.send(json.dumps({"type": "response.create"}))
                return errors, await read_until(ws, is_type("response.done"))

    errors, after = run(main())
    error = errors[-1]
    assert [e["type"] for e in errors] == ["session.created", "error"]
    assert error["event_id"].startswith("event_")
    assert set(error["error"]) == {"type", "code", "message", "param", "event_id"}
    assert error["error"]["type"] == "invalid_request_error"
    assert (error["error"]["code"], error["error"]["param"]) == (code, param)
    assert error["error"]["message"]
    expected_event_id = "evt_x" if '"evt_x"' in raw else None
    assert error["error"]["event_id"] == expected_event_id
    assert audio_of(after) == render("Still here.", "alloy", PCM)  # the format did not change


@pytest.mark.parametrize(
    "session, param",
    [
        ({"output_audio_format": "mp3"}, "session.output_audio_format"),
        ({"speed": 0.1}, "session.speed"),
        ({"voice": 7}, "session.voice"),
    ],
)
def test_beta_session_errors(session: dict[str, Any], param: str) -> None:
    async def main() -> list[dict[str, Any]]:
        async with OpenAIRealtimeEmulator() as emu:
            return await exchange(emu, [{"type": "session.update", "session": session}], headers=BETA, until="error")

    assert run(main())[-1]["error"]["param"] == param


def test_client_events_it_does_not_emulate_are_recorded_and_ignored() -> None:
    ignored = [
        {"type": "input_audio_buffer.append", "audio": "AAAA"},
        {"type": "input_audio_buffer.commit"},
        {"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, "audio_end_ms": 0},
        {"type": "output_audio_buffer.clear"},
    ]

    async def main() -> tuple[list[dict[str, Any]], Any]:
        async with OpenAIRealtimeEmulator() as emu:
            events = await exchange(emu, [*ignored, {"type": "nope"}], until="error")
            return events, emu.connections[0]

    events, log = run(main())
    assert [e["type"] for e in events] == ["session.created", "error"]
    assert events[-1]["error"]["message"].startswith("Invalid value: 'nope'.")
    assert log.received[:4] == ignored


# --- handshake ------------------------------------------------------------------------


def test_api_key_is_checked_as_a_bearer_token() -> None:
    async def attempt(emu: OpenAIRealtimeEmulator, headers: dict[str, str]) -> int:
        try:
            async with connect(emu.ws_url + "?model=m", additional_headers=headers, open_timeout=TIMEOUT) as ws:
                await read_until(ws, is_type("session.created"))
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    async def main() -> tuple[list[int], Any]:
        async with OpenAIRealtimeEmulator(api_key="sk-test") as emu:
            statuses = [
                await attempt(emu, {}),
                await attempt(emu, {"Authorization": "Bearer sk-wrong"}),
                await attempt(emu, {"X-API-Key": "sk-test"}),  # not how OpenAI takes a key
                await attempt(emu, {"Authorization": "Bearer sk-test"}),
            ]
            return statuses, emu

    statuses, emu = run(main())
    assert statuses == [401, 401, 401, 101]
    assert [r.status for r in emu.rejected] == [401, 401, 401]
    assert len(emu.connections) == 1


@pytest.mark.parametrize(
    "prefix, path, status",
    [
        ("/v1", "/v1/realtime?model=m", 101),
        ("/v1", "/realtime?model=m", 404),
        ("/v1", "/v1/realtime/extra", 404),
        ("/v1", "/tts/websocket", 404),
        ("", "/realtime", 101),
        ("/openai/v1", "/openai/v1/realtime?model=m", 101),
    ],
)
def test_paths(prefix: str, path: str, status: int) -> None:
    async def main() -> int:
        async with OpenAIRealtimeEmulator(prefix=prefix) as emu:
            try:
                async with connect(emu.url + path, open_timeout=TIMEOUT) as ws:
                    await read_until(ws, is_type("session.created"))
                    return 101
            except InvalidStatus as exc:
                return exc.response.status_code

    assert run(main()) == status


def test_connection_log_and_urls() -> None:
    async def main() -> tuple[OpenAIRealtimeEmulator, list[dict[str, Any]], str, str]:
        async with OpenAIRealtimeEmulator(chunk_ms=100) as emu:
            events = await exchange(emu, [user_message(TEXT), {"type": "response.create"}])
            base, ws_url = emu.websocket_base_url, emu.ws_url
        return emu, events, base, ws_url

    emu, events, base, ws_url = run(main())
    assert base.endswith("/v1") and ws_url == base + "/realtime"
    [log] = emu.connections
    assert log.closed and not log.beta and log.model == "gpt-realtime"
    assert log.path == "/v1/realtime?model=gpt-realtime"
    assert [m["type"] for m in log.received] == ["conversation.item.create", "response.create"]
    assert log.received_of("response.create") == [{"type": "response.create"}]
    assert log.messages_received == 2
    assert log.sent["response.output_audio.delta"] == sum(e["type"] == "response.output_audio.delta" for e in events)
    assert sum(log.sent.values()) == len(events)
    assert log.audio_bytes_sent == len(render(TEXT, "alloy", PCM))
    assert list(log.responses.values()) == ["completed"]


def test_record_messages_off_keeps_counts() -> None:
    async def main() -> Any:
        async with OpenAIRealtimeEmulator(record_messages=False) as emu:
            await exchange(emu, [user_message("a"), {"type": "response.create"}])
            return emu.connections[0]

    log = run(main())
    assert log.received == [] and log.messages_received == 2


# --- pacing, threads, options ---------------------------------------------------------


def test_realtime_pace_takes_the_audio_duration() -> None:
    text = "Hi there."
    duration = len(render(text, "alloy", PCM)) / PCM.bytes_per_second

    async def main() -> float:
        async with OpenAIRealtimeEmulator(pace=4.0, chunk_ms=20) as emu:
            started = time.monotonic()
            await exchange(emu, [user_message(text), {"type": "response.create"}])
            return time.monotonic() - started

    took = run(main())
    assert duration / 4 * 0.9 <= took < duration / 4 + 1.0


def test_running_in_thread_with_a_sync_client() -> None:
    with OpenAIRealtimeEmulator().running_in_thread() as emu:
        with sync_connect(emu.ws_url + "?model=m", additional_headers=BETA, open_timeout=TIMEOUT) as ws:
            ws.send(json.dumps(user_message("Sync.")))
            ws.send(json.dumps({"type": "response.create"}))
            events = []
            while not events or events[-1]["type"] != "response.done":
                events.append(json.loads(ws.recv(timeout=TIMEOUT)))
    assert audio_of(events) == render("Sync.", "alloy", PCM)


@pytest.mark.parametrize(
    "options",
    [
        {"api_key": ""},
        {"prefix": "v1"},
        {"prefix": "/v1/"},
        {"voice": ""},
        {"chunk_ms": 0},
        {"chunk_ms": float("nan")},
        {"pace": "slow"},
        {"pace": 0},
        {"pace": True},
    ],
)
def test_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OpenAIRealtimeEmulator(**options)
