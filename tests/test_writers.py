"""FileWriter: exact WAV and raw bytes, atomic replacement, safe names, clean failures.

Expected WAV files are built here by hand with struct (not with formats.wav_header)
and read back with libsndfile (soundfile), an independent reader.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flushsink.errors import FlushsinkError, FormatError, WriteError
from flushsink.formats import ALAW_TO_INT16, MULAW_TO_INT16, AudioFormat
from flushsink.segments import ContextDone, ContextError, Segment, SegmentReady, Timestamps, Unknown
from flushsink.writers import MAX_NAME_BYTES, NO_CONTEXT_NAME, FileWriter, safe_name

ENCODINGS = ["pcm_s16le", "pcm_f32le", "pcm_alaw", "pcm_mulaw"]
# (WAVE_FORMAT tag, bytes per sample, bits, libsndfile subtype), from the RIFF/WAVE spec.
WAV_INFO = {
    "pcm_s16le": (1, 2, 16, "PCM_16"),
    "pcm_f32le": (3, 4, 32, "FLOAT"),
    "pcm_alaw": (6, 1, 8, "ALAW"),
    "pcm_mulaw": (7, 1, 8, "ULAW"),
}
DTYPES = {"pcm_s16le": "<i2", "pcm_f32le": "<f4", "pcm_alaw": "u1", "pcm_mulaw": "u1"}
# What a placeholder may expand to: kept as is, or changed and marked with a hash.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(~[0-9a-f]{12})?")


def expected_wav(encoding: str, rate: int, data: bytes) -> bytes:
    """A WAV file laid out by hand: RIFF, fmt (16 or 18 bytes), fact for non-PCM, data, pad."""
    tag, width, bits, _ = WAV_INFO[encoding]
    fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * width, width, bits)
    if tag == 1:
        chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    else:
        fmt += struct.pack("<H", 0)  # cbSize
        chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
        chunks += b"fact" + struct.pack("<I", 4) + struct.pack("<I", len(data) // width)
    body = b"WAVE" + chunks + b"data" + struct.pack("<I", len(data)) + data
    if len(data) % 2:
        body += b"\x00"
    return b"RIFF" + struct.pack("<I", len(body)) + body


def make_samples(encoding: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if encoding == "pcm_s16le":
        edges = np.array([-32768, 32767, 0, -1, 1], dtype="<i2")
        body = rng.integers(-32768, 32768, n, dtype=np.int64).astype("<i2")
        return np.concatenate([edges, body])[:n].astype("<i2")
    if encoding == "pcm_f32le":
        edges = np.array([-1.0, 1.0, 0.0, -0.0, 1.5, -2.25, 1e-30], dtype="<f4")
        return np.concatenate([edges, rng.uniform(-1, 1, n).astype("<f4")])[:n].astype("<f4")
    codes = np.concatenate([np.arange(256, dtype="u1"), rng.integers(0, 256, n, dtype=np.int64).astype("u1")])
    return codes[:n].copy()


def segment(context_id="ctx", flush_id=1, encoding="pcm_s16le", rate=24000, n=100, **kwargs):
    return Segment(context_id, flush_id, AudioFormat(encoding, rate), make_samples(encoding, n), **kwargs)


def all_files(root) -> list[str]:
    """Every file and link under root, relative, without following links."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- WAV and raw bytes -------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 7, 1000])
@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_wav_bytes_and_libsndfile_readback(tmp_path, encoding, rate, n):
    sf = pytest.importorskip("soundfile")
    seg = segment("ctx", 3, encoding, rate, n)
    path = FileWriter(tmp_path, write_empty=True).write(seg)  # n == 0: the header alone

    assert path == os.path.join(str(tmp_path), "ctx", "3.wav") == seg.path
    data = seg.samples.tobytes()
    assert read(path) == expected_wav(encoding, rate, data)

    info = sf.info(path)
    assert (info.samplerate, info.channels, info.frames) == (rate, 1, n)
    assert info.subtype == WAV_INFO[encoding][3]
    if n == 0:
        return
    if encoding == "pcm_s16le":
        back, _ = sf.read(path, dtype="int16")
        np.testing.assert_array_equal(back, seg.samples)
    elif encoding == "pcm_f32le":
        back, _ = sf.read(path, dtype="float32")
        assert back.tobytes() == data  # bit exact
    else:
        table = MULAW_TO_INT16 if encoding == "pcm_mulaw" else ALAW_TO_INT16
        back, _ = sf.read(path, dtype="int16")
        np.testing.assert_array_equal(back, table[seg.samples])


