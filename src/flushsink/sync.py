"""Blocking client for TTS websockets with contexts (Cartesia's, ElevenLabs'
multi-stream-input), on ``websockets.sync.client``.

The same API as :mod:`flushsink.client` without ``await``: websockets' receiving thread
hands each message to the sans-I/O :class:`~flushsink.session.Session` (under a lock, as
the caller's thread uses it too), and the events it returns go through the shell both
clients share (:mod:`flushsink._shell`: segments written, events queued per context).
This module adds threads, blocking waits and the socket's send timeout.
"""

from __future__ import annotations

import functools
import inspect
import queue
import sys
import threading
import time
from typing import Any, Iterator, Optional, cast

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from ._accel import AudioChunk
from ._connection import HANDSHAKE_FAILURES, DirectMessages, drop_message
from ._shell import AudioStats, ClientBase, ContextBase
from .errors import ReceiveTimeout, SendTimeout
from .segments import Segment, SegmentReady
from .session import ConnectionLost

__all__ = ["connect", "AudioStats", "Client", "Context", "ReceiveTimeout"]

# websockets 17 wants connect() used as a context manager unless legacy=True is passed,
# which older versions (the official SDK pins < 16) do not accept: ask only where known.
_DIRECT: dict[str, Any] = (
    {"legacy": True} if "legacy" in inspect.signature(ws_connect).parameters else {})


try:  # websockets 16+: recv() refuses messages of more frames than this
    from websockets.sync.messages import MAX_FRAGMENTS
except ImportError:  # pragma: no cover - older websockets have no such limit
    MAX_FRAGMENTS = sys.maxsize


class _Connection(DirectMessages, ClientConnection):
    _max_fragments = MAX_FRAGMENTS

    def _refuse(self, code: int, reason: str) -> None:
        # As websockets' recv() does, through send_context(): it waits for this very
        # thread (the one receiving) to end, so another thread must call it.
        threading.Thread(target=self._fail, args=(code, reason), daemon=True).start()

    def _fail(self, code: int, reason: str) -> None:
        try:
            with self.send_context():
                self.protocol.fail(code, reason)
        except ConnectionClosed:
            pass

    def send_data(self) -> None:
        # The client sets the socket's timeout to send_timeout once the handshake is
        # done, so a sendall() to a server that stopped reading fails instead of
        # blocking forever with the protocol lock held (which also stalls websockets'
        # keepalive and receiving threads). send_context() then closes the connection
        # and raises ConnectionClosed from the SendTimeout. Once closing, websockets
        # sets the timeout to its close deadline itself: that one stays its own.
        try:
            super().send_data()
        except TimeoutError:
            if self.close_deadline is not None:
                raise
            raise self._send_timed_out() from None


