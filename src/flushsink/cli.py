"""The ``flushsink`` command: say, batch, serve, demo, bench.

``say`` speaks with Cartesia (``--api-key`` or ``CARTESIA_API_KEY``), with a server at
``--url``, or with the embedded emulator on 127.0.0.1 when asked (``--emulator``); never with
the emulator silently: without a key, a URL or ``--emulator`` it refuses, in one line that
names the ways out. ``demo`` runs on the embedded emulator (a key in the environment does
not change that; ``--url`` or ``--api-key`` does) and says so.

Whatever goes wrong is told in one line on stderr, ``flushsink: ...``, never a traceback
(a failed write: one line per segment, and the run goes on). The exit status:

- 0: every segment arrived complete and was written (``say``, ``demo``), or ``serve``
  was stopped by SIGINT or SIGTERM;
- 1: the run failed: a segment incomplete or not written, the connection refused or
  lost, the server's error, a port in use...;
- 2: an argument that makes no sense (nothing was started);
- 128 + N: ``say`` or ``demo`` stopped by signal N (130: Ctrl-C, 143: SIGTERM), after
  writing the audio received so far (``NAME.partial.wav``) and listing the files;
  141 (SIGPIPE's) when ``say --stdout``'s reader closed standard output.

``say --stdout`` writes the raw audio to standard output as each chunk arrives, and
everything else (progress, the table, the summary) to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import math
import os
import platform
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import (Any, AsyncIterator, Callable, Iterator, NamedTuple, NoReturn, Optional,
                    Sequence)

from . import __version__
from ._accel import BACKEND, SIMD
from ._accel import Sink
from .client import Context, connect
from ._connection import Retry
from .errors import (AuthenticationError, ConfigError, ContextRateLimited, FlushsinkError,
                     HandshakeError, RateLimited, WriteError)
from .formats import DEFAULT_FORMAT, ENCODINGS, SAMPLE_RATES
from .session import normalize_url
from .writers import FileWriter

DEMO_VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"  # the voice of Cartesia's seed example

#: The exit status after a run that failed, and after an argument that makes no sense.
FAILED, USAGE = 1, 2
_SIGPIPE = 13  # signal.SIGPIPE, which Windows lacks


def version_text() -> str:
    return (f"flushsink {__version__} (core: {BACKEND}, simd: {SIMD}, "
            f"loop: {'uvloop' if _uvloop() is not None else 'asyncio'}, "
            f"Python {platform.python_version()} {platform.python_implementation()})")


class _VersionAction(argparse.Action):
    """--version as one line, whatever the terminal's width (argparse's own version
    action wraps its text to it)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> None:
        print(version_text())
        parser.exit()


class _Failure(Exception):
    """The command cannot go on: ``message`` is its one line, ``status`` its exit status."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


# --- the run's stderr ----------------------------------------------------------------------

class _Console:
    """The run's stderr: a line per problem, and a progress line. On a terminal the
    progress line is redrawn in place; elsewhere (a log file, a pipe) only its last state
    is printed, once, at the end, so logs do not fill with carriage returns."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.live = bool(self.stream.isatty())
        except (AttributeError, ValueError):  # no isatty, or already closed
            self.live = False
        self._progress = ""
        self._drawn = 0  # characters of the progress line on screen; 0: at a line start

    def say(self, text: str) -> None:
        """Print ``flushsink: text`` on a line of its own."""
        self._end_line()
        print(f"flushsink: {text}", file=self.stream, flush=True)

    def progress(self, text: str) -> None:
        self._progress = text
        if self.live:
            print("\r" + text.ljust(self._drawn), end="", file=self.stream, flush=True)
            self._drawn = len(text)

    def finish(self) -> None:
        """End the progress line (print it, where it was not drawn)."""
        if self.live:
            self._end_line()
        elif self._progress:
            print(self._progress, file=self.stream, flush=True)
        self._progress = ""

    def _end_line(self) -> None:
        if self._drawn:
            print(file=self.stream)
            self._drawn = 0


