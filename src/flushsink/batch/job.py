"""The batch job: rows in, one context per row, every flush segment stored create-only,
the manifest published as rows complete; flow control against the provider's limits;
resumable after any stop (issue 17).

Three layers, each usable alone:

- :class:`Concurrency`: additive-increase / multiplicative-decrease of the number of
  contexts in flight. It starts at the job's ``concurrency`` (the most it ever allows),
  halves on a 429 (a context refused, or a handshake), at most once per round of
  contexts (the 429s of contexts that started before the last cut do not cut again), and
  climbs back by one per round of successes.
- :class:`Synthesizer`: ``sockets`` client connections, a context per row on the least
  loaded one, a row's segments stored as they finish (:func:`store_segment`), transient
  failures retried with jittered backoff that honours ``Retry-After``. It knows nothing of
  input files or manifests: :meth:`Synthesizer.synthesize_many` takes rows and returns
  their manifest records, which is what a Ray actor (``flushsink[ray]``, not here yet)
  would call on a batch.
- :func:`run`: the job: read and check the rows, skip what an earlier run finished,
  reconcile what it stored without publishing, publish manifest and errors parts, stop
  cleanly, write ``summary.json``.

What happens to a row, in order: its audio is stored (each flush create-only), then its
manifest rows are queued, all in one part; a part is published every ``part_rows`` rows or
``part_seconds`` seconds and at the end. A kill at any moment leaves audio that no
manifest row names at worst; the next run reconciles it (:func:`reconcile`) without asking
the server again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Optional, Sequence

from ..client import Client, Context
from ..client import connect as ws_connect
from ..errors import (
    AuthenticationError,
    ConfigError,
    ConnectionRateLimited,
    ContextFailed,
    ContextRateLimited,
    FlushsinkError,
    HandshakeError,
)
from ..formats import DEFAULT_FORMAT, AudioFormat
from .errors import BatchError, StoreError
from .ids import ALL, Shard, safe_id
from .manifest import (
    ERRORS_DIR,
    MANIFEST_DIR,
    PartWriter,
    ResumeState,
    failure_record,
    reconcile,
    resume_state,
    store_segment,
    summarize,
    write_summary,
)
from .progress import Progress, make_progress
from .rows import BadRow, Row, Voice, input_format, read_rows
from .stores import Store, open_store

__all__ = [
    "DEFAULT_CONCURRENCY", "DEFAULT_VOICE", "DEFAULT_MODEL", "Concurrency", "RowFailure",
    "RowResult", "Synthesizer", "JobStats", "DestinationNotEmpty", "JobFailed", "run",
]

#: Contexts in flight by default: inside every Cartesia plan's concurrency limit (the
#: smallest self-serve plan allows a few; Pro 15), so a first run is not refused at once.
DEFAULT_CONCURRENCY = 4
#: The voice of a row that names none, when the job gives none (the CLI's ``say`` default).
DEFAULT_VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
DEFAULT_MODEL = "sonic-latest"


class DestinationNotEmpty(BatchError, ValueError):
    """``resume=False`` (``--no-resume``) and the destination already holds objects."""


class JobFailed(BatchError):
    """The job cannot go on for any row: the server refused the key, the URL is wrong
    (HTTP 404), the store cannot be written at all. What was done is published first."""


# --- flow control ---------------------------------------------------------------------------

class Concurrency:
    """How many contexts may be in flight: additive increase, multiplicative decrease.

    ``limit`` moves between ``minimum`` and ``maximum`` (it starts at ``maximum``); the
    number allowed is ``floor(limit)``. :meth:`success` adds ``1 / limit`` (one per round
    of ``limit`` successes); :meth:`rate_limited` multiplies by ``decrease`` unless the
    context that was refused started before the last cut (its ``epoch`` from
    :meth:`acquire` is older): a burst of 429s from one round cuts once. :meth:`hold`
    keeps every new context waiting until a ``Retry-After`` has passed.
    """

    def __init__(self, maximum: int, *, minimum: int = 1, decrease: float = 0.5) -> None:
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 1:
            raise ConfigError(f"concurrency must be an integer >= 1, not {maximum!r}")
        if not 1 <= minimum <= maximum:
            raise ConfigError(f"the minimum concurrency must be from 1 to {maximum}")
        if not 0 < decrease < 1:
            raise ConfigError(f"decrease must be between 0 and 1, not {decrease!r}")
        self.maximum = maximum
        self.minimum = minimum
        self.decrease = decrease
        self.limit = float(maximum)
        self.lowest = float(maximum)
        self.in_flight = 0
        self.epoch = 0  # cuts so far
        self.cuts = 0
        self._resume_at = 0.0
        self._changed: Optional[asyncio.Condition] = None

    @property
    def allowed(self) -> int:
        return max(self.minimum, int(self.limit))

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self) -> int:
        """Wait for a slot (and for any hold to pass); the epoch to give back with
        :meth:`rate_limited`. Call :meth:`release` when the context is over."""
        loop = asyncio.get_running_loop()
        changed = self._condition()
        async with changed:
            while True:
                wait = self._resume_at - loop.time()
                if wait > 0:
                    try:
                        await asyncio.wait_for(changed.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
                    continue
                if self.in_flight < self.allowed:
                    self.in_flight += 1
                    return self.epoch
                await changed.wait()

    def release(self) -> None:
        self.in_flight -= 1
        self._notify()

    def _notify(self) -> None:
        changed = self._condition()

        async def wake() -> None:
            async with changed:
                changed.notify_all()

        asyncio.get_running_loop().create_task(wake())

    def success(self) -> None:
        before = self.allowed
        self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
        if self.allowed > before:
            self._notify()

    def rate_limited(self, epoch: int) -> bool:
        """A context started at ``epoch`` was refused with 429: cut the limit (True) unless
        a cut came since it started."""
        if epoch < self.epoch:
            return False
        self.epoch += 1
        self.cuts += 1
        self.limit = max(float(self.minimum), self.limit * self.decrease)
        self.lowest = min(self.lowest, self.limit)
        return True

    def hold(self, seconds: float) -> None:
        """No new context for ``seconds`` (a ``Retry-After``)."""
        loop = asyncio.get_running_loop()
        self._resume_at = max(self._resume_at, loop.time() + seconds)


# --- one row ----------------------------------------------------------------------------------

@dataclass
class RowFailure(Exception):
    """An attempt at a row failed. ``transient``: worth another attempt; ``rate_limited``:
    ``"context"`` or ``"handshake"`` for a 429; ``retry_after``: the server's wait."""

    reason: str
    transient: bool = True
    rate_limited: Optional[str] = None
    retry_after: Optional[float] = None
    attempts: int = 1

    def __str__(self) -> str:
        return self.reason