class Context(ContextBase):
    """One generation context: push text, flush, finish, and read its segments."""

    _client: "Client"
    _queue: "queue.SimpleQueue[Any]"
    _queue_class = queue.SimpleQueue  # (C: a get that waits costs no Python-level Condition)

    def push(self, transcript: str, *, flush: bool = False, **extra: Any) -> None:
        """Send text; ``flush=True`` also flushes it (see :meth:`flush`). ``extra``
        fields go into the message as they are."""
        self._client._send_all(self._push(transcript, flush, extra))

    def flush(self) -> None:
        """Have the server generate the text sent so far. Cartesia: it closes the
        current segment (the server answers with ``flush_done``). ElevenLabs: the audio
        comes sooner, but the segment goes on: a context is one segment, which its end
        (``isFinal``) finishes."""
        self._client._send_all(self._flush())

    def no_more_inputs(self) -> None:
        """Tell the server the context's text is complete; its end (Cartesia ``done``,
        ElevenLabs ``isFinal``, after ``close_context``) follows its audio."""
        self._client._send_all(self._end_input())

    def cancel(self) -> None:
        """Stop the context: queued input is dropped by the server (Cartesia ``cancel``,
        ElevenLabs ``close_context``), late audio by us; segments still open are
        finished as incomplete."""
        message = self._cancel()
        if message is not None:
            try:
                self._client._send(message)
            except (ConnectionClosed, ConnectionLost, SendTimeout):
                pass

    def events(self, timeout: Optional[float] = None) -> Iterator[Any]:
        """Every event of this context until it ends. Raises ContextFailed,
        ConnectionLost or ReceiveTimeout: the latter once the context has been silent
        (no frame of it, audio included) for ``timeout`` (default ``receive_timeout``)
        seconds, noticed within twice that."""
        wait = self._client.receive_timeout if timeout is None else timeout
        while True:
            event = self._get(self._queue, wait)
            if not self._goes_on(event):
                return
            yield event
            del event  # do not pin the last event (and its audio) while waiting for the next

    def _get(self, items: "queue.SimpleQueue[Any]", wait: Optional[float]) -> Any:
        seen = self._activity()
        while True:
            try:
                return items.get(timeout=wait)
            except queue.Empty:
                seen = self._waited(seen, wait)  # (ReceiveTimeout if the context is silent)

    def audio(self, timeout: Optional[float] = None) -> Iterator[AudioChunk]:
        """The context's AudioChunks, in order, as they arrive (a client made with
        ``stream=True``; ConfigError otherwise), until its ``done``; raises what
        :meth:`events` raises (ContextFailed, ConnectionLost, ReceiveTimeout,
        AudioOverflow). Read it alongside :meth:`segments` (another thread) as you
        like. Unread audio is bounded by the client's ``audio_buffer_bytes`` (see
        ``on_audio_overflow``), so read it."""
        items = self._audio_queue()
        wait = self._client.receive_timeout if timeout is None else timeout
        while True:
            item = self._get(items, wait)
            if not isinstance(item, AudioChunk):
                if not self._goes_on(item):
                    return
                continue
            self._took(item)
            yield item
            del item  # the consumer holds the chunk's audio, not this generator

    def segments(self, timeout: Optional[float] = None) -> Iterator[Segment]:
        """The finished segments of this context, in order, until it ends."""
        for event in self.events(timeout):
            if isinstance(event, SegmentReady):
                segment = event.segment
                del event
                yield segment
                del segment  # released as soon as the caller lets go of it

    def collect(self, timeout: Optional[float] = None) -> list[Segment]:
        """All segments of the context, once it is done."""
        return list(self.segments(timeout))


