"""Sans-I/O protocol state for a TTS websocket with contexts (Cartesia's, ElevenLabs'
multi-stream-input): frames in, events and messages out.

Both clients (asyncio and sync) drive a :class:`Session`: it builds the messages of each
context, feeds received frames to the :class:`~flushsink.Sink`, and returns each event
tagged for the one context it belongs to, closing each context's stream with a
:class:`StreamEnd`. It writes no file, touches no socket and calls nothing back: the
shell (:mod:`flushsink._shell`, shared by :mod:`flushsink.client` and
:mod:`flushsink.sync`) sends what it returns, writes the segments and fills the
contexts' queues, as websockets' ``protocol.py`` leaves its I/O to its connections.

What differs between providers is a small strategy, a :class:`Provider`
(:class:`CartesiaProvider`, :class:`ElevenLabsProvider`): the URL and the handshake's
auth headers, the envelope the Sink reads the frames by, the messages a context sends,
and what an error without a context does to the contexts. The Session, the shell and
the two clients are the same for all of them.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from ._accel import Sink
from .envelopes import CARTESIA, ELEVENLABS, Envelope
from .errors import (
    AuthenticationError,
    CapacityError,
    ConfigError,
    ConnectionLost,
    FlushsinkError,
    ContextClosed,
    ContextFailed,
    ContextRateLimited,
    FrameError,
    WriteError,
)
from .formats import AudioFormat
from .segments import ContextDone, ContextError, SegmentReady, ServerError

__all__ = ["Session", "ContextState", "StreamEnd", "StreamError", "normalize_url",
           "auth_headers", "CARTESIA_URL", "DEFAULT_VERSION", "ConnectionLost", "ContextClosed",
           "ContextFailed", "Provider", "CartesiaProvider", "ElevenLabsProvider",
           "make_provider", "PROVIDERS", "ELEVENLABS_URL", "ELEVENLABS_OUTPUT_FORMATS",
           "elevenlabs_url"]

log = logging.getLogger("flushsink")

#: Cartesia's TTS websocket, used when no url is given.
CARTESIA_URL = "wss://api.cartesia.ai/tts/websocket"
DEFAULT_VERSION = "2025-11-04"
DEFAULT_OUTPUT_FORMAT = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 44100}


def normalize_url(url: Optional[str]) -> str:
    """Cartesia's URL by default; a bare ``ws://host:port`` gets ``/tts/websocket``.

    Raises :class:`~flushsink.errors.ConfigError` (a ``ValueError``) for anything but a
    ``ws://`` or ``wss://`` URL."""
    if url is None:
        return CARTESIA_URL
    if not isinstance(url, str):
        raise ConfigError(f"url must be a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("ws", "wss"):
        raise ConfigError(f"url must start with ws:// or wss://, not {url!r}")
    host, slash, path = rest.partition("/")
    if not path.strip("/"):
        return f"{scheme}://{host}/tts/websocket"
    return url


def auth_headers(api_key: Optional[str], version: str) -> dict[str, str]:
    headers = {"Cartesia-Version": version}
    if api_key:
        headers["X-API-Key"] = api_key
    return headers


@dataclass
class ContextState:
    """What the session knows about one context."""

    context_id: str
    # the provider's: Cartesia's fields repeated in every request of the context,
    # ElevenLabs' first message (it opens the context on the server)
    request: dict[str, Any]
    format: AudioFormat
    started: bool = False  # a message was sent: the server knows the context
    connection: int = 0  # the connection its first message went to (Session.lost then)
    input_ended: bool = False  # no_more_inputs (or an ElevenLabs cancel) was sent
    unflushed: bool = False  # text sent since the last flush (ElevenLabs)
    ended: bool = False  # done, failed, cancelled or lost: no more input
    closed: bool = False  # its event stream got the closing marker
    failure: Optional[BaseException] = None


#: How many connection-level server errors and write errors a Session keeps (the latest).
KEPT_ERRORS = 100


@dataclass(frozen=True)
class StreamEnd:
    """The event stream of context ``context_id`` ends here: its iterator returns, or
    raises ``failure`` (ContextFailed, ConnectionLost, CapacityError, ...) if there is
    one. The last event a context gets."""

    context_id: Optional[str]
    failure: Optional[BaseException]


@dataclass(frozen=True)
class StreamError:
    """Raise ``error`` from the iterator of context ``context_id``; its stream goes on
    after it (a failed write: the caller may retry the segment and iterate again)."""

    context_id: Optional[str]
    error: BaseException


# ---- providers ------------------------------------------------------------------------

class Provider:
    """What one provider's websocket asks of a client, for the Session and the shell: the
    URL to dial (``url``) and the handshake's auth headers, the envelope the Sink reads
    its frames by (``envelope``), the messages a context sends, and what an error
    without a context does to the contexts. Sans-I/O, like the Session: each method
    returns messages (JSON text) to send, in order.

    The Session checks what is common (a context that ended takes no input, a transcript
    is a str, at most ``max_contexts`` contexts open at once) and marks a context
    ``started`` once messages of it were returned.
    """

    #: ``connect(provider=...)``'s name for it.
    name = ""
    #: The provider's name in messages.
    label = ""
    #: The environment variable that holds the API key.
    key_env = ""
    #: How the Sink reads the frames.
    envelope: Envelope = CARTESIA
    #: The most contexts one socket may have open (from a context's first message to its
    #: end; see Session._check); None: no bound but the server's.
    max_contexts: Optional[int] = None
    #: The URL the client dials.
    url = ""
    #: Cartesia's API version (the ``Cartesia-Version`` header); None for others.
    version: Optional[str] = None
    #: Whether the server closes the connection after an error without a context: the
    #: shell then sends nothing more on it, and opens a new one for the next message.
    errors_end_connection = False
    #: Whether a context ended here (cancelled, or failed by the client: AudioOverflow,
    #: a cap) must be closed on the server too, and counts against ``max_contexts``
    #: until the server ends it (the Session watches for that, see Session.draining).
    cancel_drains = False

    def headers(self, api_key: Optional[str]) -> dict[str, str]:
        """The handshake's headers for ``api_key`` (None: no key)."""
        raise NotImplementedError

    def new_context(self, context_id: str, options: dict[str, Any]
                    ) -> tuple[dict[str, Any], AudioFormat]:
        """The ``ContextState.request`` of a new context, and its audio format, from
        ``client.context(**options)`` (ConfigError or TypeError for options it cannot
        take)."""
        raise NotImplementedError

    def push(self, state: ContextState, transcript: str, flush: bool,
             extra: dict[str, Any]) -> list[str]:
        """The messages of ``ctx.push(transcript, flush=flush, **extra)``."""
        raise NotImplementedError

    def flush(self, state: ContextState) -> list[str]:
        """The messages of ``ctx.flush()``: generate what was sent so far."""
        raise NotImplementedError

    def end_input(self, state: ContextState) -> list[str]:
        """The messages of ``ctx.no_more_inputs()``: the context's text is complete."""
        raise NotImplementedError

    def cancel(self, state: ContextState) -> Optional[str]:
        """The message that stops a started context on the server (None: none needed)."""
        raise NotImplementedError

    def connection_error(self, event: ServerError, context_id: str
                         ) -> Optional[BaseException]:
        """What an error without a context (``event``) does to context ``context_id``,
        started and not ended: the failure its stream ends with, or None to leave it
        alone (the error is kept in ``Session.server_errors`` either way)."""
        return None

    def check_sink(self, sink: Any) -> None:
        """ConfigError for a ``sink=`` that does not read this provider's frames."""
        envelope = getattr(sink, "envelope", None)
        if envelope is None and self.envelope is CARTESIA:
            return  # a Sink without envelopes reads Cartesia's frames
        if envelope != self.envelope:
            name = getattr(envelope, "name", "cartesia")
            raise ConfigError(
                f"the sink given reads {name!r} frames, not {self.envelope.name!r}: make it "
                f"with Sink(..., envelope=flushsink.envelopes.{self.envelope.name.upper()})")


class CartesiaProvider(Provider):
    """Cartesia's TTS websocket (docs/protocol.md): one request per push, repeating the
    context's fields; ``flush_done`` ends a segment, ``done`` the context."""

    name = "cartesia"
    label = "Cartesia"
    key_env = "CARTESIA_API_KEY"
    envelope = CARTESIA

    def __init__(self, url: Optional[str] = None, *, version: Optional[str] = None) -> None:
        self.url = normalize_url(url)
        self.version = version or DEFAULT_VERSION

    def headers(self, api_key: Optional[str]) -> dict[str, str]:
        assert self.version is not None
        return auth_headers(api_key, self.version)

    def new_context(self, context_id: str, options: dict[str, Any]
                    ) -> tuple[dict[str, Any], AudioFormat]:
        model_id = options.pop("model_id", "sonic-latest")
        voice = options.pop("voice", None)
        if voice is None:
            raise TypeError("a Cartesia context needs voice= (an id, or {'id': ...})")
        output_format = dict(options.pop("output_format", None) or DEFAULT_OUTPUT_FORMAT)
        fmt = AudioFormat.from_output_format(output_format)
        if isinstance(voice, str):
            voice = {"mode": "id", "id": voice}
        # the key order of the official SDK, so servers see what they expect
        request = {"context_id": context_id, "model_id": model_id, "transcript": "",
                   "voice": voice, "output_format": output_format, "continue": True}
        request.update({k: v for k, v in options.items() if v is not None})
        return request, fmt

    def request(self, state: ContextState, transcript: str, continue_: bool, flush: bool,
                extra: dict[str, Any]) -> str:
        """One generation request: the context's fields, the transcript, ``continue``."""
        message = dict(state.request)
        message["transcript"] = transcript
        message["continue"] = continue_
        if flush:
            message["flush"] = True
        message.update(extra)
        return json.dumps(message)

    def push(self, state: ContextState, transcript: str, flush: bool,
             extra: dict[str, Any]) -> list[str]:
        return [self.request(state, transcript, True, flush, extra)]

    def flush(self, state: ContextState) -> list[str]:
        return [self.request(state, "", True, True, {})]

    def end_input(self, state: ContextState) -> list[str]:
        state.input_ended = True
        return [self.request(state, "", False, False, {})]

    def cancel(self, state: ContextState) -> Optional[str]:
        return json.dumps({"context_id": state.context_id, "cancel": True})


#: ElevenLabs' API, used when no url is given.
ELEVENLABS_URL = "wss://api.elevenlabs.io"
#: The ``output_format`` values the ElevenLabs client takes: raw audio the Sink can store
#: (``pcm_*`` is s16le mono). MP3 and Opus are not raw samples.
ELEVENLABS_OUTPUT_FORMATS: Mapping[str, AudioFormat] = {
    **{f"pcm_{rate}": AudioFormat("pcm_s16le", rate)
       for rate in (8000, 16000, 22050, 24000, 32000, 44100, 48000)},
    "ulaw_8000": AudioFormat("pcm_mulaw", 8000),
    "alaw_8000": AudioFormat("pcm_alaw", 8000),
}
ELEVENLABS_DEFAULT_FORMAT = "pcm_24000"
_ELEVENLABS_PATH = re.compile(r"(.*)/v1/text-to-speech/([^/]+)/(multi-stream-input|stream-input)")
_MAX_INACTIVITY_TIMEOUT = 180.0  # seconds, ElevenLabs' documented maximum


def _query_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(f"query parameter {name!r} must be a str, number or bool, not {value!r}")


def elevenlabs_url(url: Optional[str], voice: Optional[str],
                   params: Sequence[tuple[str, Any]]) -> tuple[str, str]:
    """The multi-stream-input URL of ``voice`` under ``url`` (ElevenLabs' API when None),
    with the query ``params`` (name, value; None values left out), and the voice id.

    ``url`` is a base (``ws://127.0.0.1:8080``, or a prefix) or a full endpoint URL
    (``.../v1/text-to-speech/VOICE/multi-stream-input?output_format=...``): its voice and
    query are then kept, and ``voice`` and ``params`` must agree with them. ConfigError
    for a URL that is not ws:// or wss://, the single ``stream-input`` endpoint, no
    voice, or two values of one query parameter."""
    base = ELEVENLABS_URL if url is None else url
    if not isinstance(base, str):
        raise ConfigError(f"url must be a str, not {type(base).__name__}")
    parts = urlsplit(base)
    if parts.scheme not in ("ws", "wss") or not base.startswith(parts.scheme + "://"):
        raise ConfigError(f"url must start with ws:// or wss://, not {base!r}")
    prefix = parts.path.rstrip("/")
    match = _ELEVENLABS_PATH.fullmatch(prefix)
    if match is not None:
        if match[3] == "stream-input":
            raise ConfigError(
                "flushsink's ElevenLabs client speaks multi-stream-input (contexts), not the "
                f"single stream-input endpoint: {base.partition('?')[0]!r}")
        prefix, in_url = match[1], unquote(match[2])
        if voice is not None and voice != in_url:
            raise ConfigError(f"voice={voice!r} but the url names voice {in_url!r}")
        voice = in_url
    if voice is None:
        raise ConfigError(
            "provider='elevenlabs' needs voice=: ElevenLabs' multi-stream-input has one voice "
            "per socket, in its URL, so it is an option of connect(), not of a context")
    if not isinstance(voice, str) or not voice:
        raise ConfigError(f"voice must be a non-empty str (a voice id), not {voice!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, value in params:
        if value is None:
            continue
        text = _query_value(name, value)
        if query.setdefault(name, text) != text:
            raise ConfigError(f"{name}={text!r} but the url says {name}={query[name]!r}")
    path = f"{prefix}/v1/text-to-speech/{quote(voice, safe='')}/multi-stream-input"
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), "")), voice


