"""The batch job's errors, under :class:`flushsink.errors.FlushsinkError`.

Bad input as a whole (a file whose format is unknown, a CSV without an ``id`` column) is an
:class:`InputError`, a ``ValueError``; one bad row is never an exception but a
:class:`~flushsink.batch.rows.BadRow`, so a million-row job goes on past it.
"""

from __future__ import annotations

from ..errors import FlushsinkError


class BatchError(FlushsinkError):
    """Base class of the batch job's errors."""


class InputError(BatchError, ValueError):
    """The input cannot be read as rows at all: an unknown format, a CSV or Parquet file
    without an ``id`` column or without ``text``/``texts``, a CSV header naming a column
    twice. (A bad *row* is reported as a ``BadRow`` and the job goes on.)"""


class UnsafePath(BatchError, ValueError):
    """A store path that could leave the store's directory or prefix, or could collide with
    the store's temporary files: empty, absolute, with an empty, ``.``, ``..`` or hidden
    (``.name``) component, a backslash, a control character or a lone surrogate. Ids never
    reach a path unmapped (:func:`~flushsink.batch.ids.safe_id`): this is the second fence."""


class StoreError(BatchError, OSError):
    """A store operation failed (file system or object store). ``path`` is the store path;
    ``errno`` is the cause's where it had one. A failed put leaves nothing under the path."""

    def __init__(self, message: str, path: "str | None" = None) -> None:
        super().__init__(message)
        self.path = path


class ObjectNotFound(StoreError, FileNotFoundError):
    """``get`` of a path where the store holds no object."""


class MissingDependency(BatchError, ImportError):
    """An optional dependency is not installed: ``obstore`` for ``s3://`` destinations
    (``pip install 'flushsink[s3]'``), ``pyarrow`` for Parquet input
    (``pip install 'flushsink[parquet]'``)."""
