"""The Twilio-style media sender (flushsink.emulator.twilio) calling a plain ``websockets``
server written here: what the server receives (event order, fields, numbering, the audio
byte for byte against ``render()``, decoded with the stdlib), the pace from the sender's
own recorded send times, and what the sender makes of the server's replies and closes.

The message shapes are written out here from docs/providers.md, not taken from the
sender.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve as serve_sync

from flushsink.emulator import CallLog, TwilioMediaSender, render, stream_call, stream_call_sync
from flushsink.emulator.twilio import DEFAULT_VOICE
from flushsink.formats import AudioFormat

TEXT = "Hello, I need a table for two."
MULAW = AudioFormat("pcm_mulaw", 8000)
FRAME = 160  # bytes of mu-law in 20 ms at 8 kHz
SILENCE = b"\xff"  # G.711 mu-law's code for a sample of 0
TIMEOUT = 5.0
T = TypeVar("T")

Reply = Callable[[ServerConnection, dict[str, Any], "Call"], Awaitable[None]]


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 4 * TIMEOUT))


def padded(audio: bytes) -> bytes:
    """The audio as the sender streams it: whole 20 ms frames, the last filled with silence."""
    return audio + SILENCE * (-len(audio) % FRAME)


@dataclass
class Call:
    """What the test server received on one connection, and how it ended."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    def events(self) -> list[str]:
        return [m["event"] for m in self.messages]

    def of(self, event: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["event"] == event]

    def audio(self, track: str = "inbound") -> bytes:
        return b"".join(base64.b64decode(m["media"]["payload"]) for m in self.of("media")
                        if m["media"]["track"] == track)