class _LibraryWarnings(logging.Handler):
    """The library's warnings (a rejected frame, a server error without a context...) as
    the command's one-line messages. A failed write is left out: the recorder reports it,
    once, when it happens."""

    def __init__(self, console: _Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if any(isinstance(arg, WriteError) for arg in args):
            return
        message = record.getMessage()
        if message.startswith("flushsink: "):
            message = message[len("flushsink: "):]
        if record.exc_info and record.exc_info[1] is not None:
            message += f": {record.exc_info[1]!r}"
        self.console.say(" ".join(message.split()))


@contextlib.contextmanager
def _library_warnings(console: _Console) -> Iterator[None]:
    logger = logging.getLogger("flushsink")
    handler = _LibraryWarnings(console)
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


# --- what became of each segment -----------------------------------------------------------

STDOUT = "-"  # a row's path when its audio went to standard output (say --stdout)


class _Row(NamedTuple):
    """One segment in the table: what it was and where it went (its audio is not kept)."""

    flush_id: Any
    duration: float
    samples: int
    complete: bool
    error: Optional[str]  # why it is incomplete
    path: Optional[str]  # None: not written; STDOUT: sent to standard output
    write_failed: bool

    @property
    def state(self) -> str:
        state = "complete" if self.complete else f"incomplete ({self.error})"
        if self.write_failed:
            return state + ", not written"
        if self.path is None:
            return state + ", empty: no file"
        return state

    @property
    def ok(self) -> bool:
        return self.complete and not self.write_failed


class _Recorder:
    """The writer ``say`` gives the client: it writes each segment with a FileWriter, notes
    what became of it, reports a failed write in one line at once (with the client, the
    WriteError then comes out of ``ctx.segments()``, where ``say`` goes on), and shows
    the progress of long runs. Without a FileWriter (``say --stdout``, whose audio went
    out chunk by chunk) it only notes the segments."""

    def __init__(self, writer: Optional[FileWriter], console: _Console, expected: int,
                 show_progress: bool) -> None:
        self.writer = writer
        self.console = console
        self.expected = expected
        self.show_progress = show_progress
        self.rows: list[_Row] = []
        self.connected = False  # the server accepted the connection
        #: Why the run stopped early, for its open segments (the client's own reason would
        #: be that it closed the connection): a signal, or standard output.
        self.stop_reason: Optional[str] = None
        self.bytes_out = 0  # say --stdout: the audio bytes standard output took
        self.first_audio_s: Optional[float] = None  # say --stdout's, when it finished
        self.started = time.perf_counter()

    def __call__(self, event: Any) -> Optional[str]:
        segment = getattr(event, "segment", None)
        if segment is None:
            return None
        if self.writer is None:
            self._note(segment, STDOUT, write_failed=False)
            return None
        try:
            path = self.writer(event)
        except WriteError as exc:
            self._note(segment, None, write_failed=True)
            self.console.say(" ".join(str(exc).split()))
            raise
        self._note(segment, path, write_failed=False)
        return path

    def stop(self, signum: int) -> None:
        """Called when a signal stops the run: said at once, as closing can take a while
        (up to the client's close timeout against a server that does not answer)."""
        name = signal.Signals(signum).name
        self.stop_reason = f"stopped by {name}"
        kept = "" if self.writer is None else ": the audio received is kept (.partial files)"
        self.console.say(f"stopping on {name}{kept}; a second signal stops at once")

    def _note(self, segment: Any, path: Optional[str], write_failed: bool) -> None:
        error = segment.error
        if self.stop_reason is not None and not segment.complete:
            error = self.stop_reason
        self.rows.append(_Row(segment.flush_id, segment.duration, segment.sample_count,
                              segment.complete, error, path, write_failed))
        if self.show_progress:
            audio = sum(row.duration for row in self.rows)
            self.console.progress(
                f"  {len(self.rows)}/{self.expected} segments, {audio:.1f} s of audio, "
                f"{time.perf_counter() - self.started:.1f} s")


def print_table(rows: Sequence[_Row], out: Any = None,
                first_audio_s: Optional[float] = None) -> None:
    """The segments as a table (when there are any), then a one-line summary (with the
    first audio's latency, when given)."""
    out = out if out is not None else sys.stdout
    lines = [("flush_id", "duration", "samples", "state", "path")]
    for row in rows:
        where = os.path.relpath(row.path) if row.path not in (None, STDOUT) else row.path
        lines.append((str(row.flush_id), f"{row.duration:.3f} s", str(row.samples), row.state,
                      where or "-"))
    if rows:
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        for line in lines:
            print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip(),
                  file=out)
    summary = (f"{len(rows)} segment{'' if len(rows) == 1 else 's'}, "
               f"{sum(row.duration for row in rows):.3f} s of audio")
    partial = sum(not row.complete and not row.write_failed for row in rows)
    failed = sum(row.write_failed for row in rows)
    problems = [f"{partial} partial"] * bool(partial) + [f"{failed} not written"] * bool(failed)
    if problems:
        summary += f" ({', '.join(problems)})"
    if first_audio_s is not None:
        summary += f", the first after {first_audio_s:.3f} s"
    print(summary, file=out)


# --- signals ---------------------------------------------------------------------------

class _StopOnSignals:
    """While inside, SIGINT and SIGTERM cancel the current task, so that what it holds is
    closed in order (the client finishes the open segments as incomplete and the writer
    writes them as ``.partial`` files) rather than the process dying (SIGTERM's default)
    or unwinding from wherever it happened to be (Ctrl-C). ``received`` is the first
    signal. A second one cancels again: the cleanup is cut short, as the user asked.

    A signal the process inherited as ignored (``nohup``, a background job of a
    non-interactive shell) stays ignored."""

    def __init__(self, on_stop: Optional[Callable[[int], None]] = None) -> None:
        self.received: Optional[int] = None
        self.on_stop = on_stop
        self._installed: list[int] = []

    def __enter__(self) -> "_StopOnSignals":
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue
            try:
                loop.add_signal_handler(signum, self._stop, task, signum)
            except (NotImplementedError, RuntimeError):  # Windows; not the main thread
                continue
            self._installed.append(signum)
        return self

    def _stop(self, task: "asyncio.Task[Any]", signum: int) -> None:
        if self.received is None:
            self.received = signum
            if self.on_stop is not None:
                self.on_stop(signum)
        task.cancel()

    def __exit__(self, *exc_info: Any) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)

    def stopped_us(self) -> bool:
        """Call in ``except CancelledError``: True (and the cancel is taken back) when
        the cancel came from a signal, which then ends the run like a normal return."""
        if self.received is None:
            return False
        task = asyncio.current_task()
        if task is not None and hasattr(task, "uncancel"):  # 3.11+: keep the count right
            task.uncancel()
        return True


# --- say and demo ----------------------------------------------------------------------

@contextlib.asynccontextmanager
async def _server(run: "_Run",
                  out: Any = None) -> AsyncIterator[tuple[Optional[str], Optional[str]]]:
    """The url and key to use: the embedded emulator (``run.emulator``), else Cartesia or
    --url, with --api-key or CARTESIA_API_KEY."""
    if not run.emulator:
        yield run.url, run.api_key or os.environ.get("CARTESIA_API_KEY") or None
        return
    from .emulator import Emulator

    async with Emulator() as emu:
        print(f"using the embedded emulator at {emu.ws_url}: its audio is a synthetic "
              "stand-in, not speech", file=out if out is not None else sys.stderr)
        yield emu.url, None


def _retry(retries: int) -> Optional[Retry]:
    """say's and demo's handshake retries (``--retries``, 3 by default): a 429 (its
    Retry-After up to 8 s), a 5xx or a network error is tried again up to that many times
    before the run fails."""
    return Retry(attempts=retries + 1) if retries else None


class _Run(NamedTuple):
    texts: Sequence[str]
    out_dir: str
    container: str
    encoding: str
    sample_rate: int
    model: str
    voice: str
    language: Optional[str]
    url: Optional[str]
    api_key: Optional[str]
    timeout: float
    to_stdout: bool = False
    emulator: bool = False  # the embedded emulator, not url / Cartesia
    retries: int = 3  # handshake retries (--retries)


async def _receive_all(ctx: Context) -> None:
    """Read the context to its end. After a failed write (already reported by the
    recorder) its WriteError comes out of ``segments()``: iterating again goes on."""
    while True:
        try:
            async for _ in ctx.segments():
                pass
            return
        except WriteError:
            continue


