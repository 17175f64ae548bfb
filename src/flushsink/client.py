"""asyncio client for TTS websockets with contexts (Cartesia's, ElevenLabs'
multi-stream-input), on ``websockets.asyncio.client``.

One connection carries many contexts; each frame, parsed here as it is read, goes to the
sans-I/O :class:`~flushsink.session.Session`, and the events it returns go through the
shell both clients share (:class:`~flushsink._shell.ClientBase`: segments written, each
event queued for its context). Nothing protocol-specific lives here.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import mmap
import sys
from typing import Any, AsyncIterator, Optional, cast

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import State

try:  # websockets 16+: recv() refuses messages of more frames than this
    from websockets.asyncio.messages import MAX_FRAGMENTS
except ImportError:  # pragma: no cover - older websockets have no such limit
    MAX_FRAGMENTS = sys.maxsize

from ._accel import AudioChunk
from ._connection import HANDSHAKE_FAILURES, DirectMessages, drop_message
from ._shell import AudioStats, ClientBase, ContextBase
from .errors import ConfigError, ReceiveTimeout, SendTimeout
from .segments import Segment, SegmentReady
from .session import ConnectionLost, log

__all__ = ["connect", "AudioStats", "Client", "ClientBase", "Context", "ReceiveTimeout"]


# Who parses the frames of a _Connection: websockets until the handshake's end, then
# _Connection itself, or websockets for good once something unusual came.
_HANDSHAKE, _DIRECT, _WEBSOCKETS = 0, 1, 2


def _message_limit(protocol: Any) -> Optional[int]:
    """The longest message websockets' protocol accepts (max_size; max_message_size and
    max_fragment_size from websockets 16 on), None if this version says neither."""
    names = ("max_size", "max_message_size", "max_fragment_size")
    if not any(hasattr(protocol, name) for name in names[:2]):
        return None
    limits = [getattr(protocol, name, None) for name in names]
    return min((limit for limit in limits if limit is not None), default=sys.maxsize)


def _carried(carry: bytearray, limit: int) -> tuple[int, bool]:
    """For a frame begun in ``carry``: (bytes to have before more is known, whether that
    is the whole frame); (0, False) for a frame that _Connection leaves to websockets."""
    if len(carry) < 2:
        return 2, False
    first, second = carry[0], carry[1]
    if second >= 128 or not (first == 0x81 or first == 0x82
                             or (first in (0x88, 0x89, 0x8A) and second <= 125)):
        return 0, False
    header = 2 if second < 126 else 4 if second == 126 else 10
    if len(carry) < header:
        return header, False
    length = second if header == 2 else int.from_bytes(carry[2:header], "big")
    if length > limit:
        return 0, False
    return header + length, True


class _Connection(DirectMessages, ClientConnection, asyncio.BufferedProtocol):
    """The asyncio connection flushsink uses: messages as in DirectMessages, and reads
    into one buffer of its own (asyncio's buffered protocol) rather than into a new
    256 KiB bytes object per read. glibc serves those with mmap and, since what is freed
    is the read shrunk to its length, never raises its mmap threshold past them: every
    read then faults its pages in afresh unless something else in the process freed a
    larger block first (measured in a fresh process: 1 to 13 page faults per message, a
    20 ms message at 7 instead of 4.5 us). websockets copies what it is given
    (receive_data appends it to its own buffer), so the one buffer can be reused.

    The buffer is 1 MiB, so that a burst is read in fewer system calls and loop turns
    (bench_e2e, 100 ms messages: 8.3 us with 256 KiB reads, 7.4 with 1 MiB); it is an
    anonymous mapping, resident only as far as reads have filled it. A closed
    connection leaves it to the next one (up to _KEPT_READ_BUFFERS of them wait), whose
    reads then land in pages already mapped: a fresh mapping costs a page fault per
    4 KiB filled, 256 per connection (about 1.5 ms on a VM).

    Once the handshake is done, frames are parsed here, not by websockets: a complete
    data message (one text or binary frame: FIN set, no reserved bit, unmasked, within
    max_size) goes to ``on_message`` as a view of the read buffer, valid for the call
    (the Sink copies what it keeps); a control frame (ping, pong, close) is handed to
    websockets whole, so its parser always stands at a frame boundary; a frame begun
    at the end of a read waits in ``_carry`` for the rest. websockets' parser costs
    more per message than the Sink: a generator step per header part, the frame copied
    into its buffer and out again, a Frame, an enum lookup and a list of events
    (bench_scale at real-time pacing, 100 ms chunks: about 20 us of 55 per frame). The
    first frame that is anything else (a fragment, a reserved bit or opcode, a masked
    frame, one over max_size) and all that follows it go to websockets, which decides
    as it always did (fragments are joined by DirectMessages, the rest fails the
    connection), as does everything once the connection is no longer open or when an
    extension was negotiated."""

    _read_buffer: Optional[memoryview] = None
    _reads: "collections.deque[float]"  # when the last three reads were (see _coalesce)
    _max_fragments = MAX_FRAGMENTS
    _refusing: "Optional[asyncio.Task[None]]" = None
    _frames = _HANDSHAKE  # who parses what is read: see buffer_updated
    _head_tail = b""  # the handshake's last bytes, to find its end across reads
    _carry: Optional[bytearray] = None  # a frame begun at the end of an earlier read
    _frame_limit = 0  # the longest message parsed here: max_size
    coalesce_reads = 0.0  # seconds: see _coalesce
    _resumed = -math.inf  # when reading last resumed after a pause
    _messages = 0  # messages delivered since the last read began
    _resume: Optional[asyncio.TimerHandle] = None
    _held = False  # paused for a streaming context's consumer: only the client resumes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reads = collections.deque(maxlen=3)

    def _refuse(self, code: int, reason: str) -> None:
        # websockets' recv() does this in send_context(), which sends the close frame,
        # waits close_timeout for the server's, then drops the TCP connection; it
        # cannot be awaited here, inside data_received: a task does it next.
        if self._refusing is None:
            self._refusing = asyncio.ensure_future(self._fail(code, reason))

    async def _fail(self, code: int, reason: str) -> None:
        try:
            async with self.send_context():
                self.protocol.fail(code, reason)
        except ConnectionClosed:
            pass

    async def drain(self) -> None:
        # websockets waits here, after handing a message to the transport, for as long
        # as the transport's buffer is over its high-water mark: forever if the server
        # stopped reading. Bounded by send_timeout; websockets' send_context() then
        # aborts the connection and raises ConnectionClosed from the SendTimeout. Only
        # a paused transport waits, so the common case costs one attribute test.
        if self.paused and self.send_timeout is not None:
            try:
                await asyncio.wait_for(super().drain(), self.send_timeout)
            except asyncio.TimeoutError:
                raise self._send_timed_out() from None
        else:
            await super().drain()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._read_buffer is None:
            try:  # (clients on event loops in other threads may take the last one first)
                self._read_buffer = _idle_read_buffers.pop()
            except IndexError:
                self._read_buffer = memoryview(mmap.mmap(-1, _READ_SIZE))
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        assert self._read_buffer is not None
        self._receive(self._read_buffer[:nbytes])
        if self.coalesce_reads and nbytes < _READ_SIZE:
            self._coalesce()

    def data_received(self, data: bytes) -> None:
        # What a transport calls that does not take the buffered protocol for this
        # class: uvloop uses get_buffer only for protocols that are not also
        # asyncio.Protocol, as websockets' connection is. Same path, bytes of its own.
        self._receive(memoryview(data))
        # (a read this large may have left more behind: only a short one pauses)
        if self.coalesce_reads and len(data) < _FULL_READ:
            self._coalesce()

    def _receive(self, data: memoryview) -> None:
        if self._frames == _DIRECT:
            self._receive_frames(data)
        elif self._frames == _HANDSHAKE:
            self._receive_handshake(data)
        else:
            self._parse(data)

    def _parse(self, data: Any) -> None:
        """websockets parses ``data`` (and acts on what it finds)."""
        ClientConnection.data_received(self, data)

    def _coalesce(self) -> None:
        # Each read costs an event-loop wake-up, and on a VM the process sleeping in
        # epoll_wait and being woken costs more CPU than parsing the frame it brings
        # (25-30 us per wake-up on asyncio's loop, 15 on uvloop; 1.5 us to parse a 100
        # ms chunk). While frames come several per interval, reading pauses until the
        # next multiple of coalesce_reads on the loop's clock, and what arrived
        # meanwhile is read at once; every connection of the loop resumes at the same
        # instants, so their reads share one wake-up. Frames further apart are read as
        # they come. A frame after a quiet spell is always read at once.
        loop = self.loop
        now = loop.time()
        interval = self.coalesce_reads
        resumed, self._resumed = self._resumed, -math.inf
        messages, self._messages = self._messages, 0
        reads = self._reads
        # Busy: two messages or more were waiting when reading resumed, or this is the
        # fourth read within an interval. A pause that gathers one frame or none costs
        # more than it saves: pausing and resuming take about 10 us on asyncio's loop,
        # and a resume that finds nothing is a wake-up of its own before the frame's
        # (bench_scale, 50 contexts on 2 sockets, a frame every 4 ms per socket: 96 ->
        # 112-123 us per frame when a read within half an interval of the last paused).
        if now - resumed < interval / 2:
            if messages < 2:
                reads.clear()
                return
        else:
            busy = len(reads) == 3 and now - reads[0] < interval
            reads.append(now)
            if not busy:
                return
        transport = self.transport
        if self._resume is not None or transport.is_closing():
            return
        transport.pause_reading()
        self._resume = loop.call_at((now // interval + 1) * interval, self._resume_reading)

    def _resume_reading(self) -> None:
        self._resume = None
        if not self.transport.is_closing() and not self._held:
            self._resumed = self.loop.time()
            self.transport.resume_reading()

    def _receive_handshake(self, data: memoryview) -> None:
        # websockets parses the HTTP response; frames may follow it in the same read.
        # A 101 response has no body, so it ends with its first blank line: what
        # follows is frames, parsed here from the first one on if the connection opened
        # plainly, else by websockets as before.
        seen = self._head_tail + bytes(data)
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head_tail = seen[-3:]
            self._parse(data)
            return
        end += 4 - len(self._head_tail)
        self._head_tail = b""
        self._parse(data[:end])
        limit = _message_limit(self.protocol)
        if self.protocol.state is State.OPEN and not self.protocol.extensions and limit is not None:
            self._frames, self._frame_limit = _DIRECT, limit
            if end < len(data):
                self._receive_frames(data[end:])
        else:
            self._frames = _WEBSOCKETS
            if end < len(data):
                self._parse(data[end:])

    def _receive_frames(self, data: memoryview) -> None:
        carry = self._carry
        if carry is not None:
            taken = self._fill_carry(carry, data)
            if taken < 0:  # still incomplete, or handed over with data
                return
            self._carry = None  # not reused: views of it may be alive
            if self._scan(memoryview(carry)) < 0:
                self._parse(data[taken:])
                return
            data = data[taken:]
        pos = self._scan(data)
        if 0 <= pos < len(data):
            self._carry = bytearray(data[pos:])

    def _scan(self, data: Any) -> int:
        """Deliver each complete frame of ``data``; return where the first incomplete
        one starts, or -1 once websockets has been given the rest to parse."""
        pos, end = 0, len(data)
        protocol = self.protocol
        limit = self._frame_limit
        while end - pos >= 2:
            if protocol.state is not State.OPEN:
                return self._hand_over(data[pos:])
            first, second = data[pos], data[pos + 1]
            if second < 126:
                start, length = pos + 2, second
            elif second == 126:
                start = pos + 4
                if start > end:
                    break
                length = data[pos + 2] << 8 | data[pos + 3]
            elif second == 127:
                start = pos + 10
                if start > end:
                    break
                length = int.from_bytes(data[pos + 2:start], "big")
            else:  # masked, which a server's frames never are
                return self._hand_over(data[pos:])
            stop = start + length
            if first == 0x81 or first == 0x82:  # FIN + text or binary
                if length > limit:
                    return self._hand_over(data[pos:])
                if stop > end:
                    break
                self.on_message(data[start:stop])
                self._messages += 1
            elif (first == 0x88 or first == 0x89 or first == 0x8A) and length <= 125:
                if stop > end:
                    break
                self._parse(data[pos:stop])  # close, ping, pong: websockets'
            else:
                return self._hand_over(data[pos:])
            pos = stop
        return pos

    def _fill_carry(self, carry: bytearray, data: memoryview) -> int:
        """Move the rest of the carried frame from ``data`` to ``carry``; return how
        many bytes that took, or -1 if the frame is still incomplete (or it and
        ``data`` went to websockets)."""
        taken = 0
        while True:
            want, whole = _carried(carry, self._frame_limit)
            if not want:  # a frame websockets must parse
                self._carry = None
                self._hand_over(bytes(carry))
                self._parse(data[taken:])
                return -1
            more = min(want - len(carry), len(data) - taken)
            carry += data[taken:taken + more]
            taken += more
            if len(carry) < want:
                return -1
            if whole:
                return taken

    def _hand_over(self, rest: Any) -> int:
        """From here on websockets parses what is read, starting with ``rest``."""
        self._frames = _WEBSOCKETS
        self._parse(rest)
        return -1

    def eof_received(self) -> None:
        carry, self._carry = self._carry, None
        if carry is not None:  # a frame cut short: websockets says so, as it did
            self._hand_over(bytes(carry))
        super().eof_received()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._carry = None
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        super().connection_lost(exc)
        buffer, self._read_buffer = self._read_buffer, None
        if buffer is None:
            return
        if len(_idle_read_buffers) < _KEPT_READ_BUFFERS:
            _idle_read_buffers.append(buffer)
            return
        try:  # unmap it now, not when the GC gets to the connection
            buffer.release()
        except BufferError:  # pragma: no cover - a slice still exported
            pass


_READ_SIZE = 2**20
_FULL_READ = 2**16  # a read through data_received this long may not have drained the socket
_CLOSE_GRACE = 0.05  # seconds the reader may take past close_timeout to see the end
_KEPT_READ_BUFFERS = 4
_idle_read_buffers: list[memoryview] = []  # append and pop are atomic: any thread may use it


class _Inbox:
    """A context's events not yet read, and the readers waiting for more.

    asyncio.Queue would do, but its timeout would have to come from asyncio.wait_for,
    which wraps each get() in a task of its own; that, and the extra turns of the event
    loop it takes, made the client's CPU per 500 ms message 27 instead of 20 us (and
    asyncio.timeout is 3.11+). Here a waiting reader is one future and one timer."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def get(self, timeout: Optional[float]) -> Any:
        """The next item; asyncio.TimeoutError if none comes within timeout seconds
        (None: wait as long as it takes)."""
        if self._items:
            return self._items.popleft()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not self._items:  # another reader may take what woke this one: wait again
            timer = None
            waiter = loop.create_future()
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise asyncio.TimeoutError
                timer = loop.call_later(remaining, _expire, waiter)
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:  # cancelled: hand a wakeup meant for this one on
                waiter.cancel()
                if self._items:
                    self._wake()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                if self._waiters and self._waiters[-1] is waiter:
                    self._waiters.pop()  # timed out or cancelled: not left behind
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
        return self._items.popleft()


