"""Where a batch job's files go: a local directory or an S3 prefix, behind one small
interface.

The job's guarantees rest on one operation, :meth:`Store.put_if_absent`: an object appears
whole or not at all, and never replaces one that is there. So a row done twice (two
processes, a resume after a kill) is stored once, and a manifest part, once published, is
never rewritten. Locally that is a temporary file in the final directory, written, flushed,
then hard-linked to the final name (``link`` fails if the name exists, with no window
between a check and the move); on S3 a ``PutObject`` with ``If-None-Match: *`` (obstore's
``mode="create"``), which S3 refuses with 412 when the key exists.

Paths are relative, ``/``-separated, and checked (:func:`check_path`): nothing is ever
written outside the directory or prefix, whatever a row's id (ids reach paths only through
:func:`~flushsink.batch.ids.safe_id`; the check is the second fence).
"""

from __future__ import annotations

import abc
import asyncio
import builtins
import errno
import importlib
import os
import re
from typing import Any, Iterator, Mapping, NamedTuple, Optional

from ..errors import ConfigError
from ..writers import _fsync_dir, _unlink_quietly  # (the writers' atomic-file helpers)
from .errors import MissingDependency, ObjectNotFound, StoreError, UnsafePath

__all__ = ["Store", "LocalStore", "S3Store", "ObjectInfo", "open_store", "check_path"]

_BAD_CHARS = re.compile("[\x00-\x1f\x7f\\\\\ud800-\udfff]")
_MAX_PATH = 1024  # S3's limit on a key, in UTF-8 bytes (the prefix comes on top)

# The kernel applies the umask to 0o666 as for any new file.
_TEMP_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
# os.link fails with these where the file system has no hard links.
_NO_LINK_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS")
    if hasattr(errno, name))


def check_path(path: str, *, allow_empty: bool = False) -> str:
    """``path`` when it is a safe store path, else :class:`UnsafePath`.

    Safe: relative, ``/``-separated components that are neither empty, ``.``, ``..`` nor
    hidden (starting with ``.``: the local store's temporary files are hidden), with no
    backslash, control character or lone surrogate, at most 1,024 UTF-8 bytes. The empty
    path (the store's root) only where ``allow_empty`` (a listing's prefix)."""
    if not isinstance(path, str):
        raise UnsafePath(f"a store path is a string, not {type(path).__name__}")
    if path == "" and allow_empty:
        return path
    if _BAD_CHARS.search(path) or len(path.encode("utf-8", "surrogatepass")) > _MAX_PATH:
        raise UnsafePath(f"unsafe store path {path!r:.200}")
    for part in path.split("/"):
        if not part or part.startswith("."):
            raise UnsafePath(f"unsafe store path {path!r:.200}: every component must be "
                             "non-empty and not start with '.'")
    return path


class ObjectInfo(NamedTuple):
    """An object a listing found: its store path and size in bytes."""

    path: str
    size: int