class Client(ClientBase[Context]):
    """A connection (re-opened on demand) and its contexts. Use :func:`connect`."""

    _context_class = Context
    # the Session is touched by the caller's thread and the reader thread (staticmethod:
    # threading.RLock is a function, which the class would bind)
    _state_lock_class = staticmethod(threading.RLock)

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self._connect_lock = threading.Lock()
        self._space = threading.Condition(threading.Lock())  # see _hold
        self._ws: Optional[ClientConnection] = None
        self._reader: Optional[threading.Thread] = None

    def _connected(self) -> bool:
        return (self._ws is not None and self._reader is not None and self._reader.is_alive()
                and not self._session.connection_ending)

    def connect(self) -> None:
        """Open the connection now (it also opens on the first push), retrying as
        ``retry`` says. Raises HandshakeError (AuthenticationError,
        ConnectionRateLimited) when it cannot."""
        with self._connect_lock:
            if self._connected():
                return
            if self._reader is not None and self._reader.is_alive():
                # the server is closing this one after an error: it ends (its contexts
                # with it) before the next opens, so no message goes to a socket
                # nobody reads and its end reaches no context of the next
                self.close()
            self._claim(self._session.sink)  # released if this client was closed
            self._stopping = False
            retries = 0
            while True:
                try:
                    ws = ws_connect(self.url, additional_headers=self.headers,
                                    open_timeout=self.open_timeout, max_size=self.max_size,
                                    close_timeout=self.close_timeout,
                                    compression=self.compression,
                                    create_connection=cast(Any, self._new_connection),
                                    **_DIRECT)
                    break
                except HANDSHAKE_FAILURES as exc:
                    delay = self._retry_delay(retries, exc)  # (or raises)
                retries += 1
                time.sleep(delay)
            if self.send_timeout is not None:
                ws.socket.settimeout(self.send_timeout)  # see _Connection.send_data
            self._ws = ws
            self.connections += 1
            self._reader = threading.Thread(target=self._read, args=(ws,),
                                            name="flushsink-reader", daemon=True)
            self._reader.start()

    def _send_outbox(self) -> None:
        messages, self._session.outbox = self._session.outbox, []
        ws = self._ws
        if ws is None or not self._connected():
            return
        # not from this thread: websockets' receiving thread holds the lock send() takes
        threading.Thread(target=self._send_quietly, args=(ws, messages),
                         name="flushsink-close-context", daemon=True).start()

    @staticmethod
    def _send_quietly(ws: ClientConnection, messages: list[str]) -> None:
        try:
            for message in messages:
                ws.send(message)
        except ConnectionClosed:
            pass  # the server ends the contexts with the connection

    def _send_all(self, messages: list[str]) -> None:
        for message in messages:
            self._send(message)

    def _send(self, message: str) -> None:
        if not self._connected():
            self.connect()  # after an idle close, the next push reconnects
        ws = self._ws
        assert ws is not None
        try:
            ws.send(message)
        except ConnectionClosed as exc:
            raise self._send_failed(exc, ws) from exc

    def _new_connection(self, *args: Any, **kwargs: Any) -> ClientConnection:
        connection = _Connection(*args, **kwargs)
        connection.on_message = functools.partial(self._on_message, connection)
        connection.send_timeout = self.send_timeout
        return connection

    def _on_message(self, connection: "_Connection", message: Any) -> None:
        """A message, straight from the protocol, in websockets' receiving thread (so
        the writer runs there too: a slow one delays the reading of the socket)."""
        try:
            with self._state_lock:
                events = self._session.receive(message)
                if events:  # (an audio frame has none: this is all it costs here)
                    self._deliver(events)
            if self._full:
                self._hold()
        except Exception as exc:  # a bug (or a writer's own error) must not go unseen
            connection.on_message = drop_message  # the rest of what this connection brings
            self._reader_failed(exc)
            # close() waits for this very thread to end: another one must call it
            threading.Thread(target=connection.close, args=(1011, "client failed"),
                             daemon=True).start()

    # ---- a streaming context's consumer is behind: on_audio_overflow="wait" ----------

    def _hold(self) -> None:
        """In the receiving thread, without the state lock: a context's unread audio
        passed audio_buffer_bytes, so this thread (and so the reading of the socket)
        waits until its consumer has read it down to half, the context ends, or
        _hold_seconds() pass (the context then fails with AudioOverflow)."""
        while True:
            with self._space:
                ctx = self._next_stall()
                if ctx is None:
                    return
                self._stalled = ctx
                deadline = time.monotonic() + self._hold_seconds()
                # (the consumer may have read between _next_stall and here: look again)
                while (self._stalled is ctx and ctx._unread() > self._resume_bytes
                       and not ctx._state.closed and not self._stopping):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._space.wait(remaining)
                expired = (self._stalled is ctx and ctx._unread() > self._resume_bytes
                           and not ctx._state.closed and not self._stopping)
                self._stalled = None
            if expired:
                with self._state_lock:
                    self._overflowed(ctx)

    def _space_freed(self, ctx: Any) -> None:
        with self._space:
            if self._stalled is ctx:
                self._stalled = None
                self._space.notify_all()

    def _read(self, ws: ClientConnection) -> None:
        # Messages go to _on_message in websockets' own thread; this one waits for the
        # end of the connection (and feeds whatever recv() still gets, see DirectMessages).
        try:
            while True:
                frame = ws.recv(decode=False)
                with self._state_lock:
                    self._receive(frame)
                if self._full:
                    self._hold()
        except ConnectionClosed as exc:
            with self._state_lock:
                self._lost(self._closed(exc, ws))
        except Exception as exc:  # a bug must not leave the contexts waiting forever
            self._reader_failed(exc)
            ws.close()

    def close(self) -> None:
        """Close the connection; contexts still open finish as incomplete. Returns within
        ``close_timeout`` (default: ``open_timeout``): websockets drops the connection of
        a server that does not answer the closing handshake in time. (A push blocked by
        a server that stopped reading holds websockets' lock until its send_timeout.)"""
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        self._release()
        self._stopping = True  # a reader waiting for a consumer goes on, to see the end
        with self._space:
            self._space.notify_all()
        timeout = self.close_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        if ws is not None:
            ws.close()
        if reader is not None:
            reader.join(None if deadline is None else max(deadline - time.monotonic(), 0.05))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def connect(url: Optional[str] = None, api_key: Optional[str] = None, **options: Any) -> Client:
    """``with flushsink.sync.connect(...) as tts:`` — the blocking twin of
    :func:`flushsink.connect`."""
    return Client(url, api_key, **options)