@contextlib.asynccontextmanager
async def _spoken(run: _Run, recorder: _Recorder, **options: Any) -> AsyncIterator[Context]:
    """Connect (the embedded emulator, --url or Cartesia), open one context, send the texts,
    one flush segment each, and yield the context to read. ``options``: more of
    ``connect``'s."""
    output_format = {"container": "raw", "encoding": run.encoding,
                     "sample_rate": run.sample_rate}
    async with _server(run) as (server_url, key):
        async with connect(server_url, key, writer=recorder, retry=_retry(run.retries),
                           receive_timeout=run.timeout, **options) as tts:
            await tts.connect()
            recorder.connected = True
            ctx = tts.context(model_id=run.model, voice=run.voice,
                              output_format=output_format, language=run.language)
            for i, text in enumerate(run.texts):
                await ctx.push(text)
                if i < len(run.texts) - 1:
                    await ctx.flush()
            await ctx.no_more_inputs()
            yield ctx


async def _synthesize(run: _Run, recorder: _Recorder) -> Optional[int]:
    """Speak the texts in one context, one flush segment each, into ``recorder``.
    Returns the signal that stopped the run, None when it ran to its end."""
    with _StopOnSignals(on_stop=recorder.stop) as signals:
        try:
            async with _spoken(run, recorder) as ctx:
                await _receive_all(ctx)
        except asyncio.CancelledError:
            if not signals.stopped_us():
                raise
        return signals.received


class _ReaderGone(Exception):
    """Standard output's reader closed it (a player quit, ``| head -c``)."""


class _StdoutWriter:
    """``say --stdout``'s audio, written to standard output by a thread of its own, so
    that a reader slower than the server (a player reading in real time) never blocks the
    event loop (and with it the connection's keepalive). At most ``window`` bytes wait for
    the thread; past that, :meth:`write` waits. The thread is a daemon: a reader that
    stops reading cannot keep the process from exiting."""

    def __init__(self, stream: Any, window: int = 1 << 20) -> None:
        self._stream = stream
        self._window = window
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queued = 0
        self._moved = asyncio.Event()  # the thread wrote (or failed): set on the loop
        self._error: Optional[OSError] = None
        self.bytes_written = 0
        threading.Thread(target=self._run, name="flushsink-stdout", daemon=True).start()

    async def write(self, data: Any, stall: float) -> None:
        """Queue ``data`` (bytes-like, held until written); waits while the window is
        full, for at most ``stall`` seconds without the reader taking anything."""
        while self._error is None and self._queued >= self._window:
            await self._wait(stall)
        self._check()
        self._queued += len(data)
        self._queue.put(data)

    async def drain(self, stall: float) -> None:
        """Wait until everything queued is written, with the same bound on a stall."""
        while self._error is None and self._queued:
            await self._wait(stall)
        self._check()

    def close(self) -> None:
        self._queue.put(None)

    async def _wait(self, stall: float) -> None:
        self._moved.clear()
        try:
            await asyncio.wait_for(self._moved.wait(), stall)
        except asyncio.TimeoutError:
            raise _Failure(f"standard output took no audio for {stall:g} s") from None

    def _check(self) -> None:
        if isinstance(self._error, BrokenPipeError):
            raise _ReaderGone()
        if self._error is not None:
            raise _Failure(f"cannot write to standard output: {_os_reason(self._error)}")

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            error = None
            if self._error is None:
                try:
                    self._stream.write(data)
                    self._stream.flush()  # each chunk goes out as it came
                except OSError as exc:
                    error = exc
            try:
                self._loop.call_soon_threadsafe(self._done, len(data), error)
            except RuntimeError:  # the loop is closed: the run is over
                return

    def _done(self, size: int, error: Optional[OSError]) -> None:
        self._queued -= size
        if error is not None and self._error is None:
            self._error = error
        if self._error is None:
            self.bytes_written += size
        self._moved.set()


async def _synthesize_to_stdout(run: _Run, recorder: _Recorder, out: Any) -> Optional[int]:
    """Speak the texts as ``_synthesize`` does, writing each chunk's audio to ``out`` (a
    binary stream) as it arrives. Returns the signal that stopped the run, if any."""
    console = recorder.console
    bytes_per_second = run.sample_rate * _sample_bytes(run.encoding)
    with _StopOnSignals(on_stop=recorder.stop) as signals:
        writer = _StdoutWriter(out)
        try:
            # the segments' audio goes out as chunks: the Sink keeps none of it
            sink = Sink(DEFAULT_FORMAT, stream=True, keep_audio=False)
            async with _spoken(run, recorder, sink=sink) as ctx:
                def show() -> None:
                    audio = writer.bytes_written / bytes_per_second
                    took = time.perf_counter() - recorder.started
                    console.progress(f"  {audio:.1f} s of audio to standard output, "
                                     f"{audio / took:.1f}x real time, {took:.1f} s")

                shown = 0.0
                try:
                    async for chunk in ctx.audio():
                        await writer.write(chunk.data, run.timeout)
                        if time.perf_counter() - shown >= 0.1:
                            shown = time.perf_counter()
                            show()
                    await writer.drain(run.timeout)
                except _ReaderGone:
                    recorder.stop_reason = "standard output closed by its reader"
                    raise
                except _Failure:
                    recorder.stop_reason = "standard output failed"
                    raise
                show()
                recorder.first_audio_s = ctx.first_audio_s
        except asyncio.CancelledError:
            if not signals.stopped_us():
                raise
        finally:
            writer.close()
            recorder.bytes_out = writer.bytes_written
        return signals.received