def _expire(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


class Context(ContextBase):
    """One generation context: push text, flush, finish, and read its segments."""

    _client: "Client"
    _queue: _Inbox
    _queue_class = _Inbox

    async def push(self, transcript: str, *, flush: bool = False, **extra: Any) -> None:
        """Send text; ``flush=True`` also flushes it (see :meth:`flush`). ``extra``
        fields go into the message as they are."""
        await self._client._send_all(self._push(transcript, flush, extra))

    async def flush(self) -> None:
        """Have the server generate the text sent so far. Cartesia: it closes the
        current segment (the server answers with ``flush_done``). ElevenLabs: the audio
        comes sooner, but the segment goes on: a context is one segment, which its end
        (``isFinal``) finishes."""
        await self._client._send_all(self._flush())

    async def no_more_inputs(self) -> None:
        """Tell the server the context's text is complete; its end (Cartesia ``done``,
        ElevenLabs ``isFinal``, after ``close_context``) follows its audio."""
        await self._client._send_all(self._end_input())

    async def cancel(self) -> None:
        """Stop the context: queued input is dropped by the server (Cartesia ``cancel``,
        ElevenLabs ``close_context``), late audio by us; segments still open are
        finished as incomplete."""
        message = self._cancel()
        if message is not None:
            try:
                await self._client._send(message)
            except (ConnectionClosed, ConnectionLost, SendTimeout):
                pass  # the connection is gone, so is the context on the server

    async def events(self, timeout: Optional[float] = None) -> AsyncIterator[Any]:
        """Every event of this context (SegmentReady, Timestamps, ContextDone, ...), until
        it ends. Raises ContextFailed, ConnectionLost or ReceiveTimeout: the latter once
        the context has been silent (no frame of it, audio included) for ``timeout``
        (default ``receive_timeout``) seconds, noticed within twice that."""
        wait = self._client.receive_timeout if timeout is None else timeout
        queue = self._queue
        while True:
            if queue._items:
                event = queue._items.popleft()
            else:
                event = await self._wait(queue, wait)
            if not self._goes_on(event):
                return
            yield event
            del event  # do not pin the last event (and its audio) while waiting for the next

    async def _wait(self, queue: _Inbox, wait: Optional[float]) -> Any:
        seen = self._activity()
        while True:
            try:
                return await queue.get(wait)
            except asyncio.TimeoutError:
                seen = self._waited(seen, wait)  # (ReceiveTimeout if the context is silent)

    async def audio(self, timeout: Optional[float] = None) -> AsyncIterator[AudioChunk]:
        """The context's AudioChunks, in order, as they arrive (a client made with
        ``stream=True``; ConfigError otherwise), until its ``done``; raises what
        :meth:`events` raises (ContextFailed, ConnectionLost, ReceiveTimeout,
        AudioOverflow). Read alongside :meth:`segments` as you like: the two have
        queues of their own. Unread audio is bounded by the client's
        ``audio_buffer_bytes`` (see ``on_audio_overflow``), so read it."""
        queue = self._audio_queue()
        wait = self._client.receive_timeout if timeout is None else timeout
        while True:
            if queue._items:
                item = queue._items.popleft()
            else:
                item = await self._wait(queue, wait)
            if not isinstance(item, AudioChunk):
                if not self._goes_on(item):
                    return
                continue
            self._took(item)
            yield item
            del item  # the consumer holds the chunk's audio, not this generator

    async def segments(self, timeout: Optional[float] = None) -> AsyncIterator[Segment]:
        """The finished segments of this context, in order, until it ends."""
        async for event in self.events(timeout):
            if isinstance(event, SegmentReady):
                segment = event.segment
                del event
                yield segment
                del segment  # released as soon as the caller lets go of it

    async def collect(self, timeout: Optional[float] = None) -> list[Segment]:
        """All segments of the context, once it is done."""
        return [segment async for segment in self.segments(timeout)]


class Client(ClientBase[Context]):
    """A connection (re-opened on demand) and its contexts. Use :func:`connect`.

    Besides ClientBase's options, ``coalesce_reads`` (seconds, default 0.005): while
    frames arrive several per this interval, the connection reads at most once per
    interval, so that a busy connection costs an event-loop wake-up per interval
    instead of one per frame or two. A frame after a quiet spell is read at once: a
    context's first audio waits only if other audio arrived on the same connection just
    before it, and then at most this long. 0 or None: read as soon as data arrives.
    (bench_scale, 1,000 contexts on 10 sockets in real time: 47.7 -> 36.7 us of client
    CPU per frame; 2 ms saved nothing there, because pausing and resuming a
    connection's reads costs about 10 us on asyncio's loop.)
    """

    _context_class = Context

    def __init__(self, *args: Any, coalesce_reads: Optional[float] = 0.005,
                 **options: Any) -> None:
        if coalesce_reads is not None and (
                isinstance(coalesce_reads, bool) or not isinstance(coalesce_reads, (int, float))
                or not 0 <= coalesce_reads < math.inf):
            raise ConfigError(f"coalesce_reads must be a number of seconds >= 0 or None, "
                              f"not {coalesce_reads!r}")
        super().__init__(*args, **options)
        self.coalesce_reads = float(coalesce_reads or 0)
        self._ws: Optional[ClientConnection] = None
        self._reader: Optional[asyncio.Task[None]] = None
        self._closing: set[asyncio.Future[None]] = set()
        self._background: set[asyncio.Future[None]] = set()  # see _send_outbox
        self._lock = asyncio.Lock()
        self._held_connection: Optional[_Connection] = None  # paused for _stalled's consumer
        self._stall_timer: Optional[asyncio.TimerHandle] = None

    # ---- connection ---------------------------------------------------------------

    def _connected(self) -> bool:
        return (self._ws is not None and self._reader is not None and not self._reader.done()
                and not self._session.connection_ending)

    async def connect(self) -> None:
        """Open the connection now (it also opens on the first push), retrying as
        ``retry`` says. Raises HandshakeError (AuthenticationError,
        ConnectionRateLimited) when it cannot."""
        async with self._lock:
            if self._connected():
                return
            if self._reader is not None and not self._reader.done():
                # the server is closing this one after an error: it ends (its contexts
                # with it) before the next opens, so no message goes to a socket
                # nobody reads and its end reaches no context of the next
                await self.close()
            self._claim(self._session.sink)  # released if this client was closed
            self._stopping = False
            retries = 0
            while True:
                try:
                    self._ws = await ws_connect(
                        self.url, additional_headers=self.headers,
                        open_timeout=self.open_timeout, close_timeout=self.close_timeout,
                        max_size=self.max_size, compression=self.compression,
                        create_connection=cast(Any, self._new_connection),
                    )
                    break
                except HANDSHAKE_FAILURES as exc:
                    delay = self._retry_delay(retries, exc)  # (or raises)
                retries += 1
                await asyncio.sleep(delay)
            self.connections += 1
            self._reader = asyncio.create_task(self._read(self._ws))

    def _new_connection(self, *args: Any, **kwargs: Any) -> ClientConnection:
        connection = _Connection(*args, **kwargs)
        connection.on_message = functools.partial(self._on_message, connection)
        connection.send_timeout = self.send_timeout
        connection.coalesce_reads = self.coalesce_reads
        return connection

    def _on_message(self, connection: "_Connection", message: Any) -> None:
        """A message, straight from the protocol (inside the transport's data_received)."""
        try:
            events = self._session.receive(message)
            if events:  # (an audio frame has none: this is all it costs here)
                self._deliver(events)
                if self._full:
                    self._hold(connection)
        except Exception as exc:  # a bug (or a writer's own error) must not go unseen
            connection.on_message = drop_message  # the rest of what this connection brings
            self._reader_failed(exc)
            closing = asyncio.ensure_future(
                connection.close(CloseCode.INTERNAL_ERROR, "client failed"))
            self._closing.add(closing)  # a strong reference until it is done
            closing.add_done_callback(self._closed_after_failure)

    # ---- a streaming context's consumer is behind: on_audio_overflow="wait" ----------

    def _hold(self, connection: Any) -> None:
        """A context's unread audio passed audio_buffer_bytes: stop reading
        ``connection`` (the rest of the current read is still delivered) until its
        consumer has read it down to half, the context ends, or _hold_seconds() pass
        (the context then fails with AudioOverflow)."""
        transport = connection.transport
        if self._stalled is not None or transport is None or transport.is_closing():
            return
        ctx = self._next_stall()
        if ctx is None:
            return
        self._stalled, self._held_connection = ctx, connection
        connection._held = True
        transport.pause_reading()
        self._stall_timer = connection.loop.call_later(
            self._hold_seconds(), self._stall_expired, ctx)

    def _space_freed(self, ctx: Any) -> None:
        if self._stalled is not ctx:
            return
        connection = self._release_hold()
        if connection is not None and self._full:
            self._hold(connection)  # another context over its bound meanwhile

    def _release_hold(self) -> Optional[_Connection]:
        connection, timer = self._held_connection, self._stall_timer
        self._stalled = self._held_connection = self._stall_timer = None
        if timer is not None:
            timer.cancel()
        if connection is None:
            return None
        connection._held = False
        transport = connection.transport
        if connection._resume is None and not transport.is_closing():
            transport.resume_reading()  # (else the coalescing timer resumes it)
        return connection

    def _stall_expired(self, ctx: Any) -> None:
        self._stall_timer = None
        if self._stalled is ctx:
            self._overflowed(ctx)  # its StreamEnd frees the reader (_space_freed)
            if self._stalled is ctx:  # pragma: no cover - it had ended already
                self._release_hold()

    def _closed_after_failure(self, closing: "asyncio.Future[None]") -> None:
        self._closing.discard(closing)
        if not closing.cancelled() and closing.exception() is not None:
            log.debug("flushsink: closing after a failure: %r", closing.exception())

    def _send_outbox(self) -> None:
        messages, self._session.outbox = self._session.outbox, []
        ws = self._ws
        if ws is None or not self._connected():
            return
        sending = asyncio.ensure_future(self._send_quietly(ws, messages))
        self._background.add(sending)  # a strong reference until it is done
        sending.add_done_callback(self._background.discard)

    @staticmethod
    async def _send_quietly(ws: ClientConnection, messages: list[str]) -> None:
        try:
            for message in messages:
                await ws.send(message)
        except ConnectionClosed:
            pass  # the server ends the contexts with the connection

    async def _send_all(self, messages: list[str]) -> None:
        for message in messages:
            await self._send(message)

    async def _send(self, message: str) -> None:
        if not self._connected():
            await self.connect()  # after an idle close, the next push reconnects
        ws = self._ws
        assert ws is not None
        try:
            await ws.send(message)
        except ConnectionClosed as exc:
            raise self._send_failed(exc, ws) from exc

    async def _read(self, ws: ClientConnection) -> None:
        # Messages go to _on_message as they are parsed; this task waits for the end of
        # the connection (and feeds whatever recv() still gets, see DirectMessages).
        try:
            while True:
                self._receive(await ws.recv(decode=False))
                if self._full:
                    self._hold(ws)
        except ConnectionClosed as exc:
            self._lost(self._closed(exc, ws))
        except asyncio.CancelledError:
            self._lost("the client stopped reading")
            raise
        except Exception as exc:  # a bug must not leave the contexts waiting forever
            self._reader_failed(exc)
            await ws.close()

    async def close(self) -> None:
        """Close the connection; contexts still open finish as incomplete. Returns within
        ``close_timeout`` (default: ``open_timeout``): a server that does not answer the
        closing handshake in time has its connection dropped."""
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        self._release()
        self._stopping = True  # the closing handshake must be read: no more holds
        self._full.clear()
        if self._stalled is not None:
            self._release_hold()
        loop = asyncio.get_running_loop()
        timeout = self.close_timeout
        deadline = None if timeout is None else loop.time() + timeout
        if ws is not None:
            # websockets bounds its wait for the server's close by close_timeout, but not
            # a send stuck behind a server that stopped reading (send_timeout): this does
            try:
                await asyncio.wait_for(ws.close(), timeout)
            except asyncio.TimeoutError:
                ws.transport.abort()
        if reader is not None:
            # the reader ends as soon as the connection has: a loop turn or two
            remaining = None if deadline is None else max(deadline - loop.time(), _CLOSE_GRACE)
            try:
                await asyncio.wait_for(reader, remaining)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                reader.cancel()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


def connect(url: Optional[str] = None, api_key: Optional[str] = None, **options: Any) -> Client:
    """``async with flushsink.connect(...) as tts:`` (see :class:`ClientBase` for options,
    and :class:`Client` for ``coalesce_reads``).

    ``url=None`` means Cartesia (``wss://api.cartesia.ai/tts/websocket``) with
    ``api_key`` or ``CARTESIA_API_KEY``; a bare ``ws://host:port`` gets the
    ``/tts/websocket`` path.

    ``provider="elevenlabs"``: ElevenLabs' multi-stream-input, ``url=None`` meaning
    ``wss://api.elevenlabs.io`` with ``api_key`` or ``ELEVENLABS_API_KEY``; a bare
    ``ws://host:port`` (e.g. an ``ElevenLabsEmulator``'s ``url``) gets the
    ``/v1/text-to-speech/{voice}/multi-stream-input`` path and the query. The voice is
    per socket, so ``voice=`` is an option here, not of a context::

        async with flushsink.connect(provider="elevenlabs", voice="VOICE_ID",
                                     model_id="eleven_flash_v2_5",
                                     output_format="pcm_24000") as tts:
            ctx = tts.context()
    """
    return Client(url, api_key, **options)
