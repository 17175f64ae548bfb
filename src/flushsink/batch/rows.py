"""Rows in: JSONL, CSV and Parquet, read as a stream, checked one by one.

A job over a million rows must neither hold the file in memory nor stop at its first bad
row. :func:`read_rows` reads JSONL and CSV a record at a time and Parquet a record batch at
a time, and yields a :class:`Row` for each good row and a :class:`BadRow` (with the
reason and where it was) for each bad one; the caller writes those to the errors file and
goes on. Only the input as a whole can fail (:class:`~flushsink.batch.errors.InputError`):
an unknown format, a CSV or Parquet file without the columns a row needs.

A row's fields (JSONL: the object's keys; CSV: the header; Parquet: the columns):

- ``id`` (required): a non-empty string, or an integer taken as its decimal text.
  Unique: a second row with the same id is a bad row (the first one stands).
- ``text`` (a non-blank string) or ``texts`` (a non-empty list of non-blank strings: one
  flush segment, so one audio file, each). Exactly one of the two.
- optional ``voice`` (a voice id, or a voice object such as ``{"mode": "id", "id": ...}``),
  ``model_id``, ``language`` (strings) and ``output_format`` (an object with ``encoding``
  and ``sample_rate``; ``container``, if given, must be ``raw``: the WAV is made here).
- Any other field is ignored, so a table can carry its own columns along.

In CSV every cell is text: ``texts`` and ``output_format`` are JSON (``["Hi.", "Bye."]``),
``voice`` is JSON when it starts with ``{``, and an empty cell is an absent field. Cells
larger than ``csv.field_size_limit()`` (128 KiB unless the program raised it) make that
record a bad row. Bytes that are not UTF-8 make the fields that hold them bad.

With a :class:`~flushsink.batch.ids.Shard`, rows of other shards are skipped before they
are checked, except rows that have no usable id: those have no shard, so shard 0 reports
them (exactly one of N processes does). Duplicates always fall in one shard (the shard is
a function of the id), so each shard finds all of its own.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import importlib
import io
import json
import os
from dataclasses import dataclass, replace
from typing import IO, Any, Iterator, Mapping, Optional, Union, cast

from ..errors import FormatError
from ..formats import AudioFormat
from .errors import InputError, MissingDependency
from .ids import ALL, Shard, check_id

__all__ = ["Row", "BadRow", "read_rows", "INPUT_FORMATS", "input_format"]

#: The formats :func:`read_rows` reads, by the file name's suffix (before a ``.gz``).
INPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
                 ".parquet": "parquet", ".pq": "parquet"}

FIELDS = ("id", "text", "texts", "voice", "model_id", "output_format", "language")
_STRING_FIELDS = ("model_id", "language")
_PARQUET_BATCH_ROWS = 4096
Voice = Union[str, dict[str, Any]]


@dataclass(frozen=True)
class Row:
    """One good input row: what to say (``texts``, one flush segment each) and how.

    ``index`` is the row's position among the input's records (0-based, bad ones
    included, blank JSONL lines and CSV lines not counted); ``line`` the 1-based line where
    it starts (JSONL, CSV; None for Parquet). None in an option means "the job's default"
    (:meth:`with_defaults`)."""

    id: str
    texts: tuple[str, ...]
    index: int
    line: Optional[int] = None
    voice: Optional[Voice] = None
    model_id: Optional[str] = None
    output_format: Optional[AudioFormat] = None
    language: Optional[str] = None

    def with_defaults(self, *, voice: Optional[Voice] = None, model_id: Optional[str] = None,
                      output_format: Optional[AudioFormat] = None,
                      language: Optional[str] = None) -> "Row":
        """The row with the job's defaults where it gives none, so what the manifest says
        (voice, model) is what was asked of the server."""
        return replace(
            self,
            voice=self.voice if self.voice is not None else voice,
            model_id=self.model_id if self.model_id is not None else model_id,
            output_format=self.output_format if self.output_format is not None else output_format,
            language=self.language if self.language is not None else language,
        )


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be spoken, and why. ``id`` is its id when it had a usable one."""

    index: int
    line: Optional[int]
    reason: str
    id: Optional[str] = None

    def record(self, source: Optional[str] = None) -> dict[str, Any]:
        """The row of the errors file that reports it (``kind`` ``"input"``)."""
        return {"kind": "input", "id": self.id, "index": self.index, "line": self.line,
                "reason": self.reason, "source": source}


