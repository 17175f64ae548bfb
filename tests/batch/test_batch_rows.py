"""flushsink.batch.read_rows on JSONL and CSV files written here: every kind of bad row is
reported with its reason and line and the reading goes on; shards split the rows exactly;
the reader streams (it never reads ahead of the row it yields)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re

import pytest

from flushsink.batch import BadRow, InputError, Row, Shard, read_rows, input_format
from flushsink.formats import AudioFormat


def write_jsonl(path, lines):
    path.write_bytes(b"".join((line if isinstance(line, bytes) else
                               json.dumps(line).encode()) + b"\n" for line in lines))
    return path


def split(results):
    rows = [r for r in results if isinstance(r, Row)]
    bad = [r for r in results if isinstance(r, BadRow)]
    assert len(rows) + len(bad) == len(results)
    return rows, bad


def test_jsonl_good_rows_carry_every_field(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "text": "Hello there."},
        {"id": 7, "texts": ["One.", "Two."], "voice": "v-1", "model_id": "sonic-2",
         "language": "fr", "extra": [1, 2]},
        {"id": "c", "text": "Hi.", "voice": {"mode": "id", "id": "v-2"},
         "output_format": {"container": "raw", "encoding": "pcm_f32le", "sample_rate": 24000}},
    ])
    rows, bad = split(list(read_rows(path)))
    assert bad == []
    assert rows[0] == Row("a", ("Hello there.",), 0, 1)
    assert rows[1] == Row("7", ("One.", "Two."), 1, 2, voice="v-1", model_id="sonic-2",
                          language="fr")
    assert rows[2].voice == {"mode": "id", "id": "v-2"}
    assert rows[2].output_format == AudioFormat("pcm_f32le", 24000)


BAD_JSONL = [
    ({"text": "no id"}, "missing id"),
    ({"id": None, "text": "null id"}, "missing id"),
    ({"id": "", "text": "x"}, "id is empty"),
    ({"id": True, "text": "x"}, "id must be a string or an integer, not bool"),
    ({"id": 1.5, "text": "x"}, "not float"),
    ({"id": "e1", "text": ""}, "empty text"),
    ({"id": "e2", "text": "   \n"}, "empty text"),
    ({"id": "e3"}, "missing text"),
    ({"id": "e4", "text": "a", "texts": ["b"]}, "both text and texts"),
    ({"id": "e5", "texts": []}, "texts is empty"),
    ({"id": "e6", "texts": ["ok", ""]}, r"texts\[1\] is empty"),
    ({"id": "e7", "texts": "not a list"}, "texts must be a list"),
    ({"id": "e8", "texts": ["ok", 3]}, r"texts\[1\] must be a string, not int"),
    ({"id": "e9", "text": 12}, "text must be a string, not int"),
    ({"id": "e10", "text": "x", "voice": 3}, "voice must be a string or an object"),
    ({"id": "e11", "text": "x", "voice": ""}, "voice is empty"),
    ({"id": "e12", "text": "x", "model_id": ["m"]}, "model_id must be a non-empty string"),
    ({"id": "e13", "text": "x", "language": ""}, "language must be a non-empty string"),
    ({"id": "e14", "text": "x", "output_format": "wav"}, "output_format must be an object"),
    ({"id": "e15", "text": "x", "output_format": {"encoding": "mp3", "sample_rate": 8000}},
     "output_format: unknown encoding"),
    ({"id": "e16", "text": "x", "output_format": {"container": "wav", "encoding": "pcm_s16le",
                                                  "sample_rate": 8000}}, "container 'raw'"),
    ({"id": "e17", "text": "x", "output_format": {"encoding": "pcm_s16le"}}, "lacks 'sample_rate'"),
    ({"id": "e18", "text": "bad \ud800 text"}, "text is not valid Unicode"),
    ({"id": "bad\udc00", "text": "x"}, "id is not valid Unicode"),
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "not a JSON object but list"),
    (b'"a string"', "not a JSON object but str"),
    (b'{"id": "u", "text": "caf\xe9"}', "line is not valid UTF-8"),
    (b"[" * 100000 + b"]" * 100000, "invalid JSON"),
]


def test_every_bad_jsonl_row_is_reported_and_reading_goes_on(tmp_path):
    lines = []
    for i, (bad, _) in enumerate(BAD_JSONL):
        lines += [bad, {"id": f"good-{i}", "text": "Fine."}]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    results = list(read_rows(path))
    rows, bad = split(results)
    assert [r.id for r in rows] == [f"good-{i}" for i in range(len(BAD_JSONL))]
    assert len(bad) == len(BAD_JSONL)
    for report, (_, reason) in zip(bad, BAD_JSONL):
        assert re.search(reason, report.reason), (reason, report)
        assert report.line == report.index + 1  # 1-based line, the row's own
    ids = [b.id for b in bad]
    assert ids[BAD_JSONL.index(({"id": "e1", "text": ""}, "empty text"))] == "e1"
    assert ids[0] is None  # no usable id


def test_duplicates_blank_lines_bom_and_crlf(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"id": "a", "text": "one"}\r\n\r\n   \n'
                     b'{"id": "b", "text": "two"}\n{"id": "a", "text": "again"}\n'
                     b'{"id": 5, "text": "int"}\n{"id": "5", "text": "str"}')
    results = list(read_rows(path))
    assert [(r.id, r.index, r.line) for r in results] == [
        ("a", 0, 1), ("b", 1, 4), ("a", 2, 5), ("5", 3, 6), ("5", 4, 7)]
    assert isinstance(results[2], BadRow) and "duplicate id 'a'" in results[2].reason
    assert isinstance(results[4], BadRow) and "duplicate id '5'" in results[4].reason
    assert results[2].record("in.jsonl") == {
        "kind": "input", "id": "a", "index": 2, "line": 5,
        "reason": results[2].reason, "source": "in.jsonl"}


def test_gzip_and_file_objects(tmp_path):
    data = b'{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n'
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(data))
    assert [r.id for r in read_rows(path)] == ["a", "b"]
    assert [r.id for r in read_rows(io.BytesIO(data), format="jsonl")] == ["a", "b"]
    with pytest.raises(InputError, match="format is required"):
        list(read_rows(io.BytesIO(data)))


@pytest.mark.parametrize("name, fmt", [("a.jsonl", "jsonl"), ("A.NDJSON", "jsonl"),
                                       ("b.csv.gz", "csv"), ("c.parquet", "parquet"),
                                       ("d.pq", "parquet")])
def test_input_format(name, fmt):
    assert input_format(name) == fmt


@pytest.mark.parametrize("name", ["a.json", "a.txt", "noext", "a.gz"])
def test_input_format_refuses(name):
    with pytest.raises(InputError, match="cannot tell the format"):
        input_format(name)
    with pytest.raises(InputError):
        read_rows(name, format="xml").__next__()


class Tripwire(io.RawIOBase):
    """A file that fails once more than ``limit`` bytes are read from it."""

    def __init__(self, data, limit):
        self._data = io.BytesIO(data)
        self.limit = limit

    def readable(self):
        return True

    def readinto(self, buffer):
        if self._data.tell() >= self.limit:
            raise AssertionError(f"read past byte {self.limit}")
        n = self._data.readinto(memoryview(buffer)[: 4096])
        return n


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_reading_streams(fmt):
    count = 200_000
    if fmt == "jsonl":
        data = b"".join(b'{"id": "%d", "text": "row %d"}\n' % (i, i) for i in range(count))
    else:
        data = b"id,text\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(count))
    assert len(data) > 3_000_000
    stream = io.BufferedReader(Tripwire(data, 100_000), buffer_size=4096)
    rows = read_rows(stream, format=fmt)
    first = [next(rows) for _ in range(10)]
    assert [r.id for r in first] == [str(i) for i in range(10)]
    rows.close()


def test_shards_partition_the_rows_and_report_idless_rows_once(tmp_path):
    lines = [{"id": f"r{i}", "text": "x"} for i in range(300)]
    lines += [{"text": "no id"}, b"garbage", {"id": "r5", "text": "duplicate"},
              {"id": "r6", "text": ""}]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    everything = list(read_rows(path))
    seen_rows, seen_bad = [], []
    for i in range(3):
        rows, bad = split(list(read_rows(path, shard=Shard(i, 3))))
        assert all(Shard(i, 3).owns(r.id) for r in rows)
        seen_rows += rows
        seen_bad += [(i, b) for b in bad]
    assert sorted(r.index for r in seen_rows) == [r.index for r in everything
                                                   if isinstance(r, Row)]
    assert len(seen_rows) == 300
    idless = [(i, b) for i, b in seen_bad if b.id is None]
    assert [i for i, _ in idless] == [0, 0]  # shard 0 reports them, once
    with_id = {b.id: i for i, b in seen_bad if b.id is not None}
    owner = {row_id: next(i for i in range(3) if Shard(i, 3).owns(row_id))
             for row_id in ("r5", "r6")}
    assert with_id == owner  # the id's own shard reports a duplicate or an empty text


# --- CSV ----------------------------------------------------------------------------------

def write_csv(path, header, rows, **kw):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, **kw)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_rows_with_json_cells_and_multiline_fields(tmp_path):
    path = write_csv(tmp_path / "in.csv", ["id", "text", "texts", "voice", "output_format",
                                           "language", "notes"], [
        ["a", "Line one\nline two.", "", "v-1", "", "", "kept aside"],
        ["b", "", '["One.", "Two."]', '{"mode": "id", "id": "v-2"}',
         '{"encoding": "pcm_mulaw", "sample_rate": 8000}', "de", ""],
        ["c", "", "", "", "", "", ""],
        ["d", "x", "", "", "{bad json", "", ""],
        ["e", "", '"not a list"', "", "", "", ""],
        ["f", "Fine.", "", "", "", "", ""],
    ])
    results = list(read_rows(path))
    assert [(r.index, r.line) for r in results] == [(0, 2), (1, 4), (2, 5), (3, 6), (4, 7),
                                                    (5, 8)]
    a, b, c, d, e, f = results
    assert a == Row("a", ("Line one\nline two.",), 0, 2, voice="v-1")
    assert b == Row("b", ("One.", "Two."), 1, 4, voice={"mode": "id", "id": "v-2"},
                    output_format=AudioFormat("pcm_mulaw", 8000), language="de")
    assert isinstance(c, BadRow) and c.reason == "missing text (or texts)" and c.id == "c"
    assert isinstance(d, BadRow) and d.reason.startswith("output_format is not valid JSON")
    assert isinstance(e, BadRow) and e.reason.startswith("texts must be a list")
    assert f.id == "f"


def test_csv_header_problems_fail_the_input(tmp_path):
    for header, message in ((["name", "text"], "no id column"),
                            (["id", "voice"], "neither a text nor a texts column"),
                            (["id", "text", "id"], "names a column twice")):
        path = write_csv(tmp_path / "in.csv", header, [["1", "2", "3"]])
        with pytest.raises(InputError, match=message):
            list(read_rows(path))
    (tmp_path / "empty.csv").write_bytes(b"")
    assert list(read_rows(tmp_path / "empty.csv")) == []


def test_csv_bad_records_are_rows_not_failures(tmp_path):
    big = "x" * (csv.field_size_limit() + 10)
    path = tmp_path / "in.csv"
    path.write_bytes(
        b"\xef\xbb\xbfid,text\n"
        b"a,one\n"
        b"b,two,extra\n"
        b"c\n"
        + f'd,"{big}"\n'.encode()
        + b"e,caf\xe9\n"
        b"f,six\n"
        b"\n"
        b"g,seven\n")
    results = list(read_rows(path))
    got = [(type(r).__name__, r.id, r.line, getattr(r, "reason", None)) for r in results]
    assert got[0] == ("Row", "a", 2, None)
    assert got[1] == ("BadRow", None, 3, "has 3 fields, the header has 2")
    assert got[2] == ("BadRow", None, 4, "has 1 fields, the header has 2")
    assert got[3][0] == "BadRow" and got[3][2] == 5 and "field larger than field limit" in got[3][3]
    assert got[4] == ("BadRow", "e", 6, "text is not valid Unicode (a lone surrogate, or "
                                        "bytes that are not UTF-8)")
    assert got[5] == ("Row", "f", 7, None)
    assert got[6] == ("Row", "g", 9, None)
