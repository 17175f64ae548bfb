"""A local OpenAI Realtime server (the websocket ``/v1/realtime`` endpoint), for tests and
demos: enough of the protocol for the official ``openai`` SDK's realtime client, GA or
beta, to hold a session and receive spoken responses::

    async with OpenAIRealtimeEmulator() as emu:
        client = AsyncOpenAI(api_key="sk-test", websocket_base_url=emu.websocket_base_url)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            ...
        expected = render("Hello there.", "alloy", AudioFormat("pcm_s16le", 24000))

What the assistant says
-----------------------
There is no model. A response speaks ``reply(text)`` where ``text`` is the text of the last
user message (its ``input_text`` parts, joined by a space): of the ``response.input`` items
when ``response.create`` carries some, else of the conversation. ``reply`` defaults to
repeating the text verbatim, so the audio of a response is exactly
``render(text, voice, format, speed=speed)`` with the session's output voice (``"alloy"``
unless changed), format and speed. A conversation without a user message gets a response
with no audio. The transcript deltas concatenate to that text; each goes out just before
the audio delta holding the start of its word.

Event names
-----------
GA names by default; beta names when the handshake carries ``OpenAI-Beta: realtime=v1``
(what ``client.beta.realtime.connect`` sends). The events a client can trigger:

- on connect: ``session.created``;
- ``session.update`` -> ``session.updated`` with the whole effective session (the update
  merged into it: a tagged object, one with a ``type`` such as a format, replaces the old
  one; other objects merge key by key; ``model`` stays; the voice cannot change once
  audio was sent). GA requires ``session.type: "realtime"``. The
  output format is GA ``session.audio.output.format`` (``audio/pcm`` at 24 kHz,
  ``audio/pcmu``, ``audio/pcma``) or beta ``output_audio_format`` (``pcm16``,
  ``g711_ulaw``, ``g711_alaw``);
- ``conversation.item.create`` -> GA ``conversation.item.added`` then ``.done``; beta
  ``conversation.item.created``;
- ``response.create`` -> ``response.created``, ``response.output_item.added``, the item's
  ``conversation.item.added`` (beta ``.created``), ``response.content_part.added``, audio
  and transcript deltas, the audio's and the transcript's ``done``,
  ``response.content_part.done``, ``response.output_item.done``, GA
  ``conversation.item.done``, ``response.done`` (status ``completed``). One response at a
  time: another ``response.create`` meanwhile gets an ``error``;
- ``response.cancel`` -> the response stops before its next audio delta and ends with the
  same ``done`` events (the item ``incomplete``, the transcript what was spoken) and
  ``response.done`` with status ``cancelled``; with no response in progress, an ``error``;
- anything malformed (not JSON, not an object, no or an unknown ``type``, a bad field):
  an ``error`` event (``error.type``, ``code``, ``message``, ``param``, and ``event_id``
  naming the client event).

The other client events (input audio, ``conversation.item.truncate``/``delete``/
``retrieve``, ``output_audio_buffer.clear``, beta ``transcription_session.update``) are
recorded and otherwise ignored: there is no input audio, voice activity detection, tool
calling or text-only output here, and response-level overrides (``response.audio``,
``instructions``...) do not change what is spoken.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..formats import AudioFormat, encode_samples
from ._local import LocalServer
from .speech import Word, layout, synthesize

__all__ = [
    "OpenAIRealtimeEmulator", "RealtimeConnectionLog", "DEFAULT_VOICE", "DEFAULT_MODEL", "GA_FORMATS", "BETA_FORMATS",
]

DEFAULT_VOICE = "alloy"
#: The model a session reports when the URL names none.
DEFAULT_MODEL = "gpt-realtime"
_BETA_HEADER_VALUE = "realtime=v1"

#: Output formats by their GA ``type`` and their beta name. PCM is 24 kHz only, G.711 8 kHz.
GA_FORMATS = {
    "audio/pcm": AudioFormat("pcm_s16le", 24000),
    "audio/pcmu": AudioFormat("pcm_mulaw", 8000),
    "audio/pcma": AudioFormat("pcm_alaw", 8000),
}
BETA_FORMATS = {
    "pcm16": AudioFormat("pcm_s16le", 24000),
    "g711_ulaw": AudioFormat("pcm_mulaw", 8000),
    "g711_alaw": AudioFormat("pcm_alaw", 8000),
}
_SPEED_RANGE = (0.25, 1.5)

_CLIENT_EVENTS = frozenset({
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
})
_BETA_ONLY_CLIENT_EVENTS = frozenset({"transcription_session.update"})


class _Names(NamedTuple):
    """The event names and item shapes that differ between GA and beta."""

    audio_delta: str
    audio_done: str
    transcript_delta: str
    transcript_done: str
    item_created: str  # announces an item added to the conversation
    item_finished: str | None  # GA sends a second event when the item is final
    assistant_content: str  # the assistant message's audio content part type


_GA = _Names(
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "conversation.item.added",
    "conversation.item.done",
    "output_audio",
)
_BETA = _Names(
    "response.audio.delta",
    "response.audio.done",
    "response.audio_transcript.delta",
    "response.audio_transcript.done",
    "conversation.item.created",
    None,
    "audio",
)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:22]}"


@dataclass
class RealtimeConnectionLog:
    """What one accepted connection received and sent (updated while it runs)."""

    request_id: str
    path: str
    #: Request headers, names lower-cased (a repeated header keeps its last value).
    headers: dict[str, str]
    #: The ``model`` of the URL's query (None when absent).
    model: str | None
    #: Whether the client asked for the beta protocol (``OpenAI-Beta: realtime=v1``).
    beta: bool
    #: Every client event in arrival order: the parsed JSON, or the raw frame if it was not
    #: JSON (empty when the emulator was made with ``record_messages=False``).
    received: list[Any] = field(default_factory=list)
    messages_received: int = 0
    #: Server events sent, by ``type``.
    sent: Counter[str] = field(default_factory=Counter)
    audio_bytes_sent: int = 0
    #: Response id -> status: ``in_progress`` until its ``response.done``, then the final one.
    responses: dict[str, str] = field(default_factory=dict)
    closed: bool = False

    def received_of(self, event_type: str) -> list[dict[str, Any]]:
        """The client events of one ``type``."""
        return [m for m in self.received if isinstance(m, dict) and m.get("type") == event_type]


class _Invalid(Exception):
    """A client event the server refuses: becomes an ``error`` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _missing(param: str) -> _Invalid:
    # The wording of a real message (TanStack/ai#586); the emulator uses it for every field.
    return _Invalid("missing_required_parameter", f"Missing required parameter: '{param}'.", param)


