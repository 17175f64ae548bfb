"""The streaming clients (``connect(..., stream=True)``): ``ctx.audio()`` against the
emulator on loopback, both clients. Expected audio comes from the emulator's render
functions, computed independently of what the client received."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import flushsink
from flushsink import sync
from flushsink.emulator import Emulator, render
from flushsink.errors import (
    AudioOverflow,
    CapacityError,
    ConfigError,
    ConnectionLost,
    ContextFailed,
)
from flushsink.formats import AudioFormat

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
SEED = ["Stay hungry, ", "stay foolish."]
S16 = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 44100}
LONG = " ".join(["word"] * 80)  # about 2 MB of s16 audio: more than the socket buffers hold


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def expected(text, output_format=S16):
    return render(text, VOICE, AudioFormat.from_output_format(output_format))


def check_chunks(chunks):
    """Each segment's chunks are consecutive, and their views read-only."""
    starts = {}
    for chunk in chunks:
        assert chunk.start == starts.get(chunk.flush_id, 0)
        starts[chunk.flush_id] = chunk.start + len(chunk)
        assert chunk.samples.flags.writeable is False
        assert chunk.data.readonly


def test_async_audio_matches_render_and_segments_alongside():
    async def main():
        async with Emulator(chunk_ms=20, odd_chunks=True) as emu:
            async with flushsink.connect(emu.url, stream=True, receive_timeout=10) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16)
                await ctx.push(SEED[0])
                await ctx.flush()
                await ctx.push(SEED[1])
                await ctx.no_more_inputs()

                async def audio():
                    return [chunk async for chunk in ctx.audio()]

                chunks, segments = await asyncio.gather(audio(), ctx.collect())
                return chunks, segments, ctx.stats, ctx.first_audio_s

    chunks, segments, stats, first = run(main())
    check_chunks(chunks)
    assert b"".join(bytes(c.data) for c in chunks) == b"".join(expected(t) for t in SEED)
    assert [s.samples.tobytes() for s in segments] == [expected(t) for t in SEED]
    assert [c.flush_id for c in chunks] == sorted(c.flush_id for c in chunks)
    assert stats == flushsink.AudioStats(len(chunks), sum(c.nbytes for c in chunks), 0)
    assert first is not None and 0 < first < 10


def test_sync_audio_matches_render_and_segments_alongside():
    with Emulator(chunk_ms=20).running_in_thread() as emu:
        with sync.connect(emu.url, stream=True, receive_timeout=10) as tts:
            ctx = tts.context(voice=VOICE, output_format=S16)
            ctx.push(SEED[0])
            ctx.flush()
            ctx.push(SEED[1])
            ctx.no_more_inputs()
            segments = []
            reader = threading.Thread(target=lambda: segments.extend(ctx.segments()))
            reader.start()
            chunks = list(ctx.audio())
            reader.join(10)
            stats, first = ctx.stats, ctx.first_audio_s
    check_chunks(chunks)
    assert b"".join(bytes(c.data) for c in chunks) == b"".join(expected(t) for t in SEED)
    assert [s.samples.tobytes() for s in segments] == [expected(t) for t in SEED]
    assert stats.chunks == len(chunks) and stats.bytes == sum(c.nbytes for c in chunks)
    assert stats.stalls == 0
    assert first is not None and first > 0


def test_two_contexts_each_get_only_their_own_chunks_in_order():
    texts = ["One two three four five.", "Six seven eight."]
    formats = [S16, {"container": "raw", "encoding": "pcm_f32le", "sample_rate": 24000}]

    async def main():
        async with Emulator(chunk_ms=10) as emu:
            async with flushsink.connect(emu.url, stream=True, receive_timeout=10) as tts:
                contexts = [tts.context(voice=VOICE, output_format=f) for f in formats]
                for ctx, text in zip(contexts, texts):
                    await ctx.push(text)
                for ctx in contexts:
                    await ctx.no_more_inputs()

                async def audio(ctx):
                    return [chunk async for chunk in ctx.audio()]

                return await asyncio.gather(*(audio(ctx) for ctx in contexts)), contexts

    results, contexts = run(main())
    for chunks, ctx, text, fmt in zip(results, contexts, texts, formats):
        assert {c.context_id for c in chunks} == {ctx.context_id}
        check_chunks(chunks)
        assert b"".join(bytes(c.data) for c in chunks) == expected(text, fmt)
        assert ctx.stats.chunks == len(chunks) > 1