def _voice_id(voice: Any) -> Any:
    """The id in any form of a voice (``"id"``, ``{"id": ...}``, ``{"mode": "id", ...}``)."""
    if isinstance(voice, Mapping):
        return voice.get("id")
    return voice


class ElevenLabsProvider(Provider):
    """ElevenLabs' ``multi-stream-input`` websocket (docs/providers.md): one voice, model
    and output format per socket (in its URL), up to five contexts on it.

    A context's first message opens it (``{"text": " ", "context_id": ...}`` with the
    context's options: ``voice_settings``, ``generation_config``...); ``push`` sends
    ``{"text", "context_id"}`` (``flush: true`` with ``flush=True``), ``flush()``
    ``{"context_id", "flush": true}``, ``no_more_inputs()`` a flush if text was sent
    since the last one, then ``close_context``: the emulator drops unflushed text there.
    ``cancel()`` is ``close_context`` too (the protocol has no other way to stop a
    context), and its late audio is dropped here; so is a context the client fails
    itself (AudioOverflow, a Sink cap). ``isFinal`` ends the context. A context counts
    against the five from its first message to its ``isFinal``, a cancelled one too.

    There is no per-flush marker on the wire: a flush makes audio come sooner but does
    not end a segment, so a context is one segment (``flush_id`` 0), finished by
    ``isFinal``. The service closes the socket after any error (close 1008), so an error
    without a context ends every started context: an ``invalid_api_key`` one with
    :class:`~flushsink.AuthenticationError`, others with :class:`~flushsink.ContextFailed`.
    """

    name = "elevenlabs"
    label = "ElevenLabs"
    key_env = "ELEVENLABS_API_KEY"
    envelope = ELEVENLABS
    errors_end_connection = True  # (observed: the error, then close 1008)
    cancel_drains = True  # close_context lets the generations asked for finish first
    #: contexts per socket, as the service allows (observed: a sixth is an error that
    #: closes the socket, ending the other five)
    max_contexts: Optional[int] = 5

    def __init__(self, url: Optional[str] = None, *, voice: Optional[str] = None,
                 model_id: Optional[str] = None, output_format: Optional[str] = None,
                 inactivity_timeout: Optional[float] = None,
                 query: Optional[Mapping[str, Any]] = None,
                 max_contexts: Optional[int] = 5) -> None:
        if inactivity_timeout is not None and (
                isinstance(inactivity_timeout, bool)
                or not isinstance(inactivity_timeout, (int, float))
                or not 0 < inactivity_timeout <= _MAX_INACTIVITY_TIMEOUT):
            raise ConfigError(f"inactivity_timeout must be seconds above 0 and at most "
                              f"{_MAX_INACTIVITY_TIMEOUT:g}, not {inactivity_timeout!r}")
        if max_contexts is not None and (isinstance(max_contexts, bool)
                                         or not isinstance(max_contexts, int)
                                         or max_contexts < 1):
            raise ConfigError(f"max_contexts must be an int >= 1 or None, not {max_contexts!r}")
        params: list[tuple[str, Any]] = [
            ("model_id", model_id), ("output_format", output_format),
            ("inactivity_timeout", None if inactivity_timeout is None
             else f"{inactivity_timeout:g}")]
        params += list((query or {}).items())
        self.url, self.voice = elevenlabs_url(url, voice, params)
        query_now = dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))
        if "output_format" not in query_now:
            # the service's default is MP3, which is no raw audio: ask for PCM
            self.url, _ = elevenlabs_url(self.url, None,
                                         [("output_format", ELEVENLABS_DEFAULT_FORMAT)])
            query_now["output_format"] = ELEVENLABS_DEFAULT_FORMAT
        self.output_format = query_now["output_format"]
        fmt = ELEVENLABS_OUTPUT_FORMATS.get(self.output_format)
        if fmt is None:
            raise ConfigError(
                f"output_format {self.output_format!r} is not raw audio flushsink can store: "
                f"one of {', '.join(ELEVENLABS_OUTPUT_FORMATS)}")
        self.format = fmt
        self.model_id = query_now.get("model_id")
        self.max_contexts = max_contexts

    def headers(self, api_key: Optional[str]) -> dict[str, str]:
        return {"xi-api-key": api_key} if api_key else {}

    def new_context(self, context_id: str, options: dict[str, Any]
                    ) -> tuple[dict[str, Any], AudioFormat]:
        voice = options.pop("voice", None)
        if voice is not None and _voice_id(voice) != self.voice:
            raise ConfigError(
                f"context {context_id!r} asks for voice {_voice_id(voice)!r}, but this "
                f"ElevenLabs connection speaks with {self.voice!r}: multi-stream-input has one "
                "voice per socket (connect(..., voice=...)); connect again for another voice")
        for name, value in (("model_id", self.model_id), ("output_format", self.output_format)):
            asked = options.pop(name, None)
            if asked is not None and asked != value:
                raise ConfigError(
                    f"context {context_id!r} asks for {name}={asked!r}, but this ElevenLabs "
                    f"connection has {name}={value!r}: it is one per socket, an option of "
                    "connect()")
        # the first message opens the context; its text is the single space ElevenLabs
        # asks the first message to carry
        request = {"text": " ", "context_id": context_id}
        request.update({k: v for k, v in options.items() if v is not None})
        return request, self.format

    def _open(self, state: ContextState) -> list[str]:
        """The first message, if the server does not know the context yet; ContextClosed
        once its input ended (after close_context the server would take the id for a
        new context)."""
        if state.input_ended:
            raise ContextClosed(f"context {state.context_id!r}: no_more_inputs() was sent")
        return [] if state.started else [json.dumps(state.request)]

    def push(self, state: ContextState, transcript: str, flush: bool,
             extra: dict[str, Any]) -> list[str]:
        messages = self._open(state)
        message: dict[str, Any] = {"text": transcript, "context_id": state.context_id}
        if flush:
            message["flush"] = True
        message.update(extra)
        messages.append(json.dumps(message))
        state.unflushed = not flush and (state.unflushed or bool(transcript))
        return messages

    def flush(self, state: ContextState) -> list[str]:
        messages = self._open(state)
        messages.append(json.dumps({"context_id": state.context_id, "flush": True}))
        state.unflushed = False
        return messages

    def end_input(self, state: ContextState) -> list[str]:
        if state.input_ended:
            return []  # closed already: a second close_context could close a new context
        messages = self._open(state)
        if state.unflushed:
            # close_context drops text not yet flushed (observed on the service: "if it
            # has already been set to flush it will continue"): flush it first
            messages.append(json.dumps({"context_id": state.context_id, "flush": True}))
            state.unflushed = False
        messages.append(json.dumps({"context_id": state.context_id, "close_context": True}))
        state.input_ended = True
        return messages

    def cancel(self, state: ContextState) -> Optional[str]:
        if state.input_ended:
            return None  # closed on the server already; its late audio is dropped here
        state.input_ended = True
        return json.dumps({"context_id": state.context_id, "close_context": True})

    def connection_error(self, event: ServerError, context_id: str
                         ) -> Optional[BaseException]:
        if event.error_code == "invalid_api_key":
            return AuthenticationError(f"ElevenLabs refused the API key: {event.message}")
        return ContextFailed(ContextError(context_id, event.message, event.status_code,
                                          event.error_code, event.title, event.raw))