@dataclass
class RowResult:
    """What became of a row: its manifest ``records`` (one per flush) when it was
    stored, else the ``failure``."""

    row: Row
    records: Optional[list[dict[str, Any]]] = None
    failure: Optional[RowFailure] = None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]


def classify(exc: BaseException) -> RowFailure:
    """What an exception from an attempt means for the row (:class:`JobFailed` for what
    means the job cannot go on: a refused key, a wrong URL)."""
    reason = f"{type(exc).__name__}: {_one_line(exc)}"
    if isinstance(exc, RowFailure):
        return exc
    if isinstance(exc, AuthenticationError):
        raise JobFailed(_one_line(exc)) from exc
    if isinstance(exc, ContextRateLimited):
        return RowFailure(reason, rate_limited="context", retry_after=exc.retry_after)
    if isinstance(exc, ConnectionRateLimited):
        return RowFailure(reason, rate_limited="handshake", retry_after=exc.retry_after)
    if isinstance(exc, HandshakeError):
        if exc.status is not None and exc.status not in (408, 429) and exc.status < 500:
            raise JobFailed(_one_line(exc)) from exc
        return RowFailure(reason, retry_after=exc.retry_after)
    if isinstance(exc, ContextFailed):
        status = getattr(exc.event, "status_code", None)
        # a 4xx is about the request (a voice that does not exist, a bad field): the same
        # request fails the same way; 5xx and unknown may pass
        return RowFailure(reason, transient=not (status is not None and 400 <= status < 500))
    if isinstance(exc, (StoreError, FlushsinkError, ConnectionError, TimeoutError,
                        asyncio.TimeoutError, OSError)):
        return RowFailure(reason)
    if isinstance(exc, ValueError):  # a row the server's answer does not fit (a format)
        return RowFailure(reason, transient=False)
    raise exc