def test_wav_header_literal(tmp_path):
    # Three s16 samples at 24 kHz, every header byte spelled out.
    seg = Segment("c", 0, AudioFormat("pcm_s16le", 24000), np.array([1, -2, 3], dtype="<i2"))
    expected = (
        b"RIFF" + bytes([42, 0, 0, 0]) + b"WAVE"
        + b"fmt " + bytes([16, 0, 0, 0, 1, 0, 1, 0, 0xC0, 0x5D, 0, 0, 0x80, 0xBB, 0, 0, 2, 0, 16, 0])
        + b"data" + bytes([6, 0, 0, 0]) + bytes([1, 0, 0xFE, 0xFF, 3, 0])
    )
    assert read(FileWriter(tmp_path).write(seg)) == expected


def test_odd_byte_count_gets_one_pad_byte(tmp_path):
    seg = segment("c", 0, "pcm_mulaw", 8000, 11)
    blob = read(FileWriter(tmp_path).write(seg))
    assert len(blob) == 4 + 4 + 4 + (8 + 18) + 12 + (8 + 11) + 1
    assert struct.unpack_from("<I", blob, 4)[0] == len(blob) - 8
    assert blob[-12:] == seg.samples.tobytes() + b"\x00"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    encoding=st.sampled_from(ENCODINGS),
    rate=st.integers(1, 1_000_000),
    raw=st.binary(max_size=301),
    complete=st.booleans(),
)
def test_wav_bytes_any_rate_and_length(tmp_path, encoding, rate, raw, complete):
    width = WAV_INFO[encoding][1]
    whole = raw[: len(raw) - len(raw) % width]
    samples = np.frombuffer(whole, dtype=DTYPES[encoding])
    seg = Segment("h", 1, AudioFormat(encoding, rate), samples, complete=complete,
                  trailing_bytes=raw[len(whole):])
    assert read(FileWriter(tmp_path, write_empty=True).write(seg)) == \
        expected_wav(encoding, rate, whole)


def test_wav_leaves_out_trailing_bytes_raw_keeps_them(tmp_path):
    samples = np.array([1000, -1000, 7], dtype="<i2")
    seg = Segment("c", 2, AudioFormat("pcm_s16le", 16000), samples, trailing_bytes=b"\x42")
    wav = read(FileWriter(tmp_path / "w").write(seg))
    assert wav == expected_wav("pcm_s16le", 16000, samples.tobytes())

    raw_path = FileWriter(tmp_path / "r", container="raw").write(seg)
    assert raw_path.endswith(os.path.join("c", "2.raw"))
    assert read(raw_path) == samples.tobytes() + b"\x42"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_raw_container_is_exactly_the_bytes_received(tmp_path, encoding):
    seg = segment("c", 5, encoding, 8000, 33, trailing_bytes=b"\x01\x02\x03"[: WAV_INFO[encoding][1] - 1])
    path = FileWriter(tmp_path, container="raw").write(seg)
    assert read(path) == seg.samples.tobytes() + seg.trailing_bytes


def test_empty_raw_segment_makes_an_empty_file(tmp_path):
    seg = Segment("c", 0, AudioFormat("pcm_f32le", 24000), np.zeros(0, "<f4"))
    assert read(FileWriter(tmp_path, container="raw", write_empty=True).write(seg)) == b""


@pytest.mark.parametrize("container", ["wav", "raw"])
@pytest.mark.parametrize("complete", [True, False])
def test_empty_segments_are_not_written_unless_asked(tmp_path, container, complete):
    """No samples and no trailing bytes: no file, path None (a flood of flush_done must
    not become a flood of files); write_empty=True writes them; a segment of trailing
    bytes alone is not empty."""
    empty = Segment("c", 0, AudioFormat("pcm_f32le", 24000), np.zeros(0, "<f4"),
                    complete=complete)
    writer = FileWriter(tmp_path / "default", container=container)
    assert writer.write(empty) is None and writer(SegmentReady(empty)) is None
    assert empty.path is None and not (tmp_path / "default").exists()
    path = FileWriter(tmp_path / "asked", container=container, write_empty=True).write(empty)
    assert path == empty.path and os.path.exists(path)
    stray = Segment("c", 1, AudioFormat("pcm_f32le", 24000), np.zeros(0, "<f4"),
                    trailing_bytes=b"\x01", complete=complete)
    assert writer.write(stray) == stray.path and os.path.exists(stray.path)
    assert "write_empty=False" in repr(writer)


