"""A local ElevenLabs-compatible TTS websocket server: ``stream-input`` and
``multi-stream-input``, as the official ``elevenlabs`` SDK (2.78.0), ElevenLabs' docs and
real server messages quoted in public issues describe them.

Endpoints: ``/v1/text-to-speech/{voice_id}/stream-input`` (one stream per socket) and
``/v1/text-to-speech/{voice_id}/multi-stream-input`` (up to five contexts per socket); any
other path gets HTTP 404. Query: ``output_format`` (``pcm_8000`` ... ``pcm_48000``, raw s16le,
and ``ulaw_8000``, raw mu-law), ``inactivity_timeout`` (seconds, default 20, at most 180);
``model_id``, ``sync_alignment``, ``auto_mode`` and the rest are accepted and recorded.
The emulator renders raw audio only, so an ``mp3_*`` or ``opus_*`` format, like a missing
``output_format`` (the service's default is ``mp3_44100_128``), is refused with an error.

How text becomes audio
----------------------

Each stream (and each context) buffers the ``text`` of every message it receives, the
initial ``" "`` included. A *generation* takes the whole buffer when

- a message carries ``flush: true`` (its own text is buffered first);
- input ends: ``{"text": ""}`` on ``stream-input``, which then sends ``{"isFinal": true}``
  and closes with 1000 (the official SDK reads until the socket closes).

Nothing else starts one: the emulator ignores ``chunk_length_schedule``,
``try_trigger_generation`` and ``auto_mode`` (the service's length-based buffering), so a
test can say which text each generation holds. A generation's audio is exactly
``render(text, voice_id, fmt, speed=voice_settings.speed or 1.0)`` with ``fmt`` from
:data:`OUTPUT_FORMATS`; a buffer without a letter or digit generates nothing. Generations
of one stream stream in order; the contexts of a socket stream concurrently.

On ``multi-stream-input``: a message names its context with ``context_id`` (or
``contextId``); the first message for an id opens the context (a sixth open context is an
error), a message without one goes to the context :data:`DEFAULT_CONTEXT_ID`, except
``{"text": ""}`` alone, which only keeps the socket alive. ``{"text": "", "context_id": C}``
is a keep-alive too: it never ends the context. ``close_context: true`` drops the text not
yet flushed (flush first to have it spoken), lets the generations already asked for
finish, then sends one ``{"isFinal": true, "contextId": C}``; the context's slot is free at
once, and its id may start a new context. ``close_socket: true`` drops unflushed text
everywhere, finishes the flushed generations (no ``isFinal``) and closes with 1000.

Audio messages are ``{"audio": b64, "isFinal": null, "normalizedAlignment": A,
"alignment": A}`` (plus ``"contextId"`` on multi). Alignment ``A`` covers the
generation's text with its whitespace runs collapsed to single spaces (the emulator does
no text normalisation, so both alignments are the same): each word's characters share
its tone burst equally (:func:`~flushsink.emulator.speech.layout`), spaces and
punctuation-only tokens share the pauses between bursts, and the last character lasts to
the end of the audio. A message is cut at a character boundary once it holds at least
``chunk_ms`` of audio, so its characters tile it exactly: ``charStartTimesMs`` and
``charDurationsMs`` are whole milliseconds from the message's first sample, and the last
start plus its duration is the message's length in ms (floors of sample times).

Errors are ``{"message": ..., "error": <code>, "code": 1008}`` followed by a close 1008
whose reason is the message (cut to the 123 bytes a close reason can hold): a message
that is not a JSON object of the expected shape, a wrong API key, a changed
``voice_settings``, a sixth context, a refused query, or no message for
``inactivity_timeout`` seconds (audio being sent counts as activity).

Authentication, when the emulator has an ``api_key``: the key may come in the
``xi-api-key`` header, the ``authorization`` query parameter, or the socket's first
message (``xi_api_key``, ``xi-api-key`` or ``authorization``, with or without
``Bearer``). It is checked when the first message arrives, so a bad key is answered the
way the service answers others: the error message and close 1008.

The emulator's own choices, where what the service does is unknown: the default
context's id; ``close_context`` dropping unflushed text (read from the SDK's docstring,
"if it has already been set to flush it will continue flushing"); no ``isFinal`` on
``close_socket``; one inactivity clock per socket (the service may keep one per
context); errors without ``contextId``; the ``error`` codes and wordings not marked
observed below; checking the key at the first message rather than at the handshake.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..formats import AudioFormat, encode_samples
from ._local import LocalServer
from .speech import Word, layout, synthesize

__all__ = [
    "ElevenLabsEmulator",
    "ElevenLabsLog",
    "Generation",
    "OUTPUT_FORMATS",
    "DEFAULT_CONTEXT_ID",
    "MAX_CONTEXTS",
]

STREAM_INPUT = "stream-input"
MULTI_STREAM_INPUT = "multi-stream-input"
_PATH = re.compile(r"/v1/text-to-speech/([^/]+)/(stream-input|multi-stream-input)")

#: The ``output_format`` values the emulator renders: raw s16le PCM and raw mu-law.
OUTPUT_FORMATS: Mapping[str, AudioFormat] = {
    **{f"pcm_{rate}": AudioFormat("pcm_s16le", rate)
       for rate in (8000, 16000, 22050, 24000, 32000, 44100, 48000)},
    "ulaw_8000": AudioFormat("pcm_mulaw", 8000),
}
#: The service's format when the query names none (MP3, which the emulator does not render).
DEFAULT_OUTPUT_FORMAT = "mp3_44100_128"
#: Contexts one ``multi-stream-input`` socket may hold open at once.
MAX_CONTEXTS = 5
#: The context of multi-stream messages that name none (the service's name for it is unknown).
DEFAULT_CONTEXT_ID = "default"
DEFAULT_INACTIVITY_TIMEOUT = 20.0
MAX_INACTIVITY_TIMEOUT = 180.0
_MIN_SPEED, _MAX_SPEED = 0.7, 1.2  # voice_settings.speed, as the SDK documents it


class Generation(NamedTuple):
    """One generation: the text rendered for a context (None on ``stream-input``)."""

    context_id: str | None
    text: str
    speed: float


@dataclass
class ElevenLabsLog:
    """What one accepted connection received and sent (updated while it runs)."""

    request_id: str
    path: str
    voice_id: str
    multi: bool
    #: The query parameters (the last value of a repeated one).
    query: dict[str, str]
    #: Request headers, names lower-cased (a repeated header keeps its last value).
    headers: dict[str, str]
    #: Every client message in arrival order: the parsed JSON, or the raw frame if it was
    #: not JSON (empty when the emulator was made with ``record_messages=False``).
    received: list[Any] = field(default_factory=list)
    messages_received: int = 0
    #: Server messages sent, by kind: ``"audio"``, ``"final"``, ``"error"``.
    sent: Counter[str] = field(default_factory=Counter)
    audio_bytes_sent: int = 0
    #: The generations asked for, in order: what each one renders (empty, like
    #: ``received``, when the emulator was made with ``record_messages=False``).
    generations: list[Generation] = field(default_factory=list)
    #: The close code: the server's own once it decides to close, else the client's;
    #: None while open.
    close_code: int | None = None
    closed: bool = False


class _Problem(NamedTuple):
    """What the emulator refuses: an error message, then close 1008."""

    message: str
    error: str


# The wordings marked "observed" are the real service's, quoted in public issues; the
# others are the emulator's own (what the service says there is unknown).
_UNPARSABLE = _Problem(  # observed: elevenlabs/elevenlabs-python#167
    "Could not parse input message, make sure it is a json and follows the schema outlined in protocol.",
    "invalid_input_message",
)
_TOO_MANY_CONTEXTS = _Problem(  # observed: livekit/agents-js#1985
    f"Maximum simultaneous contexts per WebSocket connection exceeded ({MAX_CONTEXTS}). "
    "Please close an existing context before opening a new one.",
    "max_active_conversations",
)
_VOICE_SETTINGS_CHANGED = _Problem(  # observed (message): pipecat-ai/pipecat#4541
    "voice_settings field must be provided in the first message and then either be not provided "
    "or not change.",
    "invalid_voice_settings",
)
#: The most text a stream buffers for one generation (characters): the renderer's audio
#: grows with the text, so a client must not be able to make it take unbounded memory.
MAX_BUFFERED_TEXT = 20_000
_TEXT_TOO_LONG = _Problem(
    f"more than {MAX_BUFFERED_TEXT} characters buffered without a flush",
    "input_too_long",
)
_BAD_VOICE_SETTINGS = _Problem(
    f"voice_settings must be an object whose speed, if given, is a number from {_MIN_SPEED} to {_MAX_SPEED}.",
    "invalid_voice_settings",
)
_BAD_API_KEY = _Problem("Invalid API key", "invalid_api_key")  # as the REST API words it


def _inactivity(timeout: float) -> _Problem:
    # observed: elevenlabs/elevenlabs-docs#426 (a maintainer quoting the server's code)
    return _Problem(
        f"Have not received a new text input within the timeout of {timeout:g} seconds. "
        "Streaming input terminated. Please make sure to either feed the input in the timely "
        'manner, or to send the end of input text (empty string "") when done.',
        "input_timeout_exceeded",
    )


def _close_reason(message: str) -> str:
    """The message cut to the 123 bytes a close frame's reason may hold (on a character)."""
    return message.encode("utf-8")[:123].decode("utf-8", "ignore")


