"""The scripts in examples/ run as a user runs them: a subprocess each, without --url, so
each starts the embedded emulator itself. Their WAV files are read back with soundfile and
compared with the emulator's render() of each text, computed here independently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from flushsink.emulator import render
from flushsink.formats import AudioFormat

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
SEED = ["Stay hungry, ", "stay foolish."]
S16 = AudioFormat("pcm_s16le", 44100)


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
