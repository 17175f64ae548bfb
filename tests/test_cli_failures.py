"""The flushsink command when things go wrong, run as a user would: a subprocess on loopback.

An argument that makes no sense is refused in one line ``flushsink: ...`` on stderr, never
a traceback, with exit status 2, before anything starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from flushsink.cli import main


def environment():
    env = dict(os.environ)
    env.pop("CARTESIA_API_KEY", None)
    return env


def flushsink(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flushsink", *args], cwd=cwd,
                          env=environment(), capture_output=True, text=True, timeout=120)


def one_line(stderr):
    """The one line a failure prints; no traceback, nothing else."""
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert re.match(r"flushsink: \S", lines[0]), stderr
    return lines[0]


# --- values that make no sense: argparse refuses them, in one line, exit 2 ---------------

@pytest.mark.parametrize("args, option", [
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--port", "-1"], "--port"),
    (["serve", "--chunk-ms", "0"], "--chunk-ms"),
    (["serve", "--chunk-ms", "-20"], "--chunk-ms"),
    (["serve", "--chunk-ms", "nan"], "--chunk-ms"),
    (["serve", "--chunk-ms", "inf"], "--chunk-ms"),
    (["serve", "--chunk-ms", "1e300"], "--chunk-ms"),
    (["bench", "--seconds", "-1"], "--seconds"),
    (["bench", "--seconds", "0"], "--seconds"),
    (["bench", "--seconds", "nan"], "--seconds"),
    (["say", "Hi.", "--url", "http://127.0.0.1:1/tts/websocket"], "--url"),
    (["say", "Hi.", "--url", "garbage"], "--url"),
])
def test_a_value_that_makes_no_sense_is_one_line_and_exit_2(tmp_path, args, option):
    result = flushsink(*args, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert option in line and f"flushsink {args[0]} --help" in line
    assert result.stdout == ""


@pytest.mark.parametrize("args, option", [
    (["say", "Hi.", "--timeout", "0"], "--timeout"),
    (["say", "Hi.", "--timeout", "-1"], "--timeout"),
    (["say", "Hi.", "--timeout", "nan"], "--timeout"),
    (["demo", "--timeout", "inf"], "--timeout"),
    (["say", "Hi.", "--url", "ws://"], "--url"),
    (["say", "Hi.", "--url", "ws://:99999"], "--url"),
    (["say", "Hi.", "--url", "ws://127.0.0.1:70000"], "--url"),
    (["say", "Hi.", "--api-key", ""], "--api-key"),  # an unset "$KEY": not the emulator
    (["say", "Hi.", "--out", ""], "--out"),  # would be the current directory
    (["say", "Hi.", "--voice", ""], "--voice"),
    (["say", "Hi.", "--model", ""], "--model"),
    (["say", "Hi.", "--language", ""], "--language"),
    (["say", "Hi.", ""], "TEXT"),  # the server refuses a blank transcript
    (["say", "Hi.", "   "], "TEXT"),
    (["say", "Hi.", "--sample-rate", "12345"], "--sample-rate"),
    (["serve", "--host", ""], "--host"),  # would listen on every interface
    (["serve", "--api-key", ""], "--api-key"),
    (["serve", "--idle-timeout", "-1"], "--idle-timeout"),
    (["serve", "--idle-timeout", "nan"], "--idle-timeout"),
    (["serve", "--pace", "-1"], "--pace"),
    (["serve", "--pace", "nan"], "--pace"),
    (["serve", "--pace", "slow"], "--pace"),
    (["serve", "--flush-id-base", "2"], "--flush-id-base"),
    (["bench", "--seconds", "inf"], "--seconds"),
    (["bench", "--seconds", "1e9"], "--seconds"),
    (["bench", "--chunk-ms", "0"], "--chunk-ms"),
    (["bench", "--chunk-ms", "-100"], "--chunk-ms"),
    (["bench", "--sample-rate", "0"], "--sample-rate"),
    (["bench", "--sample-rate", "-8000"], "--sample-rate"),
    ([], "COMMAND"),
    (["say"], "TEXT"),
])
def test_other_values_that_make_no_sense(tmp_path, monkeypatch, capsys, args, option):
    # the same parser as above; in-process, to spare an interpreter start per case
    monkeypatch.chdir(tmp_path)  # should a value get through, its files land here
    monkeypatch.delenv("CARTESIA_API_KEY", raising=False)
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert option in one_line(err) and out == ""
