"""``flushsink say --stdout``: raw audio on standard output as it arrives, everything else on
stderr. Run as a user would: a subprocess, on loopback only."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from flushsink.cli import DEMO_VOICE
from flushsink.emulator import render
from flushsink.formats import AudioFormat

LONG = " ".join(["A sentence of some length, spoken in real time."] * 4)


def environment():
    return {k: v for k, v in os.environ.items() if k != "CARTESIA_API_KEY"}


def command(args):
    """say ARGS --stdout, on the embedded emulator unless ARGS name a --url."""
    where = [] if "--url" in args else ["--emulator"]
    return [sys.executable, "-m", "flushsink", "say", *args, *where, "--stdout"]


def say(*args, cwd, **kw):
    return subprocess.run(command(args), cwd=cwd, env=environment(), capture_output=True,
                          timeout=60, **kw)


def popen_say(*args, cwd, **kw):
    return subprocess.Popen(command(args), cwd=cwd, env=environment(), stderr=subprocess.PIPE,
                            **kw)


@pytest.fixture
def served():
    """The emulator in a process of its own, in real time: audio comes as it plays."""
    server = subprocess.Popen([sys.executable, "-m", "flushsink", "serve", "--port", "0",
                               "--pace", "realtime"], stdout=subprocess.PIPE, text=True)
    try:
        yield re.search(r"ws://\S+", server.stdout.readline()).group(0)
    finally:
        server.send_signal(signal.SIGTERM)  # (SIGINT may be ignored under a background job)
        server.wait(timeout=10)
        server.stdout.close()


@pytest.mark.parametrize("encoding,rate", [("pcm_s16le", 44100), ("pcm_f32le", 24000),
                                           ("pcm_mulaw", 8000)])
def test_the_audio_is_the_emulators_and_nothing_else_is_on_stdout(tmp_path, encoding, rate):
    texts = ["Stay hungry, ", "stay foolish."]
    result = say(*texts, "--encoding", encoding, "--sample-rate", str(rate), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    fmt = AudioFormat(encoding, rate)
    assert result.stdout == b"".join(render(text, DEMO_VOICE, fmt) for text in texts)
    assert os.listdir(tmp_path) == []  # no files, no output directory
    err = result.stderr.decode()
    assert "Traceback" not in err
    assert re.search(r"^1 .* complete +-$", err, re.MULTILINE)
    assert re.search(r"^2 .* complete +-$", err, re.MULTILINE)
    # the hint says how to play it, the last line sums the run up
    ffmpeg_format = {"pcm_s16le": "s16le", "pcm_f32le": "f32le", "pcm_mulaw": "mulaw"}[encoding]
    assert f"ffplay -f {ffmpeg_format} -ar {rate} " in err
    assert re.fullmatch(r"2 segments, [\d.]+ s of audio, the first after [\d.]+ s",
                        err.splitlines()[-1])


def say_served(url, cwd, after_first):
    """``say LONG --stdout`` against the served emulator: 0.1 s of audio is read, then
    ``after_first(proc)`` runs, then the rest. Returns (what after_first returned, the
    audio, stderr, the exit status)."""
    proc = popen_say(LONG, "--url", url, "--api-key", "k", cwd=cwd, stdout=subprocess.PIPE)
    try:
        first = proc.stdout.read(4410 * 2)  # 0.1 s of audio
        seen = after_first(proc)
        rest = proc.stdout.read()
        err = proc.stderr.read().decode()
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    assert len(first) == 4410 * 2, err
    return seen, first + rest, err, proc.returncode


@pytest.mark.slow
def test_audio_comes_out_as_it_arrives(tmp_path, served):
    """In real time: the first audio is on stdout while the rest is still being spoken."""
    expected = render(LONG, DEMO_VOICE, AudioFormat("pcm_s16le", 44100))
    assert len(expected) / (44100 * 2) > 3  # seconds: long enough to tell
    still_speaking, audio, err, status = say_served(served, tmp_path,
                                                    lambda proc: proc.poll() is None)
    assert status == 0, err
    assert still_speaking
    assert audio == expected


@pytest.mark.parametrize("option", [["--out", "o"], ["--container", "wav"],
                                    ["--container", "raw"]])
def test_options_for_files_do_not_go_with_stdout(tmp_path, option):
    result = say("Hello.", *option, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == b""
    err = result.stderr.decode()
    assert err.count("\n") == 1 and f"{option[0]} does not go with it" in err


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="no pseudo-terminals here")
def test_a_terminal_is_not_written_binary_audio(tmp_path):
    controller, terminal = os.openpty()
    try:
        result = subprocess.run(command(["Hello."]), cwd=tmp_path, env=environment(),
                                stdout=terminal,
                                stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert err.count("\n") == 1 and "pipe it to a player" in err


def test_a_reader_that_goes_away_stops_the_run(tmp_path):
    """``| head -c 1000``: the run stops, says so in one line, and exits 141 (SIGPIPE's)."""
    proc = popen_say(LONG * 3, cwd=tmp_path, stdout=subprocess.PIPE)
    try:
        assert len(proc.stdout.read(1000)) == 1000
        proc.stdout.close()
        err = proc.stderr.read().decode()
    finally:
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == 128 + 13, err
    assert "Traceback" not in err
    assert "standard output was closed by its reader" in err
    assert "incomplete (standard output closed by its reader)" in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_a_failing_stdout_fails_the_run_in_one_line(tmp_path):
    with open("/dev/full", "wb") as full:
        result = subprocess.run(command([LONG]), cwd=tmp_path, env=environment(), stdout=full,
                                stderr=subprocess.PIPE, timeout=60)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "Traceback" not in err
    assert "cannot write to standard output: No space left on device" in err


@pytest.mark.slow
def test_a_signal_stops_the_stream(tmp_path, served):
    """SIGTERM (SIGINT, Ctrl-C, does the same where it is not ignored: test_cli_failures)."""
    _, audio, err, status = say_served(served, tmp_path,
                                       lambda proc: proc.send_signal(signal.SIGTERM))
    assert status == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert "stopping on SIGTERM; a second signal stops at once" in err
    assert "incomplete (stopped by SIGTERM)" in err
    # what came out is the start of the audio, and not all of it
    expected = render(LONG, DEMO_VOICE, AudioFormat("pcm_s16le", 44100))
    assert expected.startswith(audio) and 4410 * 2 <= len(audio) < len(expected)
