"""The batch job on a Ray cluster (``flushsink[ray]``, ``flushsink batch ... --ray``).

The same job as :func:`flushsink.batch.run`, the same destination layout and the same
guarantees, with the synthesis spread over Ray actors:

- The driver (this process) reads and checks the rows (:func:`read_rows`: bad rows,
  duplicate ids, the shard), skips what the manifest has, reconciles stored audio that no
  manifest row names (:func:`resume_state`, :func:`reconcile`), and hands the rest to Ray
  Data as a dataset of rows, a window of ``window_rows`` at a time.
- ``map_batches`` runs an async callable class on a pool of ``num_actors`` actors. Each
  holds one :class:`Synthesizer` (its sockets and its AIMD concurrency limit, kept from
  batch to batch) and stores every flush of a batch's rows create-only in the
  destination, then returns the rows' manifest records (or their failures).
- The driver publishes those records as manifest parts (one :class:`PartWriter` under the
  job's shard label), and failures as errors parts; ``summary.json`` at the end.

Why the driver publishes the manifest, not the actors: Ray retries a task whose actor
died (Ray Data restarts the actors of a pool and retries their tasks), and an actor that
died after publishing a part but before its task returned would publish the same rows a
second time. Audio is safe under a retry (create-only: the second attempt keeps the
stored bytes), a manifest part is not; the records of a task reach the driver once, so
they are published once. The records are small (about 400 bytes a file), so the driver is
no bottleneck; and a driver killed between a store and a publish leaves audio that the
next run reconciles, as a killed ``flushsink batch`` does.

Resume is the manifest's and the audio listing's, not Ray's checkpointing: the
destination already says exactly what is done (a manifest row per stored file), the same
for a run on Ray, on one process or on ``--shard`` processes, so any of them finishes
what another began; a checkpoint of Ray Data's would be a second record of the same
thing, that could disagree with the first.

``import flushsink.batch`` does not import this module, and this module imports ray only
when :func:`run` is called.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import IO, Any, Iterable, Iterator, Optional

from ..errors import ConfigError
from ..formats import AudioFormat
from .errors import MissingDependency
from .ids import ALL, Shard, safe_id
from .job import (
    DEFAULT_CONCURRENCY,
    DestinationNotEmpty,
    JobFailed,
    JobStats,
    RowFailure,
    Synthesizer,
    _count_rows,
    open_input,
    row_defaults,
)
from .manifest import (
    ERRORS_DIR,
    MANIFEST_DIR,
    PartWriter,
    ResumeState,
    failure_record,
    reconcile,
    resume_state,
    summarize,
    write_summary,
)
from .progress import Progress, make_progress
from .rows import BadRow, Row, Voice
from .stores import LocalStore, Store, open_store

__all__ = ["run", "DEFAULT_BATCH_SIZE", "DEFAULT_WINDOW_ROWS"]

#: Rows per ``map_batches`` batch: one ``synthesize_many`` call. Ray Data runs up to 4
#: batches of an actor's task at once on the actor's event loop, so an actor has up to
#: 4 x this many rows waiting for its contexts: small enough that a retried task redoes
#: little, big enough that the concurrency limit, not the batching, sets the pace.
DEFAULT_BATCH_SIZE = 16
#: Rows the driver hands Ray Data at once (one dataset each): the driver holds a window's
#: rows in memory, and the actor pool is started again for each window.
DEFAULT_WINDOW_ROWS = 50_000


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the data extra has no ray.data)
    except ImportError:
        raise MissingDependency("the Ray runner needs ray with Ray Data: pip install "
                                "'flushsink[ray]'") from None
    return ray


# --- rows to and from the dataset ------------------------------------------------------------
# One string column each way: a row's voice may be an id or an object, its format a dict or
# nothing, which Arrow cannot hold in one typed column; JSON text it can.

def _encode_row(row: Row) -> str:
    return json.dumps({
        "id": row.id, "texts": list(row.texts), "index": row.index, "line": row.line,
        "voice": row.voice, "model_id": row.model_id, "language": row.language,
        "output_format": None if row.output_format is None else row.output_format.to_output_format(),
    }, ensure_ascii=False, separators=(",", ":"))


def _decode_row(text: str) -> Row:
    item = json.loads(text)
    fmt = item["output_format"]
    return Row(item["id"], tuple(item["texts"]), item["index"], item["line"],
               voice=item["voice"], model_id=item["model_id"],
               output_format=None if fmt is None else AudioFormat.from_output_format(fmt),
               language=item["language"])


class _SynthesizeRows:
    """The actor of ``map_batches``: one :class:`Synthesizer` for the actor's life, made
    on the event loop Ray Data runs the async ``__call__`` on (the first call), since its
    sockets and its concurrency limit belong to that loop. Returns one JSON result per
    row: ``{"id", "records"}`` or ``{"id", "failure", "attempts"}``, and on the batch's
    first row the actor's counters (``"actor"``), which the driver sums."""

    def __init__(self, dest: str, options: dict[str, Any]) -> None:
        self.dest = dest
        self.options = options
        self.name = uuid.uuid4().hex[:12]
        self.synth: Optional[Synthesizer] = None
        self.store: Optional[Store] = None
        self.reported = {"context": 0, "handshake": 0, "retries": 0}

    async def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        if self.synth is None:
            self.store = open_store(self.dest)
            self.synth = Synthesizer(**self.options)
        assert self.store is not None
        rows = [_decode_row(str(text)) for text in batch["row"]]
        out: list[str] = []
        try:
            results = await self.synth.synthesize_many(rows, self.store)
        except JobFailed as exc:  # no row can succeed (a refused key): the driver stops
            results = None
            out = [json.dumps({"id": row.id, "fatal": str(exc)}) for row in rows]
        if results is not None:
            for result in results:
                if result.records is not None:
                    out.append(json.dumps({"id": result.row.id, "records": result.records},
                                          ensure_ascii=False, allow_nan=False))
                else:
                    failure = result.failure or RowFailure("no result")
                    out.append(json.dumps({"id": result.row.id, "failure": failure.reason,
                                           "attempts": failure.attempts,
                                           "index": result.row.index, "line": result.row.line},
                                          ensure_ascii=False))
        synth = self.synth
        counters = {"context": synth.rate_limited["context"],
                    "handshake": synth.rate_limited["handshake"], "retries": synth.retried}
        delta = {key: counters[key] - self.reported[key] for key in counters}
        self.reported = counters
        if out:
            first = json.loads(out[0])
            first["actor"] = {"name": self.name, **delta,
                              "limit": synth.concurrency.limit,
                              "lowest": synth.concurrency.lowest,
                              "cuts": synth.concurrency.cuts}
            out[0] = json.dumps(first, ensure_ascii=False, allow_nan=False)
        return {"result": np.array(out, dtype=object)}


