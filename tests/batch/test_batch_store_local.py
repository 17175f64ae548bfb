"""flushsink.batch.LocalStore: create-only puts that are atomic and race-safe, listings,
reads, and nothing ever written outside the directory."""

from __future__ import annotations

import os
import threading

import pytest

from flushsink.batch import (
    LocalStore,
    ObjectInfo,
    ObjectNotFound,
    StoreError,
    UnsafePath,
    check_path,
    open_store,
    safe_id,
)
from flushsink.errors import ConfigError


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.parametrize("fsync", [True, False])
def test_put_if_absent_refuses_a_second_put(tmp_path, fsync):
    store = LocalStore(tmp_path / "out", fsync=fsync)
    assert store.put_if_absent("audio/a/0.wav", b"first") is True
    assert store.put_if_absent("audio/a/0.wav", b"second") is False
    assert store.get("audio/a/0.wav") == b"first"
    assert (tmp_path / "out" / "audio" / "a" / "0.wav").read_bytes() == b"first"
    assert files_under(tmp_path / "out") == ["audio/a/0.wav"]  # no temporary file left


def test_racing_writers_store_one_object(tmp_path):
    store = LocalStore(tmp_path, fsync=False)
    barrier = threading.Barrier(8)
    results = {}

    def put(i):
        barrier.wait()
        results[i] = store.put_if_absent("race/x.wav", b"%d" % i * 10000)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, stored in results.items() if stored]
    assert len(winners) == 1
    assert store.get("race/x.wav") == b"%d" % winners[0] * 10000
    assert files_under(tmp_path) == ["race/x.wav"]


def test_put_replaces_and_get_reports_missing_objects(tmp_path):
    store = LocalStore(tmp_path)
    store.put("summary.json", b"1")
    store.put("summary.json", b"2")
    assert store.get("summary.json") == b"2"
    with pytest.raises(ObjectNotFound) as info:
        store.get("nothing/here")
    assert isinstance(info.value, FileNotFoundError) and info.value.path == "nothing/here"
    os.makedirs(tmp_path / "adir")
    with pytest.raises(ObjectNotFound):
        store.get("adir")


def test_list_is_by_component_and_skips_temporaries(tmp_path):
    store = LocalStore(tmp_path)
    for path in ("audio/b/0.wav", "audio/a/1.wav", "audio/a/0.wav", "audiobook/x",
                 "manifest/part-0of1-000000.jsonl"):
        store.put_if_absent(path, b"xyz")
    (tmp_path / "audio" / "a" / ".0.wav.abcdef.tmp").write_bytes(b"half")
    os.makedirs(tmp_path / ".hidden")
    (tmp_path / ".hidden" / "f").write_bytes(b"")
    assert list(store.list("audio")) == [ObjectInfo("audio/a/0.wav", 3),
                                         ObjectInfo("audio/a/1.wav", 3),
                                         ObjectInfo("audio/b/0.wav", 3)]
    assert [o.path for o in store.list()] == ["audio/a/0.wav", "audio/a/1.wav",
                                              "audio/b/0.wav", "audiobook/x",
                                              "manifest/part-0of1-000000.jsonl"]
    assert list(store.list("missing")) == []
    assert store.remove_temporaries() == 1
    assert not (tmp_path / "audio" / "a" / ".0.wav.abcdef.tmp").exists()


@pytest.mark.parametrize("path", ["", "/abs", "a//b", "a/", "./a", "a/./b", "../a", "a/..",
                                  ".hidden", "a/.tmp", "a\\b", "a\x00b", "a\nb",
                                  "a\ud800", "x" * 1025])
def test_unsafe_paths_are_refused_before_anything_is_written(tmp_path, path):
    store = LocalStore(tmp_path / "out")
    with pytest.raises(UnsafePath):
        store.put_if_absent(path, b"x")
    with pytest.raises(UnsafePath):
        store.get(path)
    with pytest.raises(UnsafePath):
        check_path(path)
    assert not (tmp_path / "out").exists()
    assert isinstance(UnsafePath("x"), ValueError)


def test_hostile_ids_stay_inside(tmp_path):
    store = LocalStore(tmp_path / "out")
    for row_id in ("../../escape", "/etc/passwd", "..", ".", "a/../../b", "C:\\x", "~root",
                   "\x00", "con", "%2E%2E"):
        assert store.put_if_absent(f"audio/{safe_id(row_id)}/0.wav", row_id.encode())
    names = files_under(tmp_path / "out")
    assert len(names) == 10 and all(n.startswith("audio/") for n in names)
    assert files_under(tmp_path) == ["out/" + n for n in names]


def test_a_directory_linking_outside_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    os.symlink(outside, tmp_path / "out" / "audio")
    store = LocalStore(tmp_path / "out")
    with pytest.raises(StoreError, match="outside"):
        store.put_if_absent("audio/a/0.wav", b"x")
    assert list(outside.iterdir()) == []


def test_a_failed_write_is_a_store_error_with_the_errno(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    store = LocalStore(tmp_path / "file")  # the root is a file: nothing can go under it
    with pytest.raises(StoreError) as info:
        store.put_if_absent("a/b", b"x")
    assert isinstance(info.value, OSError) and info.value.errno is not None
    assert info.value.path == "a/b"


def test_open_store(tmp_path):
    assert isinstance(open_store(tmp_path), LocalStore)
    assert open_store(str(tmp_path)).url == str(tmp_path)
    with pytest.raises(ConfigError, match="unsupported destination"):
        open_store("gs://bucket/x")