class Receiver:
    """A plain websockets server that records each call; ``reply`` may answer a message."""

    def __init__(self, reply: Reply | None = None) -> None:
        self.reply = reply
        self.calls: list[Call] = []
        self.done = asyncio.Event()

    async def handle(self, ws: ServerConnection) -> None:
        call = Call()
        self.calls.append(call)
        try:
            async for raw in ws:
                message = json.loads(raw)
                call.messages.append(message)
                if self.reply is not None:
                    await self.reply(ws, message, call)
        except ConnectionClosed:
            pass
        finally:
            rcvd = ws.protocol.close_rcvd
            call.close_code = rcvd.code if rcvd is not None else None
            self.done.set()

    async def call(self, **options: Any) -> tuple[CallLog, Call]:
        """Serve, run ``stream_call`` (TEXT unless ``text`` is given) against the server,
        and return both sides' records."""
        text = options.pop("text", TEXT)
        async with serve(self.handle, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            log = await stream_call(f"ws://127.0.0.1:{port}/media", text, **options)
            await asyncio.wait_for(self.done.wait(), TIMEOUT)
        [call] = self.calls
        return log, call


async def serving(receiver: Receiver, scenario: Callable[[str], Awaitable[T]]) -> T:
    async with serve(receiver.handle, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        result = await scenario(f"ws://127.0.0.1:{port}/media")
        await asyncio.wait_for(receiver.done.wait(), TIMEOUT)
        return result


# --- what the server receives -----------------------------------------------------------------


def test_a_call_is_connected_start_media_then_stop_with_twilios_fields():
    log, call = run(Receiver().call(pace="fast", custom_parameters={"caller": "+15550100"}))
    events = call.events()
    media = call.of("media")
    assert events == ["connected", "start"] + ["media"] * len(media) + ["stop"] and media
    assert call.messages[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}

    start = call.messages[1]
    sid = start["streamSid"]
    assert sid.startswith("MZ") and sid == log.stream_sid
    assert start["start"] == {
        "streamSid": sid,
        "accountSid": log.account_sid,
        "callSid": log.call_sid,
        "tracks": ["inbound"],
        "customParameters": {"caller": "+15550100"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    assert log.account_sid.startswith("AC") and log.call_sid.startswith("CA")
    # every event after connected: its stream and a sequence number, strings from "1"
    assert [m["sequenceNumber"] for m in call.messages[1:]] == [str(n) for n in range(1, len(events))]
    assert all(m["streamSid"] == sid for m in call.messages[1:])
    assert call.messages[-1]["stop"] == {"accountSid": log.account_sid, "callSid": log.call_sid}
    assert call.close_code == 1000

    # media: chunk from "1", timestamp in ms of audio before it, 160-byte payloads
    assert [set(m) for m in media] == [{"event", "sequenceNumber", "streamSid", "media"}] * len(media)
    assert [m["media"]["track"] for m in media] == ["inbound"] * len(media)
    assert [m["media"]["chunk"] for m in media] == [str(n) for n in range(1, len(media) + 1)]
    assert [m["media"]["timestamp"] for m in media] == [str(20 * n) for n in range(len(media))]
    assert {len(base64.b64decode(m["media"]["payload"])) for m in media} == {FRAME}
    expected = render(TEXT, DEFAULT_VOICE, MULAW)
    assert len(media) == -(-len(expected) // FRAME)
    assert call.audio() == padded(expected) == log.audio_sent["inbound"]

    # the sender's log: what it sent, and a clean end
    assert log.messages_sent() == call.messages
    assert (log.stopped, log.closed_by, log.close_code, log.problems) == (True, "client", 1000, [])


def test_given_ids_voice_and_tracks_are_used():
    async def scenario(url: str) -> CallLog:
        async with TwilioMediaSender(url, stream_sid="MZ1", call_sid="CA2", account_sid="AC3",
                                     tracks=("inbound", "outbound"), voice="agent", pace="fast") as sender:
            assert await sender.speak("Welcome.", track="outbound")
            assert await sender.speak("Thanks!", voice="caller-2")
            assert await sender.silence(50)
        return sender.log

    receiver = Receiver()
    log = run(serving(receiver, scenario))
    [call] = receiver.calls
    start = call.of("start")[0]["start"]
    assert (start["streamSid"], start["callSid"], start["accountSid"]) == ("MZ1", "CA2", "AC3")
    assert start["tracks"] == ["inbound", "outbound"]
    assert call.audio("outbound") == padded(render("Welcome.", "agent", MULAW))
    # silence: 50 ms is 400 samples, so three frames (the last filled up)
    assert call.audio("inbound") == padded(render("Thanks!", "caller-2", MULAW)) + SILENCE * 480
    for track in ("inbound", "outbound"):  # each track counts its own chunks and time
        media = [m["media"] for m in call.of("media") if m["media"]["track"] == track]
        assert [m["chunk"] for m in media] == [str(n) for n in range(1, len(media) + 1)]
        assert [m["timestamp"] for m in media] == [str(20 * n) for n in range(len(media))]
        assert log.audio_sent[track] == call.audio(track)


def test_chunk_ms_sets_the_frame_size():
    _, call = run(Receiver().call(pace="fast", chunk_ms=40))
    media = call.of("media")
    assert {len(base64.b64decode(m["media"]["payload"])) for m in media} == {320}
    assert [m["media"]["timestamp"] for m in media][:3] == ["0", "40", "80"]
    assert call.audio() == render(TEXT, DEFAULT_VOICE, MULAW) + SILENCE * (-len(render(TEXT, DEFAULT_VOICE, MULAW)) % 320)


def test_dtmf_is_sent_in_twilios_shape():
    async def scenario(url: str) -> None:
        async with TwilioMediaSender(url, pace="fast") as sender:
            assert await sender.dtmf("5")
            with pytest.raises(ValueError):
                await sender.dtmf("55")

    receiver = Receiver()
    run(serving(receiver, scenario))
    [call] = receiver.calls
    [dtmf] = call.of("dtmf")
    assert dtmf == {"event": "dtmf", "sequenceNumber": "2", "streamSid": call.messages[1]["streamSid"],
                    "dtmf": {"track": "inbound_track", "digit": "5"}}


# --- pace ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pace, frame_seconds", [("realtime", 0.020), (4.0, 0.005)])
def test_frames_keep_the_pace_by_the_senders_own_clock(pace: str | float, frame_seconds: float):
    log, call = run(Receiver().call(pace=pace, text="Hi."))
    times = [s.at for s in log.sent if s.message["event"] == "media"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == len(call.of("media")) > 10
    # each frame waits for its audio to be captured: the first a frame after start, the
    # whole stretch (n - 1) frames long; the event loop's jitter is left a generous margin
    assert times[0] >= frame_seconds * 0.9
    assert frame_seconds * (len(times) - 1) * 0.9 <= times[-1] - times[0] <= frame_seconds * len(times) * 2 + 0.25
    assert statistics.median(gaps) == pytest.approx(frame_seconds, rel=0.5)


def test_fast_does_not_wait_between_frames():
    log, _ = run(Receiver().call(pace="fast"))
    times = [s.at for s in log.sent]
    assert times[-1] - times[0] < 1.0  # about 2.5 s of audio


# --- what the server sends back -------------------------------------------------------------


def test_server_media_is_decoded_and_marks_are_echoed_after_its_audio():
    reply_audio = bytes(range(256)) * 3

    async def reply(ws: ServerConnection, message: dict[str, Any], call: Call) -> None:
        if message["event"] == "start":
            sid = message["streamSid"]
            for part in (reply_audio[:400], reply_audio[400:]):
                await ws.send(json.dumps({"event": "media", "streamSid": sid,
                                          "media": {"payload": base64.b64encode(part).decode()}}))
            await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "greeting"}}))

    log, call = run(Receiver(reply).call(pace="realtime", text="Yes.",
                                         until=lambda log: log.marks_echoed == ["greeting"]))
    assert bytes(log.audio_received) == reply_audio
    assert (log.marks_received, log.marks_echoed, log.problems) == (["greeting"], ["greeting"], [])
    [echo] = call.of("mark")
    assert echo == {"event": "mark", "sequenceNumber": echo["sequenceNumber"],
                    "streamSid": log.stream_sid, "mark": {"name": "greeting"}}
    # the echo waits for the 768 bytes (96 ms) of audio before it to play
    [mark_arrived] = [r.at for r in log.received if r.message["event"] == "mark"]
    [echo_sent] = [s.at for s in log.sent if s.message["event"] == "mark"]
    assert echo_sent - mark_arrived >= 0.096 * 0.8
    assert call.events()[-1] == "stop"
    # the sequence numbers interleave echo and media in sending order
    assert [m["sequenceNumber"] for m in call.messages[1:]] == [str(n) for n in range(1, len(call.messages))]


def test_clear_drops_the_queued_audio_and_echoes_pending_marks_at_once():
    async def reply(ws: ServerConnection, message: dict[str, Any], call: Call) -> None:
        if message["event"] == "start":
            sid = message["streamSid"]
            long_audio = base64.b64encode(SILENCE * 8000 * 5).decode()  # 1.25 s to play at pace 4
            await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": long_audio}}))
            await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "one"}}))
            await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "two"}}))
            await ws.send(json.dumps({"event": "clear", "streamSid": sid}))

    log, call = run(Receiver(reply).call(pace=4.0, text="Wait.",
                                         until=lambda log: len(log.marks_echoed) == 2))
    assert (log.clears, log.marks_echoed, log.problems) == (1, ["one", "two"], [])
    assert [m["mark"]["name"] for m in call.of("mark")] == ["one", "two"]
    [clear_arrived] = [r.at for r in log.received if r.message["event"] == "clear"]
    echoes = [s.at for s in log.sent if s.message["event"] == "mark"]
    assert all(at - clear_arrived < 0.5 for at in echoes)  # not after the audio