#: The providers ``connect(provider=...)`` knows, by name.
PROVIDERS = ("cartesia", "elevenlabs")


def make_provider(provider: str, url: Optional[str], *, version: Optional[str] = None,
                  voice: Optional[str] = None, model_id: Optional[str] = None,
                  output_format: Optional[str] = None,
                  inactivity_timeout: Optional[float] = None,
                  query: Optional[Mapping[str, Any]] = None) -> Provider:
    """The strategy of ``connect(url, provider=..., **options)``; ConfigError for an
    unknown provider or an option the provider does not take."""
    if provider == "cartesia":
        given = [name for name, value in (
            ("voice", voice), ("model_id", model_id), ("output_format", output_format),
            ("inactivity_timeout", inactivity_timeout), ("query", query)) if value is not None]
        if given:
            raise ConfigError(
                f"{given[0]}= is a connect() option of provider='elevenlabs'; a Cartesia "
                "context takes voice, model_id and output_format in context()")
        return CartesiaProvider(url, version=version)
    if provider == "elevenlabs":
        if version is not None:
            raise ConfigError("version= is Cartesia's API version; ElevenLabs has none")
        return ElevenLabsProvider(url, voice=voice, model_id=model_id,
                                  output_format=output_format,
                                  inactivity_timeout=inactivity_timeout, query=query)
    raise ConfigError(f"provider must be one of {', '.join(map(repr, PROVIDERS))}, "
                      f"not {provider!r}")


