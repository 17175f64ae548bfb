"""Parquet input through pyarrow (``flushsink[parquet]``), read by record batches: the
same rows and the same bad-row reasons as JSONL. Skipped where pyarrow is missing (the
main test venv), where the one test that needs its absence runs instead."""

from __future__ import annotations

import importlib.util

import pytest

from flushsink.batch import BadRow, InputError, MissingDependency, Row, Shard, read_rows
from flushsink.formats import AudioFormat

HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None


@pytest.mark.skipif(HAVE_PYARROW, reason="pyarrow is installed")
def test_parquet_without_pyarrow_names_the_extra(tmp_path):
    path = tmp_path / "in.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(MissingDependency, match=r"flushsink\[parquet\]"):
        list(read_rows(path))


@pytest.fixture
def pa():
    return pytest.importorskip("pyarrow")


def write_table(pa, path, columns, **kw):
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, **kw)
    return path


def test_parquet_rows_with_lists_structs_ints_and_nulls(pa, tmp_path):
    path = write_table(pa, tmp_path / "in.parquet", {
        "id": pa.array([1, 2, 3, None, 5, 2], pa.int64()),
        "text": pa.array(["One.", None, "", "x", None, "dup"]),
        "texts": pa.array([None, ["A.", "B."], None, None, None, None], pa.list_(pa.string())),
        "voice": pa.array([None, {"mode": "id", "id": "v"}, None, None, None, None],
                          pa.struct([("mode", pa.string()), ("id", pa.string())])),
        "output_format": pa.array(
            [{"container": None, "encoding": "pcm_f32le", "sample_rate": 16000}] + [None] * 5,
            pa.struct([("container", pa.string()), ("encoding", pa.string()),
                       ("sample_rate", pa.int32())])),
        "speaker": pa.array(["ignored"] * 6),
    })
    results = list(read_rows(path))
    assert results[0] == Row("1", ("One.",), 0, None,
                             output_format=AudioFormat("pcm_f32le", 16000))
    assert results[1] == Row("2", ("A.", "B."), 1, None, voice={"mode": "id", "id": "v"})
    assert results[2] == BadRow(2, None, "empty text", "3")
    assert results[3] == BadRow(3, None, "missing id")
    assert results[4] == BadRow(4, None, "missing text (or texts)", "5")
    assert isinstance(results[5], BadRow) and "duplicate id '2'" in results[5].reason


def test_parquet_is_read_in_record_batches_across_row_groups(pa, tmp_path):
    count = 20_000
    path = write_table(pa, tmp_path / "in.parquet",
                       {"id": [f"r{i}" for i in range(count)],
                        "text": [f"Row {i}." for i in range(count)]}, row_group_size=3000)
    rows = list(read_rows(path))
    assert [r.index for r in rows] == list(range(count))
    assert rows[-1] == Row(f"r{count - 1}", (f"Row {count - 1}.",), count - 1, None)
    halves = [list(read_rows(path, shard=Shard(i, 2))) for i in (0, 1)]
    assert sorted(r.index for half in halves for r in half) == list(range(count))


@pytest.mark.parametrize("columns, message", [
    ({"name": ["a"], "text": ["x"]}, "no id column"),
    ({"id": ["a"], "voice": ["x"]}, "neither a text nor a texts column"),
])
def test_parquet_schema_problems_fail_the_input(pa, tmp_path, columns, message):
    path = write_table(pa, tmp_path / "in.parquet", columns)
    with pytest.raises(InputError, match=message):
        list(read_rows(path))


def test_a_file_that_is_not_parquet(pa, tmp_path):
    path = tmp_path / "in.parquet"
    path.write_bytes(b"id,text\na,b\n")
    with pytest.raises(InputError, match="as Parquet"):
        list(read_rows(path))
