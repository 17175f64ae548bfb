"""The part of the I/O shell both clients share: what they do with the events the sans-I/O
:class:`~flushsink.session.Session` returns. Each segment is written here (the one place
the clients write segments) and each event is queued for its context; the options, the
contexts and which client holds each Sink live here too. The sockets, threads and event
loops are the asyncio and sync shells' own.

:mod:`flushsink.client` (asyncio) and :mod:`flushsink.sync` import this module and never
each other.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from typing import Any, Callable, Generic, Iterable, Mapping, NamedTuple, Optional, TypeVar

from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from ._accel import AudioChunk, Sink
from ._connection import Retry, as_retry, check_url, handshake_error, resolve_key
from .errors import (
    AudioOverflow,
    ConfigError,
    ConnectionLost,
    FlushsinkError,
    ReceiveTimeout,
    SendTimeout,
    WriteError,
)
from .envelopes import CARTESIA
from .formats import DEFAULT_FORMAT
from .segments import SegmentReady
from .session import (
    ContextState,
    Provider,
    Session,
    StreamEnd,
    StreamError,
    log,
    make_provider,
)

__all__ = ["AudioStats", "ClientBase", "ContextBase"]

#: The policies of a streaming client for a context whose unread audio passes
#: ``audio_buffer_bytes``.
OVERFLOW_POLICIES = ("wait", "fail")


class AudioStats(NamedTuple):
    """A streaming context's counters (``ctx.stats``): the AudioChunks it received
    (``chunks``), their audio ``bytes``, and ``stalls``, the times the reader stopped
    reading the socket because this context's unread audio passed
    ``audio_buffer_bytes`` (``on_audio_overflow="wait"``)."""

    chunks: int
    bytes: int
    stalls: int


# Which client uses each Sink: Session.connection_lost closes the sink, which ends every
# context in it, so two open clients on one Sink would end each other's contexts. Weak
# both ways: a sink or client that is gone frees its entry.
_sink_users: "weakref.WeakKeyDictionary[Any, weakref.ReferenceType[Any]]" = (
    weakref.WeakKeyDictionary())
_sink_users_lock = threading.Lock()


class ContextBase:
    """One generation context, whichever client it belongs to: its state, the messages
    it sends, and how its event stream ends. The asyncio and sync ``Context`` add only
    the waiting (``await`` or blocking) around these."""

    _queue_class: Callable[[], Any]  # the shell's queue of the context's events

    def __init__(self, client: "ClientBase[Any]", state: ContextState) -> None:
        self._client = client
        self._state = state
        self._queue = self._queue_class()
        # streaming clients: the context's AudioChunks (then its StreamEnd), apart from
        # its events, so that audio() and segments() can be read side by side
        self._audio = self._queue_class() if client.stream else None
        # bytes of audio queued and taken: each written by one side only (the reader,
        # the consumer), so the sync client's threads need no lock to count them
        self._queued = 0
        self._taken = 0
        self._chunks = 0
        self._stalls = 0
        self._sent_at: Optional[float] = None
        #: Seconds from this context's first request to its first AudioChunk (streaming
        #: clients; None until then).
        self.first_audio_s: Optional[float] = None

    @property
    def context_id(self) -> str:
        return self._state.context_id

    @property
    def stats(self) -> AudioStats:
        """This context's counters: AudioChunks received, their bytes, reader stalls."""
        return AudioStats(self._chunks, self._queued, self._stalls)

    def _audio_queue(self) -> Any:
        """The queue audio() reads; ConfigError for a client made without stream=True."""
        if self._audio is None:
            raise ConfigError(
                "audio() needs a streaming client: connect(..., stream=True) (this one "
                "was made with stream=False, so its Sink returns no AudioChunks)")
        return self._audio

    def _unread(self) -> int:
        """Bytes of audio queued for audio() and not taken yet."""
        return self._queued - self._taken

    def _took(self, chunk: Any) -> None:
        """audio() hands ``chunk`` to its consumer: a reader waiting on this context
        goes on once its unread audio is down to half the bound."""
        self._taken += chunk.nbytes
        client = self._client
        if client._stalled is self and self._unread() <= client._resume_bytes:
            client._space_freed(self)

    # The messages of push(), flush() and no_more_inputs(), in order, for the shell to
    # send: the provider's (an ElevenLabs context's first one opens it on the server).

    def _push(self, transcript: str, flush: bool, extra: dict[str, Any]) -> list[str]:
        client = self._client
        with client._state_lock:
            messages = client._session.push(self._state, transcript, flush=flush, **extra)
        self._sending()
        return messages

    def _flush(self) -> list[str]:
        client = self._client
        with client._state_lock:
            messages = client._session.flush(self._state)
        self._sending()
        return messages

    def _end_input(self) -> list[str]:
        client = self._client
        with client._state_lock:
            messages = client._session.end_input(self._state)
        self._sending()
        return messages

    def _sending(self) -> None:
        if self._sent_at is None:
            self._sent_at = time.monotonic()

    def _cancel(self) -> Optional[str]:
        """End the context here and deliver what that finishes; return the cancel
        message to send, if the server knows the context and is connected."""
        client = self._client
        with client._state_lock:
            events, message = client._session.cancel(self._state,
                                                     connected=client._connected())
            client._deliver(events)
        return message

    # Chunks bring no events, so a segment that streams for longer than receive_timeout
    # would time out while its audio arrives: when a wait for an event runs out, the
    # Sink's count of the context's frames (kept anyway) says whether any came meanwhile,
    # and if so the wait starts again. No timer or clock per frame.

    def _activity(self) -> int:
        """The Sink's count of this context's frames, to compare after a wait."""
        return self._client._session.sink.activity(self.context_id)

    def _waited(self, seen: int, wait: Optional[float]) -> int:
        """A wait of ``wait`` seconds brought no event: ReceiveTimeout if no frame of
        the context came either since the count was ``seen``; else the count now."""
        now = self._activity()
        if now == seen:
            raise ReceiveTimeout(
                f"no frame for context {self.context_id!r} in {wait} s") from None
        return now

    @staticmethod
    def _goes_on(event: Any) -> bool:
        """Whether the stream yields ``event``: False at its end (StreamEnd), and raises
        what the stream raises (its failure, or a StreamError's error)."""
        if isinstance(event, StreamEnd):
            if event.failure is not None:
                raise event.failure
            return False
        if isinstance(event, StreamError):
            raise event.error  # e.g. a WriteError: iterate again to go on
        return True


