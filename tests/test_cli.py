"""The flushsink command, run as a user would: a subprocess, on loopback only."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from flushsink.cli import DEMO_VOICE
from flushsink.emulator import render
from flushsink.formats import AudioFormat


def flushsink(*args, cwd, timeout=60, env=None):
    environment = {**os.environ, **(env or {})}
    environment.pop("CARTESIA_API_KEY", None)
    return subprocess.run([sys.executable, "-m", "flushsink", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def wav_files(root):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    not has_uvloop(), reason="uvloop is not installed (pip install 'flushsink[uvloop]')"))]


@pytest.mark.parametrize("loop", LOOPS)
def test_the_cli_runs_on_uvloop_when_installed(tmp_path, loop):
    """The CLI owns its event loop: uvloop when it is importable, asyncio's own with
    FLUSHSINK_LOOP=asyncio (or without uvloop); --version says which."""
    env = {"FLUSHSINK_LOOP": "asyncio"} if loop == "asyncio" else {"FLUSHSINK_LOOP": ""}
    version = flushsink("--version", cwd=tmp_path, env=env)
    assert f"loop: {loop}," in version.stdout, version.stdout
    result = flushsink("say", "On this loop.", "--emulator", "--out", "o", cwd=tmp_path,
                       env=env)
    assert result.returncode == 0, result.stderr
    (path,) = wav_files(tmp_path / "o")
    data, _ = soundfile.read(path, dtype="int16")
    assert data.tobytes() == render("On this loop.", DEMO_VOICE, AudioFormat("pcm_s16le", 44100))


def test_demo_writes_the_seed_scenario(tmp_path):
    # a key in the environment does not take the demo to Cartesia (nor past loopback)
    result = flushsink("demo", cwd=tmp_path, env={"CARTESIA_API_KEY": "sk-not-used"})
    assert result.returncode == 0, result.stderr
    assert "embedded emulator" in result.stderr
    assert "2 segments" in result.stdout
    first, second = wav_files(tmp_path / "out" / "demo")
    fmt = AudioFormat("pcm_s16le", 44100)
    for path, text in ((first, "Stay hungry, "), (second, "stay foolish.")):
        data, rate = soundfile.read(path, dtype="int16")
        assert rate == 44100
        assert data.tobytes() == render(text, DEMO_VOICE, fmt)
        assert os.path.relpath(path, tmp_path) in result.stdout


def test_say_in_another_format_with_progress(tmp_path):
    texts = [f"Sentence number {i}." for i in range(5)]
    result = flushsink("say", *texts, "--emulator", "--out", "o", "--encoding", "pcm_f32le",
                       "--sample-rate", "24000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # the progress line: redrawn in place on a terminal, printed once in a pipe or a log
    notice, progress = result.stderr.splitlines()
    assert "embedded emulator" in notice
    assert "\r" not in result.stderr and re.match(r"  5/5 segments, [\d.]+ s of audio", progress)
    assert re.fullmatch(r"5 segments, [\d.]+ s of audio", result.stdout.splitlines()[-1])
    files = wav_files(tmp_path / "o")
    assert [os.path.basename(f) for f in files] == ["1.wav", "2.wav", "3.wav", "4.wav", "5.wav"]
    fmt = AudioFormat("pcm_f32le", 24000)
    for path, text in zip(files, texts):
        data, rate = soundfile.read(path, dtype="float32")
        assert rate == 24000
        assert np.array_equal(data, np.frombuffer(render(text, DEMO_VOICE, fmt), "<f4"))


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals here")
def test_progress_on_a_terminal_is_redrawn_in_place(tmp_path):
    controller, terminal = os.openpty()
    try:
        say = subprocess.Popen(
            [sys.executable, "-m", "flushsink", "say", "--emulator",
             *[f"Text {i}." for i in range(5)]],
            cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "CARTESIA_API_KEY"},
            stdout=subprocess.PIPE, stderr=terminal)
        os.close(terminal)
        shown = b""
        while True:
            try:
                piece = os.read(controller, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not piece:
                break
            shown += piece
        stdout, _ = say.communicate(timeout=60)
    finally:
        os.close(controller)
    assert say.returncode == 0
    progress = shown.decode().split("\n", 1)[1]  # after the emulator's notice
    assert re.fullmatch(r"(\r  [1-5]/5 segments, [\d.]+ s of audio, [\d.]+ s *){5}\r?\n",
                        progress), progress
    assert stdout.decode().splitlines()[-1].startswith("5 segments, ")


def test_say_raw_container(tmp_path):
    result = flushsink("say", "Raw bytes.", "--emulator", "--container", "raw", "--encoding",
                       "pcm_mulaw",
                       "--sample-rate", "8000", "--out", "o", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (path,) = wav_files(tmp_path / "o")
    assert path.endswith("1.raw")
    with open(path, "rb") as f:
        assert f.read() == render("Raw bytes.", DEMO_VOICE, AudioFormat("pcm_mulaw", 8000))


def test_say_without_a_key_refuses_and_names_the_ways_out(tmp_path):
    """No silent stand-in: without a key, a URL or --emulator, say starts nothing."""
    result = flushsink("say", "Hello.", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "CARTESIA_API_KEY" in result.stderr and "--emulator" in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("other", [["--url", "ws://127.0.0.1:1"], ["--api-key", "k"]])
def test_emulator_does_not_go_with_a_server(tmp_path, other):
    result = flushsink("say", "Hello.", "--emulator", *other, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"{other[0]} does not go with it" in result.stderr


def test_say_against_a_served_emulator(tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "flushsink", "serve", "--port", "0",
                               "--api-key", "k"], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        url = re.search(r"ws://\S+", line).group(0)
        ok = flushsink("say", "Served.", "--url", url, "--api-key", "k", "--out", "o",
                       cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        assert "embedded" not in ok.stderr
        wrong = flushsink("say", "Served.", "--url", url, "--api-key", "nope", cwd=tmp_path)
        assert wrong.returncode != 0 and "401" in wrong.stderr + wrong.stdout
    finally:
        # SIGTERM, not SIGINT: under a shell's background job (make test &) children
        # start with SIGINT ignored, as a shell means them to, and serve would not stop
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
        server.stdout.close()


@pytest.mark.slow
def test_help_reads_well(tmp_path):
    for args in (["--help"], ["say", "--help"], ["serve", "--help"], ["demo", "--help"],
                 ["bench", "--help"]):
        result = flushsink(*args, cwd=tmp_path)
        assert result.returncode == 0 and "usage: flushsink" in result.stdout


def test_bench_runs_and_checks_its_output(tmp_path):
    result = flushsink("bench", "--seconds", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"ratio\s+[\d.]+x", result.stdout)


def served_url(*args):
    """Start ``flushsink serve ARGS --port 0``; the process and the URL its first line names."""
    server = subprocess.Popen([sys.executable, "-m", "flushsink", "serve", "--port", "0", *args],
                              stdout=subprocess.PIPE, text=True)
    return server, re.search(r"ws://\S+", server.stdout.readline()).group(0)


def stop(server):
    server.send_signal(signal.SIGTERM)  # (SIGINT may be ignored under a background job)
    server.wait(timeout=10)
    server.stdout.close()


def test_serve_speaks_openai_realtime():
    import asyncio
    import base64
    import json

    from websockets.asyncio.client import connect

    async def respond(url):
        async with connect(url + "?model=gpt-realtime") as ws:
            first = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Served."}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            audio = b""
            while (event := json.loads(await ws.recv()))["type"] != "response.done":
                if event["type"] == "response.output_audio.delta":
                    audio += base64.b64decode(event["delta"])
            return first["type"], audio

    server, url = served_url("--provider", "openai-realtime")
    try:
        first, audio = asyncio.run(asyncio.wait_for(respond(url.rstrip(")")), 30))
    finally:
        stop(server)
    assert url.endswith("/v1/realtime")
    assert first == "session.created"
    assert audio == render("Served.", "alloy", AudioFormat("pcm_s16le", 24000))


def test_serve_speaks_elevenlabs():
    import asyncio
    import base64
    import json

    from websockets.asyncio.client import connect

    async def speak(url):
        audio, final = b"", None
        async with connect(url + "?output_format=pcm_16000") as ws:
            for text in (" ", "Served. ", ""):
                await ws.send(json.dumps({"text": text}))
            async for raw in ws:
                message = json.loads(raw)
                audio += base64.b64decode(message["audio"]) if message.get("audio") else b""
                final = message.get("isFinal") or final
        return audio, final

    server, url = served_url("--provider", "elevenlabs")
    try:
        audio, final = asyncio.run(asyncio.wait_for(speak(url.replace("VOICE_ID", "v")), 30))
    finally:
        stop(server)
    assert final is True
    assert audio == render("Served.", "v", AudioFormat("pcm_s16le", 16000))


@pytest.mark.parametrize("option", [["--voices", "a"], ["--concurrency-limit", "2"],
                                    ["--idle-timeout", "5"], ["--flush-id-base", "0"],
                                    ["--no-flush-id-on-chunks"]])
def test_serve_refuses_cartesia_options_for_another_provider(tmp_path, option):
    result = flushsink("serve", "--provider", "openai-realtime", *option, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and f"{option[0]} is for --provider cartesia" in result.stderr