def test_marks_not_played_by_the_hang_up_are_not_echoed():
    async def reply(ws: ServerConnection, message: dict[str, Any], call: Call) -> None:
        if message["event"] == "start":
            sid = message["streamSid"]
            long_audio = base64.b64encode(SILENCE * 8000 * 5).decode()
            await ws.send(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": long_audio}}))
            await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "late"}}))

    log, call = run(Receiver(reply).call(pace=4.0, text="Bye.",
                                         until=lambda log: log.marks_received == ["late"]))
    assert (log.marks_received, log.marks_echoed, call.of("mark")) == (["late"], [], [])


def test_messages_twilio_would_not_take_are_noted_and_the_call_goes_on():
    async def reply(ws: ServerConnection, message: dict[str, Any], call: Call) -> None:
        if message["event"] == "start":
            sid = message["streamSid"]
            for bad in ["not json", json.dumps([1]), json.dumps({"event": "media", "media": {"payload": "AAAA"}}),
                        json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "%%%"}}),
                        json.dumps({"event": "hello", "streamSid": sid}),
                        json.dumps({"event": "mark", "streamSid": sid, "mark": {}})]:
                await ws.send(bad)
            await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "ok"}}))

    log, call = run(Receiver(reply).call(pace="fast", until=lambda log: log.marks_echoed == ["ok"]))
    assert len(log.problems) == 6, log.problems
    assert "not JSON" in log.problems[0] and "streamSid" in log.problems[2] and "'hello'" in log.problems[4]
    assert log.received[0].message == "not json"
    assert log.audio_received == b"" and log.stopped and call.events()[-1] == "stop"


# --- the server ending the call -------------------------------------------------------------------


def test_the_server_closing_early_ends_the_call_with_its_reason():
    async def reply(ws: ServerConnection, message: dict[str, Any], call: Call) -> None:
        if len(call.of("media")) == 3:
            await ws.close(4000, "caller hung up?")

    log, call = run(Receiver(reply).call(pace="realtime", text=TEXT * 4))
    assert (log.closed_by, log.close_code, log.close_reason) == ("server", 4000, "caller hung up?")
    assert not log.stopped and "stop" not in call.events()
    sent_media = log.messages_sent("media")
    assert 3 <= len(sent_media) < 10  # the call stopped there: far less than its audio
    assert len(log.audio_sent["inbound"]) == FRAME * len(sent_media)


