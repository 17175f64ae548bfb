"""flushsink.batch: the groundwork of bulk synthesis, from a table of texts to audio in a
directory or an S3 prefix (issue 17).

- Rows in (:mod:`.rows`): JSONL, CSV and Parquet (``flushsink[parquet]``), streamed,
  each row checked; a bad row is a :class:`BadRow` for the errors file, not an exception.
- Ids (:mod:`.ids`): :func:`safe_id`, the injective name of an id in storage, and
  :class:`Shard`, ``--shard i/N`` by a stable hash of the id.
- Stores (:mod:`.stores`): :class:`LocalStore` and :class:`S3Store` (obstore,
  ``flushsink[s3]``), create-only puts, listings, reads.
- Output (:mod:`.manifest`): ``audio/{safe id}/{flush}.wav``, manifest and errors parts,
  ``summary.json``, and resume (:func:`resume_state`, :func:`reconcile`).
- The job (:mod:`.job`): :func:`run` (``flushsink batch``), the :class:`Synthesizer`
  (rows to stored audio over a pool of connections, for a worker of one's own), the
  :class:`Concurrency` limit (AIMD on 429s); progress on stderr (:mod:`.progress`).

``import flushsink`` does not import this package, and this package imports obstore and
pyarrow only when an S3 store is opened or a Parquet file read.
"""

from __future__ import annotations

from .errors import (
    BatchError,
    InputError,
    MissingDependency,
    ObjectNotFound,
    StoreError,
    UnsafePath,
)
from .ids import ALL, MAX_SAFE_ID, Shard, check_id, id_from_safe, safe_id, shard_of
from .manifest import (
    AUDIO_DIR,
    ERRORS_DIR,
    MANIFEST_DIR,
    SUMMARY_PATH,
    PartWriter,
    ResumeState,
    WavInfo,
    audio_path,
    failure_record,
    manifest_record,
    part_path,
    read_wav_info,
    reconcile,
    resume_state,
    segment_record,
    store_segment,
    summarize,
    wav_bytes,
    write_summary,
)
from .job import (
    DEFAULT_CONCURRENCY,
    Concurrency,
    DestinationNotEmpty,
    JobFailed,
    JobStats,
    RowFailure,
    RowResult,
    Synthesizer,
    run,
)
from .rows import INPUT_FORMATS, BadRow, Row, input_format, read_rows
from .stores import LocalStore, ObjectInfo, S3Store, Store, check_path, open_store

__all__ = [
    "BatchError", "InputError", "MissingDependency", "ObjectNotFound", "StoreError",
    "UnsafePath",
    "ALL", "MAX_SAFE_ID", "Shard", "check_id", "id_from_safe", "safe_id", "shard_of",
    "AUDIO_DIR", "ERRORS_DIR", "MANIFEST_DIR", "SUMMARY_PATH", "PartWriter", "ResumeState",
    "WavInfo", "audio_path", "failure_record", "manifest_record", "part_path",
    "read_wav_info", "reconcile", "resume_state", "segment_record", "store_segment",
    "summarize", "wav_bytes", "write_summary",
    "INPUT_FORMATS", "BadRow", "Row", "input_format", "read_rows",
    "LocalStore", "ObjectInfo", "S3Store", "Store", "check_path", "open_store",
    "DEFAULT_CONCURRENCY", "Concurrency", "DestinationNotEmpty", "JobFailed", "JobStats",
    "RowFailure", "RowResult", "Synthesizer", "run",
]