def _prepare_out_dir(path: str) -> None:
    """Create the output directory and a file in it, before anything is asked of the
    server: a run whose every file would fail would cost its time (and credits) for
    nothing. A directory that fails later fails its segments, one line each."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = ("it exists and is not a directory" if isinstance(exc, FileExistsError)
                  else _os_reason(exc))
        raise _Failure(f"cannot write to the output directory {path!r}: {reason}") from None


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror) or not exc.errno:
        return str(exc.strerror or exc)
    return os.strerror(exc.errno)  # not asyncio's "error while attempting to bind ... (...)"


def _failure_line(exc: BaseException) -> str:
    """What went wrong, in one line, with a hint where the fix is in the command line."""
    line = " ".join(str(exc).split())
    cause = exc.__cause__
    if line.endswith(":") and cause is not None:  # an OS error without words (ECONNRESET)
        line += f" {type(cause).__name__}"
    if isinstance(exc, AuthenticationError):
        line += " (check --api-key or CARTESIA_API_KEY)"
    elif isinstance(exc, ContextRateLimited):
        line += (" (the account's limit of concurrent contexts: wait for other runs to "
                 "finish, or raise the plan's limit)")
    elif isinstance(exc, RateLimited):
        line += " (too many open connections for the account, still after retrying)"
    elif isinstance(exc, HandshakeError) and exc.status == 404:
        line += " (Cartesia's path is /tts/websocket, which a URL without a path gets)"
    elif (isinstance(exc, HandshakeError) and "wss://" in line
          and isinstance(cause, ConnectionResetError)):  # a plain server hung up on TLS
        line += " (does the server speak TLS? wss:// needs it, ws:// is plain)"
    return line


def _uvloop() -> Any:
    """uvloop when it is installed (``pip install "flushsink[uvloop]"``) and
    ``FLUSHSINK_LOOP`` is not ``asyncio``, else None."""
    if os.environ.get("FLUSHSINK_LOOP", "").strip().lower() == "asyncio":
        return None
    try:
        return importlib.import_module("uvloop")
    except ImportError:
        return None


def _run_loop(main: Any) -> Any:
    """Run the command's coroutine on uvloop when there is one (an event-loop wake-up
    costs about half the CPU it does on asyncio's own loop), else on asyncio's. The CLI
    owns its loop, so it may choose; the library never swaps an application's."""
    uvloop = _uvloop()
    return uvloop.run(main) if uvloop is not None else asyncio.run(main)


def _speak(run: _Run) -> int:
    """Run ``say`` (or ``demo``): write the files (or standard output), print the table;
    the exit status."""
    console = _Console()
    if run.to_stdout:
        out = sys.stdout.buffer
        recorder = _Recorder(None, console, expected=len(run.texts), show_progress=False)
        synthesis = _synthesize_to_stdout(run, recorder, out)
        console.say(f"raw {run.encoding}, {run.sample_rate} Hz, mono to standard output "
                    f"(play it: ffplay -f {_FFMPEG_FORMATS[run.encoding]} -ar {run.sample_rate} "
                    "-nodisp -autoexit -)")
    else:
        _prepare_out_dir(run.out_dir)
        recorder = _Recorder(FileWriter(run.out_dir, container=run.container), console,
                             expected=len(run.texts), show_progress=len(run.texts) > 3)
        synthesis = _synthesize(run, recorder)
    failure: Optional[str] = None
    stopped_by: Optional[int] = None
    with _library_warnings(console):
        try:
            stopped_by = _run_loop(synthesis)
        except _ReaderGone:
            failure = "standard output was closed by its reader; stopped"
            stopped_by = _SIGPIPE
        except _Failure as exc:
            failure = str(exc)
        except (FlushsinkError, OSError) as exc:  # OSError: the embedded emulator's port
            failure = _failure_line(exc)
        finally:
            console.finish()
    rows = recorder.rows
    if run.to_stdout and recorder.stop_reason is not None:
        rows = _unwritten(rows, recorder.bytes_out, _sample_bytes(run.encoding),
                          recorder.stop_reason)
    if failure is not None:
        console.say(failure)
    if recorder.connected or rows:
        # with --stdout, standard output is the audio's: the table goes to stderr
        print_table(rows, out=sys.stderr if run.to_stdout else None,
                    first_audio_s=recorder.first_audio_s)
    if stopped_by is not None:
        return 128 + stopped_by
    return 0 if failure is None and all(row.ok for row in rows) else FAILED


def _sample_bytes(encoding: str) -> int:
    return 4 if encoding == "pcm_f32le" else 2 if encoding == "pcm_s16le" else 1


def _unwritten(rows: Sequence[_Row], written: int, width: int, reason: str) -> list[_Row]:
    """``say --stdout`` stopped early: the rows (in order, as their audio went out) whose
    audio did not all reach standard output are incomplete, for ``reason``, whatever the
    server sent (the Sink saw them whole; the reader did not)."""
    out, end = [], 0
    for row in rows:
        end += row.samples * width
        out.append(row if end <= written or not row.complete
                   else row._replace(complete=False, error=reason))
    return out


#: ffmpeg's name (``-f``) of each raw encoding, for the hint ``say --stdout`` prints.
_FFMPEG_FORMATS = {"pcm_s16le": "s16le", "pcm_f32le": "f32le", "pcm_mulaw": "mulaw",
                   "pcm_alaw": "alaw"}


def _check_target(args: argparse.Namespace) -> None:
    """say and batch speak with Cartesia (a key), a server at --url, or the embedded
    emulator when asked (--emulator, alone); never with the emulator silently."""
    if args.emulator:
        for option, value in (("--url", args.url), ("--api-key", args.api_key)):
            if value is not None:
                raise _Failure(f"--emulator is the embedded emulator: {option} does not go "
                               "with it", USAGE)
    elif args.url is None and not (args.api_key or os.environ.get("CARTESIA_API_KEY")):
        raise _Failure("no API key: set CARTESIA_API_KEY (or --api-key) to speak with "
                       "Cartesia, or add --emulator for the embedded emulator", USAGE)


def _cmd_say(args: argparse.Namespace) -> int:
    _check_target(args)
    if args.stdout:
        for option, value in (("--out", args.out), ("--container", args.container)):
            if value is not None:
                raise _Failure(f"--stdout writes raw audio to standard output: {option} does "
                               "not go with it", USAGE)
        if _is_terminal(sys.stdout):
            raise _Failure("--stdout writes binary audio: pipe it to a player (| ffplay -f "
                           f"{_FFMPEG_FORMATS[args.encoding]} -ar {args.sample_rate} -nodisp "
                           "-autoexit -) or redirect it to a file", USAGE)
    return _speak(_Run(args.text, args.out or "out", args.container or "wav", args.encoding,
                       args.sample_rate, args.model, args.voice, args.language, args.url,
                       args.api_key, args.timeout, to_stdout=args.stdout,
                       emulator=args.emulator, retries=args.retries))


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _cmd_demo(args: argparse.Namespace) -> int:
    print(f"{version_text()}\n"
          "Seed scenario: 'Stay hungry, ' then a flush, then 'stay foolish.' -> two WAV files",
          flush=True)
    return _speak(_Run(["Stay hungry, ", "stay foolish."], args.out, "wav", "pcm_s16le", 44100,
                       "sonic-latest", DEMO_VOICE, "en", args.url, args.api_key, args.timeout,
                       # (a CARTESIA_API_KEY in the environment does not send it to Cartesia)
                       emulator=args.url is None and args.api_key is None,
                       retries=args.retries))


