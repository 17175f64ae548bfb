"""Turn finished segments into WAV or raw files, atomically and under safe names.

A :class:`FileWriter` writes each segment into a new hidden temporary file in the
directory of its final name, in one ``writev`` call, optionally ``fsync``\\ s it, and
renames it over the final name. Readers of the directory therefore see either no
file or a whole file, never a half-written one.

File names come from a pattern such as ``"{context_id}/{flush_id}.wav"`` whose
values come from the server and are treated as hostile: see :func:`safe_name`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import string
from typing import Any, Callable, Optional

from .errors import FormatError, WriteError
from .formats import AudioFormat, wav_header, wav_padding
from .segments import Segment

__all__ = ["FileWriter", "safe_name", "NO_CONTEXT_NAME", "MAX_NAME_BYTES"]

#: The name used for ``context_id=None``. A real id that looks like it gets a hash.
NO_CONTEXT_NAME = "_none"

#: The longest name a placeholder can expand to (ASCII, so characters = bytes).
MAX_NAME_BYTES = 80

_HASH_CHARS = 12  # 48 bits of sha256: accidental collisions are out of reach
_FIELDS = ("context_id", "flush_id", "encoding", "sample_rate")
_CONVERSIONS: dict[str, Callable[[object], str]] = {"r": repr, "s": str, "a": ascii}
_DEFAULT_PATTERNS = {"wav": "{context_id}/{flush_id}.wav", "raw": "{context_id}/{flush_id}.raw"}
_PARTIAL = ".partial"

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
# A value that passes this is kept as it is, unless one of the checks in safe_name objects.
_SAFE_AS_IS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,%d}" % (MAX_NAME_BYTES - 1))
# Marks a changed value. It is never kept, so no id can pose as the changed form of
# another; with "-" every UUID (whose last group is 12 hex digits) would look hashed.
_HASH_MARK = "~"
# Windows refuses these as a file name, whatever the extension ("nul.tar.gz" too).
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{i}" for i in range(10)]
    + [f"LPT{i}" for i in range(10)]
)

# The kernel applies the umask to 0o666 as for any new file (mkstemp would force 0o600).
_TEMP_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL
    | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
# os.link fails with these where the file system has no hard links.
_NO_LINK_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS") if hasattr(errno, name)
)
_MAX_CACHED_DIRS = 4096


def safe_name(value: Optional[str]) -> str:
    """Make ``value`` safe as one path component on POSIX and Windows.

    A value of 1 to 80 characters from ``[A-Za-z0-9._-]`` that does not start with
    ``.`` or ``-`` and does not end with ``.`` is kept as it is, unless it is a
    Windows device name (``CON``, ``nul.txt``, ``COM1``...), ends with ``.partial``
    or is the name of ``None``. Anything else has every other character replaced by
    ``_``, a leading ``.``/``-`` replaced, is cut to fit, and gets ``~`` plus the
    first 12 hex digits of the SHA-256 of the original (UTF-8, lone surrogates
    allowed) appended: ``"a/b"``, ``"a_b"`` and ``"a:b"`` become ``a_b~c14cddc033f6``,
    ``a_b`` and ``a_b~6783a31eabf6``. ``None`` becomes :data:`NO_CONTEXT_NAME`.

    Two different values give two different names, short of a 48-bit hash
    collision: never by accident, though about 2**24 tries could craft one on
    purpose. On case-insensitive file systems (macOS, Windows) values that differ
    only in case share a file.
    """
    if value is None:
        return NO_CONTEXT_NAME
    if _SAFE_AS_IS.fullmatch(value) and value[-1] != ".":
        lowered = value.lower()
        if not (
            lowered == NO_CONTEXT_NAME
            or lowered.endswith(_PARTIAL)
            or value.partition(".")[0].upper() in _WINDOWS_RESERVED
        ):
            return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    text = _UNSAFE_CHARS.sub("_", value[: MAX_NAME_BYTES * 2])
    if not text or text[0] in ".-":
        text = "_" + text[1:]
    if text.partition(".")[0].upper() in _WINDOWS_RESERVED:
        text = "_" + text
    return f"{text[: MAX_NAME_BYTES - 1 - _HASH_CHARS]}{_HASH_MARK}{digest}"


def _is_inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def _parse_pattern(pattern: str) -> list[tuple[str, Optional[str], Optional[str], str]]:
    """Split a pattern into (literal, field, conversion, spec) and check it is harmless."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("pattern must be a non-empty string")
    try:
        parts = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise ValueError(f"bad pattern {pattern!r}: {exc}") from None
    skeleton = []
    for literal, field, spec, conversion in parts:  # Formatter.parse's order
        if "\\" in literal or "\0" in literal:
            raise ValueError(f"bad pattern {pattern!r}: use '/' to separate directories")
        skeleton.append(literal)
        if field is None:
            continue
        if field not in _FIELDS:
            raise ValueError(
                f"bad pattern {pattern!r}: unknown placeholder {{{field}}}; "
                f"expected {', '.join('{%s}' % f for f in _FIELDS)}"
            )
        if spec and "{" in spec:
            raise ValueError(f"bad pattern {pattern!r}: nested placeholders are not supported")
        skeleton.append("x")
    components = "".join(skeleton).split("/")
    if any(c in ("", ".", "..") for c in components) or os.path.isabs("".join(skeleton)):
        raise ValueError(
            f"bad pattern {pattern!r}: it must be a relative path without empty, '.' or '..' parts"
        )
    if os.path.splitdrive(os.path.join(*components))[0]:
        raise ValueError(f"bad pattern {pattern!r}: it must not name a drive")
    return [(literal, field, conversion, spec or "") for literal, field, spec, conversion in parts]


