"""A local Cartesia-compatible TTS websocket server, for tests, demos and benchmarks.

The emulator speaks the protocol described in ``protocol.md`` (the ``/tts/websocket``
endpoint): contexts multiplexed on one socket and generated concurrently, ``continue`` /
``flush`` / ``flush_done`` / ``done``, ``cancel``, word and phoneme timestamps, both error
shapes, the idle close, and a set of fault modes. Its audio is synthetic but speech-like
and a pure function of (text, voice, format, speed), so a test can predict every byte it
receives::

    async with Emulator() as emu:                     # binds 127.0.0.1 on a free port
        async with websockets.connect(emu.ws_url) as ws:
            ...
        expected = render("Stay hungry, ", voice_id, AudioFormat("pcm_s16le", 44100))

    with Emulator(flush_id_base=0).running_in_thread() as emu:   # from sync code
        ...

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

Fault modes
-----------

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

import asyncio
import base64
import contextlib
import json
import math
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ProtocolError
from websockets.frames import Close
from websockets.http11 import Request, Response

from .errors import FormatError
from .formats import SAMPLE_RATES, AudioFormat, encode_samples

__all__ = [
    "Emulator",
    "EmulatorStats",
    "ConnectionLog",
    "Rejection",
    "Fault",
    "parse_faults",
    "render",
    "render_samples",
    "render_timestamps",
    "render_phoneme_timestamps",
    "WS_PATH",
    "DEFAULT_VERSION",
    "STRUCTURED_ERRORS_SINCE",
    "FAULT_ACTIONS",
]

WS_PATH = "/tts/websocket"
#: The version SDK 3.2.0 sends, used when the client names none.
DEFAULT_VERSION = "2025-11-04"
#: First API version whose errors carry error_code/title/message instead of ``error``.
STRUCTURED_ERRORS_SINCE = "2026-03-01"
IDLE_CLOSE_REASON = "connection idle timeout"
_DOC_URL = "https://docs.cartesia.ai/use-the-api/api-errors"

# --- Synthetic speech -------------------------------------------------------------------
#
# Each word is a harmonic tone burst whose pitch, glide and length come from CRC-32 of
# the voice and the word (stable across processes, unlike hash()); whitespace separates
# words and punctuation at the end of a word lengthens the pause after it. Boundaries are
# whole samples, so timestamps and audio agree exactly.

_WORD_GAP_S = 0.05
_PUNCTUATION_PAUSE_S = {",": 0.15, ";": 0.2, ":": 0.2, "-": 0.1, ".": 0.35, "!": 0.35, "?": 0.35}
_AMPLITUDE = 0.3  # leaves headroom: samples never reach full scale
_RAMP_S = 0.012  # raised-cosine attack and release: no clicks at word edges


class _Word(NamedTuple):
    text: str
    start: int  # first sample, from the start of the segment
    length: int  # samples
    f0: float  # pitch at the start of the word, Hz
    f1: float  # pitch at the end
    syllables: int


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def _unit(value: int, shift: int) -> float:
    """Ten bits of a hash as a float in [0, 1]."""
    return ((value >> shift) & 0x3FF) / 0x3FF


def _pause_seconds(token: str) -> float:
    trailing = token[len(token.rstrip("".join(_PUNCTUATION_PAUSE_S))) :]
    return max([_WORD_GAP_S] + [_PUNCTUATION_PAUSE_S[mark] for mark in trailing])


def _layout(transcript: str, voice_id: str, sample_rate: int, speed: float) -> tuple[list[_Word], int]:
    """Place the words of one segment on the sample grid; returns (words, total samples)."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, not {sample_rate!r}")
    if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
        raise ValueError(f"speed must be a positive number, not {speed!r}")
    voice_hash = _crc("voice\0" + voice_id)
    base_pitch = 95.0 + 130.0 * _unit(voice_hash, 0)
    tempo = (0.85 + 0.3 * _unit(voice_hash, 10)) / speed
    words: list[_Word] = []
    cursor = 0
    for token in transcript.split():
        letters = sum(ch.isalnum() for ch in token)
        if letters:  # a token of punctuation only is a pause, not a word
            word_hash = _crc(voice_id + "\0" + token)
            length = max(1, round((0.09 + 0.055 * letters) * tempo * sample_rate))
            f0 = base_pitch * (0.85 + 0.35 * _unit(word_hash, 0))
            f1 = f0 * (0.88 + 0.2 * _unit(word_hash, 10))
            words.append(_Word(token, cursor, length, f0, f1, max(1, round(letters / 3))))
            cursor += length
        cursor += round(_pause_seconds(token) * tempo * sample_rate)
    return (words, cursor) if words else ([], 0)  # nothing to say: no audio, not a pause


