"""What the batch job's tests share (as fixtures: no test module imports another): an input
file writer, an emulator on 127.0.0.1 in a thread of its own (so a job in this process or
in a subprocess talks to it the same way), an S3 server, and ``verify``, the exactly-once
check of a destination against the emulator's renderer."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
import uuid
from typing import Any, Callable

import numpy as np
import pytest

from flushsink.batch import AUDIO_DIR, MANIFEST_DIR, audio_path, open_store, read_wav_info
from flushsink.emulator import render
from flushsink.formats import AudioFormat

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
FMT = AudioFormat("pcm_s16le", 8000)  # small files: the tests are about the job


def row_texts(i: int) -> list[str]:
    """Short texts, some rows with two flushes; ids with characters safe_id escapes."""
    if i % 7 == 3:
        return [f"Part one of {i}.", f"And two, {i}!"]
    return [f"Row {i} speaks."]


def row_id(i: int) -> str:
    return f"row/{i}" if i % 11 == 5 else f"r{i:05d}"


@pytest.fixture
def write_rows(tmp_path) -> Callable[..., Any]:
    """``write_rows(n, bad=True)``: a JSONL file of n good rows (plus bad ones: a
    duplicate id, a row without text, one without id); returns (path, {id: texts})."""

    def write(n: int, *, bad: bool = True, name: str = "rows.jsonl") -> tuple[str, dict[str, list[str]]]:
        expected: dict[str, list[str]] = {}
        path = tmp_path / name
        with open(path, "w", encoding="utf-8") as file:
            for i in range(n):
                texts = row_texts(i)
                expected[row_id(i)] = texts
                record: dict[str, Any] = {"id": row_id(i)}
                if len(texts) == 1:
                    record["text"] = texts[0]
                else:
                    record["texts"] = texts
                file.write(json.dumps(record) + "\n")
                if bad and i == n // 2:
                    file.write(json.dumps({"id": row_id(0), "text": "a duplicate"}) + "\n")
                    file.write(json.dumps({"id": "no-text"}) + "\n")
                    file.write(json.dumps({"text": "no id"}) + "\n")
        return str(path), expected

    return write


@pytest.fixture
def emulator() -> Any:
    """``emulator(**options)``: a Cartesia emulator running in a thread until the test
    ends (``record_messages`` off; pass ``concurrency_limit`` for 429s)."""
    from flushsink.emulator import Emulator

    running = []

    def start(**options: Any) -> Any:
        options.setdefault("record_messages", False)
        emu = Emulator(**options)
        manager = emu.running_in_thread()
        manager.__enter__()
        running.append(manager)
        return emu

    yield start
    for manager in running:
        manager.__exit__(None, None, None)


def concurrency_errors(emu: Any) -> int:
    """Context 429s the emulator sent (error frames: its only errors in these tests)."""
    return sum(log.sent["error"] for log in list(emu.connections))


@pytest.fixture
def concurrency_refusals() -> Callable[[Any], int]:
    return concurrency_errors


def _records(store: Any) -> list[dict[str, Any]]:
    records = []
    for info in store.list(MANIFEST_DIR):
        for line in store.get(info.path).splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def check_destination(dest: str, expected: dict[str, list[str]], *, voice: str = VOICE,
                      fmt: AudioFormat = FMT, partial: bool = False) -> list[dict[str, Any]]:
    """Every expected row in the manifest exactly once (across every part and shard),
    every manifest row naming audio whose bytes match it, every sample equal to the
    renderer's, read back with soundfile, and no audio object the manifest does not
    name. ``partial``: a job stopped early, so some expected rows may be missing (the
    rest holds: whole rows only, nothing stored that no manifest row names). Returns the
    manifest rows."""
    sf = pytest.importorskip("soundfile")
    store = open_store(dest)
    records = _records(store)
    keys = [(r["id"], r["flush"]) for r in records]
    assert len(keys) == len(set(keys)), "an (id, flush) is in the manifest twice"
    want = {(row, flush) for row, texts in expected.items() for flush in range(len(texts))}
    if partial:
        assert set(keys) <= want
        ids = {row for row, _ in keys}
        assert set(keys) == {(row, flush) for row in ids
                             for flush in range(len(expected[row]))}, "a row in part"
    else:
        assert set(keys) == want
    named = set()
    for record in records:
        path = audio_path(record["id"], record["flush"])
        assert record["audio_filepath"] == record["file_name"] == "../" + path
        named.add(path)
        wav = store.get(path)
        assert len(wav) == record["bytes"]
        assert hashlib.sha256(wav).hexdigest() == record["sha256"]
        text = expected[record["id"]][record["flush"]]
        assert record["text"] == text
        info = read_wav_info(wav)
        assert info.format == fmt and record["duration"] == info.duration
        samples, rate = sf.read(io.BytesIO(wav), dtype="int16")
        assert rate == fmt.sample_rate
        assert np.array_equal(samples, np.frombuffer(render(text, voice, fmt), "<i2"))
    stored = {info.path for info in store.list(AUDIO_DIR)}
    assert stored == named, f"audio without manifest rows: {sorted(stored - named)[:5]}"
    return records


@pytest.fixture
def verify() -> Callable[..., list[dict[str, Any]]]:
    return check_destination


@pytest.fixture(scope="session")
def s3_endpoint() -> Any:
    pytest.importorskip("obstore")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def make_bucket(s3_endpoint, monkeypatch) -> Callable[[str], str]:
    """make_bucket(prefix): a new bucket on the test's S3 server, named from prefix, with
    the AWS environment a user would set for it (and subprocesses inherit)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP",
                 "AWS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        urllib.request.urlopen(urllib.request.Request(f"{s3_endpoint}/{name}", method="PUT"),
                               timeout=10).read()
        return name
    return make


@pytest.fixture
def s3_dest(make_bucket) -> str:
    """``s3://bucket/job`` in a new bucket."""
    return f"s3://{make_bucket('flushsink-job')}/job"
