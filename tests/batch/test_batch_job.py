"""flushsink.batch.run against the Cartesia emulator on 127.0.0.1: with a concurrency limit
so that 429s really happen (the job cuts its concurrency and still stores every row), with
connections dropped mid-segment (rows retried, nothing stored twice), with a voice the
server refuses (the row goes to the errors file, the job goes on); every stored sample
equal to the renderer's. And the ``batch`` command's refusals: one line, no traceback."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from flushsink import cli
from flushsink.batch import ERRORS_DIR, LocalStore
from flushsink.batch.job import Concurrency, Synthesizer, run
from flushsink.batch.progress import Progress, format_eta
from flushsink.emulator import render_timestamps
from flushsink.formats import AudioFormat

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
FMT = AudioFormat("pcm_s16le", 8000)


def errors_of(dest: str) -> list[dict]:
    store = LocalStore(dest)
    return [json.loads(line) for info in store.list(ERRORS_DIR)
            for line in store.get(info.path).splitlines() if line.strip()]


def test_429s_cut_the_concurrency_and_every_row_is_stored(tmp_path, emulator, write_rows,
                                                           verify, concurrency_refusals):
    emu = emulator(concurrency_limit=3)
    source, expected = write_rows(120)
    dest = str(tmp_path / "out")
    summary = asyncio.run(run(source, dest, url=emu.url, concurrency=12, sockets=3,
                              output_format=FMT, progress=False, backoff=0.02))
    job = summary["job"]
    # the server did refuse contexts (each refusal is followed by an error for the input
    # that was already on its way, so the server counts more errors than refusals)
    assert 0 < job["rate_limited"]["context"] <= concurrency_refusals(emu)
    assert job["concurrency_cuts"] >= 1 and job["concurrency_lowest"] <= 6
    assert job["rows_stored"] == 120 and job["rows_failed"] == 0 and job["complete"]
    assert job["bad_rows"] == 3
    assert summary["rows"] == 120 and summary["duplicate_files"] == 0
    verify(dest, expected)
    reasons = sorted(e["reason"] for e in errors_of(dest))
    assert len(reasons) == 3 and all(e["kind"] == "input" for e in errors_of(dest))
    assert any("duplicate" in reason for reason in reasons)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rows"] == 120


def test_the_same_job_again_does_nothing_new(tmp_path, emulator, write_rows, verify):
    emu = emulator()
    source, expected = write_rows(30)
    dest = str(tmp_path / "out")
    asyncio.run(run(source, dest, url=emu.url, output_format=FMT, progress=False))
    again = asyncio.run(run(source, dest, url=emu.url, output_format=FMT, progress=False))
    assert again["job"]["rows_skipped"] == 30 and again["job"]["rows_stored"] == 0
    assert again["job"]["bad_rows"] == 0  # reported once, by the first run
    assert len(errors_of(dest)) == 3
    verify(dest, expected)


def test_dropped_connections_are_retried_and_nothing_is_stored_twice(tmp_path, emulator,
                                                                      write_rows, verify):
    # each connection is dropped once, in the first segment longer than ten chunks: only
    # the long row has one, so it fails on every connection (its retries run out) and
    # takes down the rows in flight beside it, which succeed when retried
    emu = emulator(faults="drop@chunk:10", chunk_ms=300)
    source, expected = write_rows(40, bad=False)
    with open(source, "a", encoding="utf-8") as file:
        file.write(json.dumps({"id": "long", "text": " ".join(["word"] * 40)}) + "\n")
    dest = str(tmp_path / "out")
    summary = asyncio.run(run(source, dest, url=emu.url, concurrency=6, sockets=2,
                              output_format=FMT, progress=False, retries=2, backoff=0.01))
    job = summary["job"]
    assert job["rows_stored"] == 40 and job["rows_failed"] == 1
    assert job["retries"] >= 2 and emu.stats.connections >= 3  # dropped ones were replaced
    (failure,) = errors_of(dest)
    assert failure["id"] == "long" and failure["attempts"] == 3
    assert "incomplete: connection dropped" in failure["reason"]
    verify(dest, expected)


def test_a_row_the_server_refuses_goes_to_the_errors_file(tmp_path, emulator, write_rows,
                                                          verify):
    emu = emulator(voices=[VOICE])
    source, expected = write_rows(10, bad=False)
    with open(source, "a", encoding="utf-8") as file:
        file.write(json.dumps({"id": "stranger", "text": "Who am I?", "voice": "nobody"}) + "\n")
    dest = str(tmp_path / "out")
    summary = asyncio.run(run(source, dest, url=emu.url, output_format=FMT, progress=False))
    assert summary["job"]["rows_failed"] == 1 and summary["job"]["rows_stored"] == 10
    (failure,) = errors_of(dest)
    assert failure["kind"] == "synthesis" and failure["id"] == "stranger"
    assert failure["attempts"] == 1 and "not found" in failure["reason"]
    verify(dest, expected)


def test_words_in_the_manifest(tmp_path, emulator, write_rows, verify):
    emu = emulator()
    source, expected = write_rows(8, bad=False)
    dest = str(tmp_path / "out")
    asyncio.run(run(source, dest, url=emu.url, output_format=FMT, progress=False,
                    with_words=True))
    for record in verify(dest, expected):
        words = render_timestamps(record["text"], VOICE, FMT.sample_rate)
        assert [w["word"] for w in record["words"]] == [w for w, _, _ in words]
        assert [w["start"] for w in record["words"]] == pytest.approx([s for _, s, _ in words])


def test_synthesize_many_is_the_hook_for_a_worker(tmp_path, emulator):
    from flushsink.batch import Row

    emu = emulator()
    store = LocalStore(tmp_path / "out")
    rows = [Row(f"id{i}", (f"Text {i}.",), i, output_format=FMT, voice=VOICE) for i in range(5)]
    rows.append(Row("bad", ("x y z",), 5, output_format=AudioFormat("pcm_s16le", 8000),
                    voice={"mode": "id", "id": VOICE}, model_id="m"))

    async def main():
        async with Synthesizer(url=emu.url, concurrency=3) as synth:
            return await synth.synthesize_many(rows, store)

    results = asyncio.run(main())
    assert [r.row.id for r in results] == [row.id for row in rows]
    assert all(r.records is not None and len(r.records) == 1 for r in results)
    assert not list(store.list("manifest"))  # the caller publishes


def test_concurrency_cuts_once_per_round_and_grows_back():
    async def main():
        limit = Concurrency(8)
        epochs = [await limit.acquire() for _ in range(8)]
        assert limit.rate_limited(epochs[0]) and limit.allowed == 4
        assert not limit.rate_limited(epochs[1])  # the same round: no second cut
        for _ in range(8):
            limit.release()
        for _ in range(30):
            limit.success()
        assert limit.allowed == 8 and limit.lowest == 4 and limit.cuts == 1
        for _ in range(10):
            limit.rate_limited(limit.epoch)
        assert limit.allowed == 1

    asyncio.run(main())


def test_progress_line(capsys):
    import io

    stream = io.StringIO()
    progress = Progress(stream)
    progress.set_total(100, initial=10)
    progress.update(done=40, failed=2, audio_seconds=30.0, concurrency=3.5, force=True)
    line = stream.getvalue()
    assert "40/100 rows, 2 failed" in line and "concurrency 3.5" in line and "ETA" in line
    assert format_eta(3725) == "1:02:05" and format_eta(None) == "?"


# --- the command's refusals ------------------------------------------------------------------

def _batch(argv, capsys):
    status = cli.main(["batch", *argv])
    err = capsys.readouterr().err
    return status, err


def test_batch_without_a_key_refuses(tmp_path, write_rows, capsys, monkeypatch):
    monkeypatch.delenv("CARTESIA_API_KEY", raising=False)
    source, _ = write_rows(2)
    status, err = _batch([source, "--out", str(tmp_path / "o")], capsys)
    assert status == 2 and err.count("\n") == 1 and "--emulator" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv, message", [
    (["missing.jsonl"], "no such file"),
    (["{source}", "--shard", "2/2"], "--shard"),
    (["{source}", "--shard", "x"], "--shard"),
    (["rows.txt"], "no such file"),
])
def test_batch_argument_mistakes_are_one_line(tmp_path, write_rows, capsys, argv, message):
    source, _ = write_rows(2)
    argv = [a.format(source=source) if a != "missing.jsonl" and a != "rows.txt"
            else str(tmp_path / a) for a in argv]
    status, err = _batch([*argv, "--out", str(tmp_path / "o"), "--emulator"], capsys)
    assert status == 2 and message in err and "Traceback" not in err
    assert err.count("\n") <= 2  # (the emulator's notice, then the error)


def test_batch_input_of_unknown_format(tmp_path, capsys):
    source = tmp_path / "rows.txt"
    source.write_text("hello\n")
    status, err = _batch([str(source), "--out", str(tmp_path / "o"), "--emulator"], capsys)
    assert status == 2 and "cannot tell the format" in err and "Traceback" not in err


def test_batch_unwritable_destination(tmp_path, write_rows, capsys):
    source, _ = write_rows(2)
    blocker = tmp_path / "file"
    blocker.write_text("")
    status, err = _batch([source, "--out", str(blocker / "o"), "--emulator"], capsys)
    assert status == 1 and "cannot write" in err and "Traceback" not in err


def test_batch_emulator_and_no_resume(tmp_path, write_rows, capsys, verify):
    source, expected = write_rows(12)
    dest = str(tmp_path / "o")
    status, err = _batch([source, "--out", dest, "--emulator", "--sample-rate", "8000"], capsys)
    assert status == 0, err
    assert "12 rows stored, 3 bad" in err and "Traceback" not in err
    verify(dest, expected)
    status, err = _batch([source, "--out", dest, "--emulator", "--no-resume"], capsys)
    assert status == 2 and "not empty" in err
    status, err = _batch([source, "--out", dest, "--emulator", "--sample-rate", "8000"], capsys)
    assert status == 0 and "12 already done" in err
    assert os.path.exists(os.path.join(dest, "summary.json"))
