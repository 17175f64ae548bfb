"""The ElevenLabs client, ``connect(..., provider="elevenlabs")``, asyncio and sync, against
ElevenLabsEmulator on loopback (every server a test starts it stops).

Expected audio comes from the emulator's renderer, independently of what the client
received: each generation (a flush, or the flush no_more_inputs sends) renders exactly
``render(text, voice, format)`` of the text it took, which the emulator logs; a context's
one segment is its generations' audio, in order. The tests also say which text each
generation took, so the log is checked as well as used.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import soundfile

import flushsink
from flushsink import sync
from flushsink.emulator import ElevenLabsEmulator, render
from flushsink.envelopes import CARTESIA, ELEVENLABS
from flushsink.errors import (
    AuthenticationError,
    CapacityError,
    ConfigError,
    ContextClosed,
    ContextFailed,
    FlushsinkError,
    HandshakeError,
    ReceiveTimeout,
)
from flushsink.formats import AudioFormat
from flushsink.segments import ContextDone, SegmentReady
from flushsink.session import ELEVENLABS_OUTPUT_FORMATS, ElevenLabsProvider, Session, StreamEnd

VOICE = "21m00Tcm4TlvDq8ikWAM"
PCM24 = AudioFormat("pcm_s16le", 24000)
ARMS = ["asyncio", "sync"]
LONG = " ".join(["streaming"] * 80) + "."  # about 40 s of audio


def run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---- a small script runner, the same for both clients ----------------------------------
#
# A script is a list of steps, each (context id, operation, *arguments), run in order on
# one client: "push" (text[, flush[, extra fields]]), "flush", "end" (no_more_inputs),
# "cancel", "first_audio" (wait for the context's first AudioChunk), "read" (read the
# context to its end now, before the steps that follow) and "drained" (wait until the
# server has ended the contexts cancelled so far). Errors a step raises are kept, by
# context. Each context is then read to its end: audio() if the client streams, then
# events().


@dataclass
class Outcome:
    events: list[Any] = field(default_factory=list)
    audio: list[Any] = field(default_factory=list)
    error: Optional[BaseException] = None
    read: bool = False

    @property
    def segments(self) -> list[Any]:
        return [e.segment for e in self.events if isinstance(e, SegmentReady)]


@dataclass
class Run:
    outcomes: dict[str, Outcome]
    raised: dict[str, list[BaseException]]
    client: Any
    logs: list[Any]  # the emulator's ElevenLabsLog of each connection

    def generations(self, cid: str) -> list[str]:
        return [g.text for log in self.logs for g in log.generations if g.context_id == cid]

    def expected(self, cid: str, fmt: AudioFormat = PCM24, speed: float = 1.0) -> bytes:
        return b"".join(render(text, VOICE, fmt, speed=speed) for text in self.generations(cid))

    def received(self, cid: Optional[str] = None) -> list[Any]:
        return [m for log in self.logs for m in log.received
                if cid is None or m.get("context_id") == cid]


def speak(arm: str, steps: list[tuple[Any, ...]], *, emulator: Optional[dict[str, Any]] = None,
          contexts: Optional[dict[str, dict[str, Any]]] = None, url: Any = None,
          **options: Any) -> Run:
    """Run ``steps`` on a client of ``arm`` connected to a new ElevenLabsEmulator."""
    options = {"provider": "elevenlabs", "voice": VOICE, "receive_timeout": 10, **options}
    if arm == "asyncio":
        async def main() -> Run:
            async with ElevenLabsEmulator(**(emulator or {})) as emu:
                target = emu.url if url is None else url(emu)
                async with flushsink.connect(target, **options) as tts:
                    outcome = await _steps_async(tts, steps, contexts or {})
                return Run(*outcome, tts, emu.connections)

        return run(main())
    with ElevenLabsEmulator(**(emulator or {})).running_in_thread() as emu:
        target = emu.url if url is None else url(emu)
        with sync.connect(target, **options) as tts:
            outcome = _steps_sync(tts, steps, contexts or {})
        return Run(*outcome, tts, emu.connections)


async def _read_async(ctx: Any, stream: bool, outcome: Outcome, audio: Any) -> None:
    outcome.read = True
    if stream:
        try:
            async for chunk in audio or ctx.audio():
                outcome.audio.append(chunk)
        except FlushsinkError as exc:
            outcome.error = exc
    try:
        async for event in ctx.events():
            outcome.events.append(event)
    except FlushsinkError as exc:
        outcome.error = exc


async def _steps_async(tts: Any, steps: list[tuple[Any, ...]], options: dict[str, Any]) -> Any:
    contexts: dict[str, Any] = {}
    outcomes: dict[str, Outcome] = {}
    raised: dict[str, list[BaseException]] = {}
    audio: dict[str, Any] = {}
    for cid, op, *args in steps:
        if cid not in contexts:
            contexts[cid] = tts.context(context_id=cid, **options.get(cid, {}))
            outcomes[cid] = Outcome()
        ctx = contexts[cid]
        try:
            if op == "push":
                await ctx.push(args[0], flush=len(args) > 1 and args[1], **(args[2] if len(args) > 2 else {}))
            elif op == "flush":
                await ctx.flush()
            elif op == "end":
                await ctx.no_more_inputs()
            elif op == "cancel":
                await ctx.cancel()
            elif op == "first_audio":
                audio[cid] = ctx.audio()
                outcomes[cid].audio.append(await audio[cid].__anext__())
            elif op == "read":
                await _read_async(ctx, tts.stream, outcomes[cid], audio.get(cid))
            elif op == "drained":
                for _ in range(1000):
                    if not tts.session.draining:
                        break
                    await asyncio.sleep(0.01)
            else:  # pragma: no cover
                raise AssertionError(op)
        except FlushsinkError as exc:
            raised.setdefault(cid, []).append(exc)
    for cid, ctx in contexts.items():
        if not outcomes[cid].read:
            await _read_async(ctx, tts.stream, outcomes[cid], audio.get(cid))
    return outcomes, raised


def _read_sync(ctx: Any, stream: bool, outcome: Outcome, audio: Any) -> None:
    outcome.read = True
    if stream:
        try:
            for chunk in audio or ctx.audio():
                outcome.audio.append(chunk)
        except FlushsinkError as exc:
            outcome.error = exc
    try:
        for event in ctx.events():
            outcome.events.append(event)
    except FlushsinkError as exc:
        outcome.error = exc


def _steps_sync(tts: Any, steps: list[tuple[Any, ...]], options: dict[str, Any]) -> Any:
    contexts: dict[str, Any] = {}
    outcomes: dict[str, Outcome] = {}
    raised: dict[str, list[BaseException]] = {}
    audio: dict[str, Any] = {}
    for cid, op, *args in steps:
        if cid not in contexts:
            contexts[cid] = tts.context(context_id=cid, **options.get(cid, {}))
            outcomes[cid] = Outcome()
        ctx = contexts[cid]
        try:
            if op == "push":
                ctx.push(args[0], flush=len(args) > 1 and args[1], **(args[2] if len(args) > 2 else {}))
            elif op == "flush":
                ctx.flush()
            elif op == "end":
                ctx.no_more_inputs()
            elif op == "cancel":
                ctx.cancel()
            elif op == "first_audio":
                audio[cid] = ctx.audio()
                outcomes[cid].audio.append(next(audio[cid]))
            elif op == "read":
                _read_sync(ctx, tts.stream, outcomes[cid], audio.get(cid))
            elif op == "drained":
                for _ in range(1000):
                    if not tts.session.draining:
                        break
                    time.sleep(0.01)
            else:  # pragma: no cover
                raise AssertionError(op)
        except FlushsinkError as exc:
            raised.setdefault(cid, []).append(exc)
    for cid, ctx in contexts.items():
        if not outcomes[cid].read:
            _read_sync(ctx, tts.stream, outcomes[cid], audio.get(cid))
    return outcomes, raised


# ---- one context ----------------------------------------------------------------------------


@pytest.mark.parametrize("arm", ARMS)
def test_a_context_is_one_segment_of_every_generation_and_a_file(tmp_path, arm):
    steps = [("a", "push", "Hello there. "), ("a", "flush"),
             ("a", "push", "How are you today?"), ("a", "end")]
    result = speak(arm, steps, api_key="key", writer=flushsink.FileWriter(tmp_path))
    outcome = result.outcomes["a"]
    assert outcome.error is None and not result.raised
    # a flush makes audio sooner but no segment: the context's end (isFinal) finishes it
    assert [type(e) for e in outcome.events] == [SegmentReady, ContextDone]
    [segment] = outcome.segments
    assert segment.context_id == "a" and segment.flush_id == 0 and segment.complete
    assert segment.format == PCM24
    assert result.generations("a") == [" Hello there. ", "How are you today?"]
    assert segment.samples.tobytes() == result.expected("a")
    data, rate = soundfile.read(segment.path, dtype="int16")
    assert rate == 24000 and np.array_equal(data, segment.samples)
    assert Path(segment.path) == tmp_path / "a" / "0.wav"
    # what went on the wire: the first message opens the context, no_more_inputs is
    # a flush of what was pushed since the last one, then close_context
    [log] = result.logs
    assert log.multi and log.voice_id == VOICE and log.query == {"output_format": "pcm_24000"}
    assert log.headers["xi-api-key"] == "key"
    assert log.received == [
        {"text": " ", "context_id": "a"},
        {"text": "Hello there. ", "context_id": "a"},
        {"context_id": "a", "flush": True},
        {"text": "How are you today?", "context_id": "a"},
        {"context_id": "a", "flush": True},
        {"context_id": "a", "close_context": True},
    ]
    assert log.sent["final"] == 1 and log.sent["error"] == 0


@pytest.mark.parametrize("arm", ARMS)
@pytest.mark.parametrize("name", ["pcm_16000", "pcm_44100", "ulaw_8000"])
def test_output_formats_are_stored_and_written_as_received(tmp_path, arm, name):
    fmt = ELEVENLABS_OUTPUT_FORMATS[name]
    steps = [("a", "push", "Formats matter, ", True), ("a", "push", "samples too."),
             ("a", "end")]
    result = speak(arm, steps, output_format=name,
                   writer=flushsink.FileWriter(tmp_path, container="raw"))
    [segment] = result.outcomes["a"].segments
    assert segment.format == fmt and segment.complete
    assert result.generations("a") == [" Formats matter, ", "samples too."]
    assert segment.samples.tobytes() == result.expected("a", fmt)
    assert Path(segment.path).read_bytes() == result.expected("a", fmt)
    assert result.logs[0].query["output_format"] == name
    if fmt.encoding == "pcm_mulaw":
        assert segment.samples.dtype == np.uint8 and segment.to_int16().dtype == np.int16


@pytest.mark.parametrize("arm", ARMS)
def test_several_contexts_share_one_socket_each_with_only_its_audio(arm):
    texts = {"a": ["One two three. ", "Four five."], "b": ["Six seven eight nine ten."],
             "c": ["Eleven, ", "twelve, ", "thirteen."], "d": ["Fourteen."]}
    steps: list[tuple[Any, ...]] = []
    for i in range(3):  # the contexts' pushes interleaved, each flushed
        steps += [(cid, "push", pieces[i], True) for cid, pieces in texts.items()
                  if i < len(pieces)]
    steps += [(cid, "end") for cid in texts]
    # a context's options go into its first message: here the speed the emulator renders
    result = speak(arm, steps, emulator={"chunk_ms": 10},
                   contexts={"d": {"voice_settings": {"speed": 1.2}}})
    assert len(result.logs) == 1  # one socket
    for cid, pieces in texts.items():
        outcome = result.outcomes[cid]
        assert outcome.error is None
        [segment] = outcome.segments
        generations = result.generations(cid)
        assert [g.strip() for g in generations] == [p.strip() for p in pieces]
        speed = 1.2 if cid == "d" else 1.0
        assert segment.samples.tobytes() == result.expected(cid, speed=speed)
    assert result.received("d")[0] == {"text": " ", "context_id": "d",
                                       "voice_settings": {"speed": 1.2}}
    assert render("Fourteen.", VOICE, PCM24, speed=1.2) != render("Fourteen.", VOICE, PCM24)


@pytest.mark.parametrize("arm", ARMS)
def test_audio_streams_each_context_in_order(arm):
    steps = [("a", "push", "A streamed context, in pieces. ", True),
             ("b", "push", "Another one beside it.", True),
             ("a", "push", "And its second part."), ("a", "end"), ("b", "end")]
    result = speak(arm, steps, emulator={"chunk_ms": 20}, stream=True)
    for cid in "ab":
        outcome = result.outcomes[cid]
        assert outcome.error is None and len(outcome.audio) > 3
        assert all(c.context_id == cid and c.flush_id == 0 for c in outcome.audio)
        streamed = b"".join(c.data for c in outcome.audio)
        [segment] = outcome.segments
        assert streamed == segment.samples.tobytes() == result.expected(cid)
    assert result.generations("a") == [" A streamed context, in pieces. ", "And its second part."]


# ---- ending, cancelling, failing ----------------------------------------------------------


@pytest.mark.parametrize("arm", ARMS)
def test_cancel_stops_one_context_and_leaves_the_socket_and_the_others(arm):
    steps = [("a", "push", LONG, True), ("b", "push", "A short one.", True),
             ("a", "first_audio"), ("a", "cancel"), ("b", "end")]
    result = speak(arm, steps, emulator={"chunk_ms": 20, "pace": 4.0}, stream=True)
    cancelled = result.outcomes["a"]
    assert cancelled.error is None  # a cancelled context's stream just ends
    [partial] = cancelled.segments
    assert not partial.complete
    full = render(LONG, VOICE, PCM24)
    got = partial.samples.tobytes()
    assert 0 < len(got) < len(full) and full.startswith(got)  # what came before the cancel
    [segment] = result.outcomes["b"].segments
    assert segment.complete and segment.samples.tobytes() == result.expected("b")
    assert len(result.logs) == 1 and result.logs[0].sent["error"] == 0
    # ElevenLabs stops a context with close_context (it has no cancel message)
    assert result.received("a")[-1] == {"context_id": "a", "close_context": True}


@pytest.mark.parametrize("arm", ARMS)
def test_an_error_frame_fails_the_started_contexts_and_the_next_push_reconnects(arm):
    steps = [("a", "push", "Started. "),
             ("b", "push", "x", False, {"try_trigger_generation": "yes"}),  # not a bool
             ("a", "read"),
             ("c", "push", "After the error.", True), ("c", "end")]
    result = speak(arm, steps)
    for cid in "ab":
        failure = result.outcomes[cid].error
        assert isinstance(failure, ContextFailed)
        assert failure.event.context_id == cid
        assert failure.event.message.startswith("Could not parse input message")
        assert failure.event.error_code == "invalid_input_message"
    [error] = result.client.session.server_errors
    assert error.error_code == "invalid_input_message"
    # the service closes the socket after an error; a context that had not started
    # goes on a new connection
    assert [log.close_code for log in result.logs] == [1008, 1000]
    [segment] = result.outcomes["c"].segments
    assert segment.complete and segment.samples.tobytes() == result.expected("c")
    assert result.client.connections == 2


@pytest.mark.parametrize("arm", ARMS)
def test_the_client_keeps_to_the_five_contexts_a_socket_takes(arm):
    texts = {f"c{i}": f"Context number {i}." for i in range(6)}
    steps = [(cid, "push", texts[cid]) for cid in list(texts)[:5]]
    steps += [("c5", "push", texts["c5"]),  # a sixth: refused here, nothing sent
              ("c0", "end"),  # close_context...
              ("c5", "push", texts["c5"]),  # ...but c0 counts until its end (isFinal)
              ("c0", "read"),
              ("c5", "push", texts["c5"])]
    steps += [(cid, "end") for cid in list(texts)[1:]]
    result = speak(arm, steps)
    refusals = result.raised["c5"]
    assert len(refusals) == 2
    for refusal in refusals:
        assert type(refusal) is CapacityError and refusal.context_id == "c5"
        assert "5 contexts are open" in str(refusal)
    [log] = result.logs
    assert log.sent["error"] == 0  # the emulator never had to refuse one
    opened = [m["context_id"] for m in log.received if m.get("text") == " "]
    assert opened == list(texts)
    assert log.received.index({"context_id": "c0", "close_context": True}) < \
        log.received.index({"text": " ", "context_id": "c5"})
    assert [m for m in log.received if m.get("context_id") == "c5"] == [
        {"text": " ", "context_id": "c5"}, {"text": texts["c5"], "context_id": "c5"},
        {"context_id": "c5", "flush": True}, {"context_id": "c5", "close_context": True}]
    for cid, text in texts.items():
        [segment] = result.outcomes[cid].segments
        assert result.generations(cid) == [" " + text]
        assert segment.samples.tobytes() == render(text, VOICE, PCM24)


@pytest.mark.slow
@pytest.mark.parametrize("arm", ARMS)
def test_a_cancelled_context_counts_until_the_server_ends_it(arm):
    """close_context lets the generations asked for finish, then isFinal: until then the
    cancelled context may still count on the server, so it counts here (its audio is
    dropped all the same)."""
    texts = {f"c{i}": f"Context number {i}." for i in range(1, 6)}
    steps: list[tuple[Any, ...]] = [("c0", "push", " ".join(["word"] * 30) + ".", True)]
    steps += [(cid, "push", text) for cid, text in list(texts.items())[:4]]
    steps += [("c0", "first_audio"), ("c0", "cancel"),
              ("c5", "push", texts["c5"]),  # refused: c0 is still being generated
              ("c0", "drained"),
              ("c5", "push", texts["c5"])]
    steps += [(cid, "end") for cid in texts]
    result = speak(arm, steps, emulator={"chunk_ms": 20, "pace": 10.0}, stream=True)
    [refusal] = result.raised["c5"]
    assert isinstance(refusal, CapacityError)
    assert result.client.session.draining == set()
    [partial] = result.outcomes["c0"].segments
    assert not partial.complete
    for cid, text in texts.items():
        [segment] = result.outcomes[cid].segments
        assert segment.complete and segment.samples.tobytes() == render(text, VOICE, PCM24)
    [log] = result.logs
    assert log.sent["error"] == 0 and log.sent["final"] == 6  # c0's too, after its audio


@pytest.mark.parametrize("arm", ARMS)
def test_a_context_the_client_fails_is_closed_on_the_server(arm):
    """A context the client ends itself (here its segment passes the Sink's cap) gets
    close_context, so that it does not hold one of the socket's five for good."""
    steps = [("a", "push", LONG, True), ("b", "push", "A short one.", True),
             ("b", "end"), ("a", "read"), ("a", "drained")]
    sink = flushsink.Sink(envelope=ELEVENLABS, max_segment_bytes=200_000)
    result = speak(arm, steps, sink=sink)
    failure = result.outcomes["a"].error
    assert isinstance(failure, CapacityError) and failure.context_id == "a"
    assert result.received("a")[-1] == {"context_id": "a", "close_context": True}
    assert result.client.session.draining == set()
    [segment] = result.outcomes["b"].segments
    assert segment.samples.tobytes() == result.expected("b")


@pytest.mark.parametrize("arm", ARMS)
def test_a_context_past_the_servers_cap_fails_the_sockets_contexts(arm):
    steps = [("a", "push", "One. "), ("b", "push", "Two. "), ("c", "push", "Three. "),
             ("a", "read")]
    result = speak(arm, steps, emulator={"max_contexts": 2})
    for cid in "abc":
        failure = result.outcomes[cid].error
        assert isinstance(failure, ContextFailed)
        assert failure.event.error_code == "max_active_conversations"
        assert "Maximum simultaneous contexts" in failure.event.message
    assert result.logs[0].close_code == 1008


@pytest.mark.parametrize("arm", ARMS)
def test_a_wrong_key_is_an_authentication_error(arm):
    steps = [("a", "push", "Let me in.", True)]
    result = speak(arm, steps, emulator={"api_key": "right-key"}, api_key="wrong-key")
    failure = result.outcomes["a"].error
    assert isinstance(failure, AuthenticationError) and "Invalid API key" in str(failure)
    assert result.logs[0].headers["xi-api-key"] == "wrong-key"
    assert result.logs[0].close_code == 1008


def test_the_key_comes_from_elevenlabs_api_key(monkeypatch):
    monkeypatch.setenv("ELEVENLABS_API_KEY", "right-key")
    monkeypatch.setenv("CARTESIA_API_KEY", "not-this-one")
    steps = [("a", "push", "Let me in.", True), ("a", "end")]
    result = speak("asyncio", steps, emulator={"api_key": "right-key"})
    assert result.outcomes["a"].error is None
    assert result.logs[0].headers["xi-api-key"] == "right-key"
    monkeypatch.delenv("ELEVENLABS_API_KEY")
    with pytest.raises(FlushsinkError, match="ELEVENLABS_API_KEY"):
        flushsink.connect(provider="elevenlabs", voice=VOICE)  # ElevenLabs itself: a key
    assert flushsink.connect(provider="elevenlabs", voice=VOICE, api_key="k").url == (
        f"wss://api.elevenlabs.io/v1/text-to-speech/{VOICE}/multi-stream-input"
        "?output_format=pcm_24000")


@pytest.mark.parametrize("arm", ARMS)
def test_no_more_inputs_ends_input(arm):
    steps = [("a", "push", "Done now.", True), ("a", "end"), ("a", "end"),
             ("a", "push", "Too late."), ("e", "end")]
    result = speak(arm, steps)
    [late] = result.raised["a"]
    assert isinstance(late, ContextClosed)
    closes = [m for m in result.received("a") if m.get("close_context")]
    assert len(closes) == 1  # the second no_more_inputs sends nothing
    [segment] = result.outcomes["a"].segments
    assert segment.samples.tobytes() == render("Done now.", VOICE, PCM24)
    # a context ended before any text: opened and closed, done without a segment
    assert [type(e) for e in result.outcomes["e"].events] == [ContextDone]
    assert result.received("e") == [{"text": " ", "context_id": "e"},
                                    {"context_id": "e", "close_context": True}]


@pytest.mark.parametrize("arm", ARMS)
def test_a_context_whose_text_is_never_flushed_times_out(arm):
    async def main():
        async with ElevenLabsEmulator() as emu:
            async with flushsink.connect(emu.url, provider="elevenlabs", voice=VOICE) as tts:
                ctx = tts.context()
                await ctx.push("Waiting for a flush that never comes.")
                with pytest.raises(ReceiveTimeout):
                    await ctx.collect(timeout=0.3)

    if arm == "asyncio":
        run(main())
        return
    with ElevenLabsEmulator().running_in_thread() as emu:
        with sync.connect(emu.url, provider="elevenlabs", voice=VOICE) as tts:
            ctx = tts.context()
            ctx.push("Waiting for a flush that never comes.")
            with pytest.raises(ReceiveTimeout):
                ctx.collect(timeout=0.3)


# ---- connecting ---------------------------------------------------------------------------


def test_query_options_and_a_full_endpoint_url():
    steps = [("a", "push", "Query options.", True), ("a", "end")]
    result = speak("asyncio", steps, model_id="eleven_flash_v2_5", inactivity_timeout=60,
                   query={"language_code": "en", "auto_mode": True})
    assert result.logs[0].query == {"model_id": "eleven_flash_v2_5", "output_format": "pcm_24000",
                                    "inactivity_timeout": "60", "language_code": "en",
                                    "auto_mode": "true"}
    # the endpoint URL as the emulator gives it: voice and format come from it
    fmt = AudioFormat("pcm_s16le", 16000)
    result = speak("asyncio", steps, voice=None,
                   url=lambda emu: emu.endpoint(VOICE, multi=True, output_format="pcm_16000"))
    [segment] = result.outcomes["a"].segments
    assert segment.format == fmt and segment.samples.tobytes() == result.expected("a", fmt)


@pytest.mark.parametrize("arm", ARMS)
def test_handshake_errors_are_typed_and_retried_as_cartesias(arm):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    refused = f"ws://127.0.0.1:{closed_port}"
    retry = flushsink.Retry(attempts=2, backoff=0.0)

    async def main():
        async with ElevenLabsEmulator() as emu:
            tts = flushsink.connect(emu.url + "/nowhere", provider="elevenlabs", voice=VOICE,
                                    retry=3)
            with pytest.raises(HandshakeError) as not_found:
                await tts.connect()
            assert tts.handshake_retries == 0  # a 404 is not retried
            assert emu.rejected[0].status == 404
        tts = flushsink.connect(refused, provider="elevenlabs", voice=VOICE, retry=retry)
        with pytest.raises(HandshakeError) as refusal:
            await tts.connect()
        return not_found.value, refusal.value, tts.handshake_retries

    if arm == "asyncio":
        not_found, refusal, retries = run(main())
    else:
        with ElevenLabsEmulator().running_in_thread() as emu:
            tts = sync.connect(emu.url + "/nowhere", provider="elevenlabs", voice=VOICE, retry=3)
            with pytest.raises(HandshakeError) as caught:
                tts.connect()
            assert tts.handshake_retries == 0 and emu.rejected[0].status == 404
            not_found = caught.value
        tts = sync.connect(refused, provider="elevenlabs", voice=VOICE, retry=retry)
        with pytest.raises(HandshakeError) as caught:
            tts.connect()
        refusal, retries = caught.value, tts.handshake_retries
    assert not_found.status == 404 and "/nowhere/v1/text-to-speech/" in str(not_found)
    assert refusal.status is None and retries == 1  # a refused connection may pass


def test_options_the_provider_cannot_take_are_config_errors():
    url = "ws://127.0.0.1:9"
    el = dict(provider="elevenlabs", voice=VOICE)
    cases = [
        (dict(provider="elevenlabs"), "needs voice="),
        (dict(provider="elevenlabs", voice=""), "voice must be"),
        (dict(el, output_format="mp3_44100_128"), "not raw audio"),
        (dict(el, inactivity_timeout=181), "inactivity_timeout"),
        (dict(el, version="2025-11-04"), "Cartesia's API version"),
        (dict(el, query={"x": [1]}), "query parameter 'x'"),
        (dict(voice=VOICE), "option of provider='elevenlabs'"),  # Cartesia's voice is per context
        (dict(provider="azure"), "provider must be one of"),
        (dict(el, sink=flushsink.Sink()), "reads 'cartesia' frames"),
    ]
    for options, words in cases:
        with pytest.raises(ConfigError, match=words):
            flushsink.connect(url, **options)
        with pytest.raises(ConfigError, match=words):
            sync.connect(url, **options)
    bad_urls = [("http://127.0.0.1:9", "ws:// or wss://"),
                (f"ws://h/v1/text-to-speech/{VOICE}/stream-input", "not the single stream-input"),
                ("ws://h/v1/text-to-speech/other/multi-stream-input", "the url names voice"),
                ("ws://h/?output_format=pcm_16000", "the url says output_format")]
    for bad, words in bad_urls:
        with pytest.raises(ConfigError, match=words):
            flushsink.connect(bad, output_format="pcm_8000", **el)
    # a Sink given must read ElevenLabs' frames (and agree on streaming)
    tts = flushsink.connect(url, sink=flushsink.Sink(envelope=ELEVENLABS, stream=True), **el)
    assert tts.stream and tts.sink.envelope == ELEVENLABS
    assert flushsink.connect(url).sink.envelope == CARTESIA


def test_a_context_asking_for_another_voice_or_format_is_a_config_error():
    tts = flushsink.connect("ws://127.0.0.1:9", provider="elevenlabs", voice=VOICE,
                            model_id="eleven_flash_v2_5")
    with pytest.raises(ConfigError, match="one voice per socket"):
        tts.context(voice="another-voice")
    with pytest.raises(ConfigError, match="output_format"):
        tts.context(output_format="pcm_16000")
    with pytest.raises(ConfigError, match="model_id"):
        tts.context(model_id="eleven_v3")
    # the connection's own are fine, in any form of a voice
    for ctx in (tts.context(voice=VOICE), tts.context(voice={"id": VOICE}),
                tts.context(output_format="pcm_24000", model_id="eleven_flash_v2_5")):
        assert ctx._state.format == PCM24
    assert tts.session.contexts.keys() == {c for c in tts._contexts}  # nothing refused stayed


# ---- the sans-I/O Session with ElevenLabs frames ----------------------------------------------


def test_session_routes_elevenlabs_frames():
    provider = ElevenLabsProvider(voice=VOICE, output_format="pcm_16000")
    session = Session(flushsink.Sink(envelope=ELEVENLABS, drop_unannounced=True), provider)
    a, b = (session.new_context(context_id=cid) for cid in "ab")
    assert [json.loads(m) for m in session.push(a, "Hi.", flush=True)] == [
        {"text": " ", "context_id": "a"}, {"text": "Hi.", "context_id": "a", "flush": True}]
    session.push(b, "There.")
    audio = b"\x01\x00\x02\x00"
    frame = {"audio": "AQACAA==", "isFinal": None, "contextId": "a", "alignment": None}
    assert session.receive(json.dumps(frame)) == ()
    # an error naming its context fails that one only
    [end] = session.receive(json.dumps({"message": "bad text", "error": "invalid_text",
                                        "contextId": "b"}))[-1:]
    assert isinstance(end, StreamEnd) and isinstance(end.failure, ContextFailed)
    assert end.context_id == "b" and end.failure.event.message == "bad text"
    assert end.failure.event.error_code == "invalid_text"
    events = session.receive(json.dumps({"isFinal": True, "contextId": "a"}))
    assert [type(e) for e in events] == [SegmentReady, ContextDone, StreamEnd]
    segment = events[0].segment
    assert segment.complete and segment.flush_id == 0 and segment.pcm().tobytes() == audio
    assert segment.format == AudioFormat("pcm_s16le", 16000)
    assert session.contexts == {} and session.server_errors == type(session.server_errors)()
    # frames of contexts this session did not open are dropped
    assert session.receive(json.dumps({"audio": "AQACAA==", "contextId": "zzz"})) == ()
    with pytest.raises(ContextClosed):
        session.push(a, "late")
    with pytest.raises(ConfigError, match="Cartesia's"):
        session.request(a, "x")
