"""pipecat-ai's stock CartesiaTTSService and flushsink's drop-in, against the emulator.

Runs where pipecat-ai is installed (its own virtual environment; the main suite skips
it). Both services speak the same text through pipecat's own test pipeline
(``pipecat.tests.utils.run_test``); each must give the emulator's audio byte for byte,
and the drop-in the same frames as the stock service.
"""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    ErrorFrame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.services.cartesia.tts import CartesiaTTSService as StockService  # noqa: E402
from pipecat.tests.utils import SleepFrame, run_test  # noqa: E402

from flushsink import AudioFormat  # noqa: E402
from flushsink.emulator import Emulator, render  # noqa: E402
from flushsink.integrations.pipecat import CartesiaTTSService as DropIn  # noqa: E402

TEXT = "Stay hungry, stay foolish. The rest is detail."
VOICE = "pipecat-voice"
RATE = 24000
SERVICES = {"stock": StockService, "flushsink": DropIn}


FULL = render(TEXT, VOICE, AudioFormat("pcm_s16le", RATE))


async def speak(service_class, text, *, after=(), emulator=None, upstream=False, settings=None):
    """The frames the service pushes downstream for one TTSSpeakFrame (then the frames
    in ``after``), and the emulator's connection logs; with ``upstream``, the frames it
    pushed upstream too. ``settings``: more of the service's Settings."""
    async with Emulator(**(emulator or {})) as emu:
        tts = service_class(
            api_key="test-key",
            url=emu.ws_url,
            sample_rate=RATE,
            settings=service_class.Settings(voice=VOICE, **(settings or {})),
        )
        down, up = await asyncio.wait_for(
            run_test(tts, frames_to_send=[TTSSpeakFrame(text), *after]), 30
        )
        return (down, up, emu.connections) if upstream else (down, emu.connections)


def audio_of(frames):
    return b"".join(f.audio for f in frames if isinstance(f, TTSAudioRawFrame))


def summary(frames):
    """What must agree between the two services: frame types in order (audio frames
    counted, not sized), the word frames' text, and which context each belongs to."""
    out = []
    for f in frames:
        name = type(f).__name__
        if isinstance(f, TTSTextFrame):
            name += f":{f.text}"
        if out and out[-1][0] == name == "TTSAudioRawFrame":
            out[-1] = (name, out[-1][1] + 1)
        else:
            out.append((name, 1))
    return out


@pytest.mark.parametrize("which", sorted(SERVICES))
def test_audio_is_the_emulators(which):
    down, connections = asyncio.run(speak(SERVICES[which], TEXT))
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio, [type(f).__name__ for f in down]
    assert {(f.sample_rate, f.num_channels) for f in audio} == {(RATE, 1)}
    assert audio_of(audio) == FULL
    # one context, opened and closed once; all its audio tagged with it
    started = [f for f in down if isinstance(f, TTSStartedFrame)]
    stopped = [f for f in down if isinstance(f, TTSStoppedFrame)]
    assert len(started) == len(stopped) == 1
    assert {f.context_id for f in audio} == {stopped[0].context_id}
    # word timestamps became TTSTextFrames, every word of the text
    words = [f.text for f in down if isinstance(f, TTSTextFrame)]
    assert " ".join(words) == TEXT
    assert len(connections) == 1


@pytest.mark.parametrize("which", sorted(SERVICES))
def test_what_pipecat_sends_is_taken_as_it_is(which):
    """pipecat's own handshake and requests, unchanged: its API version (the header), its
    key header, a regional language, timestamps asked for, a model id no SDK lists. The
    emulator answers no error and speaks the text (issue 15 item 4)."""
    from pipecat.transcriptions.language import Language

    down, connections = asyncio.run(speak(SERVICES[which], TEXT,
                                          settings={"language": Language.EN_GB}))
    assert audio_of(down) == FULL
    (log,) = connections
    assert log.version == "2026-03-01" and log.headers["x-api-key"] == "test-key"
    assert log.structured_errors and log.sent["error"] == 0
    requests = [m for m in log.received if "transcript" in m]
    assert requests and {m["language"] for m in requests} == {"en-GB"}
    assert all(m["add_timestamps"] is True for m in requests)
    # pipecat 1.14's default model, which no SDK enumerates (its own default, not ours)
    assert {m["model_id"] for m in requests} == {"sonic-3.6"}


def test_dropin_pushes_the_stock_frames():
    stock, _ = asyncio.run(speak(StockService, TEXT))
    ours, _ = asyncio.run(speak(DropIn, TEXT))
    assert summary(ours) == summary(stock)