C = TypeVar("C", bound=ContextBase)


class ClientBase(Generic[C]):
    """Options, the Session, the contexts and the write step: what the asyncio and sync
    clients share. A shell feeds each message to the Session and hands what it returns
    to :meth:`_deliver`; when the connection ends, it calls :meth:`_lost`.

    Options (all keyword-only): ``provider``, ``writer``, ``sink``, ``receive_timeout``
    (longest silence of a context), ``open_timeout`` (handshake), ``send_timeout``
    (longest wait to hand a message to the socket), ``close_timeout`` (``close()``;
    default ``open_timeout``), ``max_size``, ``compression``, ``additional_headers``.
    A ``sink`` may serve one open client at a time (ConfigError otherwise), and must
    read the provider's frames (its ``envelope``).

    Providers: ``provider="cartesia"`` (default) takes ``version`` (the
    ``Cartesia-Version`` header); each context its own voice, model and format.
    ``provider="elevenlabs"`` speaks ElevenLabs' ``multi-stream-input`` (default URL
    ``wss://api.elevenlabs.io``, key ``api_key`` or ``ELEVENLABS_API_KEY`` in the
    ``xi-api-key`` header) and takes ``voice`` (required: one voice per socket, in the
    URL), ``model_id``, ``output_format`` (``"pcm_24000"`` by default; ``pcm_8000`` to
    ``pcm_48000``, ``ulaw_8000``, ``alaw_8000``), ``inactivity_timeout`` (seconds, at
    most 180) and ``query`` (more query parameters: ``language_code``,
    ``auto_mode``...). Its contexts are one segment each (no per-flush marker on the
    wire), at most five open at once (see
    :class:`~flushsink.session.ElevenLabsProvider`).

    Streaming: ``stream=True`` (default: the ``sink``'s own ``stream``, else False)
    gives each context ``audio()``, its AudioChunks in order. ``audio_buffer_bytes``
    (default 16 MiB) bounds each context's audio not yet read from ``audio()``;
    ``on_audio_overflow`` says what happens past it: ``"wait"`` (default) stops reading
    the socket until the consumer has read the context's unread audio down to half the
    bound (every context of the connection waits with it), and fails the context with
    AudioOverflow if that takes longer than ``receive_timeout`` or ``hold_limit`` (15 s,
    for websockets' keepalive), whichever is shorter; ``"fail"`` fails the
    context with AudioOverflow at once.

    Retries: ``retry`` (default None: none) retries a handshake that failed for a
    reason that may pass (HTTP 429 honouring Retry-After, 408, 5xx, network errors) with
    capped exponential backoff and jitter: a :class:`Retry`, a number of attempts, or
    True for ``Retry()``. Contexts are never retried (ContextRateLimited says why).
    """

    _context_class: "type[C]"
    # The lock a shell takes around the Session, for shells where more than one thread
    # uses it. A factory, so that _state_lock is an instance attribute only: one that
    # shadows a class attribute loses CPython's specialized attribute load, which cost
    # the sync client 40 ns per audio message (about 5%).
    _state_lock_class: Callable[[], Any] = contextlib.nullcontext

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None, *,
                 provider: str = "cartesia", voice: Optional[str] = None,
                 model_id: Optional[str] = None, output_format: Optional[str] = None,
                 inactivity_timeout: Optional[float] = None,
                 query: Optional[Mapping[str, Any]] = None,
                 version: Optional[str] = None, writer: Any = None, sink: Optional[Sink] = None,
                 receive_timeout: float = 60.0, open_timeout: float = 10.0,
                 send_timeout: Optional[float] = 10.0, close_timeout: Optional[float] = None,
                 max_size: Optional[int] = 16 * 2**20, compression: Optional[str] = None,
                 additional_headers: Optional[dict[str, str]] = None,
                 stream: Optional[bool] = None, audio_buffer_bytes: int = 16 * 2**20,
                 on_audio_overflow: str = "wait",
                 retry: "Retry | int | bool | None" = None) -> None:
        #: The provider's strategy: URL, headers, the messages of a context.
        self.provider: Provider = make_provider(
            provider, url, version=version, voice=voice, model_id=model_id,
            output_format=output_format, inactivity_timeout=inactivity_timeout, query=query)
        self.api_key = resolve_key(url, api_key, self.provider.key_env, self.provider.label)
        self.url = self.provider.url
        check_url(self.url)
        self.version = self.provider.version
        self.receive_timeout = receive_timeout
        self.open_timeout = open_timeout
        self.send_timeout = send_timeout
        # close() returns within this (websockets' default would be 10 s whatever
        # open_timeout said, which the docs promised bounded closing too)
        self.close_timeout = open_timeout if close_timeout is None else close_timeout
        self.max_size = max_size
        # permessage-deflate costs 3-14x client CPU for ~23% fewer bytes: off by default
        self.compression = compression
        self.headers = {**self.provider.headers(self.api_key), **(additional_headers or {})}
        #: How a failed handshake is retried (None: it is not); see Retry.
        self.retry: Optional[Retry] = as_retry(retry)
        self.handshake_retries = 0  # handshakes retried so far
        if on_audio_overflow not in OVERFLOW_POLICIES:
            raise ConfigError(f"on_audio_overflow must be 'wait' or 'fail', "
                              f"not {on_audio_overflow!r}")
        if (isinstance(audio_buffer_bytes, bool) or not isinstance(audio_buffer_bytes, int)
                or audio_buffer_bytes < 1):
            raise ConfigError(f"audio_buffer_bytes must be an int >= 1, "
                              f"not {audio_buffer_bytes!r}")
        if sink is None:
            stream = bool(stream)
            if self.provider.envelope is not CARTESIA:
                sink = Sink(DEFAULT_FORMAT, stream=stream, envelope=self.provider.envelope)
            else:
                sink = Sink(DEFAULT_FORMAT, stream=True) if stream else Sink(DEFAULT_FORMAT)
        else:
            self.provider.check_sink(sink)
        if stream is None:
            stream = bool(sink.stream)
        elif bool(stream) != bool(sink.stream):
            raise ConfigError(f"stream={stream!r} but the sink given was made with "
                              f"stream={sink.stream!r}: they must agree")
        #: Whether contexts have audio() (their Sink returns AudioChunks).
        self.stream: bool = bool(stream)
        self.audio_buffer_bytes = audio_buffer_bytes
        self.on_audio_overflow = on_audio_overflow
        # a reader waiting for a consumer goes on once the unread audio is down to this
        self._resume_bytes = audio_buffer_bytes // 2
        # contexts whose unread audio passed the bound while events were delivered (the
        # shell waits for them once it is done delivering), and the one it waits for
        self._full: list[Any] = []
        self._stalled: Optional[Any] = None
        self._stopping = False  # closing: the reader no longer waits for consumers
        self._claim(sink)
        # only the contexts this client opens may store audio: a server sending frames
        # for others cannot fill the caps or make files with them
        sink.drop_unannounced = True
        self._session = Session(sink, self.provider)
        self._state_lock = self._state_lock_class()
        self._writer = writer
        self._contexts: dict[str, C] = {}
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self.connections = 0

    @property
    def sink(self) -> Sink:
        return self._session.sink

    def _retry_delay(self, retries: int, exc: BaseException) -> float:
        """A handshake failed with ``exc`` after ``retries`` retries: the seconds to wait
        before the next try, as ``retry`` says, or the typed error raised."""
        error = handshake_error(self.url, exc, self.open_timeout)
        delay = None if self.retry is None else self.retry.delay(retries, error, exc)
        if delay is None:
            raise error from exc
        self.handshake_retries += 1
        return delay

    def _claim(self, sink: Any) -> None:
        """Take ``sink`` for this client, or raise ConfigError if another open client
        has it. Called when the client is made and when it (re)connects."""
        with _sink_users_lock:
            try:
                ref = _sink_users.get(sink)
            except TypeError:  # pragma: no cover - a sink without weak references
                return
            user = ref() if ref is not None else None
            if user is not None and user is not self:
                raise ConfigError(
                    "this Sink is already used by another client that is not closed: a "
                    "closing connection ends every context of its Sink, so each open client "
                    "needs a Sink of its own (close the other client first)")
            if user is None:
                _sink_users[sink] = weakref.ref(self)

    def _release(self) -> None:
        """A closed client leaves its Sink to others."""
        sink = self._session.sink
        with _sink_users_lock:
            try:
                ref = _sink_users.get(sink)
            except TypeError:  # pragma: no cover
                return
            if ref is not None and ref() is self:
                del _sink_users[sink]

    @property
    def session(self) -> Session:
        return self._session

    def context(self, *, voice: Any = None, context_id: Optional[str] = None,
                **options: Any) -> C:
        """A new context (nothing is sent until its first push).

        Cartesia: ``voice`` (required), ``model_id`` (``"sonic-latest"``),
        ``output_format`` (a dict; raw pcm_s16le 44.1 kHz by default), and defaults
        sent with each of its requests (language, add_timestamps, max_buffer_delay_ms,
        generation_config, ...).

        ElevenLabs: the voice, model and output format are the connection's (give none,
        or the same: ConfigError for another, connect again for that); the other
        options (``voice_settings``, ``generation_config``,
        ``pronunciation_dictionary_locators``...) go in the context's first message."""
        with self._state_lock:
            state = self._session.new_context(voice=voice, context_id=context_id, **options)
            ctx = self._context_class(self, state)
            self._contexts[state.context_id] = ctx
            return ctx

    def _connected(self) -> bool:
        raise NotImplementedError

    def _receive(self, message: Any) -> None:
        """Feed one message to the Session and deliver what it returns. (The shells'
        _on_message does the same inline: it runs for every audio frame.)"""
        events = self._session.receive(message)
        if events:
            self._deliver(events)

    def _deliver(self, events: Iterable[Any]) -> None:
        """Hand each of the Session's events to its context's queue, writing each
        segment first: the one place where the clients write segments. A WriteError
        fails that segment only (Session.write_failed says what follows it); anything
        else the writer raises is a bug, and propagates to the shell, which ends the
        connection (:meth:`_reader_failed`)."""
        writer = self._writer
        for event in events:
            if writer is not None and isinstance(event, SegmentReady):
                try:
                    writer(event)
                except WriteError as exc:
                    self._put(event)
                    for after in self._session.write_failed(event, exc):
                        self._put(after)
                    continue
            self._put(event)

    def _put(self, event: Any) -> None:
        context_id = event.context_id
        ctx = self._contexts.get(context_id)
        if ctx is not None:
            if isinstance(event, AudioChunk):
                self._put_audio(ctx, event)
                return
            ctx._queue.put_nowait(event)
            if isinstance(event, StreamEnd):
                del self._contexts[context_id]
                if ctx._audio is not None:
                    ctx._audio.put_nowait(event)
                if self._stalled is ctx:  # no more audio comes for it: read on
                    self._space_freed(ctx)
                if self._session.outbox:  # (a context the client failed: close it there)
                    self._send_outbox()

    def _put_audio(self, ctx: Any, chunk: Any) -> None:
        """Queue ``chunk`` for the context's audio(), within its bound (see
        ``on_audio_overflow``): "fail" ends the context instead of queueing past it,
        "wait" queues it and leaves the context in ``_full`` for the shell to wait on."""
        nbytes = chunk.nbytes
        if ctx.first_audio_s is None and ctx._sent_at is not None:
            ctx.first_audio_s = time.monotonic() - ctx._sent_at
        unread = ctx._unread()
        if (unread and unread + nbytes > self.audio_buffer_bytes
                and self.on_audio_overflow == "fail"):
            self._deliver(self._session.fail(ctx._state, AudioOverflow(
                f"context {ctx.context_id!r}: {unread + nbytes} bytes of audio not read "
                f"from audio(), over audio_buffer_bytes={self.audio_buffer_bytes}",
                ctx.context_id, chunk.flush_id)))
            return
        ctx._chunks += 1
        ctx._queued += nbytes
        ctx._audio.put_nowait(chunk)
        if (unread + nbytes > self.audio_buffer_bytes and not self._stopping
                and ctx not in self._full):
            self._full.append(ctx)

    def _next_stall(self) -> Optional[Any]:
        """The next context in ``_full`` the reader must wait for (unread audio still
        over half the bound, not ended), counted as a stall of it; None if none."""
        full = self._full
        while full:
            ctx = full.pop(0)
            if (not self._stopping and not ctx._state.closed
                    and ctx._unread() > self._resume_bytes):
                ctx._stalls += 1
                return ctx
        return None

    #: The longest the reader waits for a consumer (on_audio_overflow="wait") before the
    #: context fails, whatever receive_timeout says: while reading is stopped, websockets'
    #: keepalive cannot read the server's pong, and with its defaults (a ping every 20 s,
    #: 20 s for the pong) a wait of 20 s may close the connection, ending every context.
    hold_limit: float = 15.0

    def _hold_seconds(self) -> float:
        """How long the reader waits for one consumer: receive_timeout, at most
        hold_limit."""
        timeout = self.receive_timeout
        return self.hold_limit if timeout is None else min(timeout, self.hold_limit)

    def _overflowed(self, ctx: Any) -> None:
        """The reader waited _hold_seconds() for ``ctx``'s consumer in vain: the
        context fails with AudioOverflow (the shell holds the state lock)."""
        self._deliver(self._session.fail(ctx._state, AudioOverflow(
            f"context {ctx.context_id!r}: {ctx._unread()} bytes of audio not read from "
            f"audio() within {self._hold_seconds():g} s (over "
            f"audio_buffer_bytes={self.audio_buffer_bytes}: the reader waited)",
            ctx.context_id)))

    def _space_freed(self, ctx: Any) -> None:
        """The consumer of the context the reader waits for read enough (or the context
        ended): the shell's reader goes on."""
        raise NotImplementedError

    def _send_outbox(self) -> None:
        """Send the Session's ``outbox`` on the current connection, if it is still
        connected (else drop it: the server ends those contexts with the connection),
        without waiting here: this runs where the connection's frames are handled."""
        raise NotImplementedError

    def _lost(self, reason: str) -> None:
        """The connection ended: deliver what the Session finishes and fails."""
        self._deliver(self._session.connection_lost(reason))
        # A context the Session ended whose StreamEnd never reached it (the writer
        # failed on an event before it, see _reader_failed) would wait for nothing:
        # it ends as lost, as it would have if its last frames had never come.
        for ctx in list(self._contexts.values()):
            if ctx._state.closed:
                self._put(StreamEnd(ctx.context_id, ConnectionLost(f"connection lost: {reason}")))

    def _reader_failed(self, exc: Exception) -> None:
        """Handling a message raised what no frame should (a bug, or a writer's own
        error): every context ends with ConnectionLost naming it. The shell then
        stops feeding that connection's messages and closes it."""
        log.exception("flushsink: the reader failed")
        with self._state_lock:
            self._lost(f"reader failed: {exc!r}")

    def _closed(self, exc: ConnectionClosed, ws: Any) -> str:
        # the close frame of the side that closed first (the server's, or ours: e.g.
        # 1009 for a frame over max_size, 1000 for close()), else none at all: the TCP
        # connection dropped
        close: Optional[Close]
        if exc.rcvd is not None and (exc.sent is None or exc.rcvd_then_sent):
            close, side = exc.rcvd, "the server"
        else:
            close, side = exc.sent, "flushsink"
        self.close_code = close.code if close else None
        self.close_reason = close.reason if close else None
        if ws.failure is not None:
            return f"closed by flushsink: {ws.failure}"
        if close is None:
            return "connection dropped without a close frame"
        reason = f" ({close.reason})" if close.reason else ""
        return f"connection closed by {side} with code {close.code}{reason}"

    @staticmethod
    def _send_failed(exc: ConnectionClosed, ws: Any) -> FlushsinkError:
        """What a send that found the connection closed raises."""
        if isinstance(ws.failure, SendTimeout):
            return SendTimeout(str(ws.failure))
        return ConnectionLost(f"connection closed while sending: {exc}")
