"""pipecat-ai's stock CartesiaTTSService and flushsink's drop-in, against the emulator.

Runs where pipecat-ai is installed (its own virtual environment; the main suite skips
it). Both services speak the same text through pipecat's own test pipeline
(``pipecat.tests.utils.run_test``); each must give the emulator's audio byte for byte,
and the drop-in the same frames as the stock service.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.services.cartesia.tts import CartesiaTTSService as StockService  # noqa: E402
from pipecat.tests.utils import run_test  # noqa: E402

from flushsink import AudioFormat  # noqa: E402
from flushsink.emulator import Emulator, render  # noqa: E402
from flushsink.integrations.pipecat import CartesiaTTSService as DropIn  # noqa: E402

TEXT = "Stay hungry, stay foolish. The rest is detail."
VOICE = "pipecat-voice"
RATE = 24000
SERVICES = {"stock": StockService, "flushsink": DropIn}


async def speak(service_class, text):
    """The frames the service pushes downstream for one TTSSpeakFrame, and the
    emulator's connection logs."""
    async with Emulator() as emu:
        tts = service_class(
            api_key="test-key",
            url=emu.ws_url,
            sample_rate=RATE,
            settings=service_class.Settings(voice=VOICE),
        )
        down, _ = await asyncio.wait_for(
            run_test(tts, frames_to_send=[TTSSpeakFrame(text)]), 30
        )
        return down, emu.connections


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
    assert b"".join(f.audio for f in audio) == render(TEXT, VOICE, AudioFormat("pcm_s16le", RATE))
    # one context, opened and closed once; all its audio tagged with it
    started = [f for f in down if isinstance(f, TTSStartedFrame)]
    stopped = [f for f in down if isinstance(f, TTSStoppedFrame)]
    assert len(started) == len(stopped) == 1
    assert {f.context_id for f in audio} == {stopped[0].context_id}
    # word timestamps became TTSTextFrames, every word of the text
    words = [f.text for f in down if isinstance(f, TTSTextFrame)]
    assert " ".join(words) == TEXT
    assert len(connections) == 1


def test_dropin_pushes_the_stock_frames():
    stock, _ = asyncio.run(speak(StockService, TEXT))
    ours, _ = asyncio.run(speak(DropIn, TEXT))
    assert summary(ours) == summary(stock)