def sending_an_error_without_context_id(service_class):
    """The service, made to send a request without ``context_id`` before each text: the
    emulator answers it with an error that has no ``context_id`` (as Cartesia does for
    some errors about the connection), before the text's audio."""

    class Provoking(service_class):
        async def run_tts(self, text, context_id):
            await self._get_websocket().send(json.dumps({"transcript": "no context"}))
            async for frame in super().run_tts(text, context_id):
                yield frame

    return Provoking


def test_dropin_survives_an_error_without_context_id():
    down, up, connections = asyncio.run(
        speak(sending_an_error_without_context_id(DropIn), TEXT, upstream=True))
    assert audio_of(down) == FULL
    assert sum(isinstance(f, TTSStoppedFrame) for f in down) == 1
    errors = [f for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and "context_id" in errors[0].error
    assert len(connections) == 1


def test_stock_loses_the_audio_on_an_error_without_context_id():
    """Why the drop-in handles it: pipecat 1.14's loop reads msg["context_id"], raises
    KeyError, drops the socket and the context's audio with it (docs/integrations.md).
    If a pipecat upgrade fixes this, this test says so."""
    down, _ = asyncio.run(speak(sending_an_error_without_context_id(StockService), TEXT))
    assert audio_of(down) == b""


@pytest.mark.slow
@pytest.mark.parametrize("which", sorted(SERVICES))
def test_interruption_cancels_the_context_and_drops_its_late_audio(which):
    sinks = []

    class Service(SERVICES[which]):
        def _new_sink(self):  # the drop-in's Sink, to read its stats
            sink = super()._new_sink()
            sinks.append(sink)
            return sink

    # real time: half a second of audio has come when the interruption does
    down, connections = asyncio.run(speak(
        Service if which == "flushsink" else SERVICES[which], TEXT,
        after=[SleepFrame(0.5), InterruptionFrame(), SleepFrame(0.5)],
        emulator={"pace": "realtime"}))
    audio = audio_of(down)
    assert 0 < len(audio) < len(FULL) and FULL.startswith(audio)
    cut = next(i for i, f in enumerate(down) if isinstance(f, InterruptionFrame))
    assert not any(isinstance(f, TTSAudioRawFrame) for f in down[cut:])
    cancels = [m for m in connections[0].received if m.get("cancel")]
    contexts = {f.context_id for f in down if isinstance(f, TTSAudioRawFrame)}
    assert [m["context_id"] for m in cancels] == list(contexts)
    if which == "flushsink":
        # the late frames of the cancelled context were dropped by the Sink, undecoded
        assert len(sinks) == 1 and sinks[0].stats.dropped_frames > 0


@pytest.mark.parametrize("which", sorted(SERVICES))
def test_a_dropped_connection_is_survived(which):
    """The connection drops (TCP abort, no close frame) after ten chunks of the first text:
    the service keeps the audio that came, reconnects, and speaks the next text whole on
    the new socket (it is too short to reach the emulator's fault again)."""
    second = "Hi."
    down, connections = asyncio.run(speak(
        SERVICES[which], TEXT, after=[SleepFrame(0.5), TTSSpeakFrame(second), SleepFrame(0.5)],
        emulator={"faults": ["drop@chunk:10"]}))
    ten_chunks = 10 * (RATE // 10) * 2
    assert audio_of(down) == FULL[:ten_chunks] + render(second, VOICE, AudioFormat("pcm_s16le", RATE))
    assert [c.fired for c in connections][0] and len(connections) >= 2
    assert connections[-1].sent["done"] == 1


def test_dropin_survives_a_drop_as_the_stock_service_does():
    after = [SleepFrame(0.5), TTSSpeakFrame("Hi."), SleepFrame(0.5)]
    faults = {"faults": ["drop@chunk:10"]}
    stock, _ = asyncio.run(speak(StockService, TEXT, after=after, emulator=faults))
    ours, _ = asyncio.run(speak(DropIn, TEXT, after=after, emulator=faults))
    assert summary(ours) == summary(stock)


def test_import_flushsink_leaves_pipecat_alone():
    import subprocess
    import sys

    code = "import sys, flushsink, flushsink.integrations; assert 'pipecat' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("which", sorted(SERVICES))
def test_the_idle_close_is_survived(which):
    """The emulator closes a socket idle for ``idle_timeout`` as Cartesia does after 5
    minutes (1000, "connection idle timeout"); pipecat's loop reconnects, and the drop-in
    starts a new Sink on the new socket."""
    second = "Here again. Still here."
    down, connections = asyncio.run(speak(
        SERVICES[which], TEXT, after=[SleepFrame(1.0), TTSSpeakFrame(second), SleepFrame(0.2)],
        emulator={"idle_timeout": 0.4}))
    assert audio_of(down) == FULL + render(second, VOICE, AudioFormat("pcm_s16le", RATE))
    assert sum(isinstance(f, TTSStoppedFrame) for f in down) == 2
    assert len(connections) >= 2