def test_non_contiguous_samples_are_written_in_order(tmp_path):
    base = np.arange(20, dtype="<i2")
    seg = Segment("c", 0, AudioFormat("pcm_s16le", 8000), base[::2])
    assert read(FileWriter(tmp_path).write(seg)) == expected_wav("pcm_s16le", 8000, base[::2].tobytes())


def test_samples_of_the_wrong_dtype_are_refused(tmp_path):
    seg = Segment("c", 0, AudioFormat("pcm_s16le", 8000), np.arange(4, dtype=np.int64))
    with pytest.raises(WriteError) as info:
        FileWriter(tmp_path).write(seg)
    assert isinstance(info.value.__cause__, FormatError)
    assert info.value.segment is seg
    assert all_files(tmp_path) == []


def test_riff_limit_raises_before_touching_disk(tmp_path):
    # 2**31 int16 samples = 4 GiB of data: one byte too many for RIFF. broadcast_to
    # allocates nothing, and the header check comes before any copy.
    huge = np.broadcast_to(np.zeros(1, "<i2"), (2**31,))
    seg = Segment("c", 0, AudioFormat("pcm_s16le", 8000), huge)
    with pytest.raises(WriteError) as info:
        FileWriter(tmp_path).write(seg)
    assert isinstance(info.value.__cause__, FormatError)
    assert info.value.segment is seg and seg.path is None
    assert info.value.path == os.path.join(str(tmp_path), "c", "0.wav")
    assert all_files(tmp_path) == []


# --- names and patterns ------------------------------------------------------------------

def test_incomplete_segments_get_partial_before_the_suffix(tmp_path):
    w = FileWriter(tmp_path)
    done = w.write(segment("c", 1))
    cut = w.write(segment("c", 2, complete=False, error="connection dropped"))
    assert os.path.basename(done) == "1.wav"
    assert os.path.basename(cut) == "2.partial.wav"
    raw = FileWriter(tmp_path, container="raw").write(segment("c", 3, complete=False))
    assert os.path.basename(raw) == "3.partial.raw"
    bare = FileWriter(tmp_path, "{context_id}-{flush_id}").write(segment("c", 4, complete=False))
    assert os.path.basename(bare) == "c-4.partial"
    dotted = FileWriter(tmp_path, "x.y/{flush_id}.take.wav").write(segment("c", 5, complete=False))
    assert dotted == os.path.join(str(tmp_path), "x.y", "5.take.partial.wav")


def test_partial_name_never_meets_a_complete_one(tmp_path):
    # "{context_id}.wav": a complete "a.partial" must not land on the incomplete "a".
    w = FileWriter(tmp_path, "{context_id}.wav")
    a = w.write(segment("a", 0, complete=False))
    b = w.write(segment("a.partial", 0))
    c = w.write(segment("A.PARTIAL", 0))
    assert len({a, b, c}) == 3
    assert len(all_files(tmp_path)) == 3


def test_pattern_with_subdirectories_and_all_placeholders(tmp_path):
    w = FileWriter(tmp_path, "{encoding}/{sample_rate}/{context_id}/take-{flush_id:04d}.wav")
    path = w.write(segment("ctx", 7, "pcm_alaw", 8000, 10))
    assert path == os.path.join(str(tmp_path), "pcm_alaw", "8000", "ctx", "take-0007.wav")
    assert os.path.isfile(path)


def test_none_context_id_has_a_fixed_name_and_no_id_takes_it(tmp_path):
    w = FileWriter(tmp_path)
    anonymous = w.write(segment(None, 0))
    assert anonymous == os.path.join(str(tmp_path), NO_CONTEXT_NAME, "0.wav")
    assert w.write(segment(NO_CONTEXT_NAME, 0)) != anonymous
    assert w.write(segment("None", 0)) != anonymous


