"""The asyncio client's own frame parser (``_Connection`` once the handshake is done) against
websockets' parser, which the same connection class uses when told to: the same byte
stream, cut into reads at every position around each frame's header and at random ones,
must give the same messages, the same bytes written back (pongs, close frames), the same
close codes and the same final state. No network: reads are written into the
connection's read buffer and announced with ``buffer_updated``, as asyncio does."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import struct
import time

import pytest
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

import flushsink
from flushsink import client as client_module

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
          mask: bytes | None = None, length: int | None = None) -> bytes:
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload) if length is None else length
    masked = 0x80 if mask is not None else 0
    if n < 126:
        head = struct.pack("!BB", first, masked | n)
    elif n < 2**16:
        head = struct.pack("!BBH", first, masked | 126, n)
    else:
        head = struct.pack("!BBQ", first, masked | 127, n)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason)


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name, default=None):
        return default


async def _drive(reads: list[int], frames: bytes, *, direct: bool, max_size: int,
                 eof: bool, buffered: bool = True) -> dict:
    """Open a _Connection on a fake transport, answer its handshake with 101 (in the
    first read, followed by the start of ``frames``), feed the reads (into its read
    buffer, or as bytes to data_received as uvloop does), return what came out."""
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1:1/tts/websocket"), max_size=max_size)
    connection = client_module._Connection(protocol, close_timeout=1)
    if not direct:
        connection._frames = client_module._WEBSOCKETS
    messages: list[bytes] = []
    connection.on_message = lambda message: messages.append(bytes(message))
    transport = FakeTransport()
    connection.connection_made(transport)
    request = protocol.connect()
    protocol.send_request(request)
    connection.send_data()
    key = request.headers["Sec-WebSocket-Key"].encode()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    response = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    sent_handshake = len(transport.written)
    stream = response + frames
    offset = 0
    for size in reads:
        piece = stream[offset:offset + size]
        offset += size
        if buffered:
            buffer = connection.get_buffer(-1)
            buffer[:len(piece)] = piece
            connection.buffer_updated(len(piece))
        else:
            connection.data_received(piece)
    assert offset == len(stream)
    if eof:
        connection.eof_received()
    result = {
        "messages": messages,
        "written": bytes(transport.written[sent_handshake:]),
        "state": protocol.state,
        "close_rcvd": protocol.close_rcvd and (protocol.close_rcvd.code, protocol.close_rcvd.reason),
        "close_sent": protocol.close_sent and (protocol.close_sent.code, protocol.close_sent.reason),
        "parsed_here": connection._frames == client_module._DIRECT,
    }
    connection.connection_lost(None)
    return result


def _unmask(written: bytes) -> bytes:
    """The client's frames with their (random) masks removed, for comparison."""
    out, pos = bytearray(), 0
    while pos < len(written):
        first, second = written[pos], written[pos + 1]
        length, pos = second & 0x7F, pos + 2
        if length == 126:
            length, pos = struct.unpack("!H", written[pos:pos + 2])[0], pos + 2
        elif length == 127:
            length, pos = struct.unpack("!Q", written[pos:pos + 8])[0], pos + 8
        mask, pos = written[pos:pos + 4], pos + 4
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(written[pos:pos + length]))
        out += bytes((first,)) + struct.pack("!Q", length) + payload
        pos += length
    return bytes(out)


def compare(frames: bytes, reads_list: list[list[int]], *, max_size: int = 2**20,
            eof: bool = False) -> dict:
    """Run every split both ways; all must agree. Returns the direct path's first result."""
    first = None
    for index, reads in enumerate(reads_list):
        # every other split arrives as bytes through data_received (uvloop's way)
        got = asyncio.run(_drive(reads, frames, direct=True, max_size=max_size, eof=eof,
                                 buffered=index % 2 == 0))
        want = asyncio.run(_drive(reads, frames, direct=False, max_size=max_size, eof=eof))
        got_written, want_written = _unmask(got.pop("written")), _unmask(want.pop("written"))
        parsed_here = got.pop("parsed_here")
        want.pop("parsed_here")
        assert got == want, f"reads {reads}"
        assert got_written == want_written, f"reads {reads}"
        if first is None:
            first = dict(got, parsed_here=parsed_here)
    assert first is not None
    return first