@pytest.mark.parametrize("client", ["asyncio", "sync"])
def test_overflow_fail_raises_audio_overflow_from_audio_and_segments(client):
    bound = 5000  # under 3 chunks of 20 ms

    def check(chunks, failures):
        assert sum(c.nbytes for c in chunks) <= bound
        assert all(isinstance(f, AudioOverflow) and isinstance(f, CapacityError)
                   for f in failures)
        assert expected(LONG).startswith(b"".join(bytes(c.data) for c in chunks))

    options = dict(stream=True, audio_buffer_bytes=bound, on_audio_overflow="fail",
                   receive_timeout=10)
    if client == "asyncio":
        async def main():
            async with Emulator(chunk_ms=20) as emu:
                async with flushsink.connect(emu.url, **options) as tts:
                    ctx = tts.context(voice=VOICE, output_format=S16)
                    await ctx.push(LONG)
                    await ctx.no_more_inputs()
                    failures = []
                    with pytest.raises(AudioOverflow) as failed:
                        await ctx.collect()  # audio() not read meanwhile
                    failures.append(failed.value)
                    chunks = []
                    with pytest.raises(AudioOverflow) as failed:
                        async for chunk in ctx.audio():
                            chunks.append(chunk)
                    failures.append(failed.value)
                    return chunks, failures

        check(*run(main()))
    else:
        with Emulator(chunk_ms=20).running_in_thread() as emu:
            with sync.connect(emu.url, **options) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16)
                ctx.push(LONG)
                ctx.no_more_inputs()
                failures = []
                with pytest.raises(AudioOverflow) as failed:
                    ctx.collect()
                failures.append(failed.value)
                chunks = []
                with pytest.raises(AudioOverflow) as failed:
                    for chunk in ctx.audio():
                        chunks.append(chunk)
                failures.append(failed.value)
        check(chunks, failures)


@pytest.mark.parametrize("client", ["asyncio", "sync"])
def test_overflow_wait_stops_the_reader_then_delivers_everything(client):
    """A consumer that does not read for a while: the reader waits (the context's
    received audio stays far below the total), then all of it arrives in order."""
    bound = 64 * 1024
    whole = expected(LONG)
    options = dict(stream=True, audio_buffer_bytes=bound, receive_timeout=10)
    if client == "asyncio":
        async def main():
            async with Emulator(chunk_ms=20) as emu:
                async with flushsink.connect(emu.url, **options) as tts:
                    ctx = tts.context(voice=VOICE, output_format=S16)
                    await ctx.push(LONG)
                    await ctx.no_more_inputs()
                    await asyncio.sleep(0.5)
                    held = ctx.stats
                    chunks = [chunk async for chunk in ctx.audio()]
                    return held, chunks, ctx.stats, await ctx.collect()

        held, chunks, stats, segments = run(main())
    else:
        with Emulator(chunk_ms=20).running_in_thread() as emu:
            with sync.connect(emu.url, **options) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16)
                ctx.push(LONG)
                ctx.no_more_inputs()
                time.sleep(0.5)
                held = ctx.stats
                chunks = list(ctx.audio())
                stats, segments = ctx.stats, ctx.collect()
    assert held.stalls >= 1
    assert held.bytes < len(whole) // 2  # the reader waited for the consumer
    check_chunks(chunks)
    assert b"".join(bytes(c.data) for c in chunks) == whole
    assert stats.chunks == len(chunks) and stats.bytes == len(whole)
    assert stats.stalls > held.stalls  # it stopped again as the consumer read on
    assert [s.samples.tobytes() for s in segments] == [whole]