class Store(abc.ABC):
    """A directory or prefix that objects are put in, create-only.

    The synchronous methods block (a file write, an HTTP request): an asyncio job calls the
    ``*_async`` forms, which the base class runs in a worker thread and :class:`S3Store`
    runs on obstore's own async client."""

    #: Where the store is, for messages and the summary (a path, or ``s3://bucket/prefix``).
    url: str

    @abc.abstractmethod
    def put_if_absent(self, path: str, data: bytes) -> bool:
        """Store ``data`` at ``path`` unless an object is there: True when stored, False
        when one was there (it is left as it is). Atomic: readers see the whole object or
        none. :class:`StoreError` on failure, with nothing left at ``path``."""

    @abc.abstractmethod
    def put(self, path: str, data: bytes) -> None:
        """Store ``data`` at ``path``, replacing what is there, atomically. Only for what
        a job rewrites on purpose (``summary.json``); audio and manifest parts go through
        :meth:`put_if_absent`."""

    @abc.abstractmethod
    def get(self, path: str) -> bytes:
        """The object at ``path``; :class:`ObjectNotFound` when there is none."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under the directory ``prefix`` (``""``: the whole store), at any
        depth, paths relative to the store. ``prefix`` is a path, not a string start:
        ``"audio"`` lists ``audio/...``, never ``audiobook/...``."""

    async def put_if_absent_async(self, path: str, data: bytes) -> bool:
        """:meth:`put_if_absent` without blocking the event loop."""
        return await asyncio.to_thread(self.put_if_absent, path, data)

    async def get_async(self, path: str) -> bytes:
        """:meth:`get` without blocking the event loop."""
        return await asyncio.to_thread(self.get, path)

    async def list_async(self, prefix: str = "") -> "builtins.list[ObjectInfo]":
        """:meth:`list`, collected, without blocking the event loop."""
        return await asyncio.to_thread(lambda: list(self.list(prefix)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def _failed(verb: str, path: str, exc: BaseException) -> StoreError:
    error = StoreError(f"cannot {verb} {path!r}: {exc}", path=path)
    error.errno = getattr(exc, "errno", None)
    return error


class LocalStore(Store):
    """A local directory (created when first written).

    ``fsync=True`` (the default) flushes each file before it gets its name and the
    directory after, so what a run reported stored survives a power cut too, not only a
    killed process. A hidden ``.NAME.XXXX.tmp`` file can outlive a killed process; listings
    skip hidden names, and :meth:`remove_temporaries` clears them. Where the file system
    has no hard links, the final name is checked and then renamed to, which two writers
    racing on one name could both pass.

    Every directory written to must resolve (symbolic links followed) inside the root:
    checked once per directory, against hostile paths, not against someone changing the
    tree while the job runs.
    """

    def __init__(self, directory: "str | os.PathLike[str]", *, fsync: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(directory))
        self.url = self.root
        self.fsync = bool(fsync)
        self._root_real: Optional[str] = None
        self._ready_dirs: set[str] = set()

    def _full(self, path: str) -> str:
        return os.path.join(self.root, *check_path(path).split("/"))

    def _prepare_dir(self, parent: str, path: str) -> None:
        if parent in self._ready_dirs:
            return
        if self._root_real is None:
            os.makedirs(self.root, exist_ok=True)
            self._root_real = os.path.realpath(self.root)
        real = os.path.realpath(parent)
        root = self._root_real
        if not (real == root or real.startswith(root.rstrip(os.sep) + os.sep)):
            raise StoreError(f"refusing to write {path!r}: its directory resolves to "
                             f"{real!r}, outside {root!r}", path=path)
        os.makedirs(parent, exist_ok=True)
        if len(self._ready_dirs) > 4096:
            self._ready_dirs.clear()
        self._ready_dirs.add(parent)

    def _write_temp(self, path: str, data: bytes) -> tuple[str, str]:
        """A new hidden file beside ``path``'s final name holding ``data``: (temp, final)."""
        full = self._full(path)
        parent, name = os.path.split(full)
        self._prepare_dir(parent, path)
        for _ in range(100):
            temp = os.path.join(parent, f".{name[:64]}.{os.urandom(5).hex()}.tmp")
            try:
                fd = os.open(temp, _TEMP_FLAGS, 0o666)
                break
            except FileExistsError:
                continue
            except FileNotFoundError:  # a cached directory was removed behind our back
                self._ready_dirs.discard(parent)
                self._prepare_dir(parent, path)
        else:
            raise FileExistsError(errno.EEXIST, "no unused temporary file name", parent)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)  # may report a deferred write error (NFS): a failure too
        except BaseException:
            _unlink_quietly(temp)
            raise
        return temp, full

    def put_if_absent(self, path: str, data: bytes) -> bool:
        try:
            temp, full = self._write_temp(path, data)
        except OSError as exc:
            raise _failed("write", path, exc) from exc
        try:
            try:
                os.link(temp, full)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_LINK_ERRNOS:
                    raise
                if os.path.lexists(full):
                    return False
                os.rename(temp, full)
            if self.fsync:
                _fsync_dir(os.path.dirname(full))
            return True
        except OSError as exc:
            raise _failed("write", path, exc) from exc
        finally:
            _unlink_quietly(temp)

    def put(self, path: str, data: bytes) -> None:
        try:
            temp, full = self._write_temp(path, data)
            try:
                os.replace(temp, full)
            except BaseException:
                _unlink_quietly(temp)
                raise
            if self.fsync:
                _fsync_dir(os.path.dirname(full))
        except OSError as exc:
            raise _failed("write", path, exc) from exc

    def get(self, path: str) -> bytes:
        full = self._full(path)
        try:
            fd = os.open(full, _READ_FLAGS)
            with open(fd, "rb") as file:
                return file.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object at {path!r} in {self.url}", path=path) from None
        except OSError as exc:
            raise _failed("read", path, exc) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_path(prefix, allow_empty=True)
        top = os.path.join(self.root, *prefix.split("/")) if prefix else self.root
        for directory, subdirs, files in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            relative = os.path.relpath(directory, self.root)
            base = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            for name in sorted(files):
                if name.startswith("."):
                    continue
                try:
                    size = os.stat(os.path.join(directory, name), follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
                yield ObjectInfo(base + name, size)

    def remove_temporaries(self) -> int:
        """Remove the hidden temporary files a killed run left; how many. Run it only
        when no other process writes to the directory: their temporaries look the same."""
        removed = 0
        for directory, subdirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    _unlink_quietly(os.path.join(directory, name))
                    removed += 1
        return removed


def _obstore() -> Any:
    try:
        return importlib.import_module("obstore")
    except ImportError:
        raise MissingDependency("s3:// destinations need obstore: pip install "
                                "'flushsink[s3]'") from None


def _env_flag(name: str) -> Optional[bool]:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


class S3Store(Store):
    """An S3 bucket and prefix, through obstore (``pip install 'flushsink[s3]'``).

    Endpoint, credentials and region come from the standard AWS environment variables, as
    obstore reads them: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``), ``AWS_REGION`` or
    ``AWS_DEFAULT_REGION``; ``config`` (obstore's ``S3Config`` keys) overrides them.
    obstore refuses a plain ``http://`` endpoint unless HTTP is allowed: when the endpoint
    is ``http://`` and ``AWS_ALLOW_HTTP`` is not set, it is allowed here (the endpoint
    itself says so); ``AWS_ALLOW_HTTP=false`` keeps it refused.

    Every key lies under ``prefix`` (obstore's own prefix store, and :func:`check_path` on
    every path). Create-only puts are single ``PutObject`` requests with
    ``If-None-Match: *`` (never multipart, which has no such condition), so an object is
    at most 5 GiB, S3's limit for one request; a WAV file is at most 4 GiB anyway.
    """

    def __init__(self, bucket: str, prefix: str = "", *,
                 config: Optional[Mapping[str, Any]] = None,
                 client_options: Optional[Mapping[str, Any]] = None) -> None:
        if not isinstance(bucket, str) or not bucket or "/" in bucket:
            raise ConfigError(f"bad bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_path(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._obstore = _obstore()
        store_module = importlib.import_module("obstore.store")
        self._exceptions = importlib.import_module("obstore.exceptions")
        options = dict(client_options or {})
        endpoint = str((config or {}).get("endpoint") or os.environ.get("AWS_ENDPOINT_URL")
                       or os.environ.get("AWS_ENDPOINT") or "")
        if ("allow_http" not in options and endpoint.lower().startswith("http://")
                and _env_flag("AWS_ALLOW_HTTP") is None):
            options["allow_http"] = True
        try:
            self._store = store_module.S3Store(
                bucket, prefix=prefix or None, config=dict(config) if config else None,
                client_options=options or None)
        except Exception as exc:  # obstore's configuration errors
            raise ConfigError(f"cannot use {self.url}: {exc}") from None

    def put_if_absent(self, path: str, data: bytes) -> bool:
        check_path(path)
        try:
            self._obstore.put(self._store, path, data, mode="create", use_multipart=False)
        except self._exceptions.AlreadyExistsError:
            return False
        except Exception as exc:
            raise _failed("put", path, exc) from None
        return True

    async def put_if_absent_async(self, path: str, data: bytes) -> bool:
        check_path(path)
        try:
            await self._obstore.put_async(self._store, path, data, mode="create",
                                          use_multipart=False)
        except self._exceptions.AlreadyExistsError:
            return False
        except Exception as exc:
            raise _failed("put", path, exc) from None
        return True

    def put(self, path: str, data: bytes) -> None:
        check_path(path)
        try:
            self._obstore.put(self._store, path, data, use_multipart=False)
        except Exception as exc:
            raise _failed("put", path, exc) from None

    def get(self, path: str) -> bytes:
        check_path(path)
        try:
            return bytes(self._obstore.get(self._store, path).bytes())
        except FileNotFoundError:  # obstore's NotFoundError is one
            raise ObjectNotFound(f"no object at {path!r} in {self.url}", path=path) from None
        except Exception as exc:
            raise _failed("get", path, exc) from None

    async def get_async(self, path: str) -> bytes:
        check_path(path)
        try:
            result = await self._obstore.get_async(self._store, path)
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            raise ObjectNotFound(f"no object at {path!r} in {self.url}", path=path) from None
        except Exception as exc:
            raise _failed("get", path, exc) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_path(prefix, allow_empty=True)
        try:
            for chunk in self._obstore.list(self._store, prefix=prefix or None,
                                            chunk_size=1000):
                for meta in chunk:
                    yield ObjectInfo(str(meta["path"]), int(meta["size"]))
        except Exception as exc:
            raise _failed("list", prefix or "/", exc) from None


def open_store(destination: "str | os.PathLike[str]", **options: Any) -> Store:
    """The store a destination names: ``s3://bucket/prefix`` is an :class:`S3Store`, a
    path a :class:`LocalStore`; ``options`` go to its constructor. Any other ``scheme://``
    is a :class:`~flushsink.errors.ConfigError`."""
    text = os.fspath(destination)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return LocalStore(text, **options)
    if scheme.lower() != "s3":
        raise ConfigError(f"unsupported destination {text!r}: a directory or s3://bucket/prefix")
    bucket, _, prefix = rest.partition("/")
    return S3Store(bucket, prefix, **options)