# --- batch -----------------------------------------------------------------------------

class _StopGently:
    """``batch``'s signals: the first SIGINT or SIGTERM sets ``stop`` (the job takes no
    more rows and gives those in flight its stop timeout), a second cancels the task (the
    rows in flight are abandoned: their audio is reconciled by the next run). Either way
    the job publishes what it finished. A signal inherited as ignored stays ignored."""

    def __init__(self, stop: asyncio.Event, on_stop: Callable[[int], None]) -> None:
        self.stop = stop
        self.on_stop = on_stop
        self.received: Optional[int] = None
        self._installed: list[int] = []
        self._task: Optional[asyncio.Task[Any]] = None

    def __enter__(self) -> "_StopGently":
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is signal.SIG_IGN:
                continue
            try:
                loop.add_signal_handler(signum, self._signal, signum)
            except (NotImplementedError, RuntimeError):  # Windows; not the main thread
                continue
            self._installed.append(signum)
        return self

    def _signal(self, signum: int) -> None:
        if self.received is None:
            self.received = signum
            self.on_stop(signum)
            self.stop.set()
        elif self._task is not None:
            self._task.cancel()

    def __exit__(self, *exc_info: Any) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)


def _batch_line(summary: dict[str, Any]) -> str:
    """The one-line summary of a batch run."""
    job = summary["job"]
    parts = [f"{job['rows_stored']} rows stored"]
    if job["rows_reconciled"]:
        parts.append(f"{job['rows_reconciled']} reconciled")
    if job["rows_skipped"]:
        parts.append(f"{job['rows_skipped']} already done")
    if job["rows_failed"]:
        parts.append(f"{job['rows_failed']} failed")
    if job["bad_rows"]:
        parts.append(f"{job['bad_rows']} bad")
    elapsed = max(job["elapsed"], 1e-9)
    audio = job["audio_seconds"]
    limited = sum(job["rate_limited"].values())
    line = (f"{', '.join(parts)} (shard {job['shard']}); {audio:.1f} s of audio in "
            f"{elapsed:.3g} s ({audio / elapsed:.1f} audio s/s); concurrency "
            f"{job['concurrency_final']:g} of {job['concurrency_max']}")
    if limited:
        line += (f" ({limited} 429{'s' * (limited != 1)}, lowest "
                 f"{job['concurrency_lowest']:g})")
    line += (f"; {summary['destination']}: {summary['rows']} rows, {summary['files']} "
             "files in the manifest")
    return line


def _cmd_batch(args: argparse.Namespace) -> int:
    from .batch import BatchError, InputError, Shard
    from .batch.job import DestinationNotEmpty, JobFailed, run as run_batch

    _check_target(args)
    try:
        shard = Shard.parse(args.shard)
    except ConfigError as exc:
        raise _Failure(f"argument --shard: {exc}", USAGE) from None
    if not os.path.exists(args.input):
        raise _Failure(f"cannot read {args.input!r}: no such file", USAGE)
    if os.path.isdir(args.input):
        raise _Failure(f"cannot read {args.input!r}: it is a directory", USAGE)
    if "://" not in args.out:
        _prepare_out_dir(args.out)
    output_format = {"container": "raw", "encoding": args.encoding,
                     "sample_rate": args.sample_rate}
    progress: Any = False if args.quiet else True
    stream = sys.stderr
    stopped: list[int] = []

    def on_stop(signum: int) -> None:
        stopped.append(signum)
        print(f"\nflushsink: stopping on {signal.Signals(signum).name}: no new rows; the rows "
              f"in flight get {args.stop_timeout:g} s; a second signal stops at once",
              file=stream, flush=True)

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        with _StopGently(stop, on_stop) as signals:
            try:
                return await run_batch(
                    args.input, args.out, concurrency=args.concurrency, sockets=args.sockets,
                    shard=shard, url=args.url, api_key=args.api_key, emulator=args.emulator,
                    voice=args.voice, model_id=args.model, output_format=output_format,
                    language=args.language, retries=args.retries, timeout=args.timeout,
                    resume=args.resume, with_words=args.words, progress=progress,
                    part_rows=args.part_rows, part_seconds=args.part_seconds, stop=stop,
                    stop_timeout=args.stop_timeout)
            except asyncio.CancelledError:
                if signals.received is None:
                    raise
                task = asyncio.current_task()
                if task is not None and hasattr(task, "uncancel"):
                    task.uncancel()
                return {}

    def on_ray() -> dict[str, Any]:
        from .batch.ray import run as run_on_ray

        try:
            return run_on_ray(
                args.input, args.out, address=args.ray or None, num_actors=args.actors,
                concurrency_per_actor=args.concurrency, sockets_per_actor=args.sockets,
                shard=shard, url=args.url, api_key=args.api_key, emulator=args.emulator,
                voice=args.voice, model_id=args.model, output_format=output_format,
                language=args.language, retries=args.retries, timeout=args.timeout,
                resume=args.resume, with_words=args.words, progress=progress,
                part_rows=args.part_rows, part_seconds=args.part_seconds)
        except KeyboardInterrupt:  # what came back is published; run again to finish
            stopped.append(signal.SIGINT)
            return {}

    console = _Console()
    if args.emulator:
        console.say("using the embedded emulator: its audio is a synthetic stand-in, not speech")
    with _library_warnings(console):
        try:
            summary = on_ray() if args.ray is not None else _run_loop(main())
        except DestinationNotEmpty as exc:
            raise _Failure(f"{exc} (--no-resume)", USAGE) from None
        except JobFailed as exc:
            raise _Failure(f"the job cannot go on: {_failure_line(exc)}") from None
        except InputError as exc:
            raise _Failure(_failure_line(exc), USAGE) from None
        except (BatchError, FlushsinkError, OSError) as exc:
            raise _Failure(_failure_line(exc)) from None
    if summary:
        console.say(_batch_line(summary))
    if stopped:
        return 128 + stopped[0]
    if not summary or summary["job"]["rows_failed"]:
        return FAILED
    return 0