@pytest.mark.parametrize("client", ["asyncio", "sync"])
def test_overflow_wait_is_bounded_by_receive_timeout(client):
    """Nobody reads audio(): the reader waits receive_timeout, then the context fails with
    AudioOverflow and the connection reads on (another context completes)."""
    options = dict(stream=True, audio_buffer_bytes=4096, receive_timeout=0.5)
    if client == "asyncio":
        async def main():
            async with Emulator(chunk_ms=20) as emu:
                async with flushsink.connect(emu.url, **options) as tts:
                    stuck = tts.context(voice=VOICE, output_format=S16)
                    other = tts.context(voice=VOICE, output_format=S16)
                    await stuck.push(LONG)
                    await stuck.no_more_inputs()
                    started = time.monotonic()
                    with pytest.raises(AudioOverflow):
                        await stuck.collect(timeout=5)
                    took = time.monotonic() - started
                    await other.push("Fine.")
                    await other.no_more_inputs()
                    chunks = [chunk async for chunk in other.audio()]
                    return took, chunks

        took, chunks = run(main())
    else:
        with Emulator(chunk_ms=20).running_in_thread() as emu:
            with sync.connect(emu.url, **options) as tts:
                stuck = tts.context(voice=VOICE, output_format=S16)
                other = tts.context(voice=VOICE, output_format=S16)
                stuck.push(LONG)
                stuck.no_more_inputs()
                started = time.monotonic()
                with pytest.raises(AudioOverflow):
                    stuck.collect(timeout=5)
                took = time.monotonic() - started
                other.push("Fine.")
                other.no_more_inputs()
                chunks = list(other.audio())
    assert 0.4 < took < 3
    assert b"".join(bytes(c.data) for c in chunks) == expected("Fine.")


@pytest.mark.parametrize("client", ["asyncio", "sync"])
def test_overflow_wait_is_bounded_by_the_keepalive_limit_too(client):
    """A long receive_timeout does not let the reader wait past hold_limit (15 s by
    default, so that websockets' keepalive sees the server's pong in time): here 0.5 s
    against a receive_timeout of 30 s."""
    options = dict(stream=True, audio_buffer_bytes=4096, receive_timeout=30)
    if client == "asyncio":
        async def main():
            async with Emulator(chunk_ms=20) as emu:
                async with flushsink.connect(emu.url, **options) as tts:
                    assert tts.hold_limit == 15.0
                    tts.hold_limit = 0.5
                    stuck = tts.context(voice=VOICE, output_format=S16)
                    await stuck.push(LONG)
                    await stuck.no_more_inputs()
                    started = time.monotonic()
                    with pytest.raises(AudioOverflow, match="within 0.5 s"):
                        await stuck.collect(timeout=10)
                    return time.monotonic() - started

        took = run(main())
    else:
        with Emulator(chunk_ms=20).running_in_thread() as emu:
            with sync.connect(emu.url, **options) as tts:
                assert tts.hold_limit == 15.0
                tts.hold_limit = 0.5
                stuck = tts.context(voice=VOICE, output_format=S16)
                stuck.push(LONG)
                stuck.no_more_inputs()
                started = time.monotonic()
                with pytest.raises(AudioOverflow, match="within 0.5 s"):
                    stuck.collect(timeout=10)
                took = time.monotonic() - started
    assert 0.4 < took < 5