class _Socket:
    """One client connection of the pool, and what it carries."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.in_flight = 0
        self.cooldown_until = 0.0  # after a refused handshake


class Synthesizer:
    """Rows to stored audio over ``sockets`` connections, at most ``concurrency``
    contexts at once (AIMD on 429s, :class:`Concurrency`).

    ``url``/``api_key``: as :func:`flushsink.connect` (``url=None``: Cartesia with
    ``api_key`` or ``CARTESIA_API_KEY``). ``retries``: attempts after the first for a
    transient failure (a dropped connection, a timeout, a 5xx, an incomplete segment);
    ``rate_limit_retries``: for 429s, which are the job going faster than the account
    allows rather than anything wrong with the row. Between attempts a row waits
    ``Retry-After`` when the server sent one (plus up to 25% jitter), else a random time up
    to ``min(max_backoff, backoff * 2**k)``. ``timeout``: the longest silence of a context.
    ``client_options``: more of :func:`flushsink.connect`'s.

    Use as ``async with Synthesizer(...) as synth:``, then :meth:`synthesize` or
    :meth:`synthesize_many`; each row must have its voice and format (see
    :meth:`Row.with_defaults`).
    """

    def __init__(self, *, url: Optional[str] = None, api_key: Optional[str] = None,
                 concurrency: int = DEFAULT_CONCURRENCY, sockets: int = 1,
                 retries: int = 3, rate_limit_retries: int = 20, timeout: float = 60.0,
                 with_words: bool = False, backoff: float = 0.5, max_backoff: float = 30.0,
                 client_options: Optional[dict[str, Any]] = None) -> None:
        if isinstance(sockets, bool) or not isinstance(sockets, int) or sockets < 1:
            raise ConfigError(f"sockets must be an integer >= 1, not {sockets!r}")
        for name, value in (("retries", retries), ("rate_limit_retries", rate_limit_retries)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, not {value!r}")
        for name, number in (("timeout", timeout), ("backoff", backoff),
                             ("max_backoff", max_backoff)):
            if not (isinstance(number, (int, float)) and 0 <= number < math.inf):
                raise ConfigError(f"{name} must be a number of seconds >= 0, not {number!r}")
        self.concurrency = Concurrency(concurrency)
        self.retries = retries
        self.rate_limit_retries = rate_limit_retries
        self.with_words = with_words
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        options = {"receive_timeout": timeout, **(client_options or {})}
        # retry=None: a refused handshake comes back here, so it cuts the concurrency too
        options["retry"] = None
        self._sockets = [_Socket(ws_connect(url, api_key, **options)) for _ in range(sockets)]
        self.url = self._sockets[0].client.url
        #: 429s seen, by kind ("context", "handshake"); attempts retried; rows failed.
        self.rate_limited: dict[str, int] = {"context": 0, "handshake": 0}
        self.retried = 0

    async def __aenter__(self) -> "Synthesizer":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.gather(*(socket.client.close() for socket in self._sockets),
                             return_exceptions=True)

    async def _pick(self) -> _Socket:
        """The socket with the fewest contexts, leaving out those cooling down after a
        refused handshake (all cooling: wait for the first)."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            ready = [s for s in self._sockets if s.cooldown_until <= now]
            if ready:
                return min(ready, key=lambda s: s.in_flight)
            await asyncio.sleep(min(s.cooldown_until for s in self._sockets) - now)

    def _delay(self, failure: RowFailure, attempt: int) -> float:
        if failure.retry_after is not None:
            return failure.retry_after * random.uniform(1.0, 1.25)
        return random.uniform(0.0, min(self.max_backoff, self.backoff * 2.0 ** attempt))

    async def synthesize(self, row: Row, store: Store) -> list[dict[str, Any]]:
        """Store every flush of ``row`` and return its manifest records (one per flush);
        :class:`RowFailure` once its retries are spent (or at once for a failure that
        would recur); :class:`JobFailed` when no row can succeed."""
        attempts = failures = limited = 0
        while True:
            attempts += 1
            epoch = await self.concurrency.acquire()
            try:
                records = await self._attempt(row, store)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # classify() re-raises what is not the row's failure
                failure = classify(exc)
            else:
                self.concurrency.success()
                return records
            finally:
                self.concurrency.release()
            failure.attempts = attempts
            if failure.rate_limited is not None:
                self.rate_limited[failure.rate_limited] += 1
                self.concurrency.rate_limited(epoch)
                if failure.retry_after:
                    self.concurrency.hold(failure.retry_after)
                limited += 1
                if limited > self.rate_limit_retries:
                    raise failure
            else:
                failures += 1
                if not failure.transient or failures > self.retries:
                    raise failure
            self.retried += 1
            await asyncio.sleep(self._delay(failure, attempts - 1))

    async def _attempt(self, row: Row, store: Store) -> list[dict[str, Any]]:
        socket = await self._pick()
        socket.in_flight += 1
        ctx: Optional[Context] = None
        finished = False
        try:
            client = socket.client
            if not client._connected():
                try:
                    await client.connect()
                except ConnectionRateLimited as exc:
                    loop = asyncio.get_running_loop()
                    socket.cooldown_until = loop.time() + (exc.retry_after or self.backoff)
                    raise
            fmt = row.output_format or DEFAULT_FORMAT
            options: dict[str, Any] = {"model_id": row.model_id or DEFAULT_MODEL,
                                       "output_format": fmt.to_output_format()}
            if row.language is not None:
                options["language"] = row.language
            if self.with_words:
                options["add_timestamps"] = True
            ctx = client.context(voice=row.voice or DEFAULT_VOICE, **options)
            for text in row.texts:
                await ctx.push(text, flush=True)  # one flush segment, one file, per text
            await ctx.no_more_inputs()
            records: list[dict[str, Any]] = []
            async for segment in ctx.segments():
                flush = len(records)
                if flush >= len(row.texts):
                    raise RowFailure(f"the server sent more segments than the row's "
                                     f"{len(row.texts)} texts")
                if not segment.complete:
                    raise RowFailure(f"flush {flush} incomplete: {segment.error}")
                records.append(await asyncio.to_thread(
                    store_segment, store, row, flush, segment, with_words=self.with_words))
                del segment
            if len(records) != len(row.texts):
                raise RowFailure(f"the context ended after {len(records)} of "
                                 f"{len(row.texts)} segments")
            finished = True
            return records
        finally:
            socket.in_flight -= 1
            if ctx is not None and not finished:
                await _cancel_quietly(ctx)

    async def synthesize_many(self, rows: Iterable[Row], store: Store) -> list[RowResult]:
        """Every row of ``rows`` at once (the concurrency bounds the contexts), in order:
        its records, or its failure. The hook for a worker that takes rows in batches
        (a Ray actor): no manifest is written here, the caller publishes the records."""

        async def one(row: Row) -> RowResult:
            try:
                return RowResult(row, records=await self.synthesize(row, store))
            except RowFailure as failure:
                return RowResult(row, failure=failure)

        return list(await asyncio.gather(*(one(row) for row in rows)))


