"""Durability of ``flushsink batch``, run as the user runs it (``python -m flushsink batch``
subprocesses) against the emulator in this process: killed with SIGKILL mid-run then run
again, every row ends up stored exactly once (no manifest row twice across parts and
shards, every row present, every WAV equal to the renderer's, no audio without its manifest
row); the same with two shard processes sharing one destination, on a local directory and
on S3 (moto's server on 127.0.0.1), 1,000 rows there, the manifest loaded with ``datasets``.
SIGINT and SIGTERM stop cleanly (130, 143): whole rows published, nothing half-written.

The emulator is paced (``pace``: seconds of audio per second per context) and limited
(``concurrency_limit``), so the jobs take a few seconds, 429s happen, and a kill lands
after some rows and before the last."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from flushsink.batch import AUDIO_DIR, MANIFEST_DIR, open_store, summarize

pytestmark = pytest.mark.slow


def command(source: str, dest: str, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flushsink", "batch", source, "--out", dest, "--url", url,
            "--sample-rate", "8000", "--concurrency", "4", "--sockets", "2",
            "--part-rows", "20", "--part-seconds", "0.3", "--quiet", *extra]


def audio_count(dest: str) -> int:
    if "://" not in dest:  # a walk is cheaper than a store listing, and skips temporaries
        return len(glob.glob(os.path.join(dest, AUDIO_DIR, "*", "*.wav")))
    return sum(1 for _ in open_store(dest).list(AUDIO_DIR))


def manifest_rows(dest: str) -> int:
    store = open_store(dest)
    return sum(len([line for line in store.get(info.path).splitlines() if line.strip()])
               for info in store.list(MANIFEST_DIR))


def kill_when(processes: list[subprocess.Popen], dest: str, at_least: int,
              deadline: float = 60.0) -> int:
    """SIGKILL every process once ``at_least`` audio files are stored; how many were."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        stored = audio_count(dest)
        if stored >= at_least:
            for process in processes:
                process.kill()
            for process in processes:
                process.wait(10)
            return audio_count(dest)
        if all(process.poll() is not None for process in processes):
            break
        time.sleep(0.01)
    outputs = [process.communicate()[1] for process in processes]
    pytest.fail(f"the job ended (or stalled) before {at_least} files: {outputs}")


def finish(commands: list[list[str]], timeout: float = 120.0) -> list[str]:
    processes = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for argv in commands]
    errs = []
    for process in processes:
        _, err = process.communicate(timeout=timeout)
        assert process.returncode == 0, err
        assert "Traceback" not in err
        errs.append(err)
    return errs


def files_of(expected: dict[str, list[str]]) -> int:
    return sum(len(texts) for texts in expected.values())


def load_manifest_with_datasets(dest: str, tmp_path) -> "int | None":
    """The rows of the manifest as ``datasets`` loads it; None where it is not installed
    (the main suite: make test-batch has it)."""
    if importlib.util.find_spec("datasets") is None:
        return None
    import datasets

    store = open_store(dest)
    local = tmp_path / "manifest-copy"
    local.mkdir(exist_ok=True)
    for info in store.list(MANIFEST_DIR):
        (local / info.path.split("/")[-1]).write_bytes(store.get(info.path))
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    table = datasets.load_dataset("json", data_files=str(local / "*.jsonl"), split="train",
                                  cache_dir=str(tmp_path / "hf-cache"))
    return table.num_rows


def run_killed_and_resumed(tmp_path, emulator, write_rows, verify, dest, *, rows, shards,
                           kill_fraction=0.3, **emulator_options):
    emu = emulator(**emulator_options)
    source, expected = write_rows(rows)
    total = files_of(expected)
    shard_args = [["--shard", f"{i}/{shards}"] for i in range(shards)]
    started = time.monotonic()
    processes = [subprocess.Popen(command(source, dest, emu.url, *args),
                                  stderr=subprocess.DEVNULL) for args in shard_args]
    killed_at = kill_when(processes, dest, int(total * kill_fraction))
    published = manifest_rows(dest)
    assert 0 < killed_at < total and published < total  # the kill landed mid-run
    errs = finish([command(source, dest, emu.url, *args) for args in shard_args])
    elapsed = time.monotonic() - started
    records = verify(dest, expected)
    assert len(records) == total
    # (each shard writes summary.json when it ends; the totals are the parts')
    assert open_store(dest).get("summary.json")
    summary = summarize(open_store(dest))
    assert summary["rows"] == rows and summary["duplicate_files"] == 0
    assert summary["error_rows"] == {"input": 3}  # the bad rows, reported once
    print(f"\n{rows} rows ({total} files), {shards} shard process(es), {dest.split(':')[0]}: "
          f"killed at {killed_at} files stored, {published} manifest rows published; "
          f"resumed and finished in {elapsed:.1f} s in all; "
          f"429s sent by the emulator: {sum(l.sent['error'] for l in emu.connections)}; "
          + " | ".join(err.strip().splitlines()[-1] for err in errs))
    return records


def test_sigkill_then_the_same_command_stores_every_row_once(tmp_path, emulator, write_rows,
                                                             verify):
    run_killed_and_resumed(tmp_path, emulator, write_rows, verify, str(tmp_path / "out"),
                           rows=150, shards=1, pace=40.0, concurrency_limit=3)


def test_sigkill_two_shards_sharing_a_directory(tmp_path, emulator, write_rows, verify):
    dest = str(tmp_path / "out")
    run_killed_and_resumed(tmp_path, emulator, write_rows, verify, dest,
                           rows=200, shards=2, pace=40.0, concurrency_limit=5)
    assert load_manifest_with_datasets(dest, tmp_path) in (None, files_of(write_rows(200)[1]))


@pytest.mark.skipif(bool(os.environ.get("FLUSHSINK_PURE_PYTHON")),
                    reason="the longest test, about the job, not the receive core: the compiled "
                           "run has it; the twin runs the 200-row two-shard test")
def test_sigkill_1000_rows_two_shards_on_s3(tmp_path, emulator, write_rows, verify, s3_dest):
    records = run_killed_and_resumed(tmp_path, emulator, write_rows, verify, s3_dest,
                                     rows=1000, shards=2, pace=60.0, concurrency_limit=6)
    pytest.importorskip("datasets")
    assert load_manifest_with_datasets(s3_dest, tmp_path) == len(records)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_cleanly_and_the_next_run_finishes(tmp_path, emulator, write_rows,
                                                          verify, signum):
    emu = emulator(pace=20.0)
    source, expected = write_rows(80)
    dest = str(tmp_path / "out")
    process = subprocess.Popen(command(source, dest, emu.url), stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while audio_count(dest) < 10 and time.monotonic() < end and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signum, err
    assert f"stopping on {signal.Signals(signum).name}" in err and "Traceback" not in err
    # whole rows, each with its audio; no audio that no manifest row names (the rows in
    # flight finished within the stop timeout); no temporary file left
    done = verify(dest, expected, partial=True)
    assert 0 < len(done) < files_of(expected)
    assert not glob.glob(os.path.join(dest, "**", ".*.tmp"), recursive=True)
    assert not os.path.exists(os.path.join(dest, "summary.json"))  # the job is not over
    finish([command(source, dest, emu.url)])
    verify(dest, expected)