# --- serve and bench -------------------------------------------------------------------

#: serve's options that only Cartesia's emulator has (dest, as the user writes it).
_CARTESIA_ONLY = (("flush_id_base", "--flush-id-base"),
                  ("no_flush_id_on_chunks", "--no-flush-id-on-chunks"),
                  ("idle_timeout", "--idle-timeout"),
                  ("concurrency_limit", "--concurrency-limit"), ("voices", "--voices"))


def _emulator_for(args: argparse.Namespace) -> tuple[Any, Callable[[Any], str]]:
    """The emulator ``serve`` runs for ``--provider``, and the line that says where."""
    common = {"api_key": args.api_key, "chunk_ms": args.chunk_ms, "pace": args.pace,
              "record_messages": False}
    if args.provider != "cartesia":
        for dest, option in _CARTESIA_ONLY:
            value = getattr(args, dest)
            if value is not None and value is not False:  # (0 is a value given)
                raise _Failure(f"{option} is for --provider cartesia, not {args.provider}",
                               USAGE)
    if args.provider == "openai-realtime":
        from .emulator import OpenAIRealtimeEmulator

        return (OpenAIRealtimeEmulator(args.host, args.port, **common),
                lambda emu: f"flushsink OpenAI Realtime emulator listening on {emu.ws_url} "
                            f"(websocket_base_url={emu.websocket_base_url}; Ctrl-C stops it)")
    if args.provider == "elevenlabs":
        from .emulator import ElevenLabsEmulator

        return (ElevenLabsEmulator(args.host, args.port, **common),
                lambda emu: f"flushsink ElevenLabs emulator listening on "
                            f"{emu.endpoint('VOICE_ID')} (and multi-stream-input; "
                            "Ctrl-C stops it)")
    from .emulator import Emulator

    idle = 300.0 if args.idle_timeout is None else args.idle_timeout
    return (Emulator(args.host, args.port, **common,
                     flush_id_base=1 if args.flush_id_base is None else args.flush_id_base,
                     flush_id_on_chunks=not args.no_flush_id_on_chunks,
                     idle_timeout=idle or None, concurrency_limit=args.concurrency_limit,
                     voices=args.voices),
            lambda emu: f"flushsink emulator listening on {emu.ws_url} (Ctrl-C stops it)")


def _cmd_serve(args: argparse.Namespace) -> int:
    emulator, where = _emulator_for(args)

    def ready(emu: Any) -> None:
        print(where(emu), flush=True)

    async def serve() -> None:
        # SIGTERM (a service manager's stop) as Ctrl-C: clients get a close frame (1001)
        with _StopOnSignals() as signals:
            try:
                await emulator.serve_forever(ready)
            except asyncio.CancelledError:
                if not signals.stopped_us():
                    raise

    try:
        _run_loop(serve())
    except OSError as exc:
        host = f"[{args.host}]" if ":" in args.host else args.host
        raise _Failure(f"cannot listen on {host}:{args.port}: {_os_reason(exc)}") from None
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ._bench import run_quick_bench

    run_quick_bench(seconds=args.seconds, chunk_ms=args.chunk_ms, sample_rate=args.sample_rate)
    return 0


# --- arguments -------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line like every other error of the command:
    ``flushsink: argument --port: ... (see 'flushsink serve --help')``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"flushsink: {message} (see '{self.prog} --help')\n")