def _invalid_value(param: str | None, value: Any, expected: str) -> _Invalid:
    # Quoted as in a real message: "Invalid value: 'input_text'. Value must be 'text'."
    shown = f"'{value}'" if isinstance(value, str) else json.dumps(value)
    return _Invalid("invalid_value", f"Invalid value: {shown}. {expected}", param)


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` applied: objects merge key by key, except a tagged object
    (one with a ``type``: a format, a turn detection) which replaces the old value, so that
    switching from ``audio/pcm`` to ``audio/pcmu`` does not keep the ``rate``."""
    result = dict(base)
    for key, value in update.items():
        old = result.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and "type" not in value:
            result[key] = _merged(old, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


class _Output(NamedTuple):
    """What a response sounds like, read from the session."""

    format: AudioFormat
    format_object: Any  # as the session says it: a GA format object or a beta name
    voice: str
    speed: float


def _voice_name(voice: Any, param: str) -> str:
    if isinstance(voice, dict) and "id" in voice:  # GA custom voices: {"id": "voice_..."}
        voice = voice["id"]
    if not isinstance(voice, str) or not voice:
        raise _invalid_value(param, voice, "Expected a voice name or {\"id\": ...}.")
    return voice


def _speed(speed: Any, param: str) -> float:
    low, high = _SPEED_RANGE
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not low <= speed <= high:
        raise _invalid_value(param, speed, f"Expected a number from {low} to {high}.")
    return float(speed)


def _ga_output(session: dict[str, Any]) -> _Output:
    audio = session.get("audio") or {}
    output = (audio.get("output") if isinstance(audio, dict) else None) or {}
    if not isinstance(output, dict):
        raise _invalid_value("session.audio.output", output, "Expected an object.")
    fmt = output.get("format") or {"type": "audio/pcm", "rate": 24000}
    if not isinstance(fmt, dict):
        raise _invalid_value("session.audio.output.format", fmt, "Expected an object.")
    kind = fmt.get("type")
    if not isinstance(kind, str) or kind not in GA_FORMATS:
        raise _invalid_value(
            "session.audio.output.format.type", kind, "Supported values are: " + ", ".join(map(repr, GA_FORMATS)) + "."
        )
    if kind == "audio/pcm" and fmt.get("rate", 24000) != 24000:
        raise _invalid_value("session.audio.output.format.rate", fmt.get("rate"), "Value must be 24000.")
    return _Output(
        GA_FORMATS[kind],
        fmt,
        _voice_name(output.get("voice", DEFAULT_VOICE), "session.audio.output.voice"),
        _speed(output.get("speed", 1.0), "session.audio.output.speed"),
    )


def _beta_output(session: dict[str, Any]) -> _Output:
    name = session.get("output_audio_format", "pcm16")
    if not isinstance(name, str) or name not in BETA_FORMATS:
        raise _invalid_value(
            "session.output_audio_format", name, "Supported values are: " + ", ".join(map(repr, BETA_FORMATS)) + "."
        )
    return _Output(
        BETA_FORMATS[name],
        name,
        _voice_name(session.get("voice", DEFAULT_VOICE), "session.voice"),
        _speed(session.get("speed", 1.0), "session.speed"),
    )


#: The longest user message a response speaks (characters): the emulator's own bound, so
#: that a client cannot make the renderer take unbounded memory.
MAX_REPLY_TEXT = 20_000


def _last_user_text(items: list[Any]) -> str:
    """The text of the last user message among ``items`` ("" when there is none)."""
    for item in reversed(items):
        if isinstance(item, dict) and item.get("type") == "message" and item.get("role") == "user":
            content = item.get("content")
            parts = content if isinstance(content, list) else []
            return " ".join(
                part["text"]
                for part in parts
                if isinstance(part, dict) and part.get("type") in ("input_text", "text")
                and isinstance(part.get("text"), str)
            )
    return ""


def _transcript_pieces(text: str, words: list[Word]) -> list[tuple[int, str]]:
    """``text`` cut at word starts, each piece with the first sample of its word.

    A piece is a whitespace-separated token with the whitespace after it (the first also
    with any before it), so the pieces concatenate to ``text``. Tokens are found as
    :func:`~.speech.layout` finds them; a token without a letter or digit is a pause there,
    not a word, and goes out with the word before it.
    """
    starts: list[int] = []
    sample_starts: list[int] = []
    position, spoken, current = 0, iter(words), 0
    for token in text.split():
        index = text.index(token, position)
        position = index + len(token)
        if any(ch.isalnum() for ch in token):
            current = next(spoken).start
        starts.append(index)
        sample_starts.append(current)
    if not starts:
        return [(0, text)] if text else []
    starts[0] = 0
    ends = starts[1:] + [len(text)]
    return [(sample, text[start:end]) for sample, start, end in zip(sample_starts, starts, ends)]


class _Response:
    """One response: what it says, how, and whether the client cancelled it."""

    def __init__(self, text: str, output: _Output, in_conversation: bool, metadata: Any) -> None:
        self.id = _new_id("resp")
        self.item_id = _new_id("item")
        self.text = text
        self.output = output
        self.in_conversation = in_conversation
        self.metadata = metadata
        self.cancelled = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class _Session:
    """One accepted websocket: the session, the conversation, the response in progress."""

    def __init__(self, emulator: OpenAIRealtimeEmulator, ws: ServerConnection, log: RealtimeConnectionLog) -> None:
        self.emulator = emulator
        self.ws = ws
        self.log = log
        self.beta = log.beta
        self.names = _BETA if log.beta else _GA
        self.session = self._initial_session(log.model or DEFAULT_MODEL)
        self.conversation_id = _new_id("conv")
        self.conversation: list[dict[str, Any]] = []
        self.response: _Response | None = None
        self.audio_spoken = False  # the voice is fixed from the first audio delta on

    def _initial_session(self, model: str) -> dict[str, Any]:
        # No turn detection or transcription: the emulator has neither, and says so.
        voice = self.emulator.voice
        if self.beta:
            return {
                "id": _new_id("sess"), "object": "realtime.session", "model": model,
                "modalities": ["text", "audio"], "instructions": "", "voice": voice,
                "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                "input_audio_transcription": None, "turn_detection": None,
                "tools": [], "tool_choice": "auto", "max_response_output_tokens": "inf", "speed": 1.0,
            }
        pcm = {"type": "audio/pcm", "rate": 24000}
        return {
            "type": "realtime", "object": "realtime.session", "id": _new_id("sess"), "model": model,
            "output_modalities": ["audio"], "instructions": "", "tools": [], "tool_choice": "auto",
            "max_output_tokens": "inf",
            "audio": {
                "input": {"format": dict(pcm), "transcription": None, "noise_reduction": None,
                          "turn_detection": None},
                "output": {"format": dict(pcm), "voice": voice, "speed": 1.0},
            },
        }

    def _output(self, session: dict[str, Any]) -> _Output:
        return _beta_output(session) if self.beta else _ga_output(session)

    # --- the connection

    async def run(self) -> None:
        try:
            await self.send("session.created", session=copy.deepcopy(self.session))
            async for raw in self.ws:
                await self._on_message(raw)
        except ConnectionClosed:
            pass
        finally:
            response = self.response
            if response is not None and response.task is not None:
                response.task.cancel()
                await asyncio.gather(response.task, return_exceptions=True)
            self.log.closed = True

    async def _on_message(self, raw: str | bytes) -> None:
        self.log.messages_received += 1
        try:
            event = json.loads(raw)
        except ValueError:  # also bad UTF-8 in a binary frame
            self._record(raw)
            await self.send_error(_Invalid("invalid_json", "The event is not valid JSON."), None)
            return
        self._record(event)
        if not isinstance(event, dict):
            await self.send_error(_invalid_value(None, event, "An event must be a JSON object."), None)
            return
        client_event_id = event.get("event_id")
        if not isinstance(client_event_id, str):
            client_event_id = None
        kind = event.get("type")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        try:
            if handler is not None:
                await handler(self, event)
            elif kind is None:
                raise _missing("type")
            elif kind not in _CLIENT_EVENTS and not (self.beta and kind in _BETA_ONLY_CLIENT_EVENTS):
                raise _invalid_value("type", kind, "Unknown client event type.")
            # else: a client event the emulator does not emulate; recorded, not answered
        except _Invalid as problem:
            await self.send_error(problem, client_event_id)

    def _record(self, message: Any) -> None:
        if self.emulator.record_messages:
            self.log.received.append(message)

    # --- client events

    async def _session_update(self, event: dict[str, Any]) -> None:
        update = event.get("session")
        if not isinstance(update, dict):
            raise _missing("session")
        if not self.beta:
            if "type" not in update:
                raise _missing("session.type")
            if update["type"] != "realtime":  # transcription sessions are not emulated
                raise _invalid_value("session.type", update["type"], "Value must be 'realtime'.")
        session = _merged(self.session, update)
        for fixed in ("id", "object", "model"):  # the model cannot change either (documented)
            session[fixed] = self.session[fixed]
        output = self._output(session)  # refuse a format, voice or speed it cannot speak
        if self.audio_spoken and output.voice != self._output(self.session).voice:
            # Documented, and the real server's code and text (openai/openai-python#2607).
            raise _Invalid("cannot_update_voice", "Cannot update a conversation's voice if assistant audio is present.")
        self.session = session
        await self.send("session.updated", session=copy.deepcopy(session))

    async def _item_create(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            raise _missing("item")
        if item.get("type") not in ("message", "function_call", "function_call_output"):
            raise _invalid_value(
                "item.type", item.get("type"),
                "Supported values are: 'message', 'function_call', 'function_call_output'.",
            )
        if item["type"] == "message" and item.get("role") not in ("user", "assistant", "system"):
            raise _invalid_value("item.role", item.get("role"), "Supported values are: 'user', 'assistant', 'system'.")
        ids = [existing["id"] for existing in self.conversation]
        previous = event.get("previous_item_id")
        if previous is not None and previous not in ids:
            raise _invalid_value("previous_item_id", previous, "No item with this id in the conversation.")
        item = {"id": _new_id("item"), "object": "realtime.item", "status": "completed", **copy.deepcopy(item)}
        if item["id"] in ids:
            raise _invalid_value("item.id", item["id"], "An item with this id already exists.")
        position = len(ids) if previous is None else ids.index(previous) + 1
        self.conversation.insert(position, item)
        await self._announce_item(item, position, final=True)

    async def _announce_item(self, item: dict[str, Any], position: int, *, final: bool) -> None:
        """The conversation events of an item now at ``position``: GA sends ``added`` and,
        once the item is final, ``done``; beta sends ``created`` only."""
        previous = self.conversation[position - 1]["id"] if position > 0 else None
        await self.send(self.names.item_created, previous_item_id=previous, item=copy.deepcopy(item))
        if final and self.names.item_finished is not None:
            await self.send(self.names.item_finished, previous_item_id=previous, item=copy.deepcopy(item))

    async def _response_create(self, event: dict[str, Any]) -> None:
        if self.response is not None:
            # The real server's wording (e.g. openai/openai-agents-python#1466).
            raise _Invalid(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.response.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        params = event.get("response", {})
        if not isinstance(params, dict):
            raise _invalid_value("response", params, "Expected an object.")
        inputs = params.get("input")
        text = _last_user_text(inputs if isinstance(inputs, list) else self.conversation)
        if len(text) > MAX_REPLY_TEXT:  # the renderer's memory grows with the text
            raise _invalid_value("input", f"{len(text)} characters",
                                 f"The emulator speaks at most {MAX_REPLY_TEXT} characters.")
        reply = self.emulator.reply
        response = _Response(
            text if reply is None else reply(text),
            self._output(self.session),
            params.get("conversation", "auto") != "none",
            params.get("metadata"),
        )
        self.response = response
        self.log.responses[response.id] = "in_progress"
        # Sent before the next client event is read: response.created always comes first.
        await self.send("response.created", response=self._response_object(response, "in_progress", []))
        response.task = asyncio.get_running_loop().create_task(self._speak(response))

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        response, wanted = self.response, event.get("response_id")
        if response is None or (wanted is not None and wanted != response.id):
            # The real server's code and text (hashintel/hash#9399, mapluisch/OpenAI-Realtime-API-for-Unity#5).
            raise _Invalid("response_cancel_not_active", "Cancellation failed: no active response found")
        response.cancelled.set()

    _handlers: dict[str, Callable[[_Session, dict[str, Any]], Any]] = {
        "session.update": _session_update,
        "conversation.item.create": _item_create,
        "response.create": _response_create,
        "response.cancel": _response_cancel,
    }

    # --- a response

    def _response_object(self, response: _Response, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        details = {"type": "cancelled", "reason": "client_cancelled"} if status == "cancelled" else None
        body: dict[str, Any] = {
            "object": "realtime.response", "id": response.id, "status": status, "status_details": details,
            "output": output, "conversation_id": self.conversation_id if response.in_conversation else None,
        }
        fmt, voice = response.output.format_object, response.output.voice
        if self.beta:
            body.update(modalities=["text", "audio"], voice=voice, output_audio_format=fmt)
        else:
            body.update(output_modalities=["audio"], audio={"output": {"format": copy.deepcopy(fmt), "voice": voice}})
        body.update(max_output_tokens="inf", usage=None, metadata=response.metadata)
        return body

    async def _speak(self, response: _Response) -> None:
        names, output = self.names, response.output
        fmt = output.format
        where: dict[str, Any] = {"response_id": response.id, "item_id": response.item_id, "output_index": 0, "content_index": 0}
        item: dict[str, Any] = {
            "id": response.item_id, "object": "realtime.item", "type": "message",
            "status": "in_progress", "role": "assistant", "content": [],
        }
        await self.send("response.output_item.added", response_id=response.id, output_index=0, item=copy.deepcopy(item))
        if response.in_conversation:
            self.conversation.append(item)
            await self._announce_item(item, len(self.conversation) - 1, final=False)
        await self.send("response.content_part.added", **where, part={"type": "audio", "transcript": ""})

        words, total = layout(response.text, output.voice, fmt.sample_rate, output.speed)
        audio = encode_samples(synthesize(words, total, fmt.sample_rate), fmt)
        pieces = _transcript_pieces(response.text, words)
        spoken = 0  # pieces of the transcript sent
        step = self.emulator.chunk_bytes(fmt)
        loop = asyncio.get_running_loop()
        paced_from = loop.time()
        for offset in range(0, len(audio), step):
            if response.cancelled.is_set():
                break
            chunk = audio[offset : offset + step]
            end = offset + len(chunk)
            # The words this chunk starts go out just before it.
            covered = -(-end // fmt.sample_width)
            due = spoken
            while due < len(pieces) and pieces[due][0] < covered:
                due += 1
            if due > spoken:
                await self.send(names.transcript_delta, **where, delta="".join(p for _, p in pieces[spoken:due]))
                spoken = due
            self.audio_spoken = True
            await self.send(names.audio_delta, **where, delta=base64.b64encode(chunk).decode("ascii"),
                            audio_bytes=len(chunk))
            await self._pace(response, loop, paced_from, end / fmt.bytes_per_second)
        cancelled = response.cancelled.is_set()
        if not cancelled and spoken < len(pieces):  # text with no audio, or a trailing pause
            await self.send(names.transcript_delta, **where, delta="".join(p for _, p in pieces[spoken:]))
            spoken = len(pieces)
        transcript = "".join(p for _, p in pieces[:spoken])

        await self.send(names.audio_done, **where)
        await self.send(names.transcript_done, **where, transcript=transcript)
        await self.send("response.content_part.done", **where, part={"type": "audio", "transcript": transcript})
        item.update(
            status="incomplete" if cancelled else "completed",
            content=[{"type": names.assistant_content, "transcript": transcript}],
        )
        await self.send("response.output_item.done", response_id=response.id, output_index=0, item=copy.deepcopy(item))
        if response.in_conversation and names.item_finished is not None:
            position = next(i for i, existing in enumerate(self.conversation) if existing is item)
            previous = self.conversation[position - 1]["id"] if position > 0 else None
            await self.send(names.item_finished, previous_item_id=previous, item=copy.deepcopy(item))
        status = "cancelled" if cancelled else "completed"
        # Free before response.done goes out: a client may create the next one on reading it.
        self.response = None
        self.log.responses[response.id] = status
        await self.send("response.done", response=self._response_object(response, status, [copy.deepcopy(item)]))

    async def _pace(self, response: _Response, loop: asyncio.AbstractEventLoop, started: float,
                    audio_seconds: float) -> None:
        """Wait after an audio delta: just yield, or keep the pace; a cancel ends the wait."""
        factor = self.emulator.pace_factor
        delay = 0.0 if factor is None else started + audio_seconds / factor - loop.time()
        if delay <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(response.cancelled.wait(), delay)

    # --- server events

    async def send(self, event_type: str, *, audio_bytes: int = 0, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": event_type, "event_id": _new_id("event"), **fields}))
        self.log.sent[event_type] += 1
        self.log.audio_bytes_sent += audio_bytes

    async def send_error(self, problem: _Invalid, client_event_id: str | None) -> None:
        await self.send("error", error={
            "type": "invalid_request_error",
            "code": problem.code,
            "message": problem.message,
            "param": problem.param,
            "event_id": client_event_id,
        })


class OpenAIRealtimeEmulator(LocalServer):
    """An OpenAI Realtime websocket server on ``host:port`` (0 picks a free port).

    Serves ``GET {prefix}/realtime?model=...``; the SDK builds that path from
    ``websocket_base_url`` (:attr:`websocket_base_url`, i.e. ``ws://host:port/v1``). Other
    paths get HTTP 404. Run it like every emulator: ``async with``, :meth:`start` /
    :meth:`stop`, :meth:`running_in_thread`, :meth:`serve_forever`.

    Options:
        api_key: when set, a connection must present ``Authorization: Bearer <api_key>``,
            else HTTP 401. None accepts any key or none.
        prefix: the path before ``/realtime`` (``"/v1"``, as the OpenAI API serves it).
        voice: the session's output voice until the client sets one.
        reply: what the assistant says, as a function of the last user message's text;
            None (default) says that text verbatim.
        chunk_ms: audio per delta, in milliseconds.
        pace: ``"fast"`` (only yield between deltas), ``"realtime"``, or a float: that
            many seconds of audio per second.
        max_size: largest client event in bytes (input audio may come in events of up to
            15 MiB); a bigger one closes with 1009.
        record_messages: keep every client event in
            :attr:`RealtimeConnectionLog.received` (the counts are kept either way).

    ``connections`` logs every accepted connection, ``rejected`` every refused handshake.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        prefix: str = "/v1",
        voice: str = DEFAULT_VOICE,
        reply: Callable[[str], str] | None = None,
        chunk_ms: float = 100.0,
        pace: Literal["fast", "realtime"] | float = "fast",
        max_size: int | None = 16 * 2**20,
        record_messages: bool = True,
    ) -> None:
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(f"prefix must be '' or start with '/' and not end with one, not {prefix!r}")
        if not isinstance(voice, str) or not voice:
            raise ValueError(f"voice must be a non-empty string, not {voice!r}")
        self.prefix = prefix
        self.voice = voice
        self.reply = reply
        self.max_size = max_size
        self.connections: list[RealtimeConnectionLog] = []
        super().__init__(host, port, pace, api_key=api_key, chunk_ms=chunk_ms,
                         record_messages=record_messages)

    @property
    def path(self) -> str:
        """The endpoint's path, ``/v1/realtime`` by default."""
        return self.prefix + "/realtime"

    @property
    def websocket_base_url(self) -> str:
        """What the SDK takes as ``websocket_base_url``: ``ws://host:port/v1``."""
        return self.url + self.prefix

    @property
    def ws_url(self) -> str:
        """The full endpoint, ``ws://host:port/v1/realtime`` (add ``?model=...``)."""
        return self.url + self.path

    def chunk_bytes(self, fmt: AudioFormat) -> int:
        """Bytes of audio per delta for ``fmt``."""
        return max(1, round(fmt.sample_rate * self.chunk_ms / 1000)) * fmt.sample_width

    def _serve_options(self) -> dict[str, Any]:
        return {"process_request": self._process_request, "max_size": self.max_size}

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != self.path:
            return self._reject(connection, 404, request.path, "Not Found")
        if self.api_key is not None:
            presented = [
                credential.strip()
                for scheme, _, credential in (v.partition(" ") for v in request.headers.get_all("Authorization"))
                if scheme.lower() == "bearer"
            ]
            if self.api_key not in presented:
                return self._reject(connection, 401, request.path, "Incorrect API key provided")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # the handler only runs after a handshake
        models = parse_qs(urlsplit(request.path).query).get("model")
        betas = ",".join(request.headers.get_all("OpenAI-Beta"))
        log = RealtimeConnectionLog(
            request_id=str(ws.id),
            path=request.path,
            headers={name.lower(): value for name, value in request.headers.raw_items()},
            model=models[0] if models else None,
            beta=_BETA_HEADER_VALUE in (token.strip() for token in betas.split(",")),
        )
        self.connections.append(log)
        await _Session(self, ws, log).run()
