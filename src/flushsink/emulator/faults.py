"""The emulator's fault modes: what can go wrong on purpose, where it fires, and how it is
written. The connection (:mod:`.connection`) performs a fault when its stream reaches it.

A fault is written ``ACTION[:ARG][@POINT]`` and fires once per connection, the first time
the stream reaches ``POINT``:

============================  ===================================================
action                        effect
============================  ===================================================
``drop``                      abort the TCP connection (no close frame)
``close[:CODE]``              close cleanly with CODE (default 1011)
``malformed_json``            send a text frame that is not valid JSON
``bad_base64``                send a chunk whose ``data`` is not base64
``oversized:N``               send a valid chunk frame of exactly N bytes (zeros)
``flood_contexts:N``          send one chunk for each of N unknown contexts
                              ``flood-0`` ... then a ``done`` for each
``flood_flushes:N``           send N chunk + ``flush_done`` pairs on an unknown
                              context ``flood``, then its ``done``
============================  ===================================================

``POINT`` is ``chunk:K`` (default ``chunk:0``): after K chunks of a segment were sent and
before the next one, in the first segment that has at least K chunks (and at least one);
``flush_done``: after a segment's last chunk, before its ``flush_done``; ``done``: before a
context's ``done``. Injected frames belong to the context and segment being streamed.
Faults come from the ``faults=`` constructor argument (every connection) and from the
``fault`` query parameter of one connection (``?fault=drop@chunk:3``; repeat it or
separate faults by commas). An invalid spec in the query is rejected with HTTP 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from websockets.exceptions import ProtocolError
from websockets.frames import Close

__all__ = ["FAULT_ACTIONS", "Fault", "FaultSpec", "parse_faults"]

#: Fault action -> whether its argument is required (True), optional (False) or absent (None).
FAULT_ACTIONS: dict[str, bool | None] = {
    "drop": None,
    "close": False,
    "malformed_json": None,
    "bad_base64": None,
    "oversized": True,
    "flood_contexts": True,
    "flood_flushes": True,
}
_FAULT_POINTS = ("chunk", "flush_done", "done")


@dataclass(frozen=True)
class Fault:
    """One fault injection; see the module docstring for the meaning of each field."""

    action: str
    arg: int | None = None
    point: str = "chunk"
    after: int = 0  # chunks of the segment already sent (point "chunk" only)

    def __post_init__(self) -> None:
        if self.action not in FAULT_ACTIONS:
            raise ValueError(
                f"unknown fault action {self.action!r}; expected one of {', '.join(FAULT_ACTIONS)}"
            )
        takes_arg = FAULT_ACTIONS[self.action]
        if takes_arg is None and self.arg is not None:
            raise ValueError(f"fault {self.action!r} takes no argument")
        if takes_arg and self.arg is None:
            raise ValueError(f"fault {self.action!r} needs an argument, e.g. {self.action}:100")
        if self.arg is not None and self.arg < 0:
            raise ValueError(f"fault argument must not be negative, not {self.arg}")
        if self.point not in _FAULT_POINTS:
            raise ValueError(
                f"unknown fault point {self.point!r}; expected one of {', '.join(_FAULT_POINTS)}"
            )
        if self.after < 0 or (self.after and self.point != "chunk"):
            raise ValueError("a chunk count only goes with the point 'chunk'")
        if self.action == "close" and self.arg is not None:
            try:
                Close(self.arg, "").check()
            except ProtocolError:
                raise ValueError(f"{self.arg} is not a close code a server may send") from None

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Parse ``ACTION[:ARG][@POINT]``, e.g. ``drop@chunk:3`` or ``oversized:2000000``."""
        action_part, _, point_part = spec.strip().partition("@")
        action, _, arg = action_part.partition(":")
        point, _, after = (point_part or "chunk").partition(":")
        try:
            return cls(action, int(arg) if arg else None, point, int(after) if after else 0)
        except ValueError as exc:
            raise ValueError(f"invalid fault {spec!r}: {exc}") from None

    def __str__(self) -> str:
        action = self.action if self.arg is None else f"{self.action}:{self.arg}"
        point = f"chunk:{self.after}" if self.point == "chunk" else self.point
        return f"{action}@{point}"

    def matches(self, point: str, chunks_sent: int) -> bool:
        return self.point == point and (point != "chunk" or self.after == chunks_sent)


FaultSpec = str | Fault | Sequence[str | Fault]


def parse_faults(spec: FaultSpec) -> tuple[Fault, ...]:
    """Faults from a comma-separated string, a :class:`Fault`, or a sequence of either."""
    if isinstance(spec, Fault):
        return (spec,)
    items = spec.split(",") if isinstance(spec, str) else spec
    return tuple(
        item if isinstance(item, Fault) else Fault.parse(item)
        for item in items
        if isinstance(item, Fault) or item.strip()
    )