class Session:
    """The protocol state of one client's connections: frames in, events out.

    Each method returns what the shell must do next and does nothing itself:
    ``push``, ``flush``, ``end_input`` (and Cartesia's ``request``) return the messages
    to send, ``cancel`` the message to send, ``receive``,
    ``connection_lost`` and ``cancel`` return events to deliver, in order, each to the
    context its ``context_id`` names: the Sink's events of the contexts this session
    opened (:class:`~flushsink.SegmentReady`, ``ContextDone``, ``ContextError``,
    ``Timestamps``, ``Unknown``), then :class:`StreamEnd` as the last of a context and
    :class:`StreamError` where its reader must see an error. A ``SegmentReady`` is the
    shell's to write (before it delivers it); a write that fails with
    :class:`~flushsink.WriteError` is reported with :meth:`write_failed`, which returns
    what to deliver after the segment. No file, socket or callback is touched here (the
    model is websockets' ``protocol.py``); the shell is :mod:`flushsink._shell`.

    Events of contexts this session did not open are logged and counted in
    ``unrouted``. ``server_errors`` holds the latest 100 errors without a context
    (``ServerError``) and ``server_error_count`` counts them all; ``write_errors`` and
    ``write_error_count`` do the same for the failed writes the shell reports. Only the
    latest are kept so a server cannot grow the client's memory with error frames
    (200,000 of them kept 226 MB), nor a full disk with the segments its WriteErrors
    carry.

    The Sink should drop frames of contexts no ``new_context`` announced
    (``drop_unannounced``, which the clients set): otherwise their audio is stored,
    counts against the caps, and is only dropped here once finished.
    """

    def __init__(self, sink: Sink, provider: Optional[Provider] = None) -> None:
        self.sink = sink
        #: The provider's strategy (Cartesia's by default): the messages, what ends what.
        self.provider: Provider = provider if provider is not None else CartesiaProvider()
        self.contexts: dict[str, ContextState] = {}
        self.server_errors: collections.deque[ServerError] = collections.deque(maxlen=KEPT_ERRORS)
        self.server_error_count = 0
        self.write_errors: collections.deque[WriteError] = collections.deque(maxlen=KEPT_ERRORS)
        self.write_error_count = 0
        self.rejected_frames = 0
        self.unrouted = 0
        #: The server is closing the connection (it sent an error it closes after, see
        #: ``Provider.errors_end_connection``): the shell must send nothing more on it,
        #: and let it end before it opens the next. False again once it is lost.
        self.connection_ending = False
        #: Connections lost so far: a context started while it was N went to the N+1th
        #: connection (the next, if the current one was ending), and only that one's
        #: loss ends it.
        self.lost = 0
        #: Contexts cancelled while the server still generates for them (ElevenLabs'
        #: close_context lets the generations asked for finish, then sends isFinal):
        #: they count against ``max_contexts`` until that end, which ``_drain`` (a Sink
        #: of their frames only, made while there are some) reports. Their audio is
        #: never delivered.
        self.draining: set[str] = set()
        self._drain: Optional[Sink] = None
        #: Messages the shell must send on the current connection (if it is still
        #: connected), as it finds them: the closing of contexts the client failed
        #: itself, for providers that need it (``Provider.cancel_drains``).
        self.outbox: list[str] = []

    # ---- outgoing -----------------------------------------------------------------

    def new_context(self, *, context_id: Optional[str] = None, **options: Any) -> ContextState:
        """Register a context; ``options`` are the provider's (Cartesia: ``model_id``,
        ``voice``, ``output_format`` and defaults such as language, add_timestamps,
        generation_config, max_buffer_delay_ms, which go into every request; ElevenLabs:
        see :class:`ElevenLabsProvider`). A ``context_id`` that is not valid Unicode (a
        lone surrogate) is a ConfigError, before anything is registered. Nothing is sent
        until its first message."""
        context_id = context_id or str(uuid.uuid4())
        if not isinstance(context_id, str):
            raise TypeError(f"context_id must be a str, not {type(context_id).__name__}")
        try:
            context_id.encode("utf-8")
        except UnicodeEncodeError as exc:
            # json.dumps would send it as a \ud800 escape, which is no character: the
            # server's frames would name no context this client has (and the Sink
            # rejects such escapes), so the context would wait for nothing
            raise ConfigError(
                f"context id {context_id!r} is not valid Unicode text: {exc.reason} at "
                f"index {exc.start}") from None
        if context_id in self.contexts:
            raise ValueError(f"context id {context_id!r} is already in use on this connection")
        request, fmt = self.provider.new_context(context_id, dict(options))
        state = ContextState(context_id, request, fmt)
        self.contexts[context_id] = state
        self.sink.set_format(context_id, fmt)
        return state

    def request(self, state: ContextState, transcript: str, *, continue_: bool = True,
                flush: bool = False, **extra: Any) -> str:
        """The JSON text of one Cartesia generation request of ``state``: the shell
        sends it. ContextClosed once the context has ended; ConfigError for a provider
        other than Cartesia (use :meth:`push`, :meth:`flush`, :meth:`end_input`)."""
        provider = self.provider
        if not isinstance(provider, CartesiaProvider):
            raise ConfigError(f"Session.request is Cartesia's; {provider.label} contexts "
                              "send push(), flush() and end_input()")
        self._check(state, transcript)
        message = provider.request(state, transcript, continue_, flush, extra)
        self._started(state, [message])
        return message

    def push(self, state: ContextState, transcript: str, *, flush: bool = False,
             **extra: Any) -> list[str]:
        """The messages of ``ctx.push(transcript, flush=...)``, to send in order.
        ContextClosed once the context has ended; CapacityError when it would be one
        context more than the provider's ``max_contexts`` open on the socket."""
        self._check(state, transcript)
        return self._started(state, self.provider.push(state, transcript, flush, extra))

    def flush(self, state: ContextState) -> list[str]:
        """The messages of ``ctx.flush()`` (as :meth:`push` raises)."""
        self._check(state, "")
        return self._started(state, self.provider.flush(state))

    def end_input(self, state: ContextState) -> list[str]:
        """The messages of ``ctx.no_more_inputs()`` (as :meth:`push` raises)."""
        self._check(state, "")
        return self._started(state, self.provider.end_input(state))

    def _check(self, state: ContextState, transcript: Any) -> None:
        if state.ended:
            raise ContextClosed(f"context {state.context_id!r} has ended")
        if not isinstance(transcript, str):
            raise TypeError("transcript must be a str")
        limit = self.provider.max_contexts
        if state.started or limit is None:
            return
        # A context counts from its first message to its end as the server says it
        # (isFinal), a cancelled one too: whether ElevenLabs frees the slot at
        # close_context or only then is unknown, and closed contexts were seen still
        # counted (livekit/agents-js#1985); past the limit the server's error closes
        # the socket, ending every context on it, so the safe reading is taken.
        open_ = len(self.draining) + sum(1 for other in self.contexts.values()
                                         if other.started and not other.ended)
        if open_ >= limit:
            # refused here, before anything is sent
            raise CapacityError(
                f"context {state.context_id!r} cannot start: {open_} contexts are open on "
                f"this {self.provider.label} socket, the most it takes; wait for one to "
                "end (no_more_inputs() then its end, or cancel() then the server's end of "
                "it)", state.context_id)

    def _started(self, state: ContextState, messages: list[str]) -> list[str]:
        if messages and not state.started:
            state.started = True
            # messages composed while the connection ends go to the next one
            state.connection = self.lost + self.connection_ending
        return messages

    def cancel(self, state: ContextState, *, connected: bool = True
               ) -> tuple[list[Any], Optional[str]]:
        """End the context here (its late audio is dropped, open segments finish as
        incomplete). Returns the events to deliver (those segments, then its
        StreamEnd) and the cancel message to send if the server knows the context and
        ``connected`` says the shell can send it (None if not, or if it had ended
        already)."""
        if state.ended:
            return [], None
        events = list(self.sink.cancel(state.context_id))
        self._end(state, None, events)
        if not (state.started and connected):
            return events, None
        return events, self._close_on_server(state)

    def _close_on_server(self, state: ContextState) -> Optional[str]:
        """The message that stops ``state`` (ended here) on the server; with
        ``cancel_drains``, the context counts in ``draining`` until the server ends it
        (closed already, or by this message)."""
        message = self.provider.cancel(state)
        if self.provider.cancel_drains:
            if self._drain is None:
                self._drain = Sink(self.sink.format, envelope=self.provider.envelope,
                                   drop_unannounced=True)
            self._drain.set_format(state.context_id, state.format)
            self.draining.add(state.context_id)
        return message

    def _closed_here(self, state: ContextState) -> None:
        """A started context the client failed itself: a provider that needs it closed
        on the server gets the message in ``outbox`` (Cartesia's gets nothing: its
        context ends with its last request)."""
        if state.started and self.provider.cancel_drains:
            message = self._close_on_server(state)
            if message is not None:
                self.outbox.append(message)

    def fail(self, state: ContextState, failure: BaseException) -> list[Any]:
        """End the context here with ``failure`` (the shell's own reason, e.g. an
        AudioOverflow): as :meth:`cancel`, its late audio is dropped and its open
        segments finish as incomplete, but its stream ends by raising ``failure``.
        Returns the events to deliver; nothing is sent (as for a CapacityError), but
        for a provider whose contexts must be closed (ElevenLabs) the message is put in
        ``outbox``."""
        if state.ended:
            return []
        events = self._route(self.sink.cancel(state.context_id))
        self._end(state, failure, events)
        self._closed_here(state)
        return events

    # ---- incoming -----------------------------------------------------------------

    def receive(self, frame: Any) -> Sequence[Any]:
        """Feed one frame; return the events to deliver. A chunk that stored its audio
        returns the Sink's shared empty tuple: nothing is built per audio frame. A frame
        the Sink rejects is logged and counted, never fatal: one bad frame must not take
        the other contexts down (a CapacityError ends its context, whose events are
        returned)."""
        try:
            events = self.sink.feed(frame)
        except CapacityError as exc:
            self.rejected_frames += 1
            return self._fail_context(exc.context_id, exc)
        except FrameError as exc:
            self.rejected_frames += 1
            log.warning("flushsink: rejected a frame from the server: %s", exc)
            return ()
        except MemoryError:
            # the frame is lost (nothing was stored), the connection and contexts go on
            self.rejected_frames += 1
            log.error("flushsink: out of memory storing a frame from the server")
            return ()
        if self.draining:
            self._drained(frame)
        if not events:
            return events
        return self._route(events)

    def _drained(self, frame: Any) -> None:
        """Feed ``frame`` to the Sink of the cancelled contexts; each one it ends
        no longer counts against ``max_contexts``."""
        assert self._drain is not None
        try:
            events = self._drain.feed(frame)
        except (FlushsinkError, MemoryError):
            return  # (the main Sink logged and counted what was wrong with it)
        for event in events:
            if isinstance(event, (ContextDone, ContextError)):
                self.draining.discard(event.context_id)
        if not self.draining:
            self._drain = None  # and what it held of their audio

    def connection_lost(self, reason: str) -> list[Any]:
        """The socket closed: finish what was received as incomplete, fail the contexts
        that were still waiting for audio. Returns the events to deliver."""
        self.connection_ending = False
        self.draining.clear()
        self._drain = None
        self.outbox.clear()
        events = self._route(self.sink.close(reason))
        for state in list(self.contexts.values()):
            if not state.ended and state.started and state.connection <= self.lost:
                self._end(state, ConnectionLost(f"connection lost: {reason}"), events)
        self.lost += 1
        return events

    def write_failed(self, event: SegmentReady, error: WriteError) -> tuple[Any, ...]:
        """The shell could not write ``event``'s segment. Deliver the segment anyway,
        then what this returns: a complete segment's context gets the error from its
        iterator (which goes on; the error carries the segment, for a retry); an
        incomplete one's stream ends with its own failure (lost connection, server
        error) right after it, so the write error is only logged and kept then. A
        failed write never ends the connection or the other contexts."""
        self.write_errors.append(error)
        self.write_error_count += 1
        if event.segment.complete:
            # the reader gets it from the context's iterator: logging it as an error too
            # would report it twice to a program that handles it
            log.info("flushsink: %s", error)
            return (StreamError(event.context_id, error),)
        log.error("flushsink: %s", error)
        return ()

    def _route(self, events: Sequence[Any]) -> list[Any]:
        """The events of this session's contexts, each context's StreamEnd after its
        ContextDone or ContextError; server errors and strangers' events kept aside."""
        routed: list[Any] = []
        for event in events:
            if isinstance(event, ServerError):
                self.server_errors.append(event)
                self.server_error_count += 1
                log.warning("flushsink: server error without context: %s", event.message)
                self._connection_error(event, routed)
                continue
            state = self.contexts.get(event.context_id)
            if state is None:
                self.unrouted += 1
                log.debug("flushsink: event for unknown context %r dropped", event.context_id)
                continue
            routed.append(event)
            if isinstance(event, ContextDone):
                self._end(state, None, routed)
            elif isinstance(event, ContextError):
                failure = (ContextRateLimited(event) if event.status_code == 429
                           else ContextFailed(event))
                self._end(state, failure, routed)
        return routed

    def _connection_error(self, event: ServerError, routed: list[Any]) -> None:
        """An error without a context ends the started contexts the provider says it
        ends (ElevenLabs closes the socket after any error), each after its open
        segments, finished as incomplete."""
        if self.provider.errors_end_connection:
            self.connection_ending = True
        for state in list(self.contexts.values()):
            if not state.started or state.ended:
                continue
            failure = self.provider.connection_error(event, state.context_id)
            if failure is None:
                return
            routed += self._route(self.sink.cancel(state.context_id))
            self._end(state, failure, routed)

    def _fail_context(self, context_id: Any, exc: BaseException) -> list[Any]:
        state = self.contexts.get(context_id)
        log.warning("flushsink: %s", exc)
        if state is None or state.ended:
            return []
        events = self._route(self.sink.cancel(context_id))
        self._end(state, exc, events)
        self._closed_here(state)
        return events

    def _end(self, state: ContextState, failure: Optional[BaseException],
             events: list[Any]) -> None:
        """End ``state``'s stream: its StreamEnd goes last into ``events``."""
        self.contexts.pop(state.context_id, None)
        if state.closed:
            return
        state.closed = True
        state.ended = True
        state.failure = failure
        events.append(StreamEnd(state.context_id, failure))
