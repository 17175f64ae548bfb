"""The batch job's progress on stderr: rows done, audio seconds per second, ETA and the
current concurrency.

tqdm draws the bar when it is installed and the stream is a terminal (it is no
dependency of flushsink: ``pip install tqdm``); otherwise a built-in line does: redrawn in
place on a terminal, and on anything else (a log file, a pipe, a CI job) printed as a new
line every ``log_every`` seconds, so a log gets a heartbeat rather than a carriage-return
soup. Both take the same numbers from the job (:meth:`Progress.update`).
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import IO, Any, Callable, Optional

__all__ = ["Progress", "format_eta", "make_progress"]


def format_eta(seconds: Optional[float]) -> str:
    """``1:02:03``, ``4:05``, or ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 360 * 86400:
        return "?"
    whole = int(seconds + 0.5)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """The built-in progress line. ``update`` is cheap: it redraws at most every
    ``interval`` seconds (terminal) or ``log_every`` seconds (elsewhere)."""

    def __init__(self, stream: Optional[IO[str]] = None, *, interval: float = 0.2,
                 log_every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream: IO[str] = stream if stream is not None else sys.stderr
        self.live = _is_terminal(self.stream)
        self.interval = interval if self.live else log_every
        self._clock = clock
        self._started = clock()
        self._last_drawn = self._started  # the first line after one interval, not at once
        self._drawn = 0
        self.total: Optional[int] = None
        self.done = 0
        self.initial = 0  # rows done before this run (resumed): not in the rate
        self.failed = 0
        self.audio_seconds = 0.0
        self.concurrency = 0.0

    def set_total(self, total: Optional[int], initial: int = 0) -> None:
        """The rows of the job (this shard's good rows), and how many an earlier run did."""
        self.total = total
        self.initial = initial

    def update(self, *, done: int, failed: int, audio_seconds: float, concurrency: float,
               force: bool = False) -> None:
        self.done, self.failed = done, failed
        self.audio_seconds, self.concurrency = audio_seconds, concurrency
        now = self._clock()
        if force or now - self._last_drawn >= self.interval:
            self._last_drawn = now
            self._draw(self.text(now))

    def text(self, now: Optional[float] = None) -> str:
        elapsed = max(1e-9, (self._clock() if now is None else now) - self._started)
        this_run = self.done - self.initial
        rate = this_run / elapsed
        if self.total is not None:
            rows = f"{self.done}/{self.total} rows"
            left = max(0, self.total - self.done - self.failed)
            eta = format_eta(left / rate if rate > 0 else None)
        else:
            rows, eta = f"{self.done} rows", "?"
        failed = f", {self.failed} failed" if self.failed else ""
        return (f"  {rows}{failed}, {self.audio_seconds / elapsed:.1f} audio s/s, "
                f"ETA {eta}, concurrency {self.concurrency:g}")

    def _draw(self, text: str) -> None:
        if self.live:
            print("\r" + text.ljust(self._drawn), end="", file=self.stream, flush=True)
            self._drawn = len(text)
        else:
            print(text, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line of its own (``flushsink: ...``), the progress line redrawn under it."""
        self._end_line()
        print(f"flushsink: {text}", file=self.stream, flush=True)

    def _end_line(self) -> None:
        if self._drawn:
            print(file=self.stream, flush=True)
            self._drawn = 0

    def close(self) -> None:
        """End the progress line (a terminal keeps its last state)."""
        if self.live:
            self._draw(self.text())
        self._end_line()


class _TqdmProgress(Progress):
    """The same numbers through tqdm's bar."""

    def __init__(self, tqdm: Any, stream: Optional[IO[str]] = None) -> None:
        super().__init__(stream)
        self._bar = tqdm(total=None, unit="row", file=self.stream, dynamic_ncols=True,
                         smoothing=0.1, mininterval=0.2)

    def set_total(self, total: Optional[int], initial: int = 0) -> None:
        super().set_total(total, initial)
        self._bar.total = total
        self._bar.initial = initial
        self._bar.refresh()

    def update(self, *, done: int, failed: int, audio_seconds: float, concurrency: float,
               force: bool = False) -> None:
        step = done - self._bar.n
        self.done, self.failed = done, failed
        self.audio_seconds, self.concurrency = audio_seconds, concurrency
        elapsed = max(1e-9, self._clock() - self._started)
        self._bar.set_postfix_str(
            f"{audio_seconds / elapsed:.1f} audio s/s, concurrency {concurrency:g}"
            + (f", {failed} failed" if failed else ""), refresh=False)
        if step > 0:
            self._bar.update(step)
        elif force:
            self._bar.refresh()

    def message(self, text: str) -> None:
        self._bar.write(f"flushsink: {text}", file=self.stream)

    def close(self) -> None:
        self._bar.close()


def make_progress(mode: "bool | str" = True, stream: Optional[IO[str]] = None
                  ) -> Optional[Progress]:
    """The progress display ``mode`` asks for: False (none), ``"plain"`` (the built-in
    line), ``"tqdm"`` (tqdm, ``MissingDependency``-free: the built-in line if tqdm is
    missing), True (tqdm on a terminal when installed, else the built-in line)."""
    if mode is False or mode is None:
        return None
    stream = stream if stream is not None else sys.stderr
    if mode == "plain":
        return Progress(stream)
    if mode is True and not _is_terminal(stream):
        return Progress(stream)
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        return Progress(stream)
    return _TqdmProgress(tqdm, stream)
