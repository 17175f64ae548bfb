"""The manifest loads as it is into Hugging Face ``datasets`` (``load_dataset("json")``),
parts of several shards and runs together, words present or null; each row's audio, found
relative to the manifest file as NeMo resolves ``audio_filepath``, reads back with
soundfile. Skipped where ``datasets`` is missing (make test-batch installs it)."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from flushsink import Segment
from flushsink.batch import (
    MANIFEST_DIR,
    LocalStore,
    PartWriter,
    Row,
    Shard,
    reconcile,
    resume_state,
    store_segment,
)
from flushsink.emulator import render, render_timestamps
from flushsink.formats import AudioFormat
from flushsink.segments import TimedText

datasets = pytest.importorskip("datasets")
sf = pytest.importorskip("soundfile")

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
FMT = AudioFormat("pcm_s16le", 22050)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No hub, and the cache in the test's directory, not the user's."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def segment_of(text):
    samples = np.frombuffer(render(text, VOICE, FMT), dtype=FMT.dtype).copy()
    words = tuple(TimedText(*w) for w in render_timestamps(text, VOICE, FMT.sample_rate))
    return Segment("c", 0, FMT, samples, word_timestamps=words)


@pytest.mark.parametrize("with_words", [False, True])
def test_manifest_parts_load_into_datasets_and_nemo(tmp_path, with_words):
    out = tmp_path / "out"
    store = LocalStore(out, fsync=False)
    rows = [Row(f"row-{i}", (f"Sentence number {i}.", "And another."), i,
                voice=VOICE, model_id="sonic-2", language="en" if i % 2 else None)
            for i in range(12)]
    # two shards, and a reconciled row (words null) beside spoken ones
    for index in (0, 1):
        shard = Shard(index, 2)
        manifest = PartWriter(store, MANIFEST_DIR, shard, every_rows=3)
        for row in rows:
            if not shard.owns(row.id) or row.id == "row-5":
                continue
            segments = [segment_of(text) for text in row.texts]
            manifest.add([store_segment(store, row, i, s, with_words=with_words)
                          for i, s in enumerate(segments)])
        manifest.close()
    for i, text in enumerate(rows[5].texts):
        store_segment(store, rows[5], i, segment_of(text))
    state = resume_state(store)
    manifest = PartWriter(store, MANIFEST_DIR,
                          next(Shard(i, 2) for i in (0, 1) if Shard(i, 2).owns("row-5")))
    manifest.add(reconcile(store, rows[5], state, with_words=with_words))
    manifest.close()

    parts = sorted(glob.glob(str(out / "manifest" / "*.jsonl")))
    assert len(parts) >= 4
    table = datasets.load_dataset("json", data_files=parts, split="train",
                                  cache_dir=str(tmp_path / "cache"))
    assert table.num_rows == 24
    columns = {"audio_filepath", "file_name", "id", "flush", "text", "duration",
               "sample_rate", "encoding", "voice", "model_id", "language", "bytes", "sha256"}
    assert set(table.column_names) == columns | ({"words"} if with_words else set())
    assert sorted(zip(table["id"], table["flush"])) == sorted(
        (r.id, f) for r in rows for f in (0, 1))
    by_key = {(r["id"], r["flush"]): r for r in table}
    reconciled = by_key[("row-5", 0)]
    if with_words:
        assert reconciled["words"] is None
        spoken = by_key[("row-0", 0)]["words"]
        assert [w["word"] for w in spoken] == ["Sentence", "number", "0."]
        assert all(0 <= w["start"] < w["end"] for w in spoken)
    for record in table:
        # NeMo resolves a relative audio_filepath against the manifest's directory
        path = os.path.join(out / "manifest", record["audio_filepath"])
        info = sf.info(path)
        assert info.samplerate == record["sample_rate"] == 22050
        assert info.duration == pytest.approx(record["duration"])
        assert os.path.getsize(path) == record["bytes"]
        assert record["file_name"] == record["audio_filepath"]
    cast = table.cast_column("audio_filepath", datasets.Value("string"))
    assert cast.features["duration"].dtype == "float64"