async def _cancel_quietly(ctx: Context) -> None:
    try:
        await asyncio.wait_for(ctx.cancel(), 5.0)
    except Exception:  # the context is abandoned either way
        pass


# --- the job --------------------------------------------------------------------------------

@dataclass
class JobStats:
    """What one run did (the ``job`` part of :func:`run`'s summary)."""

    shard: str = "0/1"
    rows_stored: int = 0  # synthesized and published by this run
    rows_reconciled: int = 0  # audio of an earlier run, published by this run
    rows_skipped: int = 0  # already in the manifest
    rows_failed: int = 0
    bad_rows: int = 0  # reported by this run (an earlier run's reports are not repeated)
    audio_seconds: float = 0.0  # of the rows stored by this run
    rate_limited: dict[str, int] = field(default_factory=lambda: {"context": 0, "handshake": 0})
    retries: int = 0
    concurrency_max: int = 0
    concurrency_final: float = 0.0
    concurrency_lowest: float = 0.0
    concurrency_cuts: int = 0
    elapsed: float = 0.0
    stopped: bool = False  # stopped early (a signal, stop set): rows left for the next run
    complete: bool = False  # every row of the shard is in the manifest or the errors

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Parts:
    """A PartWriter used from the event loop: its store calls in a worker thread, one at
    a time."""

    def __init__(self, writer: PartWriter) -> None:
        self.writer = writer
        self._lock = asyncio.Lock()

    async def add(self, records: Sequence[dict[str, Any]]) -> None:
        async with self._lock:
            await asyncio.to_thread(self.writer.add, records)

    async def publish_due(self) -> None:
        if self.writer.due():
            async with self._lock:
                await asyncio.to_thread(self.writer.publish_due)

    async def close(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self.writer.close)