def input_format(path: "str | os.PathLike[str]") -> str:
    """``"jsonl"``, ``"csv"`` or ``"parquet"`` from the file name (a ``.gz`` after the
    suffix is allowed for JSONL and CSV); :class:`InputError` when the suffix is none of
    :data:`INPUT_FORMATS`."""
    name = os.fspath(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = os.path.splitext(name)[1]
    if suffix not in INPUT_FORMATS:
        raise InputError(f"cannot tell the format of {os.fspath(path)!r} from its name: "
                         f"expected one of {', '.join(INPUT_FORMATS)} (or give the format)")
    return INPUT_FORMATS[suffix]


def read_rows(source: "str | os.PathLike[str] | IO[bytes]", *, format: Optional[str] = None,
              shard: Shard = ALL) -> Iterator["Row | BadRow"]:
    """Yield each row of ``source`` that belongs to ``shard``, in file order: a
    :class:`Row` when it is good, a :class:`BadRow` when it is not.

    ``source``: a path (``.gz`` read through gzip for JSONL and CSV) or a binary file
    object (then ``format`` is required). ``format``: ``"jsonl"``, ``"csv"`` or
    ``"parquet"``; by default from the file name (:func:`input_format`).

    Memory stays flat in the file's size: one record (JSONL, CSV) or one record batch
    (Parquet) at a time, plus 16 bytes per id of this shard to find duplicates.

    Raises :class:`~flushsink.batch.errors.InputError` when the input as a whole cannot
    be read as rows (the header or schema lacks ``id``, or both ``text`` and ``texts``),
    :class:`~flushsink.batch.errors.MissingDependency` for Parquet without pyarrow, and
    ``OSError`` from opening or reading the file.
    """
    if format is None:
        if not isinstance(source, (str, os.PathLike)):
            raise InputError("format is required when the source is a file object")
        format = input_format(source)
    if format not in ("jsonl", "csv", "parquet"):
        raise InputError(f"unknown input format {format!r}: expected jsonl, csv or parquet")
    if format == "parquet":
        records = _parquet_records(source)
    else:
        records = _text_records(source, format)
    seen: set[bytes] = set()
    for index, (line, record) in enumerate(records):
        if isinstance(record, str):  # the record could not be read: no id, shard 0 says so
            if shard.index == 0:
                yield BadRow(index, line, record)
            continue
        yield from _checked(record, index, line, shard, seen)


def _checked(record: Mapping[str, Any], index: int, line: Optional[int], shard: Shard,
             seen: set[bytes]) -> Iterator["Row | BadRow"]:
    raw_id = record.get("id")
    if raw_id is None:
        if shard.index == 0:
            yield BadRow(index, line, "missing id")
        return
    try:
        row_id = check_id(raw_id)
    except ValueError as exc:
        if shard.index == 0:
            yield BadRow(index, line, str(exc))
        return
    digest = hashlib.sha256(row_id.encode("utf-8")).digest()
    if shard.count > 1 and int.from_bytes(digest[:8], "big") % shard.count != shard.index:
        return  # the same rule as shard_of, on the digest already made
    key = digest[:16]
    if key in seen:
        yield BadRow(index, line, f"duplicate id {row_id!r}: an earlier row has it", row_id)
        return
    seen.add(key)
    try:
        yield _row(record, row_id, index, line)
    except ValueError as exc:
        yield BadRow(index, line, str(exc), row_id)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _check_unicode(name: str, value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode (a lone surrogate, or bytes that "
                         "are not UTF-8)") from None
    return value


def _row(record: Mapping[str, Any], row_id: str, index: int, line: Optional[int]) -> Row:
    """Check one record's fields; ``ValueError`` with the reason when one is wrong."""
    text, texts = record.get("text"), record.get("texts")
    if text is not None and texts is not None:
        raise ValueError("both text and texts are given: give one")
    if text is None and texts is None:
        raise ValueError("missing text (or texts)")
    if text is not None:
        if not _is_text(text):
            raise ValueError(f"text must be a string, not {type(text).__name__}")
        spoken: tuple[str, ...] = (_check_unicode("text", text),)
    else:
        if not isinstance(texts, (list, tuple)):
            raise ValueError(f"texts must be a list of strings, not {type(texts).__name__}")
        if not texts:
            raise ValueError("texts is empty")
        for i, item in enumerate(texts):
            if not _is_text(item):
                raise ValueError(f"texts[{i}] must be a string, not {type(item).__name__}")
            _check_unicode(f"texts[{i}]", item)
        spoken = tuple(texts)
    for i, item in enumerate(spoken):
        if not item.strip():
            raise ValueError("empty text" if text is not None else f"texts[{i}] is empty")
    options: dict[str, Any] = {}
    for name in _STRING_FIELDS:
        value = record.get(name)
        if value is None:
            continue
        if not _is_text(value) or not value:
            raise ValueError(f"{name} must be a non-empty string, not {value!r:.60}")
        options[name] = _check_unicode(name, value)
    voice = record.get("voice")
    if voice is not None:
        if isinstance(voice, str):
            if not voice:
                raise ValueError("voice is empty")
            _check_unicode("voice", voice)
        elif isinstance(voice, dict):
            voice = _present(voice)
            _check_json("voice", voice)
        else:
            raise ValueError(f"voice must be a string or an object, not {type(voice).__name__}")
        options["voice"] = voice
    output_format = record.get("output_format")
    if output_format is not None:
        if not isinstance(output_format, dict):
            raise ValueError("output_format must be an object, not "
                             f"{type(output_format).__name__}")
        try:
            options["output_format"] = AudioFormat.from_output_format(_present(output_format))
        except FormatError as exc:
            raise ValueError(f"output_format: {exc}") from None
    return Row(row_id, spoken, index, line, **options)


def _present(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without its null members: a Parquet struct column has every member in
    every row, null where the row gave none."""
    return {key: value for key, value in obj.items() if value is not None}


def _check_json(name: str, value: Any) -> None:
    """A voice object goes to the server and into the manifest as JSON text."""
    try:
        json.dumps(value, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} cannot be sent as JSON: {exc}") from None


# --- JSONL and CSV ---------------------------------------------------------------------------

@dataclass
class _Opened:
    stream: IO[bytes]
    close: bool


def _open_binary(source: "str | os.PathLike[str] | IO[bytes]") -> _Opened:
    if not isinstance(source, (str, os.PathLike)):
        return _Opened(source, False)
    path = os.fspath(source)
    if path.lower().endswith(".gz"):
        return _Opened(cast("IO[bytes]", gzip.open(path, "rb")), True)
    return _Opened(open(path, "rb"), True)


RecordOrReason = tuple[Optional[int], "Mapping[str, Any] | str"]


def _text_records(source: "str | os.PathLike[str] | IO[bytes]",
                  format: str) -> Iterator[RecordOrReason]:
    opened = _open_binary(source)
    try:
        if format == "jsonl":
            yield from _jsonl_records(opened.stream)
        else:
            yield from _csv_records(opened.stream)
    finally:
        if opened.close:
            opened.stream.close()


def _jsonl_records(stream: IO[bytes]) -> Iterator[RecordOrReason]:
    """One record per non-blank line; an unreadable line is a reason, not an error, and
    each line is decoded alone, so bad bytes in one line spoil that line only."""
    for number, raw in enumerate(stream, 1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, f"line is not valid UTF-8 (byte {exc.start})"
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:  # JSONDecodeError, or a number too long to convert
            yield number, f"invalid JSON: {exc}"
            continue
        except RecursionError:
            yield number, "invalid JSON: nested too deeply"
            continue
        if not isinstance(value, dict):
            yield number, f"not a JSON object but {type(value).__name__}"
            continue
        yield number, value


def _csv_records(stream: IO[bytes]) -> Iterator[RecordOrReason]:
    # surrogateescape: a bad byte becomes a lone surrogate in its field, which the row
    # check reports for that row alone, where strict decoding would end the whole file.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape",
                            newline="")
    try:
        reader = csv.reader(text, strict=False)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InputError(f"cannot read the CSV header: {exc}") from None
        names = [name.strip() for name in header]
        if len(set(names)) != len(names):
            raise InputError(f"the CSV header names a column twice: {header!r:.200}")
        _check_columns(names, "CSV header")
        end = reader.line_num
        while True:
            start = end + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                end = reader.line_num
                yield start, f"unreadable CSV record: {exc}"
                continue
            end = reader.line_num
            if not cells:  # a blank line
                continue
            if len(cells) != len(names):
                yield start, f"has {len(cells)} fields, the header has {len(names)}"
                continue
            yield start, _csv_fields(dict(zip(names, cells)))
    finally:
        text.detach()


def _check_columns(names: "list[str]", where: str) -> None:
    if "id" not in names:
        raise InputError(f"the {where} has no id column: {names!r:.200}")
    if "text" not in names and "texts" not in names:
        raise InputError(f"the {where} has neither a text nor a texts column: {names!r:.200}")


def _csv_fields(cells: dict[str, str]) -> "Mapping[str, Any] | str":
    """CSV cells as the record JSONL would give: empty is absent, JSON where a field is
    not a string (``texts``, ``output_format``, a voice object)."""
    record: dict[str, Any] = {}
    for name, cell in cells.items():
        if cell == "":
            continue
        if name in ("texts", "output_format") or (name == "voice" and cell.lstrip().startswith("{")):
            try:
                record[name] = json.loads(cell)
            except ValueError as exc:
                return f"{name} is not valid JSON: {exc}"
            except RecursionError:
                return f"{name} is not valid JSON: nested too deeply"
        else:
            record[name] = cell
    return record


# --- Parquet ---------------------------------------------------------------------------------

def _parquet_records(source: "str | os.PathLike[str] | IO[bytes]") -> Iterator[RecordOrReason]:
    try:
        parquet = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise MissingDependency("reading Parquet needs pyarrow: pip install "
                                "'flushsink[parquet]'") from None
    try:
        table_file = parquet.ParquetFile(source)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"cannot read {_describe(source)} as Parquet: {exc}") from None
    names = list(table_file.schema_arrow.names)
    _check_columns(names, "Parquet schema")
    columns = [name for name in FIELDS if name in names]
    for batch in table_file.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        for record in batch.to_pylist():
            yield None, record


def _describe(source: object) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "the input"
