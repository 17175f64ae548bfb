"""The scripts in examples/ run as a user runs them: a subprocess each, without --url (or
--port; openai_realtime.py with --emulator), so each starts the embedded emulator (or calls
itself with the Twilio sender). Their WAV files are read back with soundfile and compared
with the emulator's render() of each text, computed here independently."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile
from websockets.asyncio.server import serve

from flushsink.emulator import render, stream_call
from flushsink.formats import AudioFormat
from flushsink.writers import safe_name

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
SEED = ["Stay hungry, ", "stay foolish."]
S16 = AudioFormat("pcm_s16le", 44100)


def load_example(name: str) -> ModuleType:
    """An example imported as a module (its ``__main__`` part does not run)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference(audio: bytes, fmt: AudioFormat) -> np.ndarray:
    """What a WAV file of ``audio`` reads back as (int16), decoded by libsndfile for the
    G.711 encodings (not by flushsink's tables)."""
    if fmt.encoding == "pcm_s16le":
        return np.frombuffer(audio, "<i2")
    subtype = {"pcm_mulaw": "ULAW", "pcm_alaw": "ALAW"}[fmt.encoding]
    samples, _ = soundfile.read(io.BytesIO(audio), format="RAW", subtype=subtype,
                                samplerate=fmt.sample_rate, channels=1, dtype="int16")
    return samples


@pytest.mark.parametrize("name", ["seed_async", "seed_sync", "seed_own_loop"])
def test_example_writes_the_two_seed_segments(tmp_path, name):
    out = tmp_path / "out"
    # the parent's environment, so the example runs on the core this suite tests
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "embedded emulator at ws://127.0.0.1:" in result.stderr

    files = sorted(out.rglob("*"), key=lambda p: p.name)
    files = [p for p in files if p.is_file()]
    # one context directory holding <flush_id>.wav for flush ids 1 and 2, nothing else
    # (no .partial.wav, no temporary file left behind)
    assert [p.name for p in files] == ["1.wav", "2.wav"], files
    assert files[0].parent == files[1].parent and files[0].parent.parent == out
    for path, text in zip(files, SEED):
        info = soundfile.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
        samples, _ = soundfile.read(str(path), dtype="int16")
        assert np.array_equal(samples, np.frombuffer(render(text, VOICE, S16), "<i2"))
        assert str(path) in result.stdout  # the example reports where each file went


def test_twilio_receiver_writes_the_calls_inbound_audio(tmp_path):
    """examples/twilio_receiver.py without --port calls itself once with flushsink's Twilio
    sender; its WAV file holds the caller's render() in mu-law, whole 20 ms frames."""
    text = "Hello, I would like to book a table."
    out = tmp_path / "calls"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "twilio_receiver.py"), "--out", str(out), "--text", text],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "with flushsink's Twilio sender" in result.stderr

    [path] = [p for p in out.rglob("*") if p.is_file()]
    assert path.parent == out and path.name.startswith("MZ") and path.suffix == ".wav"
    assert str(path) in result.stdout
    info = soundfile.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "ULAW")
    samples, _ = soundfile.read(str(path), dtype="int16")
    # the expected mu-law bytes, decoded by libsndfile too (not by flushsink's tables)
    mulaw = AudioFormat("pcm_mulaw", 8000)
    expected = render(text, "caller", mulaw)
    expected += b"\xff" * (-len(expected) % 160)  # the last frame filled up with silence
    assert np.array_equal(samples, reference(expected, mulaw))


def test_twilio_receiver_keeps_a_hostile_stream_sid_inside_out(tmp_path):
    """The stream id comes from the network: one that names a path elsewhere still gives a
    file inside OUT (nothing is written outside it, whatever the id)."""
    receiver = load_example("twilio_receiver")
    out = tmp_path / "a" / "calls"
    written = []

    async def main():
        async def handler(ws):
            written.append(await receiver.receive_call(ws, out))

        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            await stream_call(f"ws://127.0.0.1:{port}", "Hi.", stream_sid="../../../escape")
            while not written:
                await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(main(), 30))
    [path] = written
    assert path.parent == out and path.name == "_________escape.wav"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [path]