def splits(total: int, points: list[int], rng: random.Random, extra: int = 30) -> list[list[int]]:
    """Read sizes cutting a stream of ``total`` bytes in two at each point (and at
    ``extra`` random points), plus one read per byte for short streams and a few
    random cuts into many reads."""
    cuts = sorted({p for p in points if 0 < p < total} | {rng.randrange(1, total) for _ in range(extra)})
    reads = [[cut, total - cut] for cut in cuts]
    reads.append([total])
    if total <= 2000:
        reads.append([1] * total)
    for _ in range(5):
        sizes, left = [], total
        while left:
            size = min(left, rng.randrange(1, max(2, total // 7)))
            sizes.append(size)
            left -= size
        reads.append(sizes)
    return reads


def boundaries(response_length: int, frames: list[bytes]) -> list[int]:
    """Every offset within 12 bytes of a frame's start or end (header parts, payload)."""
    points, pos = [], response_length
    for item in frames:
        points += [pos + d for d in range(-3, 13)] + [pos + len(item) + d for d in (-2, -1, 0, 1)]
        pos += len(item)
    return points


RESPONSE_LENGTH = len(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: \r\n\r\n") + 28


def check(items: list[bytes], *, max_size: int = 2**20, eof: bool = False, seed: int = 0) -> dict:
    rng = random.Random(seed)
    frames = b"".join(items)
    total = RESPONSE_LENGTH + len(frames)
    points = boundaries(RESPONSE_LENGTH, items) + list(range(RESPONSE_LENGTH - 6, RESPONSE_LENGTH + 3))
    return compare(frames, splits(total, points, rng), max_size=max_size, eof=eof)


CHUNK = (b'{"type": "chunk", "context_id": "c", "status_code": 206, "done": false, '
         b'"flush_id": 1, "data": "' + base64.b64encode(bytes(range(256)) * 40) + b'"}')


def test_every_length_encoding_and_control_frame_in_any_split():
    items = [frame(TEXT, b'{"type": "done"}'), frame(TEXT, b""), frame(PING, b"hi"),
             frame(TEXT, CHUNK), frame(BINARY, bytes(range(200))), frame(PONG, b""),
             frame(TEXT, b"x" * 125), frame(TEXT, b"y" * 126), frame(TEXT, b"z" * 65535),
             frame(BINARY, b"w" * 65536), frame(PING, b"p" * 125), frame(TEXT, b"last")]
    result = check(items)
    assert result["parsed_here"] and result["state"] is State.OPEN
    assert len(result["messages"]) == 9


def test_close_frame_then_data_is_left_to_websockets():
    items = [frame(TEXT, b"before"), close_frame(1000, b"bye"), frame(TEXT, b"after close")]
    result = check(items, eof=True)
    assert result["messages"] == [b"before"]
    assert result["close_rcvd"] == (1000, "bye")


def test_eof_in_the_middle_of_a_frame_fails_as_websockets_does():
    items = [frame(TEXT, b"whole"), frame(TEXT, CHUNK)[:700]]
    result = check(items, eof=True)
    assert result["messages"] == [b"whole"]
    assert result["state"] is not State.OPEN


def test_fragmented_message_is_joined_and_what_follows_still_arrives():
    items = [frame(TEXT, b"one"), frame(TEXT, b"fir", fin=False), frame(PING, b"!"),
             frame(CONT, b"st ", fin=False), frame(CONT, b"message"), frame(TEXT, b"two")]
    result = check(items)
    assert result["messages"] == [b"one", b"first message", b"two"]
    assert not result["parsed_here"]  # websockets parses for good after a fragment


@pytest.mark.parametrize("name,item", [
    ("reserved bit", frame(TEXT, b"rsv", rsv=0x40)),
    ("masked", frame(TEXT, b"masked", mask=b"abcd")),
    ("reserved opcode", frame(0x3, b"op")),
    ("continuation alone", frame(CONT, b"cont")),
    ("long control frame", frame(PING, b"p" * 126)),
    ("fragmented control frame", frame(PING, b"p", fin=False)),
    ("bad close code", close_frame(999)),
    ("close reason not utf-8", close_frame(1000, b"\xff")),
])
def test_protocol_errors_close_the_connection_as_websockets_does(name, item):
    items = [frame(TEXT, b"ok"), item, frame(TEXT, b"never")]
    result = check(items, eof=True)
    assert result["messages"] == [b"ok"]
    assert result["state"] is not State.OPEN


def test_frame_over_max_size_closes_1009_as_websockets_does():
    items = [frame(TEXT, b"a" * 1000), frame(TEXT, b"b" * 1001), frame(TEXT, b"c")]
    result = check(items, max_size=1000)
    assert result["messages"] == [b"a" * 1000]
    assert result["close_sent"][0] == 1009


def test_a_header_announcing_more_than_max_size_fails_before_the_payload_comes():
    # websockets fails as soon as the length is known; so must the direct path
    items = [frame(TEXT, b"ok"), frame(BINARY, b"", length=2**40)[:10]]
    result = check(items, max_size=2**20)
    assert result["messages"] == [b"ok"]
    assert result["close_sent"][0] == 1009


def test_messages_are_views_only_for_the_call_and_the_sink_keeps_copies():
    # The direct path hands the Sink views of the read buffer, which the next read
    # overwrites: whatever the Sink returns or keeps must not change then (both cores).
    sink = flushsink.Sink(flushsink.AudioFormat("pcm_s16le", 44100))
    sink.set_format("c", flushsink.AudioFormat("pcm_s16le", 44100))
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    assert sink.feed(view) == ()
    buffer[:] = bytes(len(buffer))
    flush_done = bytearray(b'{"type": "flush_done", "context_id": "c", "status_code": 206, '
                           b'"done": false, "flush_id": 1, "flush_done": true}')
    (event,) = sink.feed(memoryview(flush_done))
    flush_done[:] = bytes(len(flush_done))
    assert event.context_id == "c" and event.segment.flush_id == 1
    assert bytes(event.segment.pcm()) == bytes(range(256)) * 40


def test_an_extension_leaves_every_frame_to_websockets():
    # permessage-deflate sets RSV1 on compressed frames: websockets must see them all
    async def main():
        protocol = ClientProtocol(parse_uri("ws://127.0.0.1:1/"))
        protocol.extensions = [object()]  # what a negotiated extension leaves behind
        protocol.state = State.OPEN
        connection = client_module._Connection(protocol, close_timeout=1)
        connection._head_tail = b"\r\n\r"
        connection._parse = lambda data: None  # the handshake part, already done
        connection._receive_handshake(memoryview(b"\n"))
        return connection._frames
    assert asyncio.run(main()) == client_module._WEBSOCKETS


def test_uvloop_takes_the_direct_path_too():
    # uvloop hands data to data_received (it uses get_buffer only for protocols that are
    # not asyncio.Protocol): the same parser must run there, with the same result.
    uvloop = pytest.importorskip("uvloop")
    from flushsink.emulator import Emulator, render

    voice = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
    fmt = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 44100}

    async def main():
        async with Emulator(chunk_ms=20) as emu:
            async with flushsink.connect(emu.url, receive_timeout=10) as tts:
                ctx = tts.context(voice=voice, output_format=fmt)
                await ctx.push("Stay hungry, stay foolish.")
                await ctx.no_more_inputs()
                segments = [s async for s in ctx.segments()]
                return segments, tts._ws._frames

    segments, frames = uvloop.run(main())
    assert frames == client_module._DIRECT
    assert bytes(segments[0].pcm()) == render(
        "Stay hungry, stay foolish.", voice, flushsink.AudioFormat("pcm_s16le", 44100))


def _count_reads(monkeypatch) -> list[float]:
    """The times of the asyncio client's reads, from now on."""
    reads: list[float] = []
    buffer_updated = client_module._Connection.buffer_updated
    data_received = client_module._Connection.data_received

    def counting_buffer_updated(self, nbytes):
        reads.append(self.loop.time())
        return buffer_updated(self, nbytes)

    def counting_data_received(self, data):
        reads.append(self.loop.time())
        return data_received(self, data)

    monkeypatch.setattr(client_module._Connection, "buffer_updated", counting_buffer_updated)
    monkeypatch.setattr(client_module._Connection, "data_received", counting_data_received)
    return reads


@pytest.mark.slow
def test_coalesced_reads_take_fewer_wakeups_and_lose_nothing(monkeypatch):
    # 5 ms chunks paced in real time: read as they come, about one read per chunk;
    # coalesced at 50 ms, about one read per 50 ms, and the same audio
    from flushsink.emulator import Emulator, render

    voice = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
    fmt = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}
    text = "Stay hungry, stay foolish, stay hungry."
    reads = _count_reads(monkeypatch)

    async def main(coalesce):
        async with Emulator(chunk_ms=5, pace="realtime") as emu:
            async with flushsink.connect(emu.url, receive_timeout=10,
                                         coalesce_reads=coalesce) as tts:
                await tts.connect()
                ctx = tts.context(voice=voice, output_format=fmt)
                await ctx.push(text)
                await ctx.no_more_inputs()
                del reads[:]
                return [s async for s in ctx.segments()]

    expected = render(text, voice, flushsink.AudioFormat("pcm_s16le", 16000))
    counts = {}
    for coalesce in (0, 0.05):
        segments = asyncio.run(main(coalesce))
        assert b"".join(bytes(s.pcm()) for s in segments) == expected
        counts[coalesce] = len(reads)
    chunks = -(-len(expected) // 160)
    assert counts[0] > chunks / 2
    assert counts[0.05] < counts[0] / 3, counts


@pytest.mark.slow
def test_a_frame_after_quiet_is_read_at_once_and_one_close_behind_it_waits_at_most_the_interval(
        monkeypatch):
    from helpers.rawserver import RawServer, accept_websocket, frame as raw_frame

    interval, slack = 0.25, 0.3
    sent: dict[str, float] = {}
    got: dict[str, float] = {}

    def handler(conn):
        accept_websocket(conn)
        conn.recv(65536)  # the first request
        time.sleep(1.0)  # quiet for four intervals
        sent["a"] = time.monotonic()
        conn.sendall(raw_frame(TEXT, b'{"type": "x", "n": "a"}'))
        time.sleep(0.01)
        sent["b"] = time.monotonic()
        conn.sendall(raw_frame(TEXT, b'{"type": "x", "n": "b"}'))
        time.sleep(2.0)

    async def main(url):
        async with flushsink.connect(url, receive_timeout=10, coalesce_reads=interval,
                                     close_timeout=0.5) as tts:
            receive = tts._session.receive

            def recording(message):
                got[bytes(message)[-3:-2].decode()] = time.monotonic()
                receive(message)

            tts._session.receive = recording
            ctx = tts.context(voice="v", output_format=None)
            await ctx.push("hello")
            while len(got) < 2:
                await asyncio.sleep(0.01)

    with RawServer(handler) as server:
        asyncio.run(asyncio.wait_for(main(server.url), 10))
    assert got["a"] - sent["a"] < interval / 2
    assert got["b"] - sent["b"] < interval + slack


@pytest.mark.parametrize("value", [-0.001, "5ms", True, float("nan"), float("inf")])
def test_coalesce_reads_must_be_seconds(value):
    with pytest.raises(flushsink.ConfigError, match="coalesce_reads"):
        flushsink.connect("ws://127.0.0.1:9", coalesce_reads=value)


def test_frames_further_apart_than_a_quarter_interval_are_read_as_they_come(monkeypatch):
    # 20 ms chunks in real time, coalesce_reads 50 ms: a read waits only when reads come
    # several per interval (four within one), or at a resume that found two frames or
    # more waiting; a pause that gathers one frame would cost a wake-up more. The emulator
    # sends from the client's own loop, so on a loaded machine a late loop bunches reads
    # now and then, and one pause begun leads to one per interval while the frames keep
    # coming (a resume finds the frames of the pause waiting). Counting pauses therefore
    # measures the machine; what must hold whatever the load is that every pause has one
    # of those two reasons, seen from the reads themselves.
    from flushsink.emulator import Emulator, render

    voice = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
    fmt = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000}
    text = "Stay hungry."
    interval = 0.05
    reads: list[float] = []
    pauses = []
    unexplained = []
    coalesce = client_module._Connection._coalesce

    def counting(self):
        now = self.loop.time()
        gathered = now - self._resumed < interval / 2 and self._messages >= 2
        reads.append(now)
        several = len(reads) >= 4 and now - reads[-4] < interval
        before = self._resume
        coalesce(self)
        if before is None and self._resume is not None:
            pauses.append(now)
            if not (gathered or several):
                unexplained.append(now)

    monkeypatch.setattr(client_module._Connection, "_coalesce", counting)

    async def main():
        async with Emulator(chunk_ms=20, pace="realtime") as emu:
            async with flushsink.connect(emu.url, receive_timeout=10,
                                         coalesce_reads=interval) as tts:
                ctx = tts.context(voice=voice, output_format=fmt)
                await ctx.push(text)
                await ctx.no_more_inputs()
                return [s async for s in ctx.segments()]

    segments = asyncio.run(main())
    assert bytes(segments[0].pcm()) == render(text, voice, flushsink.AudioFormat("pcm_s16le", 16000))
    assert len(reads) >= 20, reads
    assert unexplained == [], (unexplained, pauses, reads)