def test_flush_ids_are_labels_of_any_size(tmp_path):
    w = FileWriter(tmp_path)
    assert os.path.basename(w.write(segment("c", 10**30))) == f"{10**30}.wav"
    negative = os.path.basename(w.write(segment("c", -1)))
    assert negative.endswith(".wav") and negative != "-1.wav"  # no leading "-" for shells
    assert SAFE_NAME.fullmatch(negative[: -len(".wav")])
    with pytest.raises(WriteError):  # too many digits for int -> str: a clean refusal
        w.write(segment("c", 10**5000))


@pytest.mark.parametrize(
    "pattern",
    ["", "../{flush_id}.wav", "/abs/{flush_id}.wav", "a//{flush_id}.wav", "./{flush_id}.wav",
     "{flush_id}/", "{nope}.wav", "{0}.wav", "{}.wav", "{context_id.upper}.wav",
     "{flush_id:{context_id}}.wav", "a\\{flush_id}.wav", "{flush_id", "x/../{flush_id}.wav"],
)
def test_bad_patterns_are_refused(pattern):
    with pytest.raises(ValueError):
        FileWriter("out", pattern)


def test_bad_container_is_refused():
    with pytest.raises(FormatError):
        FileWriter("out", container="mp3")


def test_nothing_is_created_before_the_first_write(tmp_path):
    FileWriter(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_relative_directory_gives_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = FileWriter("out").write(segment("c", 1))
    assert path == os.path.join(str(tmp_path), "out", "c", "1.wav")


def test_call_writes_segment_ready_and_ignores_other_events(tmp_path):
    w = FileWriter(tmp_path)
    seg = segment("c", 1)
    others = [
        ContextDone("c"), ContextError("c", "boom"), Unknown("c", "weird", {}),
        Timestamps("c", 1, "words", (), 0.0), None, "text",
    ]
    assert [w(ev) for ev in others] == [None] * len(others)
    assert all_files(tmp_path) == []
    path = w(SegmentReady(seg))
    assert path == seg.path and os.path.isfile(path)


# --- hostile ids ---------------------------------------------------------------------------

HOSTILE_IDS = [
    "../../x", "..", ".", "", "/abs", "/", "a/b", "a_b", "a:b", "a\0b", "a\\b", "..\\..\\x",
    "CON", "con", "nul.txt", "COM1", "LPT9.wav", "AUX.", "-rf", "--help", ".hidden", "trailing.",
    "x" * 10_000, "y" * 81, "y" * 80, "é", "e\u0301", "日本語", "\ud800", "\udfff\ud800", "emoji 🎧",
    "tab\tnew\nline", "*?<>|\"'", "~", "$HOME", "a_b~0123456789ab", "ok-0123456789AB",
    "_none", "x.partial", "ctx", "ctx ", " ctx",
]


def test_hostile_ids_stay_inside_and_apart(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "x").mkdir()  # the target of "../../x" style ids, must stay empty
    w = FileWriter(out)
    paths = [w.write(segment(cid, 0)) for cid in HOSTILE_IDS]
    w2 = FileWriter(out, "{flush_id}-{context_id}.wav", container="raw")
    paths += [w2.write(segment(cid, 1)) for cid in HOSTILE_IDS]

    assert len(set(paths)) == len(paths)
    everything = all_files(tmp_path)
    assert everything == sorted(os.path.join("out", os.path.relpath(p, out)) for p in paths)
    for p in paths:
        rel = os.path.relpath(p, out)
        for part in rel.split(os.sep):
            assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._~-]*", part), part
            assert len(part.encode()) <= MAX_NAME_BYTES + len(".wav") + len("1-"), part


def test_ordinary_ids_are_kept():
    for cid in ["ctx", "3f1c2b9a-77d1-4c55-9a40-0c4b1b4e2f10", "Intro.take_2", "a" * MAX_NAME_BYTES,
                "session-1732570000", "0"]:
        assert safe_name(cid) == cid


def test_changed_ids_keep_a_readable_prefix():
    assert [safe_name(x) for x in ["a/b", "a_b", "a:b"]] == ["a_b~c14cddc033f6", "a_b", "a_b~6783a31eabf6"]


@pytest.mark.parametrize("cid", HOSTILE_IDS + [None])
def test_safe_name_output_is_one_portable_component(cid):
    name = safe_name(cid)
    assert SAFE_NAME.fullmatch(name)
    assert 1 <= len(name) <= MAX_NAME_BYTES
    assert name not in (".", "..") and not name.endswith(".")
    assert name.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT9"}
    assert safe_name(cid) == name  # stable


ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=120)  # surrogates too
ID_LIKE = st.text(st.sampled_from("aA_-.:/\\0\x00é"), max_size=20)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None)
@given(st.one_of(st.none(), ANY_TEXT, ID_LIKE), st.one_of(st.none(), ANY_TEXT, ID_LIKE))
def test_different_ids_never_share_a_name(a, b):
    assume(a != b)
    assert safe_name(a) != safe_name(b)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), ANY_TEXT))
