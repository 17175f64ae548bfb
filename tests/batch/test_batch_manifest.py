"""flushsink.batch's output: WAV bytes made in memory (read back with soundfile), manifest
and errors parts published whole and never rewritten, resume after a run killed between
storing audio and publishing its rows, the summary; and rows spoken by the emulator through
the real client, stored, and checked sample for sample against its render."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os

import numpy as np
import pytest

import flushsink
from flushsink import FileWriter, Segment
from flushsink.batch import (
    ERRORS_DIR,
    MANIFEST_DIR,
    BadRow,
    LocalStore,
    PartWriter,
    Row,
    Shard,
    audio_path,
    failure_record,
    manifest_record,
    read_rows,
    read_wav_info,
    reconcile,
    resume_state,
    safe_id,
    store_segment,
    summarize,
    wav_bytes,
    write_summary,
)
from flushsink.emulator import Emulator, render, render_timestamps
from flushsink.errors import FormatError
from flushsink.formats import AudioFormat

sf = pytest.importorskip("soundfile")

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
FORMATS = [AudioFormat("pcm_s16le", 44100), AudioFormat("pcm_f32le", 24000),
           AudioFormat("pcm_mulaw", 8000), AudioFormat("pcm_alaw", 8000)]
SUBTYPES = {"pcm_s16le": "PCM_16", "pcm_f32le": "FLOAT", "pcm_mulaw": "ULAW",
            "pcm_alaw": "ALAW"}


def segment_of(text, fmt=FORMATS[0], flush_id=0, complete=True):
    samples = np.frombuffer(render(text, VOICE, fmt), dtype=fmt.dtype).copy()
    return Segment("ctx", flush_id, fmt, samples, complete=complete,
                   error=None if complete else "dropped")


def lines_of(store, path):
    return [json.loads(line) for line in store.get(path).decode().splitlines()]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.encoding)
def test_wav_bytes_are_what_filewriter_writes_and_soundfile_reads(tmp_path, fmt):
    segment = segment_of("Stay hungry, stay foolish.", fmt)
    wav = wav_bytes(segment)
    written = FileWriter(tmp_path)(flushsink.SegmentReady(segment))
    with open(written, "rb") as f:
        assert f.read() == wav
    info = sf.info(io.BytesIO(wav))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (
        fmt.sample_rate, 1, len(segment.samples), SUBTYPES[fmt.encoding])
    assert read_wav_info(wav) == (fmt, len(segment.samples), segment.duration)
    if fmt.encoding in ("pcm_s16le", "pcm_f32le"):
        data, _ = sf.read(io.BytesIO(wav), dtype="int16" if fmt.encoding == "pcm_s16le"
                          else "float32")
        assert np.array_equal(data, segment.samples)
    else:  # libsndfile expands G.711 itself: the same table as to_int16
        data, _ = sf.read(io.BytesIO(wav), dtype="int16")
        assert np.array_equal(data, segment.to_int16())


def test_odd_sized_audio_gets_its_pad_byte_and_reads_back():
    fmt = AudioFormat("pcm_mulaw", 8000)
    segment = Segment("c", 0, fmt, np.arange(7, dtype=np.uint8))
    wav = wav_bytes(segment)
    assert len(wav) % 2 == 0 and read_wav_info(wav).frames == 7
    assert sf.info(io.BytesIO(wav)).frames == 7


def test_wav_bytes_refuses_what_is_not_audio():
    fmt = AudioFormat("pcm_s16le", 8000)
    with pytest.raises(FormatError, match="needs <i2"):
        wav_bytes(Segment("c", 0, fmt, np.zeros(4, dtype="<f4")))
    with pytest.raises(FormatError, match="not kept"):
        wav_bytes(Segment("c", 0, fmt, np.zeros(0, dtype="<i2"), sample_count=10))


@pytest.mark.parametrize("data, message", [
    (b"", "not a RIFF"), (b"RIFF\0\0\0\0WAVEfmt ", "no data chunk"),
    (b"RIFF\0\0\0\0WAVEdata\0\0\0\0", "before the fmt"),
])
def test_read_wav_info_refuses_other_files(data, message):
    with pytest.raises(FormatError, match=message):
        read_wav_info(data)
    stereo = bytearray(wav_bytes(segment_of("Hi there.")))
    stereo[22] = 2
    with pytest.raises(FormatError, match="2 channels"):
        read_wav_info(bytes(stereo))


def test_store_segment_stores_once_and_describes_the_stored_bytes(tmp_path):
    store = LocalStore(tmp_path)
    row = Row("row/1", ("Hello there.", "Goodbye now."), 0, 1, voice={"mode": "id", "id": VOICE},
              model_id="sonic-2")
    first = segment_of("Hello there.")
    record = store_segment(store, row, 0, first, with_words=True)
    wav = wav_bytes(first)
    assert record == {
        "audio_filepath": "../audio/row%2F1/0.wav", "file_name": "../audio/row%2F1/0.wav",
        "id": "row/1", "flush": 0, "text": "Hello there.", "duration": first.duration,
        "sample_rate": 44100, "encoding": "pcm_s16le", "voice": VOICE, "model_id": "sonic-2",
        "language": None, "bytes": len(wav),
        "sha256": hashlib.sha256(wav).hexdigest(), "words": []}
    assert (tmp_path / "audio" / "row%2F1" / "0.wav").read_bytes() == wav
    # a second run with other audio for the same flush keeps the stored file, and says so
    other = segment_of("Something else entirely.")
    again = store_segment(store, row, 0, other, with_words=True)
    assert again == {**record, "words": None}
    with pytest.raises(ValueError, match="incomplete"):
        store_segment(store, row, 1, segment_of("Goodbye now.", complete=False))
    assert not (tmp_path / "audio" / "row%2F1" / "1.wav").exists()


def test_voice_objects_become_text_in_the_manifest():
    wav = wav_bytes(segment_of("Hi."))
    for voice, text in ((VOICE, VOICE), ({"mode": "id", "id": "v"}, "v"), ({"id": "w"}, "w"),
                        ({"mode": "embedding", "embedding": [0.5, 1]},
                         '{"embedding":[0.5,1],"mode":"embedding"}'), (None, None)):
        assert manifest_record(Row("a", ("Hi.",), 0, voice=voice), 0, wav)["voice"] == text


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_parts_publish_every_n_rows_or_t_seconds_and_are_never_rewritten(tmp_path):
    store = LocalStore(tmp_path)
    clock = Clock()
    parts = PartWriter(store, MANIFEST_DIR, Shard(1, 2), every_rows=3, every_seconds=10,
                       clock=clock)
    assert parts.add([{"n": 1}, {"n": 2}]) is None and parts.pending == 2
    assert parts.add([{"n": 3}, {"n": 4}]) == "manifest/part-1of2-000000.jsonl"
    assert lines_of(store, "manifest/part-1of2-000000.jsonl") == [{"n": i} for i in (1, 2, 3, 4)]
    parts.add([{"n": 5}])
    clock.now += 9.9
    assert parts.publish_due() is None
    clock.now += 0.1
    assert parts.publish_due() == "manifest/part-1of2-000001.jsonl"
    # another process (or an earlier run) took the next name: skip it, rewrite nothing
    store.put_if_absent("manifest/part-1of2-000002.jsonl", b'{"theirs":1}\n')
    parts.add([{"n": 6}])
    assert parts.close() == "manifest/part-1of2-000003.jsonl"
    assert lines_of(store, "manifest/part-1of2-000002.jsonl") == [{"theirs": 1}]
    assert parts.close() is None
    assert parts.published == [f"manifest/part-1of2-00000{i}.jsonl" for i in (0, 1, 3)]
    # a new writer of the same shard starts after the parts there; other shards' do not count
    store.put_if_absent("manifest/part-0of2-000009.jsonl", b"")
    assert PartWriter(store, MANIFEST_DIR, Shard(1, 2)).next_number == 4
    assert PartWriter(store, MANIFEST_DIR, Shard(0, 2)).next_number == 10
    assert PartWriter(store, ERRORS_DIR, Shard(1, 2)).next_number == 0
    with pytest.raises(ValueError):
        parts.add([{"bad": float("nan")}])
    assert parts.pending == 0


def test_resume_after_a_kill_between_audio_and_manifest(tmp_path):
    """A run stored row a and b's audio and published a's rows, stored one of c's two
    flushes and was killed: resume skips a, rebuilds b's rows from its WAVs, leaves c to be
    synthesized (keeping its stored flush), and does not report old input errors again."""
    store = LocalStore(tmp_path)
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "texts": ["One.", "Two."]},
        {"id": "b", "texts": ["Three.", "Four."]},
        {"id": "c", "texts": ["Five.", "Six."]},
        {"id": "", "text": "bad"},
        {"id": "d", "text": "Seven."},
    ]))
    rows = {r.id: r for r in read_rows(source) if isinstance(r, Row)}
    manifest = PartWriter(store, MANIFEST_DIR)
    errors = PartWriter(store, ERRORS_DIR)
    records = {}
    for row_id in ("a", "b"):
        row = rows[row_id]
        records[row_id] = [store_segment(store, row, i, segment_of(t, flush_id=i))
                           for i, t in enumerate(row.texts)]
    manifest.add(records["a"])
    manifest.close()
    store_segment(store, rows["c"], 0, segment_of("Five."))
    errors.add([b.record(str(source)) for b in read_rows(source) if isinstance(b, BadRow)])
    errors.close()
    # --- killed here; the next run:
    state = resume_state(store)
    assert state.done == {"a"} and state.manifest_rows == 2
    assert sorted(state.orphans) == ["b", "c"] and sorted(state.orphans["b"]) == [0, 1]
    assert state.reported == {3}
    assert state.is_done(rows["a"]) and not state.is_done(rows["b"])
    assert reconcile(store, rows["b"], state) == records["b"]
    assert reconcile(store, rows["c"], state) is None  # flush 1 is missing
    assert reconcile(store, rows["d"], state) is None  # nothing stored
    manifest = PartWriter(store, MANIFEST_DIR)
    manifest.add(reconcile(store, rows["b"], state))
    for row_id in ("c", "d"):
        row = rows[row_id]
        manifest.add([store_segment(store, row, i, segment_of(t, flush_id=i))
                      for i, t in enumerate(row.texts)])
    manifest.close()
    errors = PartWriter(store, ERRORS_DIR)
    errors.add([failure_record(rows["d"], "kept failing", attempts=3)])
    errors.close()
    final = resume_state(store)
    assert final.done == {"a", "b", "c", "d"} and final.orphans == {}
    assert final.manifest_rows == 7
    summary = summarize(store)
    expected_seconds = sum(segment_of(t).duration for r in rows.values() for t in r.texts)
    assert summary == {"rows": 4, "files": 7, "audio_seconds": pytest.approx(expected_seconds),
                       "bytes": sum(o.size for o in store.list("audio")),
                       "duplicate_files": 0, "error_rows": {"input": 1, "synthesis": 1},
                       "manifest_parts": 2, "error_parts": 2, "shards": ["0of1"]}
    write_summary(store, summary)
    write_summary(store, {**summary, "again": True})
    assert json.loads(store.get("summary.json"))["again"] is True
    # every manifest row names audio that exists and matches its hash and duration
    for part in ("manifest/part-0of1-000000.jsonl", "manifest/part-0of1-000001.jsonl"):
        for record in lines_of(store, part):
            path = os.path.normpath(tmp_path / "manifest" / record["audio_filepath"])
            data = open(path, "rb").read()
            assert hashlib.sha256(data).hexdigest() == record["sha256"]
            assert sf.info(path).duration == pytest.approx(record["duration"])


def test_resume_keeps_to_its_shard(tmp_path):
    store = LocalStore(tmp_path)
    ids = [f"id-{i}" for i in range(20)]
    manifest = PartWriter(store, MANIFEST_DIR, Shard(0, 2))
    for row_id in ids[:10]:
        row = Row(row_id, ("Hi.",), 0)
        manifest.add([store_segment(store, row, 0, segment_of("Hi."))])
    manifest.close()
    for row_id in ids[10:]:
        store_segment(store, Row(row_id, ("Hi.",), 0), 0, segment_of("Hi."))
    for index in (0, 1):
        shard = Shard(index, 2)
        state = resume_state(store, shard)
        assert state.done == {i for i in ids[:10] if shard.owns(i)}
        assert set(state.orphans) == {safe_id(i) for i in ids[10:] if shard.owns(i)}


@pytest.mark.parametrize("fmt", [FORMATS[0], FORMATS[2]], ids=lambda f: f.encoding)
def test_rows_spoken_by_the_emulator_are_stored_sample_exact(tmp_path, fmt):
    """The write step of a batch job, end to end on loopback: the real client speaks each
    row's texts in one context (a flush between them), each segment is stored create-only
    and its manifest row published; soundfile reads every WAV back equal to render."""
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in [
        {"id": "greeting", "texts": ["Stay hungry, ", "stay foolish."]},
        {"id": "é/../x", "text": "Hello there, friend."},
        {"id": 3, "text": "Numbers are ids too."},
    ]))
    rows = [r.with_defaults(voice=VOICE, model_id="sonic-2", output_format=fmt)
            for r in read_rows(source)]
    store = LocalStore(tmp_path / "out")
    manifest = PartWriter(store, MANIFEST_DIR, every_rows=2)

    async def speak(tts, row):
        ctx = tts.context(voice=row.voice, model_id=row.model_id,
                          output_format=row.output_format.to_output_format(),
                          add_timestamps=True)
        for i, text in enumerate(row.texts):
            await ctx.push(text)
            if i < len(row.texts) - 1:
                await ctx.flush()
        await ctx.no_more_inputs()
        segments = [s async for s in ctx.segments()]
        assert len(segments) == len(row.texts)
        return [store_segment(store, row, i, s, with_words=True) for i, s in enumerate(segments)]

    async def main():
        async with Emulator(chunk_ms=20, odd_chunks=True) as emu:
            async with flushsink.connect(emu.url, receive_timeout=10) as tts:
                for records in await asyncio.gather(*(speak(tts, r) for r in rows)):
                    manifest.add(records)
        manifest.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    published = [record for part in manifest.published for record in lines_of(store, part)]
    assert sorted((r["id"], r["flush"]) for r in published) == [
        ("3", 0), ("greeting", 0), ("greeting", 1), ("é/../x", 0)]
    for record in published:
        row = next(r for r in rows if r.id == record["id"])
        text = row.texts[record["flush"]]
        path = tmp_path / "out" / "manifest" / record["audio_filepath"]
        assert os.path.realpath(path).startswith(os.path.realpath(tmp_path / "out" / "audio"))
        want = np.frombuffer(render(text, VOICE, fmt), dtype=fmt.dtype)
        if fmt.encoding == "pcm_s16le":
            got, rate = sf.read(path, dtype="int16")
            assert np.array_equal(got, want)
        else:
            got, rate = sf.read(path, dtype="int16")
            assert np.array_equal(got, Segment(None, 0, fmt, want).to_int16())
        assert rate == fmt.sample_rate == record["sample_rate"]
        assert record["duration"] == pytest.approx(len(want) / fmt.sample_rate)
        assert record["text"] == text and record["voice"] == VOICE
        assert [(w["word"]) for w in record["words"]] == [
            w for w, _, _ in render_timestamps(text, VOICE, fmt.sample_rate)]
    assert audio_path("é/../x", 0) == "audio/%C3%A9%2F..%2Fx/0.wav"