OPENAI_TEXTS = ["Hello there.", "How are you today?"]


@pytest.mark.parametrize("name, fmt, subtype", [
    ("pcm", AudioFormat("pcm_s16le", 24000), "PCM_16"),
    ("pcmu", AudioFormat("pcm_mulaw", 8000), "ULAW"),
    ("pcma", AudioFormat("pcm_alaw", 8000), "ALAW"),
])
def test_openai_realtime_writes_each_responses_audio(tmp_path, name, fmt, subtype):
    """examples/openai_realtime.py --emulator: one response per text, each response's
    audio in OUT/<response_id>/0.wav, equal to render(text, voice, format)."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "openai_realtime.py"), "--emulator", "--out", str(out),
         "--format", name, "--voice", "marin", *OPENAI_TEXTS],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "using the embedded emulator at ws://127.0.0.1:" in result.stderr

    # the example reports each file as it is written, the responses in order
    paths = [Path(p) for p in re.findall(r" -> (\S+\.wav)$", result.stdout, re.MULTILINE)]
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(paths)  # nothing else
    assert len(paths) == len(OPENAI_TEXTS)
    assert len({p.parent for p in paths}) == len(OPENAI_TEXTS)  # a directory per response
    for path, text in zip(paths, OPENAI_TEXTS):
        assert path.parent.parent == out and path.parent.name.startswith("resp_")
        assert path.name == "0.wav"  # the response's one audio part
        assert f"{path.parent.name} said: {text!r}" in result.stdout
        info = soundfile.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (fmt.sample_rate, 1, subtype)
        samples, _ = soundfile.read(str(path), dtype="int16")
        assert np.array_equal(samples, reference(render(text, "marin", fmt), fmt))


def test_openai_realtime_needs_a_key_a_url_or_the_emulator(tmp_path):
    """Without OPENAI_API_KEY, --url or --emulator it says so and sends nothing: it never
    falls back to the emulator silently."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = subprocess.run([sys.executable, str(EXAMPLES / "openai_realtime.py"), "Hello."],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr and "--emulator" in result.stderr
    assert not list(tmp_path.iterdir())


def test_openai_realtime_keeps_a_hostile_response_id_inside_out(tmp_path):
    """The response id comes from the network: one that names a path elsewhere still gives
    a file inside OUT, under the writer's safe name for it."""
    example = load_example("openai_realtime")
    response_id = "../../escape"
    fmt = AudioFormat("pcm_s16le", 24000)
    audio = render("Hi.", "alloy", fmt)
    where = {"response_id": response_id, "item_id": "item_1", "output_index": 0, "content_index": 0}
    frames = [
        {"type": "response.output_audio.delta", **where, "delta": base64.b64encode(audio).decode()},
        {"type": "response.output_audio.done", **where},
        {"type": "response.done", "response": {"id": response_id, "status": "completed"}},
    ]
    out = tmp_path / "a" / "out"

    async def server(ws):
        for _ in range(3):  # session.update, conversation.item.create, response.create
            await ws.recv()
        for frame in frames:
            await ws.send(json.dumps(frame))
        async for _ in ws:  # until the example closes
            pass

    async def main():
        async with serve(server, "127.0.0.1", 0) as local:
            port = next(iter(local.sockets)).getsockname()[1]
            await example.speak(f"ws://127.0.0.1:{port}/v1/realtime", ["Hi."], "alloy", "pcm",
                                str(out), None)

    asyncio.run(asyncio.wait_for(main(), 30))
    [path] = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert path == out / safe_name(response_id) / "0.wav"
    samples, _ = soundfile.read(str(path), dtype="int16")
    assert np.array_equal(samples, reference(audio, fmt))
