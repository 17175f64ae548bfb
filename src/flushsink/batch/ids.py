"""Row ids: the name an id gets in storage (:func:`safe_id`) and the shard it belongs to
(:class:`Shard`).

Both are pure functions of the id, so N processes or machines that share one destination
agree on names and on who does which row without talking to each other, and a later run
(a resume, another shard count) finds what an earlier one wrote.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError

__all__ = ["safe_id", "id_from_safe", "shard_of", "Shard", "ALL", "MAX_SAFE_ID", "check_id"]

#: The longest name :func:`safe_id` returns (ASCII, so characters = bytes): well inside a
#: file name's 255 bytes and S3's 1,024-byte keys, with room for the prefix around it.
MAX_SAFE_ID = 120

_KEPT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# Marks a name cut to fit; never kept as itself (it is outside _KEPT), so a cut name can
# never equal the name of another id.
_HASH_MARK = "~"
_HASH_HEX = 32  # 128 bits of SHA-256: no collision by accident, none by design either
_CUT = MAX_SAFE_ID - len(_HASH_MARK) - _HASH_HEX
# Windows refuses these as a name whatever follows the first dot ("nul.tar.gz" too).
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(10)] + [f"LPT{i}" for i in range(10)]
)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SHARD = re.compile(r"([0-9]{1,9})/([0-9]{1,9})")


def check_id(value: object) -> str:
    """``value`` as an id, or ``ValueError`` saying why it is not one.

    An id is a non-empty ``str`` that is valid Unicode (no lone surrogate: it must
    encode as UTF-8, for the hash, the name and the manifest's JSON), or an ``int`` (not a
    ``bool``), taken as its decimal text: ids read from Parquet or JSON are often numbers.
    ``1`` and ``"1"`` are then the same id (a duplicate when both occur).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"id must be a string or an integer, not {type(value).__name__}")
    text = str(value)
    if not text:
        raise ValueError("id is empty")
    if _LONE_SURROGATE.search(text):
        raise ValueError("id is not valid Unicode (a lone surrogate)")
    return text


def _escape(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


def safe_id(row_id: str) -> str:
    """The one path component under which ``row_id``'s audio is stored.

    The mapping, so other tools can follow it:

    1. Percent-encoding of the UTF-8 id (upper-case hex), keeping only
       ``[A-Za-z0-9._-]`` as they are, except a ``.`` at the start or at the end
       (``%2E``): so no name is ``.`` or ``..``, none is hidden (starts with ``.``, which
       the local store keeps for its temporary files) and none ends with ``.`` (Windows
       drops it). ``%`` itself is encoded (``%25``), and so are ``/``, ``\\``, ``~`` and
       every control character: a name is one component and never escapes its directory.
    2. A name whose part before its first ``.`` is a Windows device name (``CON``,
       ``nul``, ``COM1``...) has its first character encoded: ``con.txt`` -> ``%63on.txt``.
    3. A result longer than :data:`MAX_SAFE_ID` (120) characters is cut to 87 (never
       inside a ``%XX``) and ``~`` plus the first 32 hex digits of the SHA-256 of the
       UTF-8 id are appended.

    Injective: names of steps 1-2 decode back to their id (:func:`id_from_safe`), and
    a cut name (step 3) holds a ``~``, which no uncut name does; two cut names are equal
    only if 128 bits of SHA-256 collide. Values that differ only in case give names that
    differ only in case: one folder on a case-insensitive file system (macOS, Windows).

    Raises ``ValueError`` for what :func:`check_id` refuses.
    """
    row_id = check_id(row_id)
    last = len(row_id) - 1
    name = "".join(
        char if char in _KEPT and not (char == "." and (i == 0 or i == last)) else _escape(char)
        for i, char in enumerate(row_id)
    )
    if name.partition(".")[0].upper() in _WINDOWS_RESERVED:
        name = _escape(name[0]) + name[1:]
    if len(name) <= MAX_SAFE_ID:
        return name
    cut = _CUT
    percent = name.rfind("%", cut - 2, cut)
    if percent >= 0:  # do not leave half an escape before the mark
        cut = percent
    digest = hashlib.sha256(row_id.encode("utf-8")).hexdigest()[:_HASH_HEX]
    return f"{name[:cut]}{_HASH_MARK}{digest}"


def id_from_safe(name: str) -> Optional[str]:
    """The id whose :func:`safe_id` is ``name``; None for a cut name (it holds a ``~``:
    its id is not in it) or a name :func:`safe_id` never makes."""
    if _HASH_MARK in name:
        return None
    try:
        data = bytearray()
        i = 0
        while i < len(name):
            char = name[i]
            if char == "%":
                data.append(int(name[i + 1:i + 3], 16))
                i += 3
            else:
                data += char.encode("ascii")
                i += 1
        row_id = data.decode("utf-8")
    except (ValueError, UnicodeError):
        return None
    return row_id if row_id and safe_id(row_id) == name else None


def shard_of(row_id: str, count: int) -> int:
    """The shard (0 to ``count - 1``) of ``row_id``: the first 8 bytes of the SHA-256 of
    its UTF-8 text, read as a big-endian unsigned integer, modulo ``count``.

    The same in every process, Python version and machine (unlike ``hash()``, which is
    salted per process); SHA-256 spreads ids evenly whatever their pattern."""
    digest = hashlib.sha256(row_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``--shard index/count``): the rows whose
    :func:`shard_of` is ``index``. N processes given ``0/N`` ... ``N-1/N`` share the rows
    between them with no coordination; :data:`ALL` (``0/1``) is every row."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        for value in (self.index, self.count):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"a shard is two integers, not {value!r}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard {self.index}/{self.count}: the index must be from 0 to count - 1")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"i/N"``, as ``--shard`` takes it (``ConfigError`` for anything else)."""
        match = _SHARD.fullmatch(text.strip())
        if match is None:
            raise ConfigError(f"bad shard {text!r}: expected i/N, such as 0/4")
        return cls(int(match[1]), int(match[2]))

    def owns(self, row_id: str) -> bool:
        """Whether ``row_id`` belongs to this shard."""
        return self.count == 1 or shard_of(row_id, self.count) == self.index

    @property
    def label(self) -> str:
        """How the shard appears in file names: ``"{index}of{count}"``, e.g. ``2of8``."""
        return f"{self.index}of{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


#: Every row: the shard of a job that is not split.
ALL = Shard(0, 1)