def _synthesize(words: Sequence[_Word], total: int, sample_rate: int) -> np.ndarray:
    out = np.zeros(total, dtype=np.float64)
    for word in words:
        n = word.length
        t = np.arange(n, dtype=np.float64) / sample_rate
        duration = n / sample_rate
        # A linear glide from f0 to f1: the phase is the integral of the frequency.
        phase = 2.0 * np.pi * (word.f0 * t + (word.f1 - word.f0) * t * t / (2.0 * duration))
        tone = (np.sin(phase) + 0.45 * np.sin(2.0 * phase) + 0.2 * np.sin(3.0 * phase)) / 1.65
        # One loudness swell per syllable, so long words do not sound like a flat beep.
        envelope = 0.55 + 0.45 * np.sin(np.pi * ((t * (word.syllables / duration)) % 1.0))
        ramp = min(n // 2, round(_RAMP_S * sample_rate))
        if ramp:
            fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
            envelope[:ramp] *= fade
            envelope[n - ramp :] *= fade[::-1]
        out[word.start : word.start + n] = _AMPLITUDE * tone * envelope
    return out


def render_samples(transcript: str, voice_id: str, sample_rate: int, *, speed: float = 1.0) -> np.ndarray:
    """The float64 samples (in [-0.3, 0.3]) of one segment's text; see :func:`render`."""
    return _synthesize(*_layout(transcript, voice_id, sample_rate, speed), sample_rate)


def render(transcript: str, voice_id: str, format: AudioFormat, *, speed: float = 1.0) -> bytes:
    """The exact audio the emulator streams for one segment whose text is ``transcript``.

    A pure function of its arguments: the same call gives the same bytes in every process
    (with the same numpy). Words are whitespace-separated tokens; a word is a tone burst
    whose pitch and length derive from the word and ``voice_id``, followed by a pause
    (longer after ``,;:`` and longer still after ``.!?``). ``speed`` divides every
    duration. Text without a letter or digit renders to ``b""``.

    Raises ValueError for a non-positive speed.
    """
    return encode_samples(render_samples(transcript, voice_id, format.sample_rate, speed=speed), format)


def render_timestamps(
    transcript: str, voice_id: str, sample_rate: int, *, speed: float = 1.0
) -> list[tuple[str, float, float]]:
    """``(word, start, end)`` in seconds from the segment start, matching :func:`render`.

    ``start`` and ``end`` are sample indices divided by ``sample_rate``: the word's burst
    is exactly samples ``[start * rate, end * rate)``; the audio outside bursts is silence.
    """
    words, _ = _layout(transcript, voice_id, sample_rate, speed)
    return [(w.text, w.start / sample_rate, (w.start + w.length) / sample_rate) for w in words]


def _phoneme_spans(word: _Word) -> list[tuple[str, int, int]]:
    letters = [ch.lower() for ch in word.text if ch.isalnum()]
    edges = [word.start + word.length * i // len(letters) for i in range(len(letters) + 1)]
    return [(letter, edges[i], edges[i + 1]) for i, letter in enumerate(letters)]


def render_phoneme_timestamps(
    transcript: str, voice_id: str, sample_rate: int, *, speed: float = 1.0
) -> list[tuple[str, float, float]]:
    """``(phoneme, start, end)`` like :func:`render_timestamps`; the emulator's phonemes
    are the lower-cased letters and digits of each word, sharing its burst equally."""
    words, _ = _layout(transcript, voice_id, sample_rate, speed)
    return [
        (letter, start / sample_rate, end / sample_rate)
        for word in words
        for letter, start, end in _phoneme_spans(word)
    ]


# --- Faults -----------------------------------------------------------------------------

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


class _Dropped(Exception):
    """A fault ended the connection; the context task stops quietly."""


# --- Logs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """A handshake the emulator refused."""

    status: int
    path: str
    reason: str


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


@dataclass(frozen=True)
class EmulatorStats:
    """Totals over every connection so far."""

    connections: int
    rejected: int
    messages_received: int
    cancels: int
    chunks_sent: int
    audio_bytes_sent: int
    faults_fired: int


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
        return _Problem("voice must be {'mode': 'id', 'id': '<voice id>'}")
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
    if isinstance(voice, dict) and voice.get("mode") == "id":
        voice = voice.get("id")
    # API 2026-08-14 also accepts the id as a bare string.
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

_OPEN, _ENDING, _CANCELLED, _FINISHED = "open", "ending", "cancelled", "finished"


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

    def __init__(self, connection: _Connection, context_id: str) -> None:
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
        self.task = asyncio.get_running_loop().create_task(self._run())

    # --- input side

    def on_request(self, message: dict[str, Any]) -> None:
        if self.state != _OPEN:
            return  # input after the end or a cancel is ignored (the log still has it)
        problem = _problem_with(message)
        first = self.format is None
        if problem is None and first and not any(ch.isalnum() for ch in message["transcript"]):
            problem = _EMPTY_FIRST_TRANSCRIPT
        if problem is not None:
            # An error is terminal for its context; segments queued before it still stream.
            self.state, self.text = _ENDING, ""
            self.jobs.put_nowait(_End(problem))
            return
        if first:
            self.format = _output_format(message["output_format"])
            self.voice_id = _voice_id(message["voice"]) or ""
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
                    continue
                if job.problem is not None:
                    await connection.send(connection.error_frame(job.problem, self.id))
                elif not job.silent:
                    await connection.fault_point(self, self.flush_id, "done", 0)
                    await connection.send(connection.done_frame(self.id))
                self.state = _FINISHED
                return
        except (ConnectionClosed, _Dropped):
            pass  # the client is gone: nothing left to deliver

    async def _stream(self, segment: _Segment) -> None:
        connection, emulator = self.connection, self.connection.emulator
        fmt = self.format
        assert fmt is not None  # segments are only queued after a valid first request
        began = time.perf_counter()
        words, total = _layout(segment.text, self.voice_id, fmt.sample_rate, segment.speed)
        audio = encode_samples(_synthesize(words, total, fmt.sample_rate), fmt)
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

    def _marks(self, segment: _Segment, words: list[_Word], rate: int) -> list[_Mark]:
        """The segment's words and phonemes to report, ordered by first sample."""
        base = self.samples_streamed  # timestamps are in context time, not segment time
        marks: list[_Mark] = []
        for word in words:
            spans: list[tuple[str, str, int, int]] = []
            if segment.word_timestamps:
                spans.append(("timestamps", word.text, word.start, word.start + word.length))
            if segment.phoneme_timestamps:
                spans.extend(("phoneme_timestamps", *span) for span in _phoneme_spans(word))
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


class _Connection:
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
        context.on_request(message)

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


# --- The server -------------------------------------------------------------------------


def _first(values: Sequence[str] | None) -> str | None:
    return values[0] if values else None


def _presented_keys(headers: Headers, query: dict[str, list[str]]) -> list[str]:
    keys = list(headers.get_all("X-API-Key"))
    for value in headers.get_all("Authorization"):
        scheme, _, credential = value.partition(" ")
        if scheme.lower() == "bearer":
            keys.append(credential.strip())
    return keys + query.get("api_key", []) + query.get("access_token", [])


class Emulator:
    """A Cartesia-compatible TTS websocket server on ``host:port`` (0 picks a free port).

    Use it as ``async with Emulator(...) as emu``, with :meth:`start` / :meth:`stop`, from
    sync code with :meth:`running_in_thread`, or as a service with :meth:`serve_forever`.

    Handshake:
        api_key: when set, a connection must present it as ``Authorization: Bearer K``,
            ``X-API-Key: K``, ``?api_key=K`` or ``?access_token=K``, else HTTP 401.
            None accepts any key or none.
        reject_429: refuse every connection with HTTP 429 (the parallel-socket limit).
        compression: None (default) or ``"deflate"`` to accept permessage-deflate.
        max_size: largest client message in bytes; a bigger one closes with 1009.
        idle_timeout: seconds without traffic in either direction before the server
            closes with 1000 ``connection idle timeout``; None never closes.

    Stream shape:
        error_shape: ``"legacy"`` (``error`` string) or ``"structured"`` (``error_code``,
            ``title``, ``message``, ...); None (default) picks by the API version the
            client sends (structured from 2026-03-01).
        flush_id_base: the flush id of a context's first segment (1 as documented; 0 as
            older SDKs assumed).
        flush_id_on_chunks: whether chunks (and timestamps) carry ``flush_id``;
            ``flush_done`` always does.
        flush_done_before_done: also send ``flush_done`` for a context's last segment
            before ``done`` (whether the real server does is unknown).
        done_after_cancel: send ``done`` after a cancelled context's running segment.
        chunk_ms: audio per chunk, in milliseconds.
        odd_chunks: make every chunk but the last an odd number of bytes, so 16- and
            32-bit samples straddle chunks.
        pace: ``"fast"`` (only yield between chunks), ``"realtime"``, or a float: that
            many seconds of audio per second.
        faults: faults for every connection, e.g. ``"drop@chunk:3"``; see the module
            docstring.
        record_messages: keep every client message in :attr:`ConnectionLog.received`;
            turn it off for a long-running server (the counts are kept either way).

    ``connections`` logs every accepted connection, ``rejected`` every refused
    handshake, and ``stats`` sums them up.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        reject_429: bool = False,
        compression: Literal["deflate"] | None = None,
        max_size: int | None = 2**20,
        idle_timeout: float | None = 300.0,
        error_shape: Literal["legacy", "structured"] | None = None,
        flush_id_base: int = 1,
        flush_id_on_chunks: bool = True,
        flush_done_before_done: bool = False,
        done_after_cancel: bool = True,
        chunk_ms: float = 100.0,
        odd_chunks: bool = False,
        pace: Literal["fast", "realtime"] | float = "fast",
        faults: FaultSpec = (),
        record_messages: bool = True,
    ) -> None:
        if compression not in (None, "deflate"):
            raise ValueError(f"compression must be None or 'deflate', not {compression!r}")
        if error_shape not in (None, "legacy", "structured"):
            raise ValueError(f"error_shape must be None, 'legacy' or 'structured', not {error_shape!r}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive or None, not {idle_timeout!r}")
        if isinstance(flush_id_base, bool) or not isinstance(flush_id_base, int):
            raise ValueError(f"flush_id_base must be an integer, not {flush_id_base!r}")
        if not 0 < chunk_ms <= 60_000:  # (nan and inf fail too: a chunk is whole samples)
            raise ValueError(f"chunk_ms must be above 0 and at most 60000, not {chunk_ms!r}")
        if api_key == "":
            raise ValueError("api_key must be None (accept any key) or a non-empty key")
        if pace == "fast":
            self._pace_factor: float | None = None
        elif pace == "realtime":
            self._pace_factor = 1.0
        elif isinstance(pace, (int, float)) and not isinstance(pace, bool) and pace > 0:
            self._pace_factor = float(pace)
        else:
            raise ValueError(f"pace must be 'fast', 'realtime' or a positive number, not {pace!r}")
        self.host = host
        self.api_key = api_key
        self.reject_429 = reject_429
        self.compression = compression
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.error_shape = error_shape
        self.flush_id_base = flush_id_base
        self.flush_id_on_chunks = flush_id_on_chunks
        self.flush_done_before_done = flush_done_before_done
        self.done_after_cancel = done_after_cancel
        self.chunk_ms = chunk_ms
        self.odd_chunks = odd_chunks
        self.pace = pace
        self.faults = parse_faults(faults)
        self.record_messages = record_messages
        self.connections: list[ConnectionLog] = []
        self.rejected: list[Rejection] = []
        self._requested_port = port
        self._port: int | None = None
        self._server: Server | None = None

    # --- addresses

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not running")
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port``: what the SDK takes as ``websocket_base_url``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The full endpoint, ``ws://host:port/tts/websocket``."""
        return self.url + WS_PATH

    # --- life cycle

    async def start(self) -> Emulator:
        """Bind and start accepting connections (on the running event loop)."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        self._server = await serve(
            self._handle,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            process_response=self._process_response,
            compression=self.compression,
            max_size=self.max_size,
            # Cartesia has no keepalive of its own; the idle timeout is the only one.
            ping_interval=None,
            close_timeout=5,
            server_header="flushsink-emulator",
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    async def stop(self, timeout: float = 10.0) -> None:
        """Close every connection (1001) and stop listening. Idempotent."""
        server, self._server, self._port = self._server, None, None
        if server is None:
            return
        server.close()
        await asyncio.wait_for(server.wait_closed(), timeout)

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def serve_forever(self, ready: Callable[[Emulator], None] | None = None) -> None:
        """Run until cancelled (e.g. by Ctrl-C under ``asyncio.run``), then stop.

        ``ready`` is called once the port is bound, e.g. to print :attr:`ws_url`.
        """
        await self.start()
        try:
            if ready is not None:
                ready(self)
            await asyncio.Event().wait()
        finally:
            await self.stop()

    @contextlib.contextmanager
    def running_in_thread(self, timeout: float = 10.0) -> Iterator[Emulator]:
        """Run the emulator on its own event loop in a daemon thread, for sync code::

            with Emulator().running_in_thread() as emu:
                ...  # emu.ws_url is listening

        On exit the server is stopped and the thread joined (each within ``timeout``).
        """
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="flushsink-emulator", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout)
            yield self
        finally:
            try:
                asyncio.run_coroutine_threadsafe(self.stop(timeout), loop).result(timeout)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout)
                if not thread.is_alive():
                    loop.close()

    # --- pacing

    def chunk_bytes(self, fmt: AudioFormat) -> int:
        """Bytes of audio per chunk frame for ``fmt``."""
        size = max(1, round(fmt.sample_rate * self.chunk_ms / 1000)) * fmt.sample_width
        return size | 1 if self.odd_chunks else size

    async def _pace_after(
        self, loop: asyncio.AbstractEventLoop, started: float, audio_seconds: float
    ) -> None:
        """Wait after a chunk: just yield (so contexts interleave), or keep the pace."""
        if self._pace_factor is None:
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(max(0.0, started + audio_seconds / self._pace_factor - loop.time()))

    # --- statistics

    @property
    def stats(self) -> EmulatorStats:
        logs = list(self.connections)  # the server thread may append meanwhile
        return EmulatorStats(
            connections=len(logs),
            rejected=len(self.rejected),
            messages_received=sum(log.messages_received for log in logs),
            cancels=sum(log.cancels_received for log in logs),
            chunks_sent=sum(log.sent["chunk"] for log in logs),
            audio_bytes_sent=sum(log.audio_bytes_sent for log in logs),
            faults_fired=sum(len(log.fired) for log in logs),
        )

    # --- handshake and connections

    def _reject(self, connection: ServerConnection, status: int, path: str, reason: str) -> Response:
        self.rejected.append(Rejection(status, path, reason))
        return connection.respond(status, reason + "\n")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        target = urlsplit(request.path)
        query = parse_qs(target.query)
        if target.path != WS_PATH:
            return self._reject(connection, 404, request.path, "Not Found")
        if self.api_key is not None and self.api_key not in _presented_keys(request.headers, query):
            return self._reject(connection, 401, request.path, "Invalid API key")
        if self.reject_429:
            return self._reject(connection, 429, request.path, "Too many concurrent websocket connections")
        try:
            parse_faults(",".join(query.get("fault", [])))
        except ValueError as exc:
            return self._reject(connection, 400, request.path, str(exc))
        return None

    @staticmethod
    def _process_response(connection: ServerConnection, request: Request, response: Response) -> None:
        response.headers["X-Request-Id"] = str(connection.id)  # LiveKit logs this header

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # the handler only runs after a handshake
        query = parse_qs(urlsplit(request.path).query)
        version = (
            _first(request.headers.get_all("Cartesia-Version"))
            or _first(query.get("cartesia_version"))
            or DEFAULT_VERSION
        )
        structured = (
            self.error_shape == "structured"
            if self.error_shape is not None
            else version >= STRUCTURED_ERRORS_SINCE
        )
        log = ConnectionLog(
            request_id=str(ws.id),
            path=request.path,
            headers={name.lower(): value for name, value in request.headers.raw_items()},
            version=version,
            structured_errors=structured,
            faults=self.faults + parse_faults(",".join(query.get("fault", []))),
        )
        self.connections.append(log)
        await _Connection(self, ws, log).run()