def _number(kind: Callable[[str], Any], low: float, high: float, *,
            above: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite number (an int if ``kind`` is int) from ``low`` (or
    above it) to ``high``. nan and inf are refused: nan slips through checks such as
    ``x <= 0``, and neither is a duration or a size."""
    noun = "an integer" if kind is int else "a number"
    rule = (f"{noun} above {low:g} and at most {high:g}" if above
            else f"{noun} from {low:g} to {high:g}")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if (value is None or (kind is not int and not math.isfinite(value))
                or not (low < value if above else low <= value) or value > high):
            raise argparse.ArgumentTypeError(f"must be {rule}, not {text!r}")
        return value

    return parse


def _not_blank(what: str = "must not be empty") -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(what)
        return text

    return parse


def _url(text: str) -> str:
    """A ws:// or wss:// URL with a host (and a port that exists, if it names one)."""
    from websockets.exceptions import InvalidURI
    from websockets.uri import parse_uri

    try:
        parse_uri(normalize_url(text))
    except ConfigError as exc:  # not ws:// or wss://
        raise argparse.ArgumentTypeError(str(exc)) from None
    except InvalidURI as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a usable URL: {exc.msg}") from None
    except ValueError as exc:  # a port out of range
        raise argparse.ArgumentTypeError(f"{text!r} is not a usable URL: {exc}") from None
    return text


def _voice_list(text: str) -> list[str]:
    voices = [voice.strip() for voice in text.split(",")]
    if not all(voices):
        raise argparse.ArgumentTypeError("must be voice ids separated by commas, none empty")
    return voices


def _pace(text: str) -> Any:
    if text in ("fast", "realtime"):
        return text
    try:
        return _number(float, 0, 1e6, above=True)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 'fast', 'realtime' or a speed factor above 0, not {text!r}") from None


SECONDS_MAX = 86400.0  # a day: longer is a typo, not a wish


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flushsink",
        description="Receive Cartesia-style TTS websocket audio fast: one file per flush.",
        epilog="'say' and 'batch' need an API key (--api-key or CARTESIA_API_KEY), --url, or "
               "--emulator; "
               "'demo' runs against the embedded emulator unless given --url or --api-key. "
               "Exit status: 0 done, 1 failed, 2 bad "
               "arguments, 128+N stopped by signal N (the audio received is kept).")
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="print the version, the core (compiled or pure), the SIMD path, "
                             "the event loop and the Python, and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def server_options(p: argparse.ArgumentParser, *, url_default: str,
                       out: Optional[str] = "out") -> None:
        p.add_argument("--url", type=_url,
                       help=f"ws:// or wss:// URL (default: {url_default}; without a path: "
                            "/tts/websocket)")
        p.add_argument("--api-key", type=_not_blank("must not be empty (an unset variable?)"),
                       help="API key (default: $CARTESIA_API_KEY)")
        # (say's default is None, to tell an --out given with --stdout)
        p.add_argument("--out", default=out, type=_not_blank(),
                       help="output directory (default: %s)" % (out or "out"))
        p.add_argument("--timeout", type=_number(float, 0, SECONDS_MAX, above=True),
                       default=60.0, metavar="SECONDS",
                       help="longest wait for the server's next audio (default: %(default)s)")
        p.add_argument("--retries", type=_number(int, 0, 10), default=3, metavar="N",
                       help="retry a handshake refused with 429 (waiting its Retry-After, up "
                            "to 8 s), 408 or 5xx, or lost to the network, up to N times, "
                            "with backoff; 0: never (default: %(default)s)")

    say = commands.add_parser(
        "say", help="speak texts, one flush segment and file each",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Speak each TEXT as one flush segment of one context and write one file "
                    "per segment\n(OUT/CONTEXT_ID/FLUSH_ID.wav), then print a table of them. "
                    "Audio cut short (a lost\nconnection, Ctrl-C, SIGTERM) is kept as "
                    "FLUSH_ID.partial.wav.",
        epilog="examples:\n  flushsink say 'Stay hungry, ' 'stay foolish.' --out out "
               "--encoding pcm_f32le --sample-rate 24000\n"
               "  flushsink say 'Played as it arrives.' --stdout | ffplay -f s16le -ar 44100 "
               "-nodisp -autoexit -")
    say.add_argument("text", nargs="+", metavar="TEXT", type=_not_blank("must not be blank"),
                     help="text of one segment")
    server_options(say, url_default="Cartesia, with --api-key or $CARTESIA_API_KEY",
                   out=None)
    say.add_argument("--container", choices=("wav", "raw"), default=None,
                     help="file format (default: wav)")
    say.add_argument("--emulator", action="store_true",
                     help="speak with the embedded emulator (synthetic audio, no key): for "
                          "trying the command out")
    say.add_argument("--stdout", action="store_true",
                     help="write the raw audio to standard output as it arrives, no files "
                          "(progress, table and summary on stderr)")
    say.add_argument("--encoding", choices=tuple(ENCODINGS), default="pcm_s16le",
                     metavar="ENCODING", help=f"one of {', '.join(ENCODINGS)} "
                                              "(default: %(default)s)")
    say.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, default=44100,
                     metavar="HZ", help=f"one of {', '.join(map(str, SAMPLE_RATES))} "
                                        "(default: %(default)s)")
    say.add_argument("--model", default="sonic-latest", type=_not_blank(),
                     help="model id (default: %(default)s)")
    say.add_argument("--voice", default=DEMO_VOICE, type=_not_blank(),
                     help="voice id (default: %(default)s)")
    say.add_argument("--language", default="en", type=_not_blank(),
                     help="language code (default: %(default)s)")
    say.set_defaults(run=_cmd_say)

    batch = commands.add_parser(
        "batch", help="speak a table of texts into a directory or S3, resumably",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Speak every row of INPUT (JSONL, CSV or Parquet with id and text or "
                    "texts) into DEST:\naudio/{safe id}/{flush}.wav, manifest/*.jsonl "
                    "(NeMo and Hugging Face datasets), errors/*.jsonl,\nsummary.json. Run "
                    "the same command again after any stop (Ctrl-C, SIGTERM, a crash) to "
                    "finish\nthe job: rows in the manifest are skipped, stored audio is "
                    "reconciled, nothing is stored twice.",
        epilog="examples:\n  flushsink batch prompts.jsonl --out out/prompts --emulator\n"
               "  flushsink batch book.parquet --out s3://bucket/book --concurrency 12 "
               "--sockets 2 --shard 0/2\n"
               "exit status: 0 every row stored (bad input rows are reported in errors/), 1 a "
               "row failed or the job could not go on, 2 bad arguments, 130/143 stopped by "
               "SIGINT/SIGTERM (run it again to finish).")
    batch.add_argument("input", metavar="INPUT", type=_not_blank(),
                       help="rows: .jsonl, .csv (optionally .gz) or .parquet")
    batch.add_argument("--out", required=True, metavar="DEST", type=_not_blank(),
                       help="a directory or s3://bucket/prefix (AWS_* environment variables)")
    batch.add_argument("--url", type=_url,
                       help="ws:// or wss:// URL (default: Cartesia, with --api-key or "
                            "$CARTESIA_API_KEY)")
    batch.add_argument("--api-key", type=_not_blank("must not be empty (an unset variable?)"),
                       help="API key (default: $CARTESIA_API_KEY)")
    batch.add_argument("--emulator", action="store_true",
                       help="speak with the embedded emulator (synthetic audio, no key)")
    batch.add_argument("--concurrency", type=_number(int, 1, 10_000), default=4, metavar="N",
                       help="contexts at once, at most; halved on a 429 and grown back "
                            "(default: %(default)s, inside every plan's limit)")
    batch.add_argument("--sockets", type=_number(int, 1, 1000), default=1, metavar="M",
                       help="websocket connections to spread the contexts over "
                            "(default: %(default)s)")
    batch.add_argument("--shard", default="0/1", metavar="I/N",
                       help="only the rows of shard I of N (by a hash of the id): N "
                            "processes share one DEST (default: %(default)s)")
    batch.add_argument("--voice", default=DEMO_VOICE, type=_not_blank(),
                       help="voice id of rows that give none (default: %(default)s)")
    batch.add_argument("--model", default="sonic-latest", type=_not_blank(),
                       help="model id of rows that give none (default: %(default)s)")
    batch.add_argument("--language", default=None, type=_not_blank(),
                       help="language of rows that give none (default: the server's)")
    batch.add_argument("--encoding", choices=tuple(ENCODINGS), default="pcm_s16le",
                       metavar="ENCODING", help=f"of rows that give no output_format: one of "
                                                f"{', '.join(ENCODINGS)} (default: %(default)s)")
    batch.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, default=44100,
                       metavar="HZ", help=f"likewise: one of {', '.join(map(str, SAMPLE_RATES))} "
                                          "(default: %(default)s)")
    batch.add_argument("--words", action="store_true",
                       help="ask for word timestamps and put them in the manifest")
    batch.add_argument("--retries", type=_number(int, 0, 100), default=3, metavar="K",
                       help="attempts after the first for a row that failed for a reason that "
                            "may pass (a lost connection, a timeout, a 5xx); 429s have a "
                            "budget of their own (20) (default: %(default)s)")
    batch.add_argument("--timeout", type=_number(float, 0, SECONDS_MAX, above=True),
                       default=60.0, metavar="SECONDS",
                       help="longest silence of a context (default: %(default)s)")
    batch.add_argument("--no-resume", dest="resume", action="store_false",
                       help="refuse a DEST that is not empty (default: finish the job there)")
    batch.add_argument("--part-rows", type=_number(int, 1, 10_000_000), default=1000,
                       metavar="N", help="publish a manifest part every N rows "
                                         "(default: %(default)s)")
    batch.add_argument("--part-seconds", type=_number(float, 0, SECONDS_MAX, above=True),
                       default=30.0, metavar="SECONDS",
                       help="... or every SECONDS (default: %(default)s)")
    batch.add_argument("--stop-timeout", type=_number(float, 0, SECONDS_MAX), default=15.0,
                       metavar="SECONDS",
                       help="on SIGINT/SIGTERM, how long the rows in flight may take to "
                            "finish (default: %(default)s)")
    batch.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                       help="run on a Ray cluster (pip install 'flushsink[ray]'): ADDRESS, "
                            "'auto' for the running one, or none for $RAY_ADDRESS or a new "
                            "local cluster; --concurrency and --sockets are then per actor")
    batch.add_argument("--actors", type=_number(int, 1, 10_000), default=2, metavar="N",
                       help="with --ray: actors synthesizing, each with its own sockets "
                            "(default: %(default)s)")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    batch.set_defaults(run=_cmd_batch)

    demo = commands.add_parser("demo", help="the seed scenario: two flushes, two WAV files")
    server_options(demo, url_default="the embedded emulator")
    demo.set_defaults(run=_cmd_demo, out=os.path.join("out", "demo"))

    serve = commands.add_parser("serve", help="run an emulator (Cartesia's by default)",
                                description="Run the emulator of a provider's TTS websocket "
                                            "(Cartesia, OpenAI Realtime, ElevenLabs) until "
                                            "Ctrl-C or SIGTERM, which close its connections "
                                            "(1001).")
    serve.add_argument("--host", default="127.0.0.1",
                       type=_not_blank("must not be empty (0.0.0.0 listens on every "
                                       "interface)"),
                       help="address (default: %(default)s)")
    serve.add_argument("--port", type=_number(int, 0, 65535), default=8765,
                       help="port, 0 for any free one (default: %(default)s)")
    serve.add_argument("--api-key", type=_not_blank("must not be empty (an unset variable?)"),
                       help="require this key (default: accept any)")
    serve.add_argument("--chunk-ms", type=_number(float, 1, 10000), default=100.0,
                       metavar="MS", help="audio per chunk, 1 to 10000 (default: %(default)s)")
    serve.add_argument("--provider", choices=("cartesia", "openai-realtime", "elevenlabs"),
                       default="cartesia",
                       help="whose protocol to speak (default: %(default)s); the options "
                            "below marked Cartesia are for cartesia only")
    serve.add_argument("--flush-id-base", type=int, choices=(0, 1), default=None,
                       help="Cartesia: flush id of a context's first segment (default: 1)")
    serve.add_argument("--no-flush-id-on-chunks", action="store_true",
                       help="Cartesia: send chunks without flush_id")
    serve.add_argument("--pace", default="fast", type=_pace,
                       help="'fast', 'realtime' or a speed factor (default: %(default)s)")
    serve.add_argument("--idle-timeout", type=_number(float, 0, SECONDS_MAX), default=None,
                       metavar="SECONDS",
                       help="Cartesia: close a connection idle this long, 0: never "
                            "(default: 300)")
    serve.add_argument("--concurrency-limit", type=_number(int, 1, 100_000), default=None,
                       metavar="N",
                       help="Cartesia: at most N active contexts (the next gets a 429 error "
                            "event) and 10N sockets (the next handshake gets HTTP 429), as "
                            "Cartesia's plans limit them (default: no limit)")
    serve.add_argument("--voices", type=_voice_list, default=None, metavar="ID[,ID...]",
                       help="Cartesia: the voice ids that exist; another gets a 404 error event "
                            "(default: any id)")
    serve.set_defaults(run=_cmd_serve)

    bench = commands.add_parser("bench", help="a quick Sink benchmark against the stdlib loop",
                                description="Feed chunk frames to the Sink and to the "
                                            "json.loads + base64.b64decode loop; for the full "
                                            "comparison see benchmarks/.")
    bench.add_argument("--seconds", type=_number(float, 0.01, 600), default=10.0,
                       help="audio per segment, 0.01 to 600 (default: %(default)s)")
    bench.add_argument("--chunk-ms", type=_number(float, 1, 10000), default=100.0,
                       metavar="MS", help="audio per chunk, 1 to 10000 (default: %(default)s)")
    bench.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, default=44100,
                       metavar="HZ", help=f"one of {', '.join(map(str, SAMPLE_RATES))} "
                                          "(default: %(default)s)")
    bench.set_defaults(run=_cmd_bench)
    return parser


# --- the command -----------------------------------------------------------------------

def _run(argv: Optional[Sequence[str]]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else USAGE
    try:
        return int(args.run(args))
    except _Failure as exc:
        print(f"flushsink: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:  # Ctrl-C outside a run: nothing is open that could be kept
        print("flushsink: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except (FlushsinkError, OSError) as exc:  # expected failures; a bug keeps its traceback
        if isinstance(exc, BrokenPipeError):
            raise
        print(f"flushsink: {_failure_line(exc)}", file=sys.stderr)
        return FAILED


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        status = _run(argv)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return status
    except BrokenPipeError:
        # `flushsink ... | head`: stdout's reader is gone, so there is no one to tell;
        # point stdout at devnull so that the flush at exit does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + _SIGPIPE