def _count_rows(source: Any, fmt: Optional[str], shard: Shard) -> int:
    return sum(isinstance(item, Row) for item in read_rows(source, format=fmt, shard=shard))


async def _has_objects(store: Store) -> bool:
    def first() -> bool:
        return next(iter(store.list("")), None) is not None
    return await asyncio.to_thread(first)


def row_defaults(voice: Optional[Voice], model_id: Optional[str],
                 output_format: "AudioFormat | dict[str, Any] | None",
                 language: Optional[str]) -> dict[str, Any]:
    """A job's defaults for the rows that give none (both runners'): the output format
    as an AudioFormat (given as one, or as Cartesia's dict)."""
    fmt: AudioFormat
    if output_format is None:
        fmt = DEFAULT_FORMAT
    elif isinstance(output_format, AudioFormat):
        fmt = output_format
    else:
        fmt = AudioFormat.from_output_format(output_format)
    return {"voice": voice if voice is not None else DEFAULT_VOICE,
            "model_id": model_id if model_id is not None else DEFAULT_MODEL,
            "output_format": fmt, "language": language}


def open_input(input: "str | os.PathLike[str] | IO[bytes]", format_name: Optional[str],
               shard: Shard) -> tuple[Optional[str], Optional[str], Any]:
    """(its format's name, its path or None, its rows) of a job's input (both runners').
    It opens, and its header is checked, before anything is asked of the server."""
    if format_name is None and isinstance(input, (str, os.PathLike)):
        format_name = input_format(input)
    source = os.fspath(input) if isinstance(input, (str, os.PathLike)) else None
    return format_name, source, read_rows(input, format=format_name, shard=shard)