def _output_format(name: str | None) -> AudioFormat | _Problem:
    if name is None:
        return _Problem(
            f"output_format is missing, and the service's default {DEFAULT_OUTPUT_FORMAT!r} is MP3, which "
            f"the emulator does not render; ask for one of {', '.join(OUTPUT_FORMATS)}",
            "unsupported_output_format",
        )
    fmt = OUTPUT_FORMATS.get(name)
    if fmt is not None:
        return fmt
    return _Problem(
        f"output_format {name!r} is not emulated: the emulator renders raw audio only, "
        f"one of {', '.join(OUTPUT_FORMATS)}",
        "unsupported_output_format",
    )


def _inactivity_timeout(value: str | None) -> float | _Problem:
    if value is None:
        return DEFAULT_INACTIVITY_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_INACTIVITY_TIMEOUT:  # (nan fails too)
        return _Problem(
            f"inactivity_timeout must be a number of seconds above 0 and at most "
            f"{MAX_INACTIVITY_TIMEOUT:g}, not {value!r}",
            "invalid_request",
        )
    return seconds


def _speed(voice_settings: Any) -> float | None:
    """The speed ``voice_settings`` asks for (1.0 when it names none); None if invalid."""
    if voice_settings is None:
        return 1.0
    if not isinstance(voice_settings, dict):
        return None
    speed = voice_settings.get("speed")
    if speed is None:
        return 1.0
    if isinstance(speed, bool) or not isinstance(speed, (int, float)):
        return None
    if not _MIN_SPEED <= speed <= _MAX_SPEED:
        return None
    return float(speed)


