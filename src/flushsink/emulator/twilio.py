"""A Twilio-style media sender: the caller's side of a Media Stream, for testing a
websocket server that receives calls (Twilio dials the user's server, so this emulator is
a client, not a server)::

    async with TwilioMediaSender("ws://127.0.0.1:8080/media") as call:  # connected, start
        await call.speak("I would like to book a table.")   # media events, 20 ms each
        await call.wait_for(lambda log: "reply-done" in log.marks_echoed)
    log = call.log                                           # stop sent, socket closed

    log = await stream_call(url, "I would like to book a table.")   # the same, one call
    expected = render("I would like to book a table.", DEFAULT_VOICE, AudioFormat("pcm_mulaw", 8000))

What the server receives (Twilio's Media Streams messages; sources and how sure each fact is
in docs/providers.md, "Twilio Media Streams and Telnyx"):

- ``{"event": "connected", "protocol": "Call", "version": "1.0.0"}``;
- ``start``, sequence number ``"1"``, with ``streamSid``, ``accountSid``, ``callSid``,
  ``tracks``, ``customParameters`` and ``mediaFormat`` (``audio/x-mulaw``, 8000 Hz, mono);
- ``media`` events: ``media.track``, ``media.chunk`` (from ``"1"``, per track),
  ``media.timestamp`` and ``media.payload``, base64 of ``chunk_ms`` (20) of mu-law audio:
  160 bytes. The caller's speech is exactly ``render(text, voice, AudioFormat("pcm_mulaw",
  8000))``, cut into frames; the last frame is filled up with silence (the mu-law code of
  sample 0), since a call's audio comes in whole frames. ``CallLog.audio_sent`` holds what
  was sent, track by track;
- ``mark`` events: the echo of each ``mark`` the server sent, once the audio the server
  sent before it has been played (or at once when the server sends ``clear``);
- ``dtmf`` (:meth:`TwilioMediaSender.dtmf`), and ``stop`` with ``accountSid`` and
  ``callSid``, then close 1000.

Every number is a string, as Twilio sends them; ``sequenceNumber`` counts every event
after ``connected``, in sending order. Frames are paced by ``pace``: ``"realtime"`` sends
each frame once its audio would have been captured (frame k of a stretch of audio k x 20 ms
after the stretch began), a float sends that many seconds of audio per second, ``"fast"``
only yields between frames.

What the server sends back is recorded in the :class:`CallLog` (``received``, with the
sender's arrival times) and read as Twilio reads it: ``media`` payloads decoded and joined
in ``audio_received``, and played at 8 kHz (at ``pace``; at once with ``"fast"``);
``mark`` names in ``marks_received``, each echoed when the audio queued before it has been
played; ``clear`` drops the audio still queued and echoes the pending marks at once. A
message Twilio would not take (not JSON, no or the wrong ``streamSid``, a payload that is
not base64, an unknown event) is noted in ``problems``; the call goes on. Marks still
pending at hang-up are not echoed.

When the server closes first, the call ends there: nothing more is sent (no ``stop``),
:meth:`TwilioMediaSender.speak` and the other senders return False, and the log says
``closed_by="server"`` with the close code and reason.

Telnyx (``dialect="telnyx"``) differs where its documentation says it does:
``connected`` has no ``protocol``; ids are snake_case (``stream_id``,
``sequence_number``); ``start`` holds ``call_control_id``, ``call_session_id``, ``from``,
``to``, ``client_state``, ``custom_parameters`` and ``media_format`` (``PCMU``, 8000, 1);
server messages need no stream id. The audio is PCMU as with Twilio (Telnyx can negotiate
other codecs; the sender does not).

The sender's own choices, where the providers' behaviour is unknown or not emulated:
``media.timestamp`` is the audio position in ms of the frame's track (whole ms, from 0),
not a wall clock, so it is predictable; the ids are random in the providers' shapes
unless given; Telnyx's ``stop`` carries ``call_control_id``, its ``custom_parameters`` is
an object, and it echoes marks as Twilio does; no ``X-Twilio-Signature`` header (pass one in
``extra_headers``); unaccepted server messages are only noted, never answered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..formats import AudioFormat, encode_samples
from ._local import Pace, pace_factor
from .speech import render

__all__ = [
    "TwilioMediaSender",
    "CallLog",
    "Sent",
    "Received",
    "stream_call",
    "stream_call_sync",
    "MULAW_8K",
    "DEFAULT_VOICE",
    "DTMF_DIGITS",
]

Dialect = Literal["twilio", "telnyx"]
Track = Literal["inbound", "outbound"]

#: The audio of every Media Stream: G.711 mu-law, 8 kHz, mono, no header.
MULAW_8K = AudioFormat("pcm_mulaw", 8000)
#: The renderer's voice for the caller when none is given.
DEFAULT_VOICE = "caller"
#: The digits a ``dtmf`` event may carry.
DTMF_DIGITS = "0123456789*#"

_SILENCE = encode_samples(np.zeros(1), MULAW_8K)  # one sample of 0: the code 0xFF


class Sent(NamedTuple):
    """A message the sender sent, ``at`` seconds after the connection opened."""

    at: float
    message: dict[str, Any]


class Received(NamedTuple):
    """A server message, ``at`` seconds after the connection opened: the parsed JSON, or
    the raw frame if it was not JSON."""

    at: float
    message: Any


@dataclass
class CallLog:
    """One call as the sender saw it (updated while the call runs)."""

    url: str
    dialect: Dialect
    stream_sid: str
    call_sid: str
    account_sid: str
    #: Every message sent, in order, with its time.
    sent: list[Sent] = field(default_factory=list)
    #: The caller's audio sent, by track: the decoded payloads joined.
    audio_sent: dict[str, bytearray] = field(default_factory=dict)
    #: Every server message, in arrival order, with its time.
    received: list[Received] = field(default_factory=list)
    #: The server's ``media`` payloads, decoded and joined (mu-law 8 kHz).
    audio_received: bytearray = field(default_factory=bytearray)
    #: The names of the server's marks, in arrival order, and of those echoed back.
    marks_received: list[str] = field(default_factory=list)
    marks_echoed: list[str] = field(default_factory=list)
    #: How many ``clear`` messages the server sent.
    clears: int = 0
    #: Server messages the provider would not take, described (the call goes on).
    problems: list[str] = field(default_factory=list)
    #: Whether ``stop`` was sent (not when the server ended the call first).
    stopped: bool = False
    #: Who closed first, and the close code and reason the sender saw (1006 when the
    #: connection dropped without a close frame); None while open.
    closed_by: Literal["client", "server"] | None = None
    close_code: int | None = None
    close_reason: str = ""

    def messages_sent(self, event: str | None = None) -> list[dict[str, Any]]:
        """The messages sent (only those of ``event`` if given), in order."""
        return [s.message for s in self.sent if event is None or s.message.get("event") == event]


def _validated_options(dialect: str, tracks: tuple[str, ...], chunk_ms: float) -> int:
    """The samples per frame, after checking the options; ValueError for a bad one."""
    if dialect not in ("twilio", "telnyx"):
        raise ValueError(f"dialect must be 'twilio' or 'telnyx', not {dialect!r}")
    if not tracks or len(set(tracks)) != len(tracks) or not set(tracks) <= {"inbound", "outbound"}:
        raise ValueError(f"tracks must name 'inbound' and/or 'outbound' once each, not {tracks!r}")
    samples = chunk_ms * MULAW_8K.sample_rate / 1000 if isinstance(chunk_ms, (int, float)) else 0.0
    if isinstance(chunk_ms, bool) or not (0 < samples <= 60 * MULAW_8K.sample_rate) or samples != int(samples):
        raise ValueError(f"chunk_ms must be a whole number of 8 kHz samples from 0.125 to 60000, not {chunk_ms!r}")
    return int(samples)


class TwilioMediaSender:
    """The caller's side of one Twilio (or Telnyx) Media Stream, connected to ``url``.

    ``async with`` connects and sends ``connected`` and ``start``; leaving the block sends
    ``stop`` and closes (:meth:`hang_up`). In between, :meth:`speak`, :meth:`silence` and
    :meth:`send_audio` stream the caller's audio, :meth:`dtmf` presses a key, and
    :meth:`wait_for` waits for the server. :attr:`log` records the call.

    Options:
        dialect: ``"twilio"`` or ``"telnyx"`` (the module docstring lists the differences).
        stream_sid, call_sid, account_sid: the ids (Telnyx: ``stream_id``,
            ``call_control_id``; the account id is not sent); random ones by default.
        tracks: the tracks the stream carries, ``start.tracks``.
        custom_parameters: ``start.customParameters`` (TwiML ``<Parameter>`` values).
        caller, callee: Telnyx's ``start.from`` and ``start.to``.
        client_state: Telnyx's ``start.client_state``.
        voice: the renderer's voice for :meth:`speak`.
        chunk_ms: audio per ``media`` event (20, as the providers send).
        pace: ``"realtime"``, ``"fast"`` or seconds of audio per second; it paces the
            caller's frames and the playing of the server's audio (for mark echoes).
        echo_marks: echo the server's marks as the provider does (False: only record them).
        extra_headers: more handshake headers.
        open_timeout: seconds for the handshake.
    """

    def __init__(
        self,
        url: str,
        *,
        dialect: Dialect = "twilio",
        stream_sid: str | None = None,
        call_sid: str | None = None,
        account_sid: str | None = None,
        tracks: Iterable[Track] = ("inbound",),
        custom_parameters: Mapping[str, str] | None = None,
        caller: str = "+15550100001",
        callee: str = "+15550100002",
        client_state: str | None = None,
        voice: str = DEFAULT_VOICE,
        chunk_ms: float = 20,
        pace: Pace = "realtime",
        echo_marks: bool = True,
        extra_headers: Mapping[str, str] | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        self.tracks = tuple(tracks)
        self.chunk_samples = _validated_options(dialect, self.tracks, chunk_ms)
        self.pace_factor = pace_factor(pace)
        self.url = url
        self.dialect: Dialect = dialect
        self.voice = voice
        self.custom_parameters = dict(custom_parameters or {})
        self.caller, self.callee, self.client_state = caller, callee, client_state
        self.echo_marks = echo_marks
        self.extra_headers = dict(extra_headers or {})
        self.open_timeout = open_timeout
        telnyx = dialect == "telnyx"
        self.log = CallLog(
            url=url,
            dialect=dialect,
            stream_sid=stream_sid or (str(uuid.uuid4()) if telnyx else "MZ" + uuid.uuid4().hex),
            call_sid=call_sid or ("v3:" + uuid.uuid4().hex if telnyx else "CA" + uuid.uuid4().hex),
            account_sid=account_sid or "AC" + uuid.uuid4().hex,
            audio_sent={track: bytearray() for track in self.tracks},
        )
        # Twilio's camelCase keys, or Telnyx's snake_case ones.
        self._sid_key = "stream_id" if telnyx else "streamSid"
        self._sequence_key = "sequence_number" if telnyx else "sequenceNumber"
        self._ws: ClientConnection | None = None
        self._opened = 0.0
        self._sequence = 0
        self._send_lock = asyncio.Lock()  # a sequence number and its message go out together
        self._chunks = {track: 0 for track in self.tracks}
        self._capture_clock = 0.0  # loop time the caller's audio sent so far ends at
        self._played_until = 0.0  # loop time the server's queued audio finishes playing at
        self._pending_marks: deque[tuple[float, str]] = deque()  # (due, name)
        self._marks_changed = asyncio.Event()
        self._progress = asyncio.Event()  # set (and replaced) whenever the log grows
        self._hanging_up = False
        self._tasks: list[asyncio.Task[None]] = []

    # --- life cycle

    @property
    def up(self) -> bool:
        """Whether the call is connected and not ended by either side."""
        return self._ws is not None and self.log.closed_by is None and not self._hanging_up

    async def open(self) -> TwilioMediaSender:
        """Connect, then send ``connected`` and ``start``."""
        if self._ws is not None:
            raise RuntimeError("the call is already open")
        self._ws = await connect(self.url, additional_headers=self.extra_headers,
                                 open_timeout=self.open_timeout)
        loop = asyncio.get_running_loop()
        self._opened = self._capture_clock = self._played_until = loop.time()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._echo())]
        if self.dialect == "twilio":
            await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        else:
            await self._send({"event": "connected", "version": "1.0.0"})
        await self._send_event("start", {"start": self._start_body()})
        return self

    async def hang_up(self) -> CallLog:
        """Send ``stop`` (unless the call has ended), close with 1000 and wait for the
        close; returns the log. Idempotent."""
        ws = self._ws
        if ws is None:
            raise RuntimeError("the call was never opened")
        if self.up:
            if self.dialect == "twilio":
                stop = {"accountSid": self.log.account_sid, "callSid": self.log.call_sid}
            else:
                stop = {"call_control_id": self.log.call_sid}
            self.log.stopped = await self._send_event("stop", {"stop": stop})
        self._hanging_up = True
        await ws.close()
        reader, echoer = self._tasks
        await reader
        echoer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await echoer
        return self.log

    async def __aenter__(self) -> TwilioMediaSender:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._ws is not None:
            await self.hang_up()

    # --- the caller

    async def speak(self, text: str, *, track: Track = "inbound", voice: str | None = None) -> bool:
        """Stream ``render(text, voice, MULAW_8K)``; False if the call ended meanwhile."""
        return await self.send_audio(render(text, self.voice if voice is None else voice, MULAW_8K), track=track)

    async def silence(self, ms: float, *, track: Track = "inbound") -> bool:
        """Stream ``ms`` milliseconds of silence (whole frames); False if the call ended."""
        return await self.send_audio(_SILENCE * round(ms * MULAW_8K.sample_rate / 1000), track=track)

    async def send_audio(self, mulaw: bytes, *, track: Track = "inbound") -> bool:
        """Stream raw mu-law 8 kHz audio as ``media`` events of ``chunk_ms`` each, the last
        one filled up with silence; False if the call ended before all were sent."""
        if track not in self._chunks:
            raise ValueError(f"track {track!r} is not one of the stream's tracks {self.tracks}")
        size = self.chunk_samples
        for start in range(0, len(mulaw), size):
            frame = mulaw[start:start + size]
            frame += _SILENCE * (size - len(frame))
            await self._wait_for_capture(size / MULAW_8K.sample_rate)
            chunk = self._chunks[track]
            media = {
                "track": track,
                "chunk": str(chunk + 1),
                "timestamp": str(chunk * size * 1000 // MULAW_8K.sample_rate),
                "payload": base64.b64encode(frame).decode("ascii"),
            }
            if not await self._send_event("media", {"media": media}):
                return False
            self._chunks[track] = chunk + 1
            self.log.audio_sent[track] += frame
        return self.up

    async def dtmf(self, digit: str) -> bool:
        """Send a Twilio ``dtmf`` event for a key press; False if the call has ended."""
        if self.dialect != "twilio":
            raise ValueError("dtmf events are emulated for Twilio only")
        if len(digit) != 1 or digit not in DTMF_DIGITS:
            raise ValueError(f"digit must be one of {DTMF_DIGITS!r}, not {digit!r}")
        return await self._send_event("dtmf", {"dtmf": {"track": "inbound_track", "digit": digit}})

    async def wait_for(self, condition: Callable[[CallLog], bool], timeout: float = 10.0) -> bool:
        """Wait until ``condition(log)`` holds, checked whenever the log grows; False when
        the call ends or ``timeout`` seconds pass first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition(self.log):
            remaining = deadline - loop.time()
            if self.log.closed_by is not None or remaining <= 0:
                return False
            progress = self._progress
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(progress.wait(), remaining)
        return True

    # --- sending

    def _start_body(self) -> dict[str, Any]:
        log = self.log
        if self.dialect == "twilio":
            return {
                "streamSid": log.stream_sid,
                "accountSid": log.account_sid,
                "callSid": log.call_sid,
                "tracks": list(self.tracks),
                "customParameters": self.custom_parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            }
        return {
            "call_control_id": log.call_sid,
            "call_session_id": str(uuid.uuid5(uuid.NAMESPACE_URL, log.call_sid)),
            "from": self.caller,
            "to": self.callee,
            "client_state": self.client_state,
            "custom_parameters": self.custom_parameters,
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
        }

    async def _wait_for_capture(self, seconds: float) -> None:
        """Wait until a frame of ``seconds`` would have been captured (just yield with
        ``"fast"``): frames of one stretch of audio keep the pace, and a stretch that
        starts after a pause starts its clock anew."""
        if self.pace_factor is None:
            await asyncio.sleep(0)
            return
        now = asyncio.get_running_loop().time()
        span = seconds / self.pace_factor
        # A clock more than a frame behind means the caller paused: a new stretch.
        self._capture_clock = max(self._capture_clock, now - span) + span
        await asyncio.sleep(self._capture_clock - now)

    async def _send_event(self, event: str, body: dict[str, Any]) -> bool:
        async with self._send_lock:
            if not self.up:
                return False
            sequence = str(self._sequence + 1)
            message = {"event": event, self._sequence_key: sequence, self._sid_key: self.log.stream_sid, **body}
            if await self._send(message):
                self._sequence += 1
                return True
            return False

    async def _send(self, message: dict[str, Any]) -> bool:
        assert self._ws is not None
        try:
            await self._ws.send(json.dumps(message))
        except ConnectionClosed:
            return False  # the reader records the close
        self.log.sent.append(Sent(self._now(), message))
        self._grew()
        return True

    # --- receiving

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                self._take(raw)
        except ConnectionClosed:
            pass  # an abnormal close: recorded below like a normal one
        finally:
            protocol = self._ws.protocol
            rcvd = protocol.close_rcvd
            self.log.close_code = rcvd.code if rcvd is not None else 1006
            self.log.close_reason = rcvd.reason if rcvd is not None else ""
            self.log.closed_by = "client" if self._hanging_up else "server"
            self._grew()

    def _take(self, raw: str | bytes) -> None:
        log = self.log
        try:
            message = json.loads(raw)
        except ValueError:  # also bad UTF-8 in a binary frame
            log.received.append(Received(self._now(), raw))
            log.problems.append("a message that is not JSON")
            self._grew()
            return
        log.received.append(Received(self._now(), message))
        problem = self._play(message)
        if problem is not None:
            log.problems.append(problem)
        self._grew()

    def _play(self, message: Any) -> str | None:
        """Act on one server message as the provider does; a problem, or None."""
        if not isinstance(message, dict):
            return "a message that is not a JSON object"
        event = message.get("event")
        if event not in ("media", "mark", "clear"):
            return f"an unknown event {event!r}"
        # Twilio requires the stream's id on these (docs/providers.md); Telnyx none.
        if self.dialect == "twilio" and message.get("streamSid") != self.log.stream_sid:
            return f"a {event} event without the stream's streamSid (got {message.get('streamSid')!r})"
        now = asyncio.get_running_loop().time()
        body = message.get(event)
        if event == "media":
            payload = body.get("payload") if isinstance(body, dict) else None
            try:
                audio = base64.b64decode(payload, validate=True) if isinstance(payload, str) else None
            except binascii.Error:
                audio = None
            if audio is None:
                return "a media event whose media.payload is not base64"
            self.log.audio_received += audio
            seconds = 0.0 if self.pace_factor is None else len(audio) / MULAW_8K.sample_rate / self.pace_factor
            self._played_until = max(self._played_until, now) + seconds
        elif event == "mark":
            name = body.get("name") if isinstance(body, dict) else None
            if not isinstance(name, str):
                return "a mark event without a mark.name string"
            self.log.marks_received.append(name)
            if self.echo_marks:
                self._pending_marks.append((max(self._played_until, now), name))
                self._marks_changed.set()
        else:
            self.log.clears += 1
            self._played_until = now  # the queued audio is dropped
            self._pending_marks = deque((now, name) for _, name in self._pending_marks)
            self._marks_changed.set()
        return None

    async def _echo(self) -> None:
        """Echo each pending mark when it falls due, in order."""
        loop = asyncio.get_running_loop()
        while True:
            self._marks_changed.clear()
            if not self._pending_marks:
                await self._marks_changed.wait()
                continue
            due, name = self._pending_marks[0]
            if due > loop.time():
                # A clear (or nothing) wakes this before the mark is due.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._marks_changed.wait(), due - loop.time())
                continue
            self._pending_marks.popleft()
            if not await self._send_event("mark", {"mark": {"name": name}}):
                return
            self.log.marks_echoed.append(name)
            self._grew()

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self._opened

    def _grew(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()


async def stream_call(
    url: str,
    text: str,
    *,
    voice: str = DEFAULT_VOICE,
    tail_ms: float = 0.0,
    until: Callable[[CallLog], bool] | None = None,
    until_timeout: float = 10.0,
    **options: Any,
) -> CallLog:
    """One call to ``url``: the caller says ``text`` (``render(text, voice, MULAW_8K)``),
    then ``tail_ms`` of silence, waits for ``until(log)`` if given (at most
    ``until_timeout`` seconds), and hangs up. ``options`` are
    :class:`TwilioMediaSender`'s (``dialect``, ``pace``, ``stream_sid``...).

    Returns the :class:`CallLog`, also when the server ended the call early.
    """
    call = TwilioMediaSender(url, voice=voice, **options)
    async with call:
        if await call.speak(text) and tail_ms > 0:
            await call.silence(tail_ms)
        if until is not None:
            await call.wait_for(until, until_timeout)
    return call.log


def stream_call_sync(url: str, text: str, **options: Any) -> CallLog:
    """:func:`stream_call` from sync code (on an event loop of its own)."""
    return asyncio.run(stream_call(url, text, **options))
