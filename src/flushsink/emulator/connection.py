"""One accepted emulator connection: the client's requests in, the contexts' audio out,
and the faults injected on the way.

How the emulator turns input into audio
---------------------------------------

Text accumulates per context. A *segment* is generated from the text accumulated since
the previous segment when

- a request carries ``flush: true``: the segment's chunks, then ``flush_done`` with the
  context's current flush id, which then increments;
- a request carries a non-blank transcript and ``max_buffer_delay_ms: 0`` (custom
  buffering): the same, once per transcript, without any ``flush`` field;
- the context ends (``continue`` false or absent): the remaining text's chunks (if it is
  not blank), then ``done``.

Otherwise text waits: the emulator does not emulate the server's time-based buffering
window, so that the audio of a segment is always ``render(text of the segment, ...)``.
Segment audio is ``render(text, voice id, format, speed=generation_config.speed)``; the
format and voice are taken from the context's first request. Timestamps (when asked for)
are measured from the start of the context's audio, as the real server does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from ..errors import FormatError
from ..formats import SAMPLE_RATES, AudioFormat, encode_samples
from .faults import Fault
from .speech import Word, layout, phoneme_spans, render, synthesize

if TYPE_CHECKING:
    from .server import Emulator

__all__ = ["ConnectionLog", "IDLE_CLOSE_REASON"]

IDLE_CLOSE_REASON = "connection idle timeout"
_DOC_URL = "https://docs.cartesia.ai/use-the-api/api-errors"


class _Dropped(Exception):
    """A fault ended the connection; the context task stops quietly."""


@dataclass
class ConnectionLog:
    """What one accepted connection received and sent (updated while it runs)."""

    request_id: str
    path: str
    #: Request headers, names lower-cased (a repeated header keeps its last value).
    headers: dict[str, str]
    version: str
    structured_errors: bool
    faults: tuple[Fault, ...]
    #: Every client message in arrival order: the parsed JSON, or the raw frame if it was
    #: not JSON (empty when the emulator was made with ``record_messages=False``).
    received: list[Any] = field(default_factory=list)
    messages_received: int = 0
    cancels_received: int = 0
    #: Server messages sent, by ``type`` (``"malformed"`` for an injected non-JSON frame).
    sent: Counter[str] = field(default_factory=Counter)
    audio_bytes_sent: int = 0
    fired: list[Fault] = field(default_factory=list)
    closed: bool = False

    def received_for(self, context_id: str) -> list[dict[str, Any]]:
        """The client messages of one context."""
        return [m for m in self.received if isinstance(m, dict) and m.get("context_id") == context_id]

    @property
    def cancels(self) -> list[str]:
        """Context ids the client cancelled, in order."""
        return [m["context_id"] for m in self.received if isinstance(m, dict) and m.get("cancel") is True]


# --- Requests ---------------------------------------------------------------------------


class _Problem(NamedTuple):
    """A request the emulator refuses; becomes an ``error`` frame in either shape."""

    message: str
    error_code: str = "invalid_request"
    title: str = "Invalid request"
    status_code: int = 400


_EMPTY_FIRST_TRANSCRIPT = _Problem(
    # The legacy wording is the real server's (livekit/agents#3080).
    "transcript empty or contains only punctuation: "
    "first transcript for WS is empty or contains only punctuation",
    "transcript_empty",
    "Transcript empty",
)


def _problem_with(message: dict[str, Any]) -> _Problem | None:
    """Check the fields of a generation request; None when they are acceptable."""
    for name, kind in (
        ("model_id", str),
        ("transcript", str),
        ("voice", (dict, str)),
        ("output_format", dict),
    ):
        if name not in message:
            return _Problem(f"missing required field {name!r}")
        if not isinstance(message[name], kind):
            return _Problem(f"field {name!r} has the wrong type")
    for name in (
        "continue",
        "flush",
        "add_timestamps",
        "add_phoneme_timestamps",
        "use_normalized_timestamps",
    ):
        if name in message and not isinstance(message[name], bool):
            return _Problem(f"field {name!r} must be a boolean")
    if _voice_id(message["voice"]) is None:
        return _Problem("voice must be a voice id: '<id>', {'id': '<id>'} or "
                        "{'mode': 'id', 'id': '<id>'}")
    delay = message.get("max_buffer_delay_ms")
    if delay is not None and (
        isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= 5000
    ):
        return _Problem("max_buffer_delay_ms must be an integer from 0 to 5000")
    config = message.get("generation_config")
    if config is not None:
        if not isinstance(config, dict):
            return _Problem("generation_config must be an object")
        speed = config.get("speed")
        if speed is not None and (
            isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.6 <= speed <= 1.5
        ):
            return _Problem("generation_config.speed must be a number from 0.6 to 1.5")
    try:
        _output_format(message["output_format"])
    except FormatError as exc:
        return _Problem(f"invalid output_format: {exc}")
    return None


def _voice_id(voice: Any) -> str | None:
    """The voice id of a request's ``voice``: a bare id (API 2026-08-14, SDK 4.x's typed
    form), ``{"id": ...}`` (what SDK 4.x's migration guide tells users to write; extra keys
    ignored) or ``{"mode": "id", "id": ...}`` (older versions, SDK 3.x). None otherwise (an
    embedding, another mode)."""
    if isinstance(voice, dict) and voice.get("mode", "id") == "id":
        voice = voice.get("id")
    return voice if isinstance(voice, str) and voice else None


def _output_format(output_format: dict[str, Any]) -> AudioFormat:
    fmt = AudioFormat.from_output_format(output_format)
    if fmt.sample_rate not in SAMPLE_RATES:
        raise FormatError(f"unsupported sample_rate {fmt.sample_rate}; expected one of {SAMPLE_RATES}")
    return fmt


def _speed_of(message: dict[str, Any]) -> float | None:
    config = message.get("generation_config")
    return float(config["speed"]) if isinstance(config, dict) and config.get("speed") is not None else None


# --- One connection ---------------------------------------------------------------------


class _Segment(NamedTuple):
    text: str
    flush_id: int
    flush_done: bool
    speed: float
    word_timestamps: bool
    phoneme_timestamps: bool


class _End(NamedTuple):
    """Finish the context: send ``done`` (or nothing when ``silent``), or an error."""

    problem: _Problem | None = None
    silent: bool = False


_Job = _Segment | _End

_OPEN, _ENDING, _CANCELLED, _FINISHED, _EXPIRED = "open", "ending", "cancelled", "finished", "expired"

# Input the real server does not take: its answer is unknown (docs/protocol.md 2.5), so
# these errors are the emulator's own wording. The concurrency error is documented.
_ENDED = _Problem(
    "this context has ended (done, error or cancel): use a new context_id",
    "context_ended",
    "Context ended",
)
_EXPIRED_PROBLEM = _Problem(
    "this context expired (1 s after its last audio): use a new context_id",
    "context_expired",
    "Context expired",
)
_CONCURRENCY = _Problem(
    "too many concurrent contexts for this account: wait for one to end",
    "concurrency_limited",
    "Too many concurrent requests",
    429,
)


class _Mark(NamedTuple):
    """One word or phoneme of a segment, for a timestamps message."""

    first_sample: int  # in the segment: sent just before the chunk holding this sample
    kind: str  # "timestamps" or "phoneme_timestamps"
    text: str
    start: float  # seconds, context time
    end: float


class _Context:
    """One context. Input bookkeeping runs in the connection's reader (and never waits);
    generation runs in the context's own task, so the contexts of a socket stream
    concurrently while each keeps its input order."""

    def __init__(self, connection: Connection, context_id: str) -> None:
        self.connection = connection
        self.id = context_id
        self.state = _OPEN
        self.format: AudioFormat | None = None  # set by the first valid request
        self.voice_id = ""
        self.text = ""  # received but not yet part of a segment
        self.flush_id = connection.emulator.flush_id_base
        # Settings a request may change; a request that omits one leaves it as it was.
        self.speed = 1.0
        self.word_timestamps = False
        self.phoneme_timestamps = False
        self.max_buffer_delay_ms: int | None = None
        self.samples_streamed = 0  # where the next segment starts, in context time
        self.jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self.late_input = False  # input came after the end: an error follows the done
        self._expiry: asyncio.TimerHandle | None = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    # --- input side

    def on_request(self, message: dict[str, Any]) -> _Problem | None:
        """Take one request; returns the error to send now, for input to a context that
        already finished or expired (one still ending sends it after its ``done``)."""
        if self.state == _EXPIRED:
            return _EXPIRED_PROBLEM
        if self.state == _FINISHED:
            return _ENDED
        if self.state != _OPEN:
            self.late_input = True
            return None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        emulator = self.connection.emulator
        problem = _problem_with(message)
        first = self.format is None
        if problem is None and first and not any(ch.isalnum() for ch in message["transcript"]):
            problem = _EMPTY_FIRST_TRANSCRIPT
        if problem is None and first:
            problem = self._refusal(_voice_id(message["voice"]) or "")
        if problem is not None:
            # An error is terminal for its context; segments queued before it still stream.
            self.state, self.text = _ENDING, ""
            self.jobs.put_nowait(_End(problem))
            return None
        if first:
            self.format = _output_format(message["output_format"])
            self.voice_id = _voice_id(message["voice"]) or ""
            emulator.active_contexts.add(self)
        speed = _speed_of(message)
        if speed is not None:
            self.speed = speed
        self.word_timestamps = message.get("add_timestamps", self.word_timestamps)
        self.phoneme_timestamps = message.get("add_phoneme_timestamps", self.phoneme_timestamps)
        self.max_buffer_delay_ms = message.get("max_buffer_delay_ms", self.max_buffer_delay_ms)

        transcript = message["transcript"]
        self.text += transcript
        # With buffering off the server answers every transcript with a flush_done.
        per_transcript = self.max_buffer_delay_ms == 0 and transcript.strip() != ""
        if message.get("flush") is True or per_transcript:
            self._queue_segment(flush_done=True)
            self.flush_id += 1
        if not message.get("continue", False):
            if self.text.strip():
                self._queue_segment(flush_done=self.connection.emulator.flush_done_before_done)
            self.state = _ENDING
            self.jobs.put_nowait(_End())
        return None

    def _refusal(self, voice_id: str) -> _Problem | None:
        """Why the service would not start this context: a voice it does not have, or
        the account's concurrency limit. None: it starts."""
        emulator, log = self.connection.emulator, self.connection.log
        if emulator.voices is not None and voice_id not in emulator.voices:
            # 404 from the version whose changelog says so; an ambiguous 400 before it
            status = 404 if log.structured_errors else 400
            return _Problem(f"voice {voice_id!r} not found", "voice_not_found", "Voice not found", status)
        limit = emulator.concurrency_limit
        if limit is not None and len(emulator.active_contexts) >= limit:
            return _CONCURRENCY
        return None

    def _ended(self, state: str) -> None:
        """The context is no longer active (ended, failed, cancelled, expired, gone)."""
        self.state = state
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.connection.emulator.active_contexts.discard(self)

    def _idle(self) -> None:
        """All the audio asked for so far has been sent: an open context expires
        ``context_expiry`` later unless more input comes."""
        expiry = self.connection.emulator.context_expiry
        if expiry is not None and self.state == _OPEN and self.jobs.empty():
            self._expiry = asyncio.get_running_loop().call_later(expiry, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        if self.state == _OPEN and self.jobs.empty():
            self._ended(_EXPIRED)

    def _queue_segment(self, *, flush_done: bool) -> None:
        self.jobs.put_nowait(
            _Segment(
                self.text,
                self.flush_id,
                flush_done,
                self.speed,
                self.word_timestamps,
                self.phoneme_timestamps,
            )
        )
        self.text = ""

    def cancel(self) -> None:
        if self.state not in (_OPEN, _ENDING):
            return
        self.state, self.text = _CANCELLED, ""
        # Only input that has not started generating is dropped: the segment being
        # streamed was already taken off the queue and runs to completion.
        while not self.jobs.empty():
            self.jobs.get_nowait()
        self.jobs.put_nowait(_End(silent=not self.connection.emulator.done_after_cancel))

    # --- output side

    async def _run(self) -> None:
        connection = self.connection
        try:
            while True:
                job = await self.jobs.get()
                if isinstance(job, _Segment):
                    await self._stream(job)
                    self._idle()
                    continue
                if job.problem is not None:
                    await connection.send(connection.error_frame(job.problem, self.id))
                elif not job.silent:
                    await connection.fault_point(self, self.flush_id, "done", 0)
                    await connection.send(connection.done_frame(self.id))
                self._ended(_FINISHED)
                if self.late_input:
                    await connection.send(connection.error_frame(_ENDED, self.id))
                return
        except (ConnectionClosed, _Dropped):
            pass  # the client is gone: nothing left to deliver
        finally:
            if self.state != _EXPIRED:
                self._ended(_FINISHED)

    async def _stream(self, segment: _Segment) -> None:
        connection, emulator = self.connection, self.connection.emulator
        fmt = self.format
        assert fmt is not None  # segments are only queued after a valid first request
        began = time.perf_counter()
        words, total = layout(segment.text, self.voice_id, fmt.sample_rate, segment.speed)
        audio = encode_samples(synthesize(words, total, fmt.sample_rate), fmt)
        marks = self._marks(segment, words, fmt.sample_rate)
        next_mark = 0
        step = emulator.chunk_bytes(fmt)
        chunk_starts = range(0, len(audio), step)
        loop = asyncio.get_running_loop()
        paced_from = loop.time()
        for index, offset in enumerate(chunk_starts):
            await connection.fault_point(self, segment.flush_id, "chunk", index)
            piece = audio[offset : offset + step]
            end = offset + len(piece)
            # Timestamps of the words this chunk starts go out just before it, which
            # interleaves them with the audio the way the real server does.
            covered = -(-end // fmt.sample_width)  # samples touched so far, rounded up
            due = next_mark
            while due < len(marks) and marks[due].first_sample < covered:
                due += 1
            for frame in self._timestamp_frames(marks[next_mark:due], segment.flush_id):
                await connection.send(frame)
            next_mark = due
            data = base64.b64encode(piece).decode("ascii")
            step_time = round((time.perf_counter() - began) * 1000.0, 3)
            await connection.send(
                connection.chunk_frame(self.id, segment.flush_id, data, step_time), audio_bytes=len(piece)
            )
            began = time.perf_counter()
            await emulator._pace_after(loop, paced_from, end / fmt.bytes_per_second)
        if chunk_starts:
            await connection.fault_point(self, segment.flush_id, "chunk", len(chunk_starts))
        self.samples_streamed += total
        if segment.flush_done:
            await connection.fault_point(self, segment.flush_id, "flush_done", 0)
            await connection.send(connection.flush_done_frame(self.id, segment.flush_id))

    def _marks(self, segment: _Segment, words: list[Word], rate: int) -> list[_Mark]:
        """The segment's words and phonemes to report, ordered by first sample."""
        base = self.samples_streamed  # timestamps are in context time, not segment time
        marks: list[_Mark] = []
        for word in words:
            spans: list[tuple[str, str, int, int]] = []
            if segment.word_timestamps:
                spans.append(("timestamps", word.text, word.start, word.start + word.length))
            if segment.phoneme_timestamps:
                spans.extend(("phoneme_timestamps", *span) for span in phoneme_spans(word))
            marks.extend(
                _Mark(start, kind, text, (base + start) / rate, (base + end) / rate)
                for kind, text, start, end in spans
            )
        return marks

    def _timestamp_frames(self, marks: list[_Mark], flush_id: int) -> Iterator[dict[str, Any]]:
        for kind, key, label in (
            ("timestamps", "word_timestamps", "words"),
            ("phoneme_timestamps", "phoneme_timestamps", "phonemes"),
        ):
            group = [mark for mark in marks if mark.kind == kind]
            if not group:
                continue
            frame: dict[str, Any] = {"type": kind, "context_id": self.id, "status_code": 206, "done": False}
            if self.connection.emulator.flush_id_on_chunks:
                frame["flush_id"] = flush_id
            frame[key] = {
                label: [mark.text for mark in group],
                "start": [mark.start for mark in group],
                "end": [mark.end for mark in group],
            }
            yield frame


class Connection:
    """One accepted websocket: reads client messages, owns the contexts, injects faults."""

    def __init__(self, emulator: Emulator, ws: ServerConnection, log: ConnectionLog) -> None:
        self.emulator = emulator
        self.ws = ws
        self.log = log
        self.contexts: dict[str, _Context] = {}
        self.faults = list(log.faults)  # each fires once
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()

    async def run(self) -> None:
        watchdog = (
            self.loop.create_task(self._close_when_idle()) if self.emulator.idle_timeout is not None else None
        )
        try:
            async for raw in self.ws:
                self.last_activity = self.loop.time()
                await self._on_message(raw)
        except ConnectionClosed:
            pass
        finally:
            tasks = [context.task for context in self.contexts.values()]
            if watchdog is not None:
                tasks.append(watchdog)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.log.closed = True

    async def _close_when_idle(self) -> None:
        timeout = self.emulator.idle_timeout
        assert timeout is not None
        while (remaining := self.last_activity + timeout - self.loop.time()) > 0:
            await asyncio.sleep(remaining)
        await self.ws.close(1000, IDLE_CLOSE_REASON)

    async def _on_message(self, raw: str | bytes) -> None:
        self.log.messages_received += 1
        try:
            message = json.loads(raw)
        except ValueError:  # also bad UTF-8 in a binary frame
            self._record(raw)
            await self.send(self.error_frame(_Problem("could not parse the message as JSON"), None))
            return
        self._record(message)
        if not isinstance(message, dict):
            await self.send(self.error_frame(_Problem("a message must be a JSON object"), None))
            return
        context_id = message.get("context_id")
        if not isinstance(context_id, str) or not context_id:
            # Without a usable context id the error can only be connection-level.
            await self.send(self.error_frame(_Problem("missing required field 'context_id'"), None))
            return
        context = self.contexts.get(context_id)
        if message.get("cancel") is True:
            self.log.cancels_received += 1
            if context is not None:
                context.cancel()
            return
        if context is None:
            context = self.contexts[context_id] = _Context(self, context_id)
        problem = context.on_request(message)
        if problem is not None:
            await self.send(self.error_frame(problem, context_id))

    def _record(self, message: Any) -> None:
        if self.emulator.record_messages:
            self.log.received.append(message)

    # --- frames

    async def send(self, frame: dict[str, Any], *, audio_bytes: int = 0) -> None:
        await self.send_text(json.dumps(frame), frame["type"], audio_bytes)

    async def send_text(self, text: str, kind: str, audio_bytes: int = 0) -> None:
        await self.ws.send(text)
        self.log.sent[kind] += 1
        self.log.audio_bytes_sent += audio_bytes
        self.last_activity = self.loop.time()

    def chunk_frame(
        self, context_id: str, flush_id: int, data: str, step_time: float = 0.0
    ) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "type": "chunk",
            "context_id": context_id,
            "status_code": 206,
            "done": False,
            "step_time": step_time,
        }
        if self.emulator.flush_id_on_chunks:
            frame["flush_id"] = flush_id
        frame["data"] = data
        return frame

    @staticmethod
    def flush_done_frame(context_id: str, flush_id: int) -> dict[str, Any]:
        # Key order and the empty "data" as in a real message (livekit/agents#5321).
        return {
            "type": "flush_done",
            "context_id": context_id,
            "status_code": 206,
            "done": False,
            "data": "",
            "flush_id": flush_id,
            "flush_done": True,
        }

    @staticmethod
    def done_frame(context_id: str) -> dict[str, Any]:
        return {"type": "done", "context_id": context_id, "status_code": 206, "done": True}

    def error_frame(self, problem: _Problem, context_id: str | None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "error"}
        if not self.log.structured_errors:
            if context_id is not None:
                frame["context_id"] = context_id
            frame.update(status_code=problem.status_code, done=True, error=problem.message)
            return frame
        frame.update(
            done=True,
            status_code=problem.status_code,
            error_code=problem.error_code,
            title=problem.title,
            message=problem.message,
            request_id=f"{self.log.request_id}:{context_id or ''}:{uuid.uuid4()}",
        )
        if context_id is not None:
            frame["context_id"] = context_id
        frame["doc_url"] = _DOC_URL
        return frame

    # --- faults

    async def fault_point(self, context: _Context, flush_id: int, point: str, chunks_sent: int) -> None:
        """Fire the faults waiting for this point of the stream (each only once)."""
        while fault := next((f for f in self.faults if f.matches(point, chunks_sent)), None):
            self.faults.remove(fault)
            self.log.fired.append(fault)
            await self._inject(fault, context, flush_id)

    async def _inject(self, fault: Fault, context: _Context, flush_id: int) -> None:
        action, arg = fault.action, fault.arg
        if action == "drop":
            await self._abort()
            raise _Dropped
        if action == "close":
            await self.ws.close(1011 if arg is None else arg, "emulator fault")
            raise _Dropped
        if action == "malformed_json":
            # A chunk frame cut short, as a truncated write would leave it.
            await self.send_text(
                '{"type": "chunk", "context_id": ' + json.dumps(context.id) + ', "data": "AAAA', "malformed"
            )
        elif action == "bad_base64":
            await self.send(self.chunk_frame(context.id, flush_id, "@@@@"))
        elif action == "oversized":
            assert arg is not None
            await self._send_oversized(context.id, flush_id, arg)
        else:
            assert arg is not None
            await self._flood(action, arg, context)

    async def _abort(self) -> None:
        """End the TCP connection without a close frame, like a network failure.

        abort() throws away whatever the transport still buffers, so wait for that to
        reach the socket first: "drop after K chunks" must mean K chunks were delivered.
        """
        transport = self.ws.transport
        deadline = self.loop.time() + 5.0
        while transport.get_write_buffer_size() and self.loop.time() < deadline:
            await asyncio.sleep(0.001)
        # A reset (abort with the client's requests still unread here) makes the client's
        # kernel discard chunks it has not handed to the application yet. Send a FIN
        # first and give the client a moment to read up to it: the connection still ends
        # without a close frame, and every chunk sent is received.
        if transport.can_write_eof():
            transport.write_eof()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.ws.wait_closed(), 1.0)
        transport.abort()

    async def _send_oversized(self, context_id: str, flush_id: int, size: int) -> None:
        """A valid chunk frame of exactly ``size`` bytes (or the smallest possible one)."""
        text = json.dumps(self.chunk_frame(context_id, flush_id, ""))  # ASCII: chars == bytes
        room = max(0, size - len(text))
        data_length = room // 4 * 4  # whole base64 quanta; the rest becomes JSON whitespace
        padded = text[:-2] + "A" * data_length + '"' + " " * (room - data_length) + "}"
        await self.send_text(padded, "chunk", data_length // 4 * 3)

    async def _flood(self, action: str, count: int, context: _Context) -> None:
        assert context.format is not None
        fmt = context.format
        audio = render("flood", context.voice_id, fmt)[: self.emulator.chunk_bytes(fmt)]
        data = base64.b64encode(audio).decode("ascii")
        base = self.emulator.flush_id_base
        if action == "flood_contexts":
            ids = [f"flood-{i}" for i in range(count)]
            for context_id in ids:  # all open at once, then all finished
                await self.send(self.chunk_frame(context_id, base, data), audio_bytes=len(audio))
            for context_id in ids:
                await self.send(self.done_frame(context_id))
        else:
            for flush_id in range(base, base + count):
                await self.send(self.chunk_frame("flood", flush_id, data), audio_bytes=len(audio))
                await self.send(self.flush_done_frame("flood", flush_id))
            await self.send(self.done_frame("flood"))