def _shape_problem(message: Any, multi: bool) -> _Problem | None:
    """Whether a message has the protocol's shape (snake_case fields, their JSON types)."""
    if not isinstance(message, dict):
        return _UNPARSABLE
    if not multi and "text" not in message:
        return _UNPARSABLE  # every stream-input message carries text
    if "text" in message and not isinstance(message["text"], str):
        return _UNPARSABLE
    for name in ("flush", "close_context", "close_socket", "try_trigger_generation"):
        if message.get(name) is not None and not isinstance(message[name], bool):
            return _UNPARSABLE
    for name in ("context_id", "contextId"):
        if name in message and not isinstance(message[name], str):
            return _UNPARSABLE
    return None


# --- Alignment -------------------------------------------------------------------------


class _Chunk(NamedTuple):
    """One audio message: samples ``[start, end)`` of a generation and its characters."""

    start: int
    end: int
    chars: list[str]
    char_starts_ms: list[int]
    char_durations_ms: list[int]


def _spread(chars: list[str], start: int, end: int) -> list[tuple[str, int, int]]:
    count = len(chars)
    span = end - start
    return [(ch, start + span * i // count, start + span * (i + 1) // count) for i, ch in enumerate(chars)]


def _char_spans(text: str, words: list[Word], total: int) -> list[tuple[str, int, int]]:
    """Each character of the generation's tokens joined by single spaces, with the samples
    ``[first, end)`` it covers; together they tile ``[0, total)``."""
    spans: list[tuple[str, int, int]] = []
    between: list[str] = []  # characters waiting for the next burst: they share the pause
    pause_start = 0
    bursts = iter(words)
    for index, token in enumerate(text.split()):
        if index:
            between.append(" ")
        if any(ch.isalnum() for ch in token):  # layout's rule: this token is a word
            word = next(bursts)
            spans += _spread(between, pause_start, word.start)
            spans += _spread(list(token), word.start, word.start + word.length)
            between, pause_start = [], word.start + word.length
        else:
            between.extend(token)
    spans += _spread(between, pause_start, total)
    char, first, _ = spans[-1]
    spans[-1] = (char, first, total)  # the closing pause belongs to the last character
    return spans


def _chunks(text: str, words: list[Word], total: int, rate: int, chunk_samples: int) -> list[_Chunk]:
    """Cut a generation into messages at character boundaries, each at least
    ``chunk_samples`` long (but the last), with its alignment in ms from its start."""

    def ms(sample: int) -> int:
        return sample * 1000 // rate

    def chunk(start: int, end: int, spans: list[tuple[str, int, int]]) -> _Chunk:
        return _Chunk(
            start,
            end,
            [ch for ch, _, _ in spans],
            [ms(first) - ms(start) for _, first, _ in spans],
            [ms(last) - ms(first) for _, first, last in spans],
        )

    chunks: list[_Chunk] = []
    pending: list[tuple[str, int, int]] = []
    start = 0
    for span in _char_spans(text, words, total):
        pending.append(span)
        end = span[2]
        if end - start >= chunk_samples and end < total:
            chunks.append(chunk(start, end, pending))
            pending, start = [], end
    if pending:
        chunks.append(chunk(start, total, pending))
    return chunks


# --- One connection ----------------------------------------------------------------------


class _Generate(NamedTuple):
    text: str
    speed: float


class _End(NamedTuple):
    final: bool  # send isFinal (False: close_socket ends the context silently)


class _Stream:
    """The stream of ``stream-input``, or one context of ``multi-stream-input``. Input
    bookkeeping runs in the connection's reader; generation in the stream's own task."""

    def __init__(
        self, connection: _Connection, context_id: str | None, first: dict[str, Any], speed: float
    ) -> None:
        self.connection = connection
        self.id = context_id
        self.voice_settings = first.get("voice_settings")  # fixed by the first message
        self.speed = speed
        self.text = ""  # buffered, not yet part of a generation
        self.jobs: asyncio.Queue[_Generate | _End] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    def take(self, message: dict[str, Any], first: bool) -> _Problem | None:
        """Buffer a message's text and start a generation on ``flush``."""
        if not first and "voice_settings" in message and message["voice_settings"] != self.voice_settings:
            return _VOICE_SETTINGS_CHANGED
        self.text += message.get("text") or ""
        if len(self.text) > MAX_BUFFERED_TEXT:
            return _TEXT_TOO_LONG
        if message.get("flush") is True:
            self.generate()
        return None

    def generate(self) -> None:
        text, self.text = self.text, ""
        if any(ch.isalnum() for ch in text):  # nothing to say: no generation
            if self.connection.emulator.record_messages:
                self.connection.log.generations.append(Generation(self.id, text, self.speed))
            self.jobs.put_nowait(_Generate(text, self.speed))

    def end(self, *, final: bool, speak_buffer: bool) -> None:
        """No more input: speak the buffer or drop it, then finish (with ``isFinal``)."""
        if speak_buffer:
            self.generate()
        self.text = ""
        self.jobs.put_nowait(_End(final))

    async def _run(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                job = await self.jobs.get()
                if isinstance(job, _End):
                    if job.final:
                        await self.connection.send(self.connection.final_message(self.id), "final")
                    return
                await self._stream(job)

    async def _stream(self, job: _Generate) -> None:
        connection, emulator = self.connection, self.connection.emulator
        fmt = connection.format
        words, total = layout(job.text, connection.voice_id, fmt.sample_rate, job.speed)
        audio = encode_samples(synthesize(words, total, fmt.sample_rate), fmt)
        chunk_samples = max(1, round(fmt.sample_rate * emulator.chunk_ms / 1000))
        loop = asyncio.get_running_loop()
        paced_from = loop.time()
        for chunk in _chunks(job.text, words, total, fmt.sample_rate, chunk_samples):
            piece = audio[chunk.start * fmt.sample_width : chunk.end * fmt.sample_width]
            alignment = {
                "chars": chunk.chars,
                "charStartTimesMs": chunk.char_starts_ms,
                "charDurationsMs": chunk.char_durations_ms,
            }
            message: dict[str, Any] = {
                "audio": base64.b64encode(piece).decode("ascii"),
                "isFinal": None,
                "normalizedAlignment": alignment,
                "alignment": alignment,
            }
            if self.id is not None:
                message["contextId"] = self.id
            await connection.send(message, "audio", len(piece))
            await emulator._pace_after(loop, paced_from, chunk.end / fmt.sample_rate)


class _Connection:
    """One accepted websocket: reads client messages, owns the streams, reports errors."""

    def __init__(self, emulator: ElevenLabsEmulator, ws: ServerConnection, log: ElevenLabsLog) -> None:
        self.emulator = emulator
        self.ws = ws
        self.log = log
        self.voice_id = log.voice_id
        self.format = AudioFormat()  # replaced by the query's before any generation
        self.inactivity_timeout = DEFAULT_INACTIVITY_TIMEOUT
        self.streams: dict[str | None, _Stream] = {}  # open: by context id (None: stream-input)
        self.tasks: set[asyncio.Task[None]] = set()  # the streams' running ones
        self.authorized = emulator.api_key is None
        self.failed = False
        self.loop = asyncio.get_running_loop()
        self.last_activity = self.loop.time()

    async def run(self) -> None:
        watchdog: asyncio.Task[None] | None = None
        try:
            problem = self._take_query()
            if problem is not None:
                await self.fail(problem)
                return
            watchdog = self.loop.create_task(self._close_when_inactive())
            async for raw in self.ws:
                self.last_activity = self.loop.time()
                if not await self._on_message(raw):
                    break
        except ConnectionClosed:
            pass
        finally:
            pending = [task for task in (*self.tasks, watchdog) if task is not None]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self.log.close_code is None:  # the client closed first
                self.log.close_code = self.ws.protocol.close_code
            self.log.closed = True

    def _take_query(self) -> _Problem | None:
        fmt = _output_format(self.log.query.get("output_format"))
        if isinstance(fmt, _Problem):
            return fmt
        timeout = _inactivity_timeout(self.log.query.get("inactivity_timeout"))
        if isinstance(timeout, _Problem):
            return timeout
        self.format, self.inactivity_timeout = fmt, timeout
        return None

    async def _close_when_inactive(self) -> None:
        while (remaining := self.last_activity + self.inactivity_timeout - self.loop.time()) > 0:
            await asyncio.sleep(remaining)
        await self.fail(_inactivity(self.inactivity_timeout))

    async def _on_message(self, raw: str | bytes) -> bool:
        """Take one client message; False once the connection is ending."""
        self.log.messages_received += 1
        try:
            message = json.loads(raw)
        except ValueError:  # also bad UTF-8 in a binary frame
            message = raw
            self._record(raw)
        else:
            self._record(message)
        problem = _shape_problem(message, self.log.multi)
        if problem is None and not self.authorized:
            problem = self._authorize(message)
        if problem is not None:
            await self.fail(problem)
            return False
        return await (self._on_multi(message) if self.log.multi else self._on_single(message))

    def _authorize(self, first: dict[str, Any]) -> _Problem | None:
        request = self.ws.request
        assert request is not None
        presented = [*request.headers.get_all("xi-api-key"), self.log.query.get("authorization")]
        presented += [first.get(name) for name in ("xi_api_key", "xi-api-key", "authorization")]
        keys = {key.removeprefix("Bearer ").strip() for key in presented if isinstance(key, str)}
        if self.emulator.api_key not in keys:
            return _BAD_API_KEY
        self.authorized = True
        return None

    def _take(self, context_id: str | None, message: dict[str, Any]) -> _Problem | None:
        """Give a message to its stream, opening the stream with its first message."""
        stream = self.streams.get(context_id)
        if stream is not None:
            return stream.take(message, first=False)
        if len(self.streams) >= self.emulator.max_contexts:
            return _TOO_MANY_CONTEXTS
        speed = _speed(message.get("voice_settings"))
        if speed is None:
            return _BAD_VOICE_SETTINGS
        stream = self.streams[context_id] = _Stream(self, context_id, message, speed)
        self.tasks.add(stream.task)
        stream.task.add_done_callback(self.tasks.discard)  # (a long connection's ended ones)
        return stream.take(message, first=True)

    async def _on_single(self, message: dict[str, Any]) -> bool:
        problem = self._take(None, message)
        if problem is not None:
            await self.fail(problem)
            return False
        if message["text"] != "":
            return True
        # End of input: the rest of the buffer, isFinal, then close 1000 (the official SDK
        # reads until the socket closes). Later input is not read.
        stream = self.streams[None]
        stream.end(final=True, speak_buffer=True)
        await stream.task
        await self.close(1000)
        return False

    async def _on_multi(self, message: dict[str, Any]) -> bool:
        if message.get("close_socket") is True:
            for context in self.streams.values():
                context.end(final=False, speak_buffer=False)
            await asyncio.gather(*self.tasks)
            await self.close(1000)
            return False
        context_id = message.get("context_id", message.get("contextId"))
        closing = message.get("close_context") is True
        if context_id is None:
            if message.get("text") == "" and not message.get("flush") and not closing:
                return True  # a keep-alive for the socket, not for a context
            context_id = DEFAULT_CONTEXT_ID
        if closing and context_id not in self.streams and not message.get("flush"):
            return True  # closing a context that is not open: nothing to do
        problem = self._take(context_id, message)
        if problem is not None:
            await self.fail(problem)
            return False
        if closing:
            # The slot is free at once; the id may open a new, unrelated context.
            self.streams.pop(context_id).end(final=True, speak_buffer=False)
        return True

    def _record(self, message: Any) -> None:
        if self.emulator.record_messages:
            self.log.received.append(message)

    # --- messages

    def final_message(self, context_id: str | None) -> dict[str, Any]:
        return {"isFinal": True} if context_id is None else {"isFinal": True, "contextId": context_id}

    async def send(self, message: dict[str, Any], kind: str, audio_bytes: int = 0) -> None:
        await self.ws.send(json.dumps(message))
        self.log.sent[kind] += 1
        self.log.audio_bytes_sent += audio_bytes
        self.last_activity = self.loop.time()

    async def fail(self, problem: _Problem) -> None:
        """Send the error message, then close 1008 with the message as the reason."""
        if self.failed:
            return
        self.failed = True
        with contextlib.suppress(ConnectionClosed):
            await self.send({"message": problem.message, "error": problem.error, "code": 1008}, "error")
        await self.close(1008, _close_reason(problem.message))

    async def close(self, code: int, reason: str = "") -> None:
        self.log.close_code = code  # before the client can see it
        await self.ws.close(code, reason)


# --- The server ----------------------------------------------------------------------------


class ElevenLabsEmulator(LocalServer):
    """An ElevenLabs-compatible TTS websocket server on ``host:port`` (0 picks a free port).

    Run it like the Cartesia :class:`~flushsink.emulator.Emulator`: ``async with``,
    :meth:`start` / :meth:`stop`, :meth:`running_in_thread` or :meth:`serve_forever`.
    :meth:`endpoint` gives a full URL; ``url`` (``ws://host:port``) is the base an SDK takes.

    Options:
        api_key: when set, a connection must present it (module docstring); None accepts
            any key or none.
        chunk_ms: the least audio per message, in milliseconds (messages end at a
            character boundary, so most are a little longer).
        pace: ``"fast"`` (only yield between messages), ``"realtime"``, or a float: that
            many seconds of audio per second.
        max_contexts: open contexts per ``multi-stream-input`` socket (5, as the service).
        compression: None (default) or ``"deflate"`` to accept permessage-deflate.
        max_size: largest client message in bytes; a bigger one closes with 1009.
        record_messages: keep every client message in :attr:`ElevenLabsLog.received`, and
            every generation's text in ``generations``; turn it off for a long-running
            server (the counts are kept either way).
        ssl: serve TLS with this context (``url`` then starts with ``wss://``): the
            official SDK dials ``wss`` whatever its ``base_url`` says, so this is how it
            reaches the emulator without touching its private attributes (the client
            must trust the certificate, e.g. through ``SSL_CERT_FILE``).

    ``connections`` logs every accepted connection, ``rejected`` every refused handshake.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        chunk_ms: float = 100.0,
        pace: Literal["fast", "realtime"] | float = "fast",
        max_contexts: int = MAX_CONTEXTS,
        compression: Literal["deflate"] | None = None,
        max_size: int | None = 2**20,
        record_messages: bool = True,
        ssl: SSLContext | None = None,
    ) -> None:
        if isinstance(max_contexts, bool) or not isinstance(max_contexts, int) or max_contexts < 1:
            raise ValueError(f"max_contexts must be a positive integer, not {max_contexts!r}")
        if compression not in (None, "deflate"):
            raise ValueError(f"compression must be None or 'deflate', not {compression!r}")
        self.max_contexts = max_contexts
        self.compression = compression
        self.max_size = max_size
        self.ssl = ssl
        self.connections: list[ElevenLabsLog] = []
        super().__init__(host, port, pace, api_key=api_key, chunk_ms=chunk_ms,
                         record_messages=record_messages)

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with ``ssl``): the base URL SDKs take."""
        base = super().url
        return "wss" + base[2:] if self.ssl is not None else base

    def endpoint(self, voice_id: str, *, multi: bool = False, **query: str | float | bool) -> str:
        """The URL of a voice's ``stream-input`` (or ``multi-stream-input``) with a query,
        e.g. ``emu.endpoint("v", output_format="pcm_24000")``."""
        endpoint = MULTI_STREAM_INPUT if multi else STREAM_INPUT
        path = f"/v1/text-to-speech/{quote(voice_id, safe='')}/{endpoint}"
        pairs = {name: str(value).lower() if isinstance(value, bool) else str(value)
                 for name, value in query.items()}
        return self.url + path + (f"?{urlencode(pairs)}" if pairs else "")

    def _serve_options(self) -> dict[str, Any]:
        return {
            "process_request": self._process_request,
            "compression": self.compression,
            "max_size": self.max_size,
            "ping_interval": None,  # the inactivity timeout is the only keepalive rule
            "ssl": self.ssl,
        }

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if _PATH.fullmatch(urlsplit(request.path).path) is None:
            return self._reject(connection, 404, request.path, "Not Found")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # the handler only runs after a handshake
        target = urlsplit(request.path)
        match = _PATH.fullmatch(target.path)
        assert match is not None  # _process_request refused every other path
        log = ElevenLabsLog(
            request_id=str(ws.id),
            path=request.path,
            voice_id=unquote(match[1]),
            multi=match[2] == MULTI_STREAM_INPUT,
            query=dict(parse_qsl(target.query)),
            headers={name.lower(): value for name, value in request.headers.raw_items()},
        )
        self.connections.append(log)
        await _Connection(self, ws, log).run()