def test_safe_name_output_is_always_safe(value):
    name = safe_name(value)
    assert SAFE_NAME.fullmatch(name) and len(name) <= MAX_NAME_BYTES
    assert not name.endswith(".")


@pytest.fixture(scope="module")
def shared_writer(tmp_path_factory):
    return FileWriter(tmp_path_factory.mktemp("paths"))


@settings(max_examples=500, deadline=None)
@given(
    st.tuples(st.one_of(st.none(), ID_LIKE, ANY_TEXT), st.integers(-(10**20), 10**20), st.booleans()),
    st.tuples(st.one_of(st.none(), ID_LIKE, ANY_TEXT), st.integers(-(10**20), 10**20), st.booleans()),
)
def test_different_segments_never_share_a_path(shared_writer, a, b):
    assume(a != b)
    fmt = AudioFormat("pcm_s16le", 8000)
    empty = np.zeros(0, "<i2")
    pa = shared_writer.path_for(Segment(a[0], a[1], fmt, empty, complete=a[2]))
    pb = shared_writer.path_for(Segment(b[0], b[1], fmt, empty, complete=b[2]))
    assert pa != pb
    assert os.path.dirname(os.path.dirname(pa)) == shared_writer.directory


# --- symbolic links --------------------------------------------------------------------------

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt",
                                    reason="needs POSIX symlinks")


@needs_symlinks
@pytest.mark.parametrize("pattern", ["{context_id}/{flush_id}.wav", "{context_id}/deeper/{flush_id}.wav"])
def test_symlinked_subdirectory_pointing_outside_is_refused(tmp_path, pattern):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    os.symlink(outside, out / "evil")
    seg = segment("evil", 1)
    with pytest.raises(WriteError) as info:
        FileWriter(out, pattern).write(seg)
    assert info.value.segment is seg and seg.path is None
    assert os.listdir(outside) == []  # not even a directory was made through the link
    assert all_files(tmp_path) == [os.path.join("out", "evil")]


@needs_symlinks
def test_symlink_to_elsewhere_inside_is_fine(tmp_path):
    out = tmp_path / "out"
    (out / "real").mkdir(parents=True)
    os.symlink(out / "real", out / "alias")
    path = FileWriter(out).write(segment("alias", 1))
    assert os.path.isfile(out / "real" / "1.wav") and path == str(out / "alias" / "1.wav")


@needs_symlinks
def test_output_directory_itself_may_be_a_symlink(tmp_path):
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "out")
    FileWriter(tmp_path / "out").write(segment("c", 1))
    assert os.path.isfile(tmp_path / "target" / "c" / "1.wav")


@needs_symlinks
def test_output_directory_may_become_a_symlink_before_the_first_write(tmp_path):
    w = FileWriter(tmp_path / "out")
    (tmp_path / "target").mkdir()
    os.symlink(tmp_path / "target", tmp_path / "out")
    w.write(segment("c", 1))
    assert os.path.isfile(tmp_path / "target" / "c" / "1.wav")


@needs_symlinks
def test_a_link_at_the_final_name_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "out" / "c").mkdir(parents=True)
    os.symlink(victim, tmp_path / "out" / "c" / "1.wav")
    path = FileWriter(tmp_path / "out").write(segment("c", 1))
    assert victim.read_bytes() == b"keep me"
    assert not os.path.islink(path) and read(path)[:4] == b"RIFF"


# --- atomicity and failures ------------------------------------------------------------------