def test_after_the_server_closed_the_senders_say_so():
    async def reply(ws: ServerConnection, message: dict[str, Any], call: Call) -> None:
        if message["event"] == "start":
            await ws.close(1000)

    async def scenario(url: str) -> tuple[list[bool], CallLog]:
        async with TwilioMediaSender(url, pace="fast") as sender:
            assert await sender.wait_for(lambda log: log.closed_by is not None)
            said = [await sender.speak("Hello?"), await sender.silence(20), await sender.dtmf("1"),
                    await sender.wait_for(lambda log: False)]
        return said, sender.log

    receiver = Receiver(reply)
    said, log = run(serving(receiver, scenario))
    assert said == [False] * 4
    assert (log.closed_by, log.close_code, log.stopped, log.messages_sent("media")) == ("server", 1000, False, [])


# --- Telnyx -----------------------------------------------------------------------------------------


def test_telnyx_dialect_snake_case_fields_and_no_stream_id_needed_back():
    async def reply(ws: ServerConnection, message: dict[str, Any], call: Call) -> None:
        if message["event"] == "start":  # pipecat's Telnyx serializer sends no stream id
            await ws.send(json.dumps({"event": "media", "media": {"payload": base64.b64encode(b"\x01\x02").decode()}}))
            await ws.send(json.dumps({"event": "mark", "mark": {"name": "m"}}))

    log, call = run(Receiver(reply).call(dialect="telnyx", pace="fast", caller="+15551230000",
                                         until=lambda log: log.marks_echoed == ["m"]))
    assert call.messages[0] == {"event": "connected", "version": "1.0.0"}
    start = call.messages[1]
    assert start["stream_id"] == log.stream_sid and "streamSid" not in start
    assert start["start"]["media_format"] == {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
    assert start["start"]["call_control_id"] == log.call_sid
    assert start["start"]["from"] == "+15551230000"
    assert {"call_session_id", "to", "client_state", "custom_parameters"} <= set(start["start"])
    assert [m["sequence_number"] for m in call.messages[1:]] == [str(n) for n in range(1, len(call.messages))]
    media = call.of("media")
    assert [m["media"]["chunk"] for m in media] == [str(n) for n in range(1, len(media) + 1)]
    assert call.audio() == padded(render(TEXT, DEFAULT_VOICE, MULAW))
    assert (bytes(log.audio_received), log.problems, call.events()[-1]) == (b"\x01\x02", [], "stop")


# --- the sync wrapper and bad options ---------------------------------------------------------------


def test_stream_call_sync_calls_a_server_in_a_thread():
    received: list[dict[str, Any]] = []

    def handler(ws: Any) -> None:
        for raw in ws:
            received.append(json.loads(raw))

    with serve_sync(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            log = stream_call_sync(f"ws://127.0.0.1:{server.socket.getsockname()[1]}", "Sync call.", pace="fast")
        finally:
            server.shutdown()
            thread.join(TIMEOUT)
    assert log.stopped and log.close_code == 1000
    assert b"".join(base64.b64decode(m["media"]["payload"]) for m in received if m["event"] == "media") \
        == padded(render("Sync call.", DEFAULT_VOICE, MULAW))


@pytest.mark.parametrize("options", [
    {"dialect": "vonage"}, {"pace": "slow"}, {"pace": 0}, {"chunk_ms": 0}, {"chunk_ms": 0.1},
    {"chunk_ms": float("nan")}, {"chunk_ms": True}, {"tracks": ()}, {"tracks": ("inbound", "inbound")},
    {"tracks": ("both",)},
])
def test_bad_options_are_refused_before_connecting(options: dict[str, Any]):
    with pytest.raises(ValueError):
        TwilioMediaSender("ws://127.0.0.1:9/never", **options)


def test_a_track_outside_the_stream_and_dtmf_on_telnyx_are_refused():
    async def scenario(url: str) -> None:
        async with TwilioMediaSender(url, pace="fast") as sender:
            with pytest.raises(ValueError):
                await sender.speak("Hi.", track="outbound")
        async with TwilioMediaSender(url, pace="fast", dialect="telnyx") as sender:
            with pytest.raises(ValueError):
                await sender.dtmf("1")

    receiver = Receiver()
    run(serving(receiver, scenario))
    assert len(receiver.calls) == 2 and all(c.events()[-1] == "stop" for c in receiver.calls)