def _partial_parts(parts: list[tuple[str, Optional[str], Optional[str], str]]) -> list[Any]:
    """The same pattern with ".partial" before the suffix of the file name.

    The suffix is taken from the pattern's literal tail, never from an expanded
    value, so an id like "a.b" cannot decide where ".partial" goes.
    """
    parts = list(parts)
    literal, field, conversion, spec = parts[-1]
    if field is not None:  # the pattern ends with a placeholder: no suffix
        parts.append((_PARTIAL, None, None, ""))
        return parts
    name = literal.rpartition("/")[2]
    dot = name.rfind(".")
    suffix = name[dot:] if dot >= 0 else ""
    parts[-1] = (literal[: len(literal) - len(suffix)] + _PARTIAL + suffix, None, None, "")
    return parts


def _open_temp(parent: str, name: str) -> tuple[str, int]:
    """Create a new hidden file next to the final one; never reuse or follow a link."""
    prefix = os.path.join(parent, "." + name[:64] + ".")
    for _ in range(100):
        temp_path = prefix + os.urandom(5).hex() + ".tmp"
        try:
            return temp_path, os.open(temp_path, _TEMP_FLAGS, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", parent)


def _write_all(fd: int, buffers: list[Any]) -> None:
    """Write every buffer, normally in one ``writev`` call.

    ``writev`` rather than ``os.write(b"".join(...))``: joining copies the audio, which
    cost 50-80 us more per 10 s of 44.1 kHz s16 (882 kB) in our measurements.

    Loops on short writes: Linux writes at most 0x7ffff000 bytes per call, and a
    write stopped by a file size limit or a signal reports what it did write.
    """
    views = [memoryview(b) for b in buffers if len(b)]
    writev = getattr(os, "writev", None)
    try:
        while views:
            if writev is not None:
                written = writev(fd, views)
            else:  # Windows: no writev; still no joined copy of the audio
                written = os.write(fd, views[0])
            if written <= 0:
                raise OSError(errno.EIO, "write wrote nothing")
            while written:
                if written >= len(views[0]):
                    written -= len(views.pop(0))
                else:
                    views[0] = views[0][written:]
                    written = 0
    finally:
        for view in views:
            view.release()


def _fsync_dir(path: str) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync there
        return
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _exists(path: str) -> WriteError:
    error = WriteError(f"{path!r} exists and overwrite is False", path=path)
    error.errno = errno.EEXIST
    return error


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than int -> str allows
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(segment: Any) -> str:
    flush_id = _short_repr(getattr(segment, "flush_id", None))
    return f"flush {flush_id} of context {_short_repr(getattr(segment, 'context_id', None))}"


class FileWriter:
    """Write each finished segment to its own file, atomically.

    ``FileWriter(directory, pattern=None, *, container="wav", fsync=False, overwrite=True,
    write_empty=False)``

    - ``pattern`` is relative to ``directory`` and uses ``/`` for sub-directories,
      which are created as needed. Placeholders: ``{context_id}``, ``{flush_id}``,
      ``{encoding}``, ``{sample_rate}``; format specs apply before the value is made
      safe (``{flush_id:04d}``). Default: ``"{context_id}/{flush_id}.wav"`` (``.raw``
      for the raw container). Each value is passed through :func:`safe_name`, so
      different ids never share a file as long as placeholders are separated by
      ``/`` or end the file name's stem, as in the default.
    - An incomplete segment (``segment.complete`` is False) is written as
      ``NAME.partial.wav``: ``.partial`` goes before the pattern's suffix.
    - ``container="wav"`` writes a WAV file with an exact header (PCM, IEEE float,
      A-law, mu-law; ``fact`` chunk for the non-PCM ones) holding the whole samples
      only: ``segment.trailing_bytes`` (an incomplete last sample) is left out.
      ``container="raw"`` writes exactly the bytes received, trailing bytes included.
    - ``fsync=True`` flushes the file before the rename and its directory after it.
      Should the directory flush fail, the new file is removed again and
      ``WriteError`` raised (a file the rename replaced is gone by then).
    - ``overwrite=False`` never replaces an existing file: the new file is put in
      place with ``os.link``, which fails if the name exists, so there is no window
      between a check and the rename. On file systems without hard links it falls
      back to check-then-rename, which two concurrent writers could race.
    - An empty segment (no samples and no trailing bytes: a ``flush_done`` without
      audio, or an incomplete segment whose every chunk was lost) is not written and its
      ``path`` stays None, unless ``write_empty=True``: a server sending a flood of
      ``flush_done`` frames would otherwise make a file each (100,000 empty WAV files
      in 4 s). The segment still reaches the caller, with its ``error`` if any.

    The final path must lie inside ``directory`` once symbolic links are resolved
    (a sub-directory that is a link to elsewhere is refused). The check is made
    the first time a directory is used and cached, along with its creation: it
    protects against hostile ids, not against someone who can change the output
    directory while the writer runs. A file at the final name that is itself a
    link is replaced, never written through.

    Files get mode ``0o666`` minus the umask, like any new file. Writers keep no
    open files and can be shared by threads.
    """

    def __init__(
        self,
        directory: "str | os.PathLike[str]",
        pattern: Optional[str] = None,
        *,
        container: str = "wav",
        fsync: bool = False,
        overwrite: bool = True,
        write_empty: bool = False,
    ) -> None:
        if container not in _DEFAULT_PATTERNS:
            raise FormatError(f"unknown container {container!r}; expected 'wav' or 'raw'")
        if pattern is None:
            pattern = _DEFAULT_PATTERNS[container]
        self._parts = _parse_pattern(pattern)
        self._partial_parts = _partial_parts(self._parts)
        self.directory = os.path.abspath(os.fspath(directory))
        self.pattern = pattern
        self.container = container
        self.fsync = bool(fsync)
        self.overwrite = bool(overwrite)
        self.write_empty = bool(write_empty)
        self._root_real: Optional[str] = None  # resolved once the directory exists
        # Directories known to exist and to lie inside the root: no syscalls for them.
        self._ready_dirs: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"FileWriter({self.directory!r}, {self.pattern!r}, container={self.container!r}, "
            f"fsync={self.fsync}, overwrite={self.overwrite}, write_empty={self.write_empty})"
        )

    def __call__(self, event: Any) -> Optional[str]:
        """Write the segment of a ``SegmentReady`` event; ignore any other event.

        Returns the path written, or None (another event, or an empty segment left
        unwritten). Lets ``for ev in sink.feed(frame): writer(ev)``.
        """
        segment = getattr(event, "segment", None)
        if segment is None:
            return None
        return self.write(segment)

    def path_for(self, segment: Segment) -> str:
        """The absolute path ``segment`` would be written to (nothing is checked or created)."""
        parts = self._parts if segment.complete else self._partial_parts
        pieces = []
        for literal, field, conversion, spec in parts:
            pieces.append(literal)
            if field is None:
                continue
            if field == "context_id":
                value: Any = segment.context_id
            elif field == "flush_id":
                value = segment.flush_id
            elif field == "encoding":
                value = segment.format.encoding
            else:
                value = segment.format.sample_rate
            if value is not None:
                if conversion:
                    value = _CONVERSIONS[conversion](value)
                if spec or not isinstance(value, str):
                    value = format(value, spec)
            pieces.append(safe_name(value))
        relative = "".join(pieces)
        if os.sep != "/":
            relative = relative.replace("/", os.sep)
        return os.path.join(self.directory, relative)

    def write(self, segment: Segment) -> Optional[str]:
        """Write ``segment`` to its file, set ``segment.path`` and return the path; an
        empty segment is left unwritten (None) unless ``write_empty`` is set.

        Raises :class:`~flushsink.errors.WriteError` (an ``OSError`` whose ``errno``
        is the cause's) if the path escapes the directory, the file exists and
        ``overwrite`` is False, the audio does not fit in a WAV file (RIFF limit) or
        any file operation fails. Then no file is left under the final name (one that
        was there before is untouched), no temporary file is left, and ``segment``
        is unchanged, ready to be written by another writer.
        """
        if segment.sample_count != len(segment.samples):
            # from a Sink with keep_audio=False: its audio went out as AudioChunks
            cause = FormatError(f"its {segment.sample_count} samples were not kept "
                                f"(keep_audio=False): write the AudioChunks instead")
            raise self._error(segment, None, cause)
        if not self.write_empty and len(segment.samples) == 0 and not segment.trailing_bytes:
            return None
        try:
            path = self.path_for(segment)
        except (ValueError, TypeError) as exc:  # e.g. an int too long to print
            raise self._error(segment, None, exc, "cannot name the file for") from exc
        try:
            buffers = self._buffers(segment)
        except FormatError as exc:
            raise self._error(segment, path, exc) from exc
        try:
            self._store(buffers, path)
        except WriteError as exc:  # refused by a check, not by the OS
            exc.segment = segment
            raise
        except OSError as exc:
            raise self._error(segment, path, exc) from exc
        finally:
            for buffer in buffers:
                if isinstance(buffer, memoryview):
                    buffer.release()
        segment.path = path
        return path

    # --- internals ---------------------------------------------------------------------

    def _buffers(self, segment: Segment) -> list[Any]:
        """The file's bytes as buffers over the segment's memory (no copy of the audio)."""
        fmt: AudioFormat = segment.format
        samples = segment.samples
        if samples.dtype != fmt.dtype:
            raise FormatError(
                f"samples are {samples.dtype.str}, but {fmt.encoding} needs {fmt.dtype.str}"
            )
        nbytes = int(samples.nbytes)
        if self.container == "wav":
            header = wav_header(fmt, nbytes)  # before any copy: refuses > 4 GiB
        if samples.flags.c_contiguous:
            pcm = segment.pcm()
        else:  # only a hand-made Segment over a strided array; the Sink's are contiguous
            pcm = samples.copy(order="C").data.cast("B")
        if self.container == "wav":
            return [header, pcm, wav_padding(nbytes)]
        return [pcm, segment.trailing_bytes]

    def _prepare_dir(self, parent: str, path: str) -> None:
        """Check that ``parent`` lies inside the root, then create it (cached)."""
        if self._root_real is None:
            os.makedirs(self.directory, exist_ok=True)
            self._root_real = os.path.realpath(self.directory)
        # Resolve before creating, so no directory is ever made through a link outward.
        real = os.path.realpath(parent)
        if not _is_inside(real, self._root_real):
            raise WriteError(
                f"refusing to write {path!r}: its directory resolves to {real!r}, "
                f"outside {self._root_real!r}",
                path=path,
            )
        os.makedirs(parent, exist_ok=True)
        if len(self._ready_dirs) >= _MAX_CACHED_DIRS:
            self._ready_dirs.clear()
        self._ready_dirs.add(parent)

    def _store(self, buffers: list[Any], path: str) -> None:
        parent, name = os.path.split(path)
        if parent not in self._ready_dirs:
            self._prepare_dir(parent, path)
        try:
            temp_path, fd = _open_temp(parent, name)
        except FileNotFoundError:  # a cached directory was removed behind our back
            self._ready_dirs.discard(parent)
            self._prepare_dir(parent, path)
            temp_path, fd = _open_temp(parent, name)
        placed = False
        try:
            try:
                _write_all(fd, buffers)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)  # may report a deferred write error (NFS): a failure too
            if self.overwrite:
                os.replace(temp_path, path)
            else:
                self._place_new(temp_path, path)
            placed = True
            if self.fsync:
                _fsync_dir(parent)
        except BaseException:
            _unlink_quietly(temp_path)
            if placed:  # only after a failed directory fsync: the rename may not last
                _unlink_quietly(path)
            raise

    def _place_new(self, temp_path: str, path: str) -> None:
        try:
            os.link(temp_path, path)
        except FileExistsError:
            raise _exists(path) from None
        except OSError as exc:
            if exc.errno not in _NO_LINK_ERRNOS:
                raise
            if os.path.lexists(path):
                raise _exists(path) from None
            os.replace(temp_path, path)
            return
        _unlink_quietly(temp_path)

    @staticmethod
    def _error(
        segment: Any, path: Optional[str], cause: BaseException, verb: str = "cannot write"
    ) -> WriteError:
        where = f" to {path!r}" if path is not None else ""
        error = WriteError(f"{verb} {_describe(segment)}{where}: {cause}", segment=segment, path=path)
        # Keeps `except OSError as e: if e.errno == ENOSPC` working (strerror stays
        # unset so str(error) is the message above).
        error.errno = getattr(cause, "errno", None)
        return error