def fail_with(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


WRITE_CALL = "writev" if hasattr(os, "writev") else "write"


@pytest.mark.parametrize("call", [WRITE_CALL, "replace", "close"])
@pytest.mark.parametrize("existing", [False, True])
def test_failure_leaves_nothing_and_segment_can_be_retried(tmp_path, monkeypatch, call, existing):
    out = tmp_path / "out"
    final = out / "c" / "1.wav"
    if existing:
        final.parent.mkdir(parents=True)
        final.write_bytes(b"old audio")
    seg = segment("c", 1, "pcm_s16le", 44100, 1001)
    w = FileWriter(out)
    real_close = os.close
    if call == "close":
        def close(fd):  # the descriptor is closed, but the close reports a deferred error
            real_close(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "close", close)
    else:
        monkeypatch.setattr(os, call, fail_with(errno.ENOSPC))
    with pytest.raises(WriteError) as info:
        w.write(seg)
    monkeypatch.undo()

    error = info.value
    assert isinstance(error, OSError) and isinstance(error, FlushsinkError)
    assert error.errno == errno.ENOSPC
    assert error.segment is seg and error.path == str(final)
    assert isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.ENOSPC
    assert "c" in str(error) and str(final) in str(error)
    assert seg.path is None
    if existing:
        assert final.read_bytes() == b"old audio"
        assert all_files(out) == [os.path.join("c", "1.wav")]
    else:
        assert not final.exists()
        assert all_files(out) == []  # no temp file either

    retry = FileWriter(tmp_path / "elsewhere").write(seg)
    assert read(retry) == expected_wav("pcm_s16le", 44100, seg.samples.tobytes())
    assert seg.path == retry
    assert w.write(seg) == str(final)  # and the first writer works again once the disk is back
    assert read(final) == read(retry)


def test_temp_file_is_hidden_and_next_to_the_final_file(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((src, dst, sorted(os.listdir(os.path.dirname(dst)))))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = FileWriter(tmp_path).write(segment("c", 1))
    [(src, dst, listing)] = seen
    assert dst == path and os.path.dirname(src) == os.path.dirname(path)
    name = os.path.basename(src)
    assert name.startswith(".") and not name.endswith(".wav")
    assert listing == [name]  # nothing under the final name until the rename
    assert all_files(tmp_path) == [os.path.join("c", "1.wav")]


def test_one_write_call_and_short_writes_are_completed(tmp_path, monkeypatch):
    if not hasattr(os, "writev"):
        pytest.skip("no os.writev")
    calls = []
    real_writev = os.writev

    def counting(fd, buffers):
        calls.append(sum(len(b) for b in buffers))
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", counting)
    seg = segment("c", 1, "pcm_mulaw", 8000, 5001)
    w = FileWriter(tmp_path)
    w.write(seg)
    assert calls == [58 + 5001 + 1]

    def short(fd, buffers):  # at most 999 bytes per call, like a write cut by a signal
        budget, taken = 999, []
        for b in buffers:
            taken.append(memoryview(b)[:budget])
            budget -= len(taken[-1])
        return real_writev(fd, taken)

    monkeypatch.setattr(os, "writev", short)
    path = w.write(segment("c", 2, "pcm_mulaw", 8000, 5001))
    assert read(path) == expected_wav("pcm_mulaw", 8000, seg.samples.tobytes())

    monkeypatch.setattr(os, "writev", lambda fd, buffers: 0)
    with pytest.raises(WriteError):
        w.write(segment("c", 3))
    assert sorted(os.listdir(tmp_path / "c")) == ["1.wav", "2.wav"]


def test_directories_are_created_once(tmp_path, monkeypatch):
    made = []
    real_makedirs = os.makedirs
    monkeypatch.setattr(os, "makedirs", lambda p, *a, **k: (made.append(p), real_makedirs(p, *a, **k)))
    w = FileWriter(tmp_path)
    for flush_id in range(5):
        w.write(segment("c", flush_id))
    w.write(segment("d", 0))
    assert made == [str(tmp_path), str(tmp_path / "c"), str(tmp_path / "d")]


def test_a_directory_removed_behind_the_writers_back_is_made_again(tmp_path):
    w = FileWriter(tmp_path / "out")
    w.write(segment("c", 1))
    os.unlink(tmp_path / "out" / "c" / "1.wav")
    os.rmdir(tmp_path / "out" / "c")
    os.rmdir(tmp_path / "out")
    assert os.path.isfile(w.write(segment("c", 2)))


def test_a_file_where_a_directory_should_be_is_a_write_error(tmp_path):
    (tmp_path / "c").write_bytes(b"")
    seg = segment("c", 1)
    with pytest.raises(WriteError) as info:
        FileWriter(tmp_path).write(seg)
    assert info.value.segment is seg


@pytest.mark.skipif(os.name == "nt", reason="umask semantics")
def test_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        path = FileWriter(tmp_path).write(segment("c", 1))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o640


# --- fsync -----------------------------------------------------------------------------------

@pytest.mark.skipif(os.name == "nt", reason="directory fsync is POSIX only")
def test_fsync_flushes_the_file_then_the_directory(tmp_path, monkeypatch):
    import stat

    kinds = []
    real_fsync = os.fsync

    def spy(fd):
        mode = os.fstat(fd).st_mode
        kinds.append("dir" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    FileWriter(tmp_path).write(segment("c", 1))
    assert kinds == []
    FileWriter(tmp_path, fsync=True).write(segment("c", 2))
    assert kinds == ["file", "dir"]


@pytest.mark.skipif(os.name == "nt", reason="directory fsync is POSIX only")
@pytest.mark.parametrize("failing", ["file", "dir"])
def test_fsync_failure_is_a_write_error_with_nothing_left(tmp_path, monkeypatch, failing):
    import stat

    real_fsync = os.fsync

    def flaky(fd):
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        if is_dir == (failing == "dir"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky)
    seg = segment("c", 1)
    with pytest.raises(WriteError) as info:
        FileWriter(tmp_path, fsync=True).write(seg)
    assert info.value.errno == errno.EIO and info.value.segment is seg
    assert all_files(tmp_path) == []


# --- overwrite=False ---------------------------------------------------------------------------

@pytest.mark.parametrize("hard_links", [True, False])
def test_overwrite_false_never_replaces(tmp_path, monkeypatch, hard_links):
    if not hard_links:  # e.g. FAT or some network file systems
        monkeypatch.setattr(os, "link", fail_with(errno.EPERM))
    w = FileWriter(tmp_path, overwrite=False)
    first = w.write(segment("c", 1))
    assert read(first)[:4] == b"RIFF"
    (tmp_path / "c" / "2.wav").write_bytes(b"precious")

    seg = segment("c", 2)
    with pytest.raises(WriteError) as info:
        w.write(seg)
    assert info.value.errno == errno.EEXIST
    assert info.value.segment is seg and seg.path is None
    assert (tmp_path / "c" / "2.wav").read_bytes() == b"precious"
    with pytest.raises(WriteError):
        w.write(segment("c", 1))  # what it wrote itself is not replaced either
    assert sorted(os.listdir(tmp_path / "c")) == ["1.wav", "2.wav"]  # no temp files


def test_overwrite_true_replaces(tmp_path):
    w = FileWriter(tmp_path)
    w.write(segment("c", 1, n=10))
    path = w.write(segment("c", 1, n=3))
    assert read(path) == expected_wav("pcm_s16le", 24000, make_samples("pcm_s16le", 3).tobytes())


# --- a real error from the kernel ----------------------------------------------------------------

@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE/EFBIG as on Linux")
def test_real_efbig_from_a_file_size_limit(tmp_path):
    # A tmpfs of a few kB would need root; a file size limit in a child process
    # gives a real short write followed by EFBIG instead.
    import flushsink.writers

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(flushsink.writers.__file__)))
    script = textwrap.dedent(
        """
        import errno, os, resource, signal, sys
        import numpy as np
        from flushsink.errors import WriteError
        from flushsink.formats import AudioFormat
        from flushsink.segments import Segment
        from flushsink.writers import FileWriter

        out = sys.argv[1]
        os.makedirs(os.path.join(out, "c"))
        with open(os.path.join(out, "c", "1.wav"), "wb") as f:
            f.write(b"old")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
        seg = Segment("c", 1, AudioFormat("pcm_s16le", 8000), np.ones(20_000, "<i2"))
        try:
            FileWriter(out).write(seg)
        except WriteError as exc:
            assert exc.errno == errno.EFBIG, exc.errno
            assert exc.segment is seg
            print("WriteError", sorted(os.listdir(os.path.join(out, "c"))))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "WriteError ['1.wav']"
    assert (tmp_path / "out" / "c" / "1.wav").read_bytes() == b"old"


@pytest.mark.parametrize("encoding", [["pcm_s16le"], {"pcm": 1}, None, 16, b"pcm_s16le"])
def test_an_encoding_that_is_not_a_name_is_a_format_error(encoding):
    """Not a TypeError from a set lookup: a server's output_format reaches AudioFormat."""
    with pytest.raises(FormatError):
        AudioFormat(encoding, 44100)