@pytest.mark.parametrize("client", ["asyncio", "sync"])
def test_context_failures_raise_from_audio(client):
    """A context error from the server raises ContextFailed from audio(); a dropped
    connection raises ConnectionLost after the chunks that came."""
    if client == "asyncio":
        async def main():
            async with Emulator(chunk_ms=20) as emu:
                async with flushsink.connect(emu.url, stream=True, receive_timeout=10) as tts:
                    bad = tts.context(voice=VOICE, output_format=S16)
                    await bad.push("")  # an empty first transcript is an error
                    with pytest.raises(ContextFailed):
                        async for _ in bad.audio():
                            pass
                url = f"{emu.ws_url}?fault=drop@chunk:3"
                async with flushsink.connect(url, stream=True, receive_timeout=10) as tts:
                    ctx = tts.context(voice=VOICE, output_format=S16)
                    await ctx.push(LONG)
                    await ctx.no_more_inputs()
                    chunks = []
                    with pytest.raises(ConnectionLost):
                        async for chunk in ctx.audio():
                            chunks.append(chunk)
                    return chunks

        chunks = run(main())
    else:
        with Emulator(chunk_ms=20).running_in_thread() as emu:
            with sync.connect(emu.url, stream=True, receive_timeout=10) as tts:
                bad = tts.context(voice=VOICE, output_format=S16)
                bad.push("")
                with pytest.raises(ContextFailed):
                    list(bad.audio())
            url = f"{emu.ws_url}?fault=drop@chunk:3"
            with sync.connect(url, stream=True, receive_timeout=10) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16)
                ctx.push(LONG)
                ctx.no_more_inputs()
                chunks = []
                with pytest.raises(ConnectionLost):
                    for chunk in ctx.audio():
                        chunks.append(chunk)
    assert len(chunks) == 3
    assert expected(LONG).startswith(b"".join(bytes(c.data) for c in chunks))


def test_audio_needs_a_streaming_client_and_options_are_checked():
    async def main():
        async with flushsink.connect("ws://127.0.0.1:9") as tts:  # never connects
            ctx = tts.context(voice=VOICE)
            with pytest.raises(ConfigError, match="stream=True"):
                async for _ in ctx.audio():
                    pass

    run(main())
    with sync.connect("ws://127.0.0.1:9") as tts:
        with pytest.raises(ConfigError, match="stream=True"):
            next(tts.context(voice=VOICE).audio())
    with pytest.raises(ConfigError):
        sync.connect("ws://127.0.0.1:9", stream=True, on_audio_overflow="drop")
    with pytest.raises(ConfigError):
        sync.connect("ws://127.0.0.1:9", stream=True, audio_buffer_bytes=0)
    with pytest.raises(ConfigError):  # the Sink must agree
        sync.connect("ws://127.0.0.1:9", stream=True, sink=flushsink.Sink())
    tts = sync.connect("ws://127.0.0.1:9", sink=flushsink.Sink(stream=True))
    assert tts.stream is True  # taken from the Sink
    tts.close()


@pytest.mark.parametrize("client", ["asyncio", "sync"])
def test_close_does_not_wait_for_a_stalled_reader(client):
    """The reader waits for a consumer that never reads (receive_timeout far off):
    close() still returns at once (the reader goes on, to read the closing handshake),
    and the context ends: complete if its last frames were already on their way, else
    with ConnectionLost."""
    options = dict(stream=True, audio_buffer_bytes=4096, receive_timeout=20)
    if client == "asyncio":
        async def main():
            async with Emulator(chunk_ms=20) as emu:
                tts = flushsink.connect(emu.url, **options)
                ctx = tts.context(voice=VOICE, output_format=S16)
                await ctx.push(LONG)
                await ctx.no_more_inputs()
                await asyncio.sleep(0.3)
                stalls = ctx.stats.stalls
                started = time.monotonic()
                await tts.close()
                took = time.monotonic() - started
                try:
                    await ctx.collect(timeout=5)
                except ConnectionLost:
                    pass
                return stalls, took

        stalls, took = run(main())
    else:
        with Emulator(chunk_ms=20).running_in_thread() as emu:
            tts = sync.connect(emu.url, **options)
            ctx = tts.context(voice=VOICE, output_format=S16)
            ctx.push(LONG)
            ctx.no_more_inputs()
            time.sleep(0.3)
            stalls = ctx.stats.stalls
            started = time.monotonic()
            tts.close()
            took = time.monotonic() - started
            try:
                ctx.collect(timeout=5)
            except ConnectionLost:
                pass
    assert stalls == 1
    assert took < 2