async def run(input: "str | os.PathLike[str] | IO[bytes]", dest: "str | os.PathLike[str] | Store",
              *, concurrency: int = DEFAULT_CONCURRENCY, sockets: int = 1,
              shard: "Shard | str" = ALL, url: Optional[str] = None,
              api_key: Optional[str] = None, emulator: bool = False,
              voice: Optional[Voice] = None, model_id: Optional[str] = None,
              output_format: "AudioFormat | dict[str, Any] | None" = None,
              language: Optional[str] = None, retries: int = 3,
              rate_limit_retries: int = 20, timeout: float = 60.0, resume: bool = True,
              with_words: bool = False, progress: "bool | str | Progress" = True,
              input_format_name: Optional[str] = None, part_rows: int = 1000,
              part_seconds: float = 30.0, stop: Optional[asyncio.Event] = None,
              stop_timeout: float = 15.0, backoff: float = 0.5, max_backoff: float = 30.0,
              client_options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Synthesize every row of ``input`` into ``dest``; the summary (a dict).

    ``input``: JSONL, CSV or Parquet (:func:`read_rows`; ``input_format_name`` when the
    name does not say). ``dest``: a directory, ``s3://bucket/prefix``, or a
    :class:`Store`. One context per row; each text of the row one flush segment, stored
    as ``audio/{safe id}/{flush}.wav`` create-only; the row's manifest rows are published
    once all its files are stored; bad rows and rows that kept failing go to ``errors/``.

    Server: ``url`` and ``api_key`` as :func:`flushsink.connect` (``url=None``: Cartesia,
    with ``api_key`` or ``CARTESIA_API_KEY``); ``emulator=True``: flushsink's emulator,
    started here on 127.0.0.1 (synthetic audio, for trying a job out).

    Defaults of rows that give none: ``voice`` (:data:`DEFAULT_VOICE`), ``model_id``
    (``sonic-latest``), ``output_format`` (an :class:`AudioFormat` or Cartesia's dict;
    pcm_s16le 44.1 kHz), ``language``.

    Flow control: at most ``concurrency`` contexts at once (default 4) over ``sockets``
    connections, cut on 429s and grown back (:class:`Concurrency`); ``retries`` and
    ``rate_limit_retries`` per row (:class:`Synthesizer`); ``timeout``: longest silence
    of a context.

    ``shard``: a :class:`Shard` or ``"i/N"``: only the rows of that shard. ``resume``
    (default): skip rows in the manifest, reconcile stored audio without manifest rows;
    False: :class:`DestinationNotEmpty` unless ``dest`` is empty. ``with_words``: word
    timestamps in the manifest. ``part_rows``/``part_seconds``: how often a manifest part
    is published. ``progress``: True (tqdm on a terminal if installed, else a plain
    line), ``"plain"``, ``"tqdm"``, False, or a :class:`Progress`.

    Stopping: set ``stop`` (an :class:`asyncio.Event`) to stop taking rows; rows in
    flight get ``stop_timeout`` seconds to finish, then are cancelled (their stored audio
    is reconciled by the next run). Cancelling the task stops at once. Either way the
    rows done are published before ``run`` returns or raises.

    Raises :class:`~flushsink.batch.errors.InputError`, ``OSError`` (the input),
    :class:`DestinationNotEmpty`, :class:`JobFailed` (no row can succeed: a refused key),
    :class:`~flushsink.errors.ConfigError`, :class:`~flushsink.batch.errors.StoreError`.
    """
    if isinstance(shard, str):
        shard = Shard.parse(shard)
    defaults = row_defaults(voice, model_id, output_format, language)
    fmt_default = defaults["output_format"]
    for name, value in (("part_rows", part_rows),):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, not {value!r}")
    if emulator:
        if url is not None or api_key is not None:
            raise ConfigError("emulator=True is the embedded emulator: no url or api_key")
        from ..emulator import Emulator

        async with Emulator(record_messages=False) as emu:
            return await run(input, dest, concurrency=concurrency, sockets=sockets,
                             shard=shard, url=emu.url, voice=voice, model_id=model_id,
                             output_format=fmt_default, language=language, retries=retries,
                             rate_limit_retries=rate_limit_retries, timeout=timeout,
                             resume=resume, with_words=with_words, progress=progress,
                             input_format_name=input_format_name, part_rows=part_rows,
                             part_seconds=part_seconds, stop=stop, stop_timeout=stop_timeout,
                             backoff=backoff, max_backoff=max_backoff,
                             client_options=client_options)
    store = dest if isinstance(dest, Store) else open_store(dest)
    input_format_name, source_name, rows = open_input(input, input_format_name, shard)
    synthesizer = Synthesizer(url=url, api_key=api_key, concurrency=concurrency,
                              sockets=sockets, retries=retries,
                              rate_limit_retries=rate_limit_retries, timeout=timeout,
                              with_words=with_words, backoff=backoff, max_backoff=max_backoff,
                              client_options=client_options)
    job = _Job(store, rows, synthesizer, shard=shard, source=source_name, resume=resume,
               defaults=defaults,
               with_words=with_words, part_rows=part_rows, part_seconds=part_seconds,
               stop=stop if stop is not None else asyncio.Event(), stop_timeout=stop_timeout)
    if isinstance(progress, Progress):
        display: Optional[Progress] = progress
    else:
        display = make_progress(progress)
    job.progress = display
    try:
        async with synthesizer:
            stats = await job.run(count=(lambda: _count_rows(input, input_format_name, shard))
                                  if display is not None and source_name is not None else None)
    finally:
        if display is not None:
            display.close()
    totals = await asyncio.to_thread(summarize, store)
    summary = {**totals, "destination": store.url, "job": stats.as_dict()}
    if stats.complete:
        await asyncio.to_thread(write_summary, store, summary)
    return summary


class _Job:
    def __init__(self, store: Store, rows: Any, synthesizer: Synthesizer, *, shard: Shard,
                 source: Optional[str], resume: bool, defaults: dict[str, Any],
                 with_words: bool, part_rows: int, part_seconds: float, stop: asyncio.Event,
                 stop_timeout: float) -> None:
        self.store = store
        self.rows = rows
        self.synth = synthesizer
        self.shard = shard
        self.source = source
        self.resume = resume
        self.defaults = defaults
        self.with_words = with_words
        self.part_rows = part_rows
        self.part_seconds = part_seconds
        self.stop = stop
        self.stop_timeout = stop_timeout
        self.progress: Optional[Progress] = None
        self.stats = JobStats(shard=str(shard), concurrency_max=synthesizer.concurrency.maximum)
        self.done_before = 0
        self.fatal: Optional[BaseException] = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()  # a row task ended: the reader may start another
        self._started = time.monotonic()

    def _show(self, force: bool = False) -> None:
        if self.progress is None:
            return
        s = self.stats
        self.progress.update(done=self.done_before + s.rows_stored + s.rows_reconciled,
                             failed=s.rows_failed, audio_seconds=s.audio_seconds,
                             concurrency=self.synth.concurrency.limit, force=force)

    async def run(self, count: Any = None) -> JobStats:
        store, stats = self.store, self.stats
        if self.resume:
            state = await asyncio.to_thread(resume_state, store, self.shard)
        else:
            if await _has_objects(store):
                raise DestinationNotEmpty(
                    f"{store.url} is not empty: resume (the default) finishes the job that "
                    "is there; give an empty destination to start another")
            state = ResumeState()
        self.done_before = len(state.done)
        self.manifest = _Parts(await asyncio.to_thread(
            PartWriter, store, MANIFEST_DIR, self.shard, every_rows=self.part_rows,
            every_seconds=self.part_seconds))
        self.errors = _Parts(await asyncio.to_thread(
            PartWriter, store, ERRORS_DIR, self.shard, every_rows=self.part_rows,
            every_seconds=self.part_seconds))
        counter: Optional[asyncio.Task[int]] = None
        if count is not None and self.progress is not None:
            counter = asyncio.create_task(asyncio.to_thread(count))
            progress = self.progress
            counter.add_done_callback(
                lambda t: progress.set_total(t.result(), self.done_before)
                if not t.cancelled() and t.exception() is None else None)
        ticker = asyncio.create_task(self._tick())
        try:
            await self._feed(state)
            await self._drain()
        finally:
            ticker.cancel()
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            if counter is not None:
                counter.cancel()
            # what is done is published, however the run ends
            await asyncio.shield(self._publish_all())
            synth = self.synth
            stats.rate_limited = dict(synth.rate_limited)
            stats.retries = synth.retried
            stats.concurrency_final = synth.concurrency.limit
            stats.concurrency_lowest = synth.concurrency.lowest
            stats.concurrency_cuts = synth.concurrency.cuts
            stats.elapsed = round(time.monotonic() - self._started, 3)
            stats.audio_seconds = round(stats.audio_seconds, 6)
            self._show(force=True)
        if self.fatal is not None:
            raise self.fatal
        stats.stopped = self.stop.is_set()
        stats.complete = not stats.stopped
        return stats

    async def _publish_all(self) -> None:
        await self.manifest.close()
        await self.errors.close()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self.manifest.publish_due()
            await self.errors.publish_due()
            self._show()

    async def _feed(self, state: ResumeState) -> None:
        rows = iter(self.rows)
        while not self.stop.is_set() and self.fatal is None:
            item = next(rows, None)
            if item is None:
                return
            if isinstance(item, BadRow):
                if item.index not in state.reported:
                    self.stats.bad_rows += 1
                    await self.errors.add([item.record(self.source)])
                continue
            if state.is_done(item):
                self.stats.rows_skipped += 1
                continue
            row = item.with_defaults(**self.defaults)
            if safe_id(row.id) in state.orphans:
                records = await asyncio.to_thread(reconcile, self.store, row, state,
                                                  with_words=self.with_words)
                if records is not None:
                    await self.manifest.add(records)
                    self.stats.rows_reconciled += 1
                    continue
            # the reader waits for a slot (a row waiting out a backoff holds one too), so
            # rows are read no faster than they are done
            await self._wait_for_slot()
            if self.stop.is_set() or self.fatal is not None:
                return
            task = asyncio.create_task(self._row(row))
            self._tasks.add(task)
            task.add_done_callback(self._ended)
            await asyncio.sleep(0)  # let the row start before the next one is read

    def _ended(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        self._room.set()

    async def _wait_or_stop(self, event: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self.stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _wait_for_slot(self) -> None:
        concurrency = self.synth.concurrency
        while (len(self._tasks) >= concurrency.allowed and not self.stop.is_set()
               and self.fatal is None):
            self._room.clear()
            await self._wait_or_stop(self._room)

    async def _row(self, row: Row) -> None:
        try:
            records = await self.synth.synthesize(row, self.store)
        except RowFailure as failure:
            self.stats.rows_failed += 1
            await self.errors.add([failure_record(row, failure.reason,
                                                  attempts=failure.attempts)])
            if self.progress is not None:
                self.progress.message(f"row {row.id!r} failed after {failure.attempts} "
                                      f"attempt{'s' * (failure.attempts != 1)}: "
                                      f"{failure.reason}")
            return
        except JobFailed as exc:
            if self.fatal is None:
                self.fatal = exc
            self.stop.set()
            return
        await self.manifest.add(records)
        self.stats.rows_stored += 1
        self.stats.audio_seconds += sum(float(r["duration"]) for r in records)
        self._show()

    async def _drain(self) -> None:
        """Wait for the rows in flight: all of them at the end, or ``stop_timeout``
        seconds after a stop (the rest are cancelled by :meth:`run`)."""
        if not self._tasks:
            return
        if not self.stop.is_set():
            stopper = asyncio.ensure_future(self.stop.wait())
            try:
                while self._tasks and not self.stop.is_set():
                    await asyncio.wait({*self._tasks, stopper},
                                       return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopper.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.stop_timeout)
