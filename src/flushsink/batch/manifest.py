"""The job's output: audio objects, manifest and errors parts, the summary, and resume.

Layout under the destination::

    audio/{safe id}/{flush}.wav          one WAV per flush segment of a row (flush: 0, 1, ...)
    manifest/part-{shard}-{n}.jsonl      one row per audio file, published in whole parts
    errors/part-{shard}-{n}.jsonl        one row per bad or failed input row
    summary.json                         totals over every part, rewritten at each job's end

``{shard}`` is the shard's label (``0of1``, ``3of8``), ``{n}`` a 6-digit part number.

The rules that make a killed job safe to run again:

- Audio first, manifest after: a manifest row is published only once its audio exists,
  so no manifest row ever names missing audio. All the rows of one input row go in one
  part, so an id is either wholly in the manifest or not at all.
- Everything is create-only (:meth:`~flushsink.batch.stores.Store.put_if_absent`):
  audio is never stored twice, a part is never rewritten (a part name already taken, by
  an earlier run or a racing process, moves on to the next number).
- Resume (:func:`resume_state`) reads the manifest and lists the audio prefix: ids in the
  manifest are done; audio without a manifest row is an orphan of a killed run, and
  :func:`reconcile` publishes its rows from the stored WAV bytes when every flush of the
  row is there, so it is not synthesized again.

Manifest rows load as they are into Hugging Face ``datasets``
(``load_dataset("json", data_files="manifest/*.jsonl")``) and NeMo (``audio_filepath``,
``duration``, ``text``): paths are relative to the manifest file (``../audio/...``), the
same under ``audio_filepath`` (NeMo) and ``file_name`` (Hugging Face), and every row of a
job has the same keys (``words`` only when timestamps are asked for; null where a row's
words are not known, such as a reconciled row).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence

from ..errors import FormatError
from ..formats import ENCODINGS, AudioFormat, wav_header, wav_padding
from ..segments import Segment
from .errors import ObjectNotFound, StoreError
from .ids import ALL, Shard, id_from_safe, safe_id
from .rows import Row
from .stores import ObjectInfo, Store

__all__ = [
    "AUDIO_DIR", "MANIFEST_DIR", "ERRORS_DIR", "SUMMARY_PATH",
    "audio_path", "wav_bytes", "WavInfo", "read_wav_info",
    "manifest_record", "segment_record", "store_segment", "failure_record",
    "PartWriter", "part_path", "ResumeState", "resume_state", "reconcile",
    "summarize", "write_summary",
]

AUDIO_DIR = "audio"
MANIFEST_DIR = "manifest"
ERRORS_DIR = "errors"
SUMMARY_PATH = "summary.json"
_PART = re.compile(r"part-([0-9]+)of([0-9]+)-([0-9]+)\.jsonl")
_FLUSH_FILE = re.compile(r"(0|[1-9][0-9]{0,8})\.wav")
_TAG_ENCODINGS = {info.wav_tag: (name, info.width) for name, info in ENCODINGS.items()}


def audio_path(row_id: str, flush: int) -> str:
    """The store path of flush ``flush`` (0-based position in the row's texts) of
    ``row_id``: ``audio/{safe_id(row_id)}/{flush}.wav``. The position, not the server's
    ``flush_id`` label, which is opaque and need not start at 0."""
    if isinstance(flush, bool) or not isinstance(flush, int) or flush < 0:
        raise ValueError(f"flush must be an integer >= 0, not {flush!r}")
    return f"{AUDIO_DIR}/{safe_id(row_id)}/{flush}.wav"


def wav_bytes(segment: Segment) -> bytes:
    """The WAV file of a segment, in memory: the same bytes :class:`~flushsink.FileWriter`
    writes (exact header for all four encodings, whole samples only, RIFF pad byte).

    Raises :class:`~flushsink.errors.FormatError` (a ``ValueError``) for a segment whose
    audio was not kept (``keep_audio=False``), whose samples do not match its format, or
    too long for RIFF (4 GiB)."""
    fmt: AudioFormat = segment.format
    samples = segment.samples
    if segment.sample_count != len(samples):
        raise FormatError(f"the segment's {segment.sample_count} samples were not kept "
                          "(keep_audio=False)")
    if samples.dtype != fmt.dtype:
        raise FormatError(f"samples are {samples.dtype.str}, but {fmt.encoding} needs "
                          f"{fmt.dtype.str}")
    pcm = samples.tobytes()  # one copy, C order whatever the array's strides
    return b"".join((wav_header(fmt, len(pcm)), pcm, wav_padding(len(pcm))))


class WavInfo(NamedTuple):
    """What a WAV file's header says: its flushsink format, frames, and duration."""

    format: AudioFormat
    frames: int
    duration: float


def read_wav_info(data: bytes) -> WavInfo:
    """Read the header of a mono WAV file in one of flushsink's four encodings (PCM 16,
    float 32, A-law, mu-law), as :func:`wav_bytes` makes them; used to rebuild a
    manifest row from stored audio. :class:`~flushsink.errors.FormatError` for anything
    else or a truncated file."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise FormatError("not a RIFF/WAVE file")
    offset = 12
    fmt: Optional[tuple[int, int, int, int, int]] = None
    while offset + 8 <= len(data):
        chunk_id = data[offset:offset + 4]
        size = struct.unpack_from("<I", data, offset + 4)[0]
        body = offset + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise FormatError("truncated fmt chunk")
            tag, channels, rate, _, block, bits = struct.unpack_from("<HHIIHH", data, body)
            fmt = (tag, channels, rate, block, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise FormatError("data chunk before the fmt chunk")
            if body + size > len(data):
                raise FormatError("truncated data chunk")
            tag, channels, rate, block, bits = fmt
            if tag not in _TAG_ENCODINGS or channels != 1:
                raise FormatError(f"unsupported WAV format: tag {tag}, {channels} channels")
            encoding, width = _TAG_ENCODINGS[tag]
            if block != width or bits != 8 * width:
                raise FormatError(f"unsupported WAV format: tag {tag}, {bits} bits")
            audio_format = AudioFormat(encoding, rate)
            frames = size // width
            return WavInfo(audio_format, frames, frames / rate)
        offset = body + size + (size & 1)
    raise FormatError("no data chunk")


def _voice_text(voice: Any) -> Optional[str]:
    """The manifest's voice: a string in every row (one Arrow type for the column): the
    id of an id voice, else the voice object as compact JSON."""
    if voice is None or isinstance(voice, str):
        return voice
    if isinstance(voice, dict) and isinstance(voice.get("id"), str) and voice.get("mode", "id") == "id":
        return str(voice["id"])
    return json.dumps(voice, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def manifest_record(row: Row, flush: int, wav: bytes, *, info: Optional[WavInfo] = None,
                    words: Optional[Iterable[Any]] = None, with_words: bool = False
                    ) -> dict[str, Any]:
    """The manifest row of flush ``flush`` of ``row``, whose WAV file is ``wav`` (the bytes
    stored: ``bytes`` and ``sha256`` describe them). ``info`` saves reading the header again.
    ``with_words``: add ``words`` (a list of ``{"word", "start", "end"}`` in seconds from
    the start of this file; null when ``words`` is None, as for a reconciled row)."""
    if info is None:
        info = read_wav_info(wav)
    path = "../" + audio_path(row.id, flush)
    record: dict[str, Any] = {
        "audio_filepath": path,
        "file_name": path,
        "id": row.id,
        "flush": flush,
        "text": row.texts[flush],
        "duration": info.duration,
        "sample_rate": info.format.sample_rate,
        "encoding": info.format.encoding,
        "voice": _voice_text(row.voice),
        "model_id": row.model_id,
        "language": row.language,
        "bytes": len(wav),
        "sha256": hashlib.sha256(wav).hexdigest(),
    }
    if with_words:
        record["words"] = (None if words is None else
                           [{"word": w.text, "start": w.start, "end": w.end} for w in words])
    return record


def segment_record(row: Row, flush: int, segment: Segment, wav: bytes, *,
                   with_words: bool = False) -> dict[str, Any]:
    """:func:`manifest_record` for a segment just received, ``wav`` its
    :func:`wav_bytes`; words from the segment (relative to it) when ``with_words``."""
    info = WavInfo(segment.format, segment.sample_count, segment.duration)
    return manifest_record(row, flush, wav, info=info, words=segment.word_timestamps,
                           with_words=with_words)


def store_segment(store: Store, row: Row, flush: int, segment: Segment, *,
                  with_words: bool = False) -> dict[str, Any]:
    """Store one complete segment of ``row`` create-only and return its manifest row, to
    publish once every flush of the row is stored.

    If the object is already there (an earlier run, another process) it is kept, and the
    row describes the stored bytes, read back, not the new audio (words null then: they
    belong to the audio that was not stored). Raises ``ValueError`` for an incomplete
    segment (a failed row is retried or reported, never stored), and
    :class:`~flushsink.batch.errors.StoreError`."""
    if not segment.complete:
        raise ValueError(f"flush {flush} of {row.id!r} is incomplete ({segment.error}): "
                         "it is not stored")
    wav = wav_bytes(segment)
    path = audio_path(row.id, flush)
    if store.put_if_absent(path, wav):
        return segment_record(row, flush, segment, wav, with_words=with_words)
    return manifest_record(row, flush, store.get(path), with_words=with_words)


def failure_record(row: Row, reason: str, *, attempts: int = 1) -> dict[str, Any]:
    """The errors-file row of a row that kept failing (``kind`` ``"synthesis"``). The
    same keys as an input error's, so one errors file loads as one table."""
    return {"kind": "synthesis", "id": row.id, "index": row.index, "line": row.line,
            "reason": reason, "source": None, "attempts": attempts}


def _encode_record(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            + "\n").encode("utf-8")


def part_path(kind: str, shard: Shard, number: int) -> str:
    """``{kind}/part-{shard.label}-{number:06d}.jsonl``."""
    return f"{kind}/part-{shard.label}-{number:06d}.jsonl"


def _part_numbers(store: Store, kind: str) -> Iterator[tuple[str, str, int]]:
    """(path, shard label, number) of every part of ``kind`` in the store."""
    for info in store.list(kind):
        name = info.path[len(kind) + 1:]
        match = _PART.fullmatch(name)
        if match:
            yield info.path, f"{int(match[1])}of{int(match[2])}", int(match[3])


class PartWriter:
    """Collects records and publishes them as numbered parts, never rewritten.

    A part is published when ``every_rows`` records wait, or ``every_seconds`` after the
    first of them came (:meth:`add` checks; call :meth:`publish_due` from a timer so a
    quiet job publishes too), and by :meth:`close`. Records given to one :meth:`add` go in
    one part. A part name that is taken (an earlier run, another process with the same
    shard) is skipped: the next number is tried.

    Not thread-safe: one writer per kind per process, used from one thread (or the event
    loop, with the store calls in a worker thread).
    """

    def __init__(self, store: Store, kind: str, shard: Shard = ALL, *,
                 every_rows: int = 1000, every_seconds: float = 30.0,
                 next_number: Optional[int] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if kind not in (MANIFEST_DIR, ERRORS_DIR):
            raise ValueError(f"kind must be {MANIFEST_DIR!r} or {ERRORS_DIR!r}, not {kind!r}")
        if every_rows < 1 or not every_seconds > 0:
            raise ValueError("every_rows must be >= 1 and every_seconds > 0")
        self.store = store
        self.kind = kind
        self.shard = shard
        self.every_rows = every_rows
        self.every_seconds = every_seconds
        self._clock = clock
        if next_number is None:
            next_number = 1 + max((n for _, label, n in _part_numbers(store, kind)
                                   if label == shard.label), default=-1)
        self.next_number = next_number
        self._pending: list[bytes] = []
        self._since: Optional[float] = None
        #: The parts this writer published, in order.
        self.published: list[str] = []

    @property
    def pending(self) -> int:
        """Records waiting for the next part."""
        return len(self._pending)

    def add(self, records: Sequence[dict[str, Any]]) -> Optional[str]:
        """Queue ``records`` (all in one part) and publish if a part is due; the path
        published, if any. The records are encoded now, so a record that cannot be JSON
        fails here (``ValueError``/``TypeError``), before anything is queued."""
        encoded = [_encode_record(record) for record in records]
        if not encoded:
            return None
        if self._since is None:
            self._since = self._clock()
        self._pending.extend(encoded)
        return self.publish_due()

    def due(self) -> bool:
        """Whether a part should be published now."""
        return bool(self._pending) and (
            len(self._pending) >= self.every_rows
            or (self._since is not None and self._clock() - self._since >= self.every_seconds))

    def publish_due(self) -> Optional[str]:
        """:meth:`publish` if :meth:`due`."""
        return self.publish() if self.due() else None

    def publish(self) -> Optional[str]:
        """Publish what waits as one part now; its path (None when nothing waits). On a
        :class:`~flushsink.batch.errors.StoreError` the records stay queued for the next
        try."""
        if not self._pending:
            return None
        data = b"".join(self._pending)
        for _ in range(10_000):
            path = part_path(self.kind, self.shard, self.next_number)
            self.next_number += 1
            if self.store.put_if_absent(path, data):
                self._pending.clear()
                self._since = None
                self.published.append(path)
                return path
        raise StoreError(f"no free part name for shard {self.shard.label} after 10000 tries",
                         path=path)

    def close(self) -> Optional[str]:
        """Publish what is left (at a job's end, or when it is stopped)."""
        return self.publish()


def _read_records(store: Store, path: str) -> Iterator[dict[str, Any]]:
    for line in store.get(path).splitlines():
        if line.strip():
            value = json.loads(line)
            if isinstance(value, dict):
                yield value


@dataclass
class ResumeState:
    """What an earlier run of a job left, as :func:`resume_state` found it.

    - ``done``: ids (of the shard) with manifest rows: skip them.
    - ``orphans``: audio without manifest rows, by safe id: ``{flush: ObjectInfo}``. Ids
      of other shards are left out when their safe id can be decoded (a cut one cannot).
    - ``reported``: input indices already in an errors part as input errors: do not report
      them again (synthesis failures are not in it: a new run tries those rows again).
    - ``manifest_rows``: manifest rows read.
    """

    done: set[str] = field(default_factory=set)
    orphans: dict[str, dict[int, ObjectInfo]] = field(default_factory=dict)
    reported: set[int] = field(default_factory=set)
    manifest_rows: int = 0

    def is_done(self, row: Row) -> bool:
        return row.id in self.done


def resume_state(store: Store, shard: Shard = ALL) -> ResumeState:
    """Read every manifest and errors part and list ``audio/``: what is done, and what
    audio a killed run stored without publishing its rows. Parts of every shard are
    read (a job may be resumed with another shard count); only this shard's ids kept."""
    state = ResumeState()
    for path, _, _ in sorted(_part_numbers(store, MANIFEST_DIR)):
        for record in _read_records(store, path):
            state.manifest_rows += 1
            row_id = record.get("id")
            if isinstance(row_id, str) and shard.owns(row_id):
                state.done.add(row_id)
    for path, _, _ in sorted(_part_numbers(store, ERRORS_DIR)):
        for record in _read_records(store, path):
            index = record.get("index")
            if record.get("kind") == "input" and isinstance(index, int):
                state.reported.add(index)
    done_names = {safe_id(row_id) for row_id in state.done}
    for info in store.list(AUDIO_DIR):
        parts = info.path.split("/")
        if len(parts) != 3:
            continue
        name, match = parts[1], _FLUSH_FILE.fullmatch(parts[2])
        if match is None or name in done_names:
            continue
        row_id = id_from_safe(name)
        if row_id is not None and not shard.owns(row_id):
            continue
        state.orphans.setdefault(name, {})[int(match[1])] = info
    return state


def reconcile(store: Store, row: Row, state: ResumeState, *,
              with_words: bool = False) -> Optional[list[dict[str, Any]]]:
    """The manifest rows of ``row`` rebuilt from its stored audio, when a killed run
    stored every flush of it (0 to ``len(row.texts) - 1``) but published no row; None
    when some flush is missing (synthesize the row: :func:`store_segment` keeps what is
    stored). ``duration``, ``sample_rate``, ``bytes`` and ``sha256`` come from the stored
    bytes; ``words`` (when asked for) are null. Publish the result with the manifest's
    :meth:`PartWriter.add`."""
    flushes = state.orphans.get(safe_id(row.id))
    if not flushes or any(flush not in flushes for flush in range(len(row.texts))):
        return None
    records = []
    for flush in range(len(row.texts)):
        try:
            wav = store.get(audio_path(row.id, flush))
        except ObjectNotFound:
            return None
        try:
            info = read_wav_info(wav)
        except FormatError:
            return None
        records.append(manifest_record(row, flush, wav, info=info, with_words=with_words))
    return records


def summarize(store: Store) -> dict[str, Any]:
    """Totals over every manifest and errors part in the store (all shards): ``rows``
    (distinct ids), ``files``, ``audio_seconds``, ``bytes``, ``duplicate_files`` ((id,
    flush) pairs published more than once: 0 unless processes raced on one id),
    ``error_rows`` by kind, the part counts and shard labels seen."""
    ids: set[str] = set()
    files: set[tuple[str, int]] = set()
    duplicates = 0
    seconds = 0.0
    size = 0
    shards: set[str] = set()
    manifest_parts = 0
    for path, label, _ in sorted(_part_numbers(store, MANIFEST_DIR)):
        manifest_parts += 1
        shards.add(label)
        for record in _read_records(store, path):
            key = (str(record.get("id")), int(record.get("flush") or 0))
            if key in files:
                duplicates += 1
                continue
            files.add(key)
            ids.add(key[0])
            seconds += float(record.get("duration") or 0.0)
            size += int(record.get("bytes") or 0)
    errors: dict[str, int] = {}
    error_parts = 0
    for path, label, _ in sorted(_part_numbers(store, ERRORS_DIR)):
        error_parts += 1
        shards.add(label)
        for record in _read_records(store, path):
            kind = str(record.get("kind"))
            errors[kind] = errors.get(kind, 0) + 1
    return {
        "rows": len(ids), "files": len(files), "audio_seconds": round(seconds, 6),
        "bytes": size, "duplicate_files": duplicates, "error_rows": errors,
        "manifest_parts": manifest_parts, "error_parts": error_parts,
        "shards": sorted(shards),
    }


def write_summary(store: Store, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (replacing the one there: each job's end rewrites it)."""
    data = json.dumps(summary, ensure_ascii=False, allow_nan=False, indent=2, sort_keys=True)
    store.put(SUMMARY_PATH, (data + "\n").encode("utf-8"))