# --- the driver ------------------------------------------------------------------------------

def run(input: "str | os.PathLike[str] | IO[bytes]", dest: "str | os.PathLike[str] | Store",
        *, address: Optional[str] = None, num_actors: int = 2,
        concurrency_per_actor: int = DEFAULT_CONCURRENCY, sockets_per_actor: int = 1,
        actor_cpus: float = 0.5, batch_size: int = DEFAULT_BATCH_SIZE,
        window_rows: int = DEFAULT_WINDOW_ROWS, shard: "Shard | str" = ALL,
        url: Optional[str] = None, api_key: Optional[str] = None, emulator: bool = False,
        voice: Optional[Voice] = None, model_id: Optional[str] = None,
        output_format: "AudioFormat | dict[str, Any] | None" = None,
        language: Optional[str] = None, retries: int = 3, rate_limit_retries: int = 20,
        timeout: float = 60.0, resume: bool = True, with_words: bool = False,
        progress: "bool | str | Progress" = False, input_format_name: Optional[str] = None,
        part_rows: int = 1000, part_seconds: float = 30.0, backoff: float = 0.5,
        max_backoff: float = 30.0, client_options: Optional[dict[str, Any]] = None,
        init_options: Optional[dict[str, Any]] = None,
        ray_remote_args: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """:func:`flushsink.batch.run` on a Ray cluster; the summary (a dict). Blocking (a
    Ray driver), not a coroutine.

    Ray: when Ray is not initialized yet, ``ray.init(address, **init_options)`` (``None``:
    ``RAY_ADDRESS``, else a new local cluster; ``"auto"``: the running one), shut down at
    the end; when it is, the caller's cluster is used and left running. ``num_actors``
    actors, each with ``actor_cpus`` CPUs (synthesis waits on the network: half a CPU by
    default), ``concurrency_per_actor`` contexts at most (AIMD on 429s, per actor: the
    account's limit is shared, so keep ``num_actors * concurrency_per_actor`` inside it)
    over ``sockets_per_actor`` connections; ``batch_size`` rows per ``map_batches`` call,
    ``window_rows`` rows per dataset. ``ray_remote_args``: more of ``map_batches``'s
    (a ``runtime_env`` with the AWS variables for an S3 destination on a remote cluster).

    ``dest``: a directory or ``s3://bucket/prefix`` that every actor can reach (a
    directory on a shared file system, on a cluster of more than one machine), or a
    :class:`LocalStore`/:class:`~flushsink.batch.stores.S3Store` (the actors open their
    own from its ``url``; an S3 store takes its settings from the AWS environment
    variables there). ``emulator=True``: flushsink's emulator in a thread of this process
    on 127.0.0.1, so for a cluster on this machine only.

    The rest as :func:`flushsink.batch.run`: the summary's ``job`` has the same counters
    (``concurrency_*`` summed over the actors, ``concurrency_lowest`` the lowest of one
    actor) and ``ray``: actors, batch size, windows.

    Raises what :func:`flushsink.batch.run` raises, and
    :class:`~flushsink.batch.errors.MissingDependency` without ray. A ``KeyboardInterrupt``
    (Ctrl-C) stops the job: what came back is published first, the rest is left for the
    next run.
    """
    if isinstance(shard, str):
        shard = Shard.parse(shard)
    for name, value in (("num_actors", num_actors), ("concurrency_per_actor", concurrency_per_actor),
                        ("sockets_per_actor", sockets_per_actor), ("batch_size", batch_size),
                        ("window_rows", window_rows), ("part_rows", part_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, not {value!r}")
    if not (isinstance(actor_cpus, (int, float)) and actor_cpus > 0):
        raise ConfigError(f"actor_cpus must be > 0, not {actor_cpus!r}")
    defaults = row_defaults(voice, model_id, output_format, language)
    fmt_default = defaults["output_format"]
    if emulator:
        if url is not None or api_key is not None:
            raise ConfigError("emulator=True is the embedded emulator: no url or api_key")
        from ..emulator import Emulator

        emu = Emulator(record_messages=False)
        with emu.running_in_thread():
            return run(input, dest, address=address, num_actors=num_actors,
                       concurrency_per_actor=concurrency_per_actor,
                       sockets_per_actor=sockets_per_actor, actor_cpus=actor_cpus,
                       batch_size=batch_size, window_rows=window_rows, shard=shard,
                       url=emu.url, voice=voice, model_id=model_id, output_format=fmt_default,
                       language=language, retries=retries,
                       rate_limit_retries=rate_limit_retries, timeout=timeout, resume=resume,
                       with_words=with_words, progress=progress,
                       input_format_name=input_format_name, part_rows=part_rows,
                       part_seconds=part_seconds, backoff=backoff, max_backoff=max_backoff,
                       client_options=client_options, init_options=init_options,
                       ray_remote_args=ray_remote_args)
    ray = _ray()
    store = dest if isinstance(dest, Store) else open_store(dest)
    store_url = store.root if isinstance(store, LocalStore) else store.url
    if url is None and api_key is None:
        # the actors may not share this process's environment: the key goes with them
        api_key = os.environ.get("CARTESIA_API_KEY")
    input_format_name, source_name, rows = open_input(input, input_format_name, shard)
    synth_options: dict[str, Any] = {"url": url, "api_key": api_key,
                                     "concurrency": concurrency_per_actor,
                                     "sockets": sockets_per_actor, "retries": retries,
                                     "rate_limit_retries": rate_limit_retries,
                                     "timeout": timeout, "with_words": with_words,
                                     "backoff": backoff, "max_backoff": max_backoff,
                                     "client_options": client_options}
    Synthesizer(**synth_options)  # the options are checked here, not in an actor
    started_ray = False
    if not ray.is_initialized():
        ray.init(address=address, **(init_options or {}))
        started_ray = True
    display = progress if isinstance(progress, Progress) else make_progress(progress)
    driver = _Driver(ray, store, store_url, shard=shard, source=source_name, resume=resume,
                     defaults=defaults, with_words=with_words, part_rows=part_rows,
                     part_seconds=part_seconds, num_actors=num_actors, actor_cpus=actor_cpus,
                     batch_size=batch_size, window_rows=window_rows,
                     synth_options=synth_options, remote_args=ray_remote_args or {},
                     concurrency_max=num_actors * concurrency_per_actor, progress=display)
    try:
        stats = driver.run(rows, count=(lambda: _count_rows(input, input_format_name, shard))
                           if display is not None and source_name is not None else None)
    finally:
        if display is not None:
            display.close()
        if started_ray:
            ray.shutdown()
    totals = summarize(store)
    summary = {**totals, "destination": store.url, "job": stats.as_dict(),
               "ray": driver.ray_info()}
    if stats.complete:
        write_summary(store, summary)
    return summary


class _Driver:
    def __init__(self, ray: Any, store: Store, store_url: str, *, shard: Shard,
                 source: Optional[str], resume: bool, defaults: dict[str, Any],
                 with_words: bool, part_rows: int, part_seconds: float, num_actors: int,
                 actor_cpus: float, batch_size: int, window_rows: int,
                 synth_options: dict[str, Any], remote_args: dict[str, Any],
                 concurrency_max: int, progress: Optional[Progress]) -> None:
        self.ray = ray
        self.store = store
        self.store_url = store_url
        self.shard = shard
        self.source = source
        self.resume = resume
        self.defaults = defaults
        self.with_words = with_words
        self.part_rows = part_rows
        self.part_seconds = part_seconds
        self.num_actors = num_actors
        self.actor_cpus = actor_cpus
        self.batch_size = batch_size
        self.window_rows = window_rows
        self.synth_options = synth_options
        self.remote_args = remote_args
        self.progress = progress
        self.stats = JobStats(shard=str(shard), concurrency_max=concurrency_max)
        self.stats.concurrency_final = float(concurrency_max)
        self.stats.concurrency_lowest = float(synth_options["concurrency"])  # one actor's
        self.actors: dict[str, dict[str, Any]] = {}
        self.windows = 0
        self.done_before = 0
        self._started = time.monotonic()

    def ray_info(self) -> dict[str, Any]:
        return {"num_actors": self.num_actors, "actors_seen": len(self.actors),
                "batch_size": self.batch_size, "windows": self.windows,
                "actor_cpus": self.actor_cpus}

    def _show(self, force: bool = False) -> None:
        if self.progress is None:
            return
        s = self.stats
        self.progress.update(done=self.done_before + s.rows_stored + s.rows_reconciled,
                             failed=s.rows_failed, audio_seconds=s.audio_seconds,
                             concurrency=s.concurrency_final, force=force)

    def run(self, rows: Iterable["Row | BadRow"], count: Any = None) -> JobStats:
        store, stats = self.store, self.stats
        if self.resume:
            state = resume_state(store, self.shard)
        else:
            if next(iter(store.list("")), None) is not None:
                raise DestinationNotEmpty(
                    f"{store.url} is not empty: resume (the default) finishes the job that "
                    "is there; give an empty destination to start another")
            state = ResumeState()
        self.done_before = len(state.done)
        if count is not None and self.progress is not None:
            self.progress.set_total(count(), self.done_before)
        self.manifest = PartWriter(store, MANIFEST_DIR, self.shard, every_rows=self.part_rows,
                                   every_seconds=self.part_seconds)
        self.errors = PartWriter(store, ERRORS_DIR, self.shard, every_rows=self.part_rows,
                                 every_seconds=self.part_seconds)
        finished = False
        try:
            for window in self._windows(rows, state):
                self.windows += 1
                self._synthesize(window)
            finished = True
        finally:
            # what came back is published, however the run ends
            self.manifest.close()
            self.errors.close()
            stats.elapsed = round(time.monotonic() - self._started, 3)
            stats.audio_seconds = round(stats.audio_seconds, 6)
            self._show(force=True)
        stats.stopped = not finished
        stats.complete = finished
        return stats

    def _windows(self, rows: Iterable["Row | BadRow"], state: ResumeState) -> Iterator[list[str]]:
        """The rows to synthesize, encoded, ``window_rows`` at a time; bad rows reported,
        done rows skipped, orphans reconciled on the way."""
        window: list[str] = []
        for item in rows:
            if isinstance(item, BadRow):
                if item.index not in state.reported:
                    self.stats.bad_rows += 1
                    self.errors.add([item.record(self.source)])
                continue
            if state.is_done(item):
                self.stats.rows_skipped += 1
                continue
            row = item.with_defaults(**self.defaults)
            if safe_id(row.id) in state.orphans:
                records = reconcile(self.store, row, state, with_words=self.with_words)
                if records is not None:
                    self.manifest.add(records)
                    self.stats.rows_reconciled += 1
                    self._show()
                    continue
            window.append(_encode_row(row))
            if len(window) >= self.window_rows:
                yield window
                window = []
        if window:
            yield window

    def _synthesize(self, window: list[str]) -> None:
        ray = self.ray
        per_block = self.batch_size * 4
        blocks = max(1, min(len(window), -(-len(window) // per_block)))
        dataset = ray.data.from_items([{"row": text} for text in window],
                                      override_num_blocks=blocks)
        remote_args = {"num_cpus": self.actor_cpus, **self.remote_args}
        results = dataset.map_batches(
            _SynthesizeRows, batch_size=self.batch_size, batch_format="numpy",
            fn_constructor_kwargs={"dest": self.store_url, "options": self.synth_options},
            compute=ray.data.ActorPoolStrategy(size=self.num_actors), **remote_args)
        fatal: Optional[str] = None
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["result"]:
                fatal = self._take(json.loads(str(text))) or fatal
            self.manifest.publish_due()
            self.errors.publish_due()
            self._show()
            if fatal is not None:
                raise JobFailed(fatal)

    def _take(self, result: dict[str, Any]) -> Optional[str]:
        """Publish one row's result; the reason when no row can succeed."""
        actor = result.get("actor")
        if actor is not None:
            self._count(actor)
        if "fatal" in result:
            return str(result["fatal"])
        if "records" in result:
            records = result["records"]
            self.manifest.add(records)
            self.stats.rows_stored += 1
            self.stats.audio_seconds += sum(float(r["duration"]) for r in records)
            return None
        row = Row(result["id"], (), int(result["index"]), result.get("line"))
        self.stats.rows_failed += 1
        self.errors.add([failure_record(row, str(result["failure"]),
                                        attempts=int(result.get("attempts", 1)))])
        if self.progress is not None:
            self.progress.message(f"row {row.id!r} failed: {result['failure']}")
        return None

    def _count(self, actor: dict[str, Any]) -> None:
        stats = self.stats
        stats.rate_limited["context"] += int(actor["context"])
        stats.rate_limited["handshake"] += int(actor["handshake"])
        stats.retries += int(actor["retries"])
        self.actors[str(actor["name"])] = actor
        # the latest of each actor seen (actors of earlier windows are gone: the newest
        # num_actors stand for the pool)
        latest = list(self.actors.values())[-self.num_actors:]
        stats.concurrency_final = round(sum(float(a["limit"]) for a in latest), 3)
        stats.concurrency_lowest = min(stats.concurrency_lowest,
                                       min(float(a["lowest"]) for a in self.actors.values()))
        stats.concurrency_cuts = sum(int(a["cuts"]) for a in self.actors.values())
