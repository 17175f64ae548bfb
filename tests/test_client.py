"""The websocket clients against the emulator, on loopback only; every server a test starts
it stops. Expected audio comes from the emulator's render functions, computed independently
of what the client received."""

from __future__ import annotations

import asyncio
import json
import os
import time

import numpy as np
import pytest
import soundfile

import flushsink
from flushsink import sync
from flushsink.emulator import Emulator, render, render_timestamps
from flushsink.errors import (
    CapacityError,
    ConnectionLost,
    ContextClosed,
    ContextFailed,
    FlushsinkError,
    ReceiveTimeout,
)
from flushsink.formats import AudioFormat
from flushsink.segments import ContextDone, ContextError, SegmentReady, Timestamps
from flushsink._shell import ClientBase
from flushsink.session import Session, StreamEnd, normalize_url

VOICE = "6ccbfb76-1fc6-48f7-b71d-91ac6298247b"
SEED = ["Stay hungry, ", "stay foolish."]
S16 = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 44100}


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def expected(text, output_format=S16, voice=VOICE):
    return render(text, voice, AudioFormat.from_output_format(output_format))


async def seed_flow(url, **options):
    async with flushsink.connect(url, receive_timeout=10, **options) as tts:
        ctx = tts.context(voice={"mode": "id", "id": VOICE}, output_format=S16, language="en")
        await ctx.push(SEED[0])
        await ctx.flush()
        await ctx.push(SEED[1])
        await ctx.no_more_inputs()
        return [s async for s in ctx.segments()]


@pytest.mark.parametrize("base", [0, 1])
@pytest.mark.parametrize("on_chunks", [True, False])
def test_seed_flow_is_sample_exact_for_every_flush_id_convention(tmp_path, base, on_chunks):
    async def main():
        async with Emulator(flush_id_base=base, flush_id_on_chunks=on_chunks,
                            chunk_ms=20, odd_chunks=True) as emu:
            return await seed_flow(emu.url, writer=flushsink.FileWriter(tmp_path))

    segments = run(main())
    assert [s.flush_id for s in segments] == [base, base + 1]
    for segment, text in zip(segments, SEED):
        assert segment.complete and segment.error is None
        assert segment.samples.tobytes() == expected(text)
        data, rate = soundfile.read(segment.path, dtype="int16")
        assert rate == 44100 and np.array_equal(data, segment.samples)


def test_sync_client_seed_flow_and_files(tmp_path):
    with Emulator().running_in_thread() as emu:
        with sync.connect(emu.url, writer=flushsink.FileWriter(tmp_path), receive_timeout=10) as tts:
            ctx = tts.context(voice=VOICE, output_format=S16)
            ctx.push(SEED[0])
            ctx.flush()
            ctx.push(SEED[1])
            ctx.no_more_inputs()
            segments = ctx.collect()
    assert [s.samples.tobytes() for s in segments] == [expected(t) for t in SEED]
    assert all(os.path.exists(s.path) for s in segments)


FORMATS = [
    {"container": "raw", "encoding": "pcm_f32le", "sample_rate": 24000},
    {"container": "raw", "encoding": "pcm_mulaw", "sample_rate": 8000},
    {"container": "raw", "encoding": "pcm_alaw", "sample_rate": 16000},
    {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 48000},
]


def test_interleaved_contexts_each_get_only_their_own_audio():
    texts = ["One two three four.", "Five six seven.", "Eight nine ten eleven twelve.", "Thirteen."]

    async def main():
        async with Emulator(chunk_ms=10) as emu:
            async with flushsink.connect(emu.url, receive_timeout=10) as tts:
                contexts = [tts.context(voice=VOICE, output_format=f) for f in FORMATS]
                for ctx, text in zip(contexts, texts):
                    await ctx.push(text)
                for ctx in contexts:
                    await ctx.no_more_inputs()
                return await asyncio.gather(*(ctx.collect() for ctx in contexts))

    results = run(main())
    for segments, fmt, text in zip(results, FORMATS, texts):
        assert len(segments) == 1
        assert segments[0].samples.tobytes() == expected(text, fmt)
        assert segments[0].format == AudioFormat.from_output_format(fmt)


def test_zero_buffer_delay_gives_one_segment_per_transcript():
    texts = ["First sentence. ", "Second one. ", "Third."]

    async def main():
        async with Emulator() as emu:
            async with flushsink.connect(emu.url, receive_timeout=10) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16, max_buffer_delay_ms=0)
                for text in texts:
                    await ctx.push(text)
                await ctx.no_more_inputs()
                return await ctx.collect()

    segments = run(main())
    assert [s.samples.tobytes() for s in segments] == [expected(t) for t in texts]


def test_timestamps_are_relative_to_the_segment():
    async def main():
        async with Emulator() as emu:
            async with flushsink.connect(emu.url, receive_timeout=10) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16, add_timestamps=True)
                await ctx.push(SEED[0])
                await ctx.flush()
                await ctx.push(SEED[1])
                await ctx.no_more_inputs()
                return [e async for e in ctx.events()]

    events = run(main())
    segments = [e.segment for e in events if isinstance(e, SegmentReady)]
    stamps = [e for e in events if isinstance(e, Timestamps)]
    assert stamps and isinstance(events[-1], ContextDone)
    assert segments[1].start == pytest.approx(segments[0].duration)
    for segment, text in zip(segments, SEED):
        want = render_timestamps(text, VOICE, 44100)
        got = [(t.text, t.start, t.end) for t in segment.word_timestamps]
        assert [w for w, _, _ in got] == [w for w, _, _ in want]
        for (_, s0, e0), (_, s1, e1) in zip(got, want):
            assert s0 == pytest.approx(s1, abs=1e-6) and e0 == pytest.approx(e1, abs=1e-6)


@pytest.mark.parametrize("version, shape", [("2025-04-16", "legacy"), ("2026-03-01", "structured")])
def test_context_error_fails_only_its_context(version, shape):
    async def main():
        async with Emulator() as emu:
            async with flushsink.connect(emu.url, version=version, receive_timeout=10) as tts:
                bad = tts.context(voice=VOICE, output_format=S16)
                good = tts.context(voice=VOICE, output_format=S16)
                await bad.push("")  # an empty first transcript is an error
                await good.push("Still fine.")
                await good.no_more_inputs()
                with pytest.raises(ContextFailed) as failed:
                    await bad.collect()
                return failed.value, await good.collect()

    failure, segments = run(main())
    assert isinstance(failure.event, ContextError) and failure.event.status_code == 400
    if shape == "legacy":
        assert "error" in failure.event.raw and failure.event.error_code is None
    else:
        assert failure.event.error_code and failure.event.title
    assert "empty" in failure.event.message
    assert segments[0].samples.tobytes() == expected("Still fine.")
    with pytest.raises(ContextClosed):
        run_push_after_end()


def run_push_after_end():
    state = Session(flushsink.Sink()).new_context(model_id="m", voice=VOICE)
    state.ended = True
    Session(flushsink.Sink()).request(state, "late")


def test_cancel_drops_late_audio_and_leaves_other_contexts_alone():
    long_text = " ".join(["word"] * 60)

    async def main():
        async with Emulator(chunk_ms=20, pace=20.0) as emu:
            async with flushsink.connect(emu.url, receive_timeout=10) as tts:
                victim = tts.context(voice=VOICE, output_format=S16)
                other = tts.context(voice=VOICE, output_format=S16)
                await victim.push(long_text)
                await victim.no_more_inputs()
                await other.push("Other context.")
                await other.no_more_inputs()
                await asyncio.sleep(0.05)  # some of the victim's audio is on its way
                await victim.cancel()
                cancelled = await victim.collect(timeout=5)
                kept = await other.collect()
                await asyncio.sleep(0.2)  # late audio of the victim arrives and is dropped
                return cancelled, kept, tts.sink.stats, emu.connections[0].cancels

    cancelled, kept, stats, cancels = run(main())
    assert all(not s.complete and s.error == "cancelled" for s in cancelled)
    whole = expected(long_text)
    for segment in cancelled:  # what arrived before the cancel is kept, exactly
        assert whole.startswith(segment.samples.tobytes())
    assert kept[0].samples.tobytes() == expected("Other context.")
    assert len(cancels) == 1
    assert stats.dropped_frames >= 1


@pytest.mark.parametrize("point", ["chunk:0", "chunk:3", "flush_done", "done"])
def test_drop_mid_stream_finishes_received_audio_as_partial(tmp_path, point):
    async def main():
        async with Emulator(chunk_ms=20) as emu:
            url = f"{emu.ws_url}?fault=drop@{point}"
            async with flushsink.connect(url, writer=flushsink.FileWriter(tmp_path),
                                         receive_timeout=10) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16)
                await ctx.push(SEED[0])
                await ctx.flush()
                await ctx.push(SEED[1])
                await ctx.no_more_inputs()
                segments = []
                with pytest.raises(ConnectionLost):
                    async for segment in ctx.segments():
                        segments.append(segment)
                return segments

    segments = run(main())
    chunk = int(44100 * 0.020) * 2
    complete = [s for s in segments if s.complete]
    partial = [s for s in segments if not s.complete]
    for segment, text in zip(complete, SEED):
        assert segment.samples.tobytes() == expected(text)
    if point == "chunk:0":
        assert segments == []  # nothing had arrived
    elif point == "chunk:3":
        assert not complete and len(partial) == 1
        assert partial[0].samples.tobytes() == expected(SEED[0])[:3 * chunk]
    elif point == "flush_done":
        assert not complete and partial[0].samples.tobytes() == expected(SEED[0])
    else:  # before done: the first segment was flushed, the second arrived whole
        assert len(complete) == 1 and partial[0].samples.tobytes() == expected(SEED[1])
    for segment in partial:
        assert segment.path.endswith(".partial.wav") and "connection" in segment.error
        data, _ = soundfile.read(segment.path, dtype="int16")
        assert np.array_equal(data, segment.samples)


def test_next_push_reconnects_after_the_idle_close():
    async def main():
        async with Emulator(idle_timeout=0.3) as emu:
            async with flushsink.connect(emu.url, receive_timeout=10) as tts:
                first = tts.context(voice=VOICE, output_format=S16)
                await first.push("Before the pause.")
                await first.no_more_inputs()
                before = await first.collect()
                await asyncio.sleep(0.8)
                closed = (tts.close_code, tts.close_reason)
                second = tts.context(voice=VOICE, output_format=S16)
                await second.push("After the pause.")
                await second.no_more_inputs()
                return before, closed, await second.collect(), tts.connections

    before, closed, after, connections = run(main())
    assert closed == (1000, "connection idle timeout")
    assert connections == 2
    assert before[0].samples.tobytes() == expected("Before the pause.")
    assert after[0].samples.tobytes() == expected("After the pause.")


def test_sync_client_reconnects_and_raises_on_drop():
    with Emulator(idle_timeout=0.3).running_in_thread() as emu:
        with sync.connect(emu.url, receive_timeout=10) as tts:
            ctx = tts.context(voice=VOICE, output_format=S16)
            ctx.push("One.")
            ctx.no_more_inputs()
            assert ctx.collect()[0].samples.tobytes() == expected("One.")
            time.sleep(0.8)
            ctx = tts.context(voice=VOICE, output_format=S16)
            ctx.push("Two.")
            ctx.no_more_inputs()
            assert ctx.collect()[0].samples.tobytes() == expected("Two.")
            assert tts.connections == 2
        with sync.connect(emu.ws_url + "?fault=drop@chunk:2", receive_timeout=10) as tts:
            ctx = tts.context(voice=VOICE, output_format=S16)
            ctx.push(SEED[0])
            ctx.no_more_inputs()
            with pytest.raises(ConnectionLost):
                ctx.collect()


def test_bad_frames_from_the_server_are_rejected_not_fatal():
    async def main():
        async with Emulator() as emu:
            url = f"{emu.ws_url}?fault=malformed_json@chunk:1,bad_base64@chunk:2"
            async with flushsink.connect(url, receive_timeout=10) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16)
                await ctx.push(SEED[0])
                await ctx.no_more_inputs()
                return await ctx.collect(), tts.session.rejected_frames

    segments, rejected = run(main())
    assert rejected == 2
    # the truncated frame could not be attributed to a segment; the bad chunk was one of
    # this segment's (the emulator sends it besides the real audio), so the segment
    # keeps every sample that arrived and says it lost one chunk (docs/sink.md)
    assert segments[0].samples.tobytes() == expected(SEED[0])
    assert not segments[0].complete
    assert segments[0].error == "lost 1 chunk (3 bytes): invalid base64 character"


def test_oversized_frame_closes_with_1009_and_fails_the_context():
    async def main():
        async with Emulator() as emu:
            url = f"{emu.ws_url}?fault=oversized:200000@chunk:1"
            async with flushsink.connect(url, max_size=100_000, receive_timeout=10) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16)
                await ctx.push(SEED[0])
                await ctx.no_more_inputs()
                with pytest.raises(ConnectionLost) as lost:
                    await ctx.collect()
                return str(lost.value), tts.close_code

    message, code = run(main())
    assert "1009" in message


def test_capacity_error_fails_one_context_only():
    async def main():
        async with Emulator(chunk_ms=20) as emu:
            sink = flushsink.Sink(max_segment_bytes=100_000)
            async with flushsink.connect(emu.url, sink=sink, receive_timeout=10) as tts:
                big = tts.context(voice=VOICE, output_format=S16)
                small = tts.context(voice=VOICE, output_format=S16)
                await big.push(" ".join(["long"] * 20))
                await big.no_more_inputs()
                await small.push("Hi.")
                await small.no_more_inputs()
                with pytest.raises(CapacityError):
                    await big.collect()
                return await small.collect()

    small = run(main())
    assert small[0].samples.tobytes() == expected("Hi.")
    assert len(small[0].samples) * 2 <= 100_000


def test_receive_timeout_instead_of_a_hang():
    async def main():
        async with Emulator(pace=0.05, chunk_ms=100) as emu:  # 20x slower than real time
            async with flushsink.connect(emu.url, receive_timeout=0.3) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16)
                await ctx.push("This takes a while to arrive.")
                await ctx.no_more_inputs()
                with pytest.raises(ReceiveTimeout):
                    await ctx.collect()

    run(main())


@pytest.mark.slow
@pytest.mark.parametrize("client", ["asyncio", "sync"])
def test_receive_timeout_is_the_longest_silence_not_the_length_of_a_segment(client):
    """A segment whose audio streams for 1.5 s (a chunk every 0.15 s, no flush_done until
    the end) with receive_timeout=0.5: chunks bring no events, but they are not silence.
    Before: ReceiveTimeout after 0.5 s while the audio was arriving."""
    emulator = Emulator(chunk_ms=50, pace=1 / 3)  # "Hi." is 0.5 s: 10 chunks, 1.5 s
    if client == "asyncio":
        async def main():
            async with emulator as emu:
                async with flushsink.connect(emu.url, receive_timeout=0.5) as tts:
                    ctx = tts.context(voice=VOICE, output_format=S16)
                    await ctx.push("Hi.")
                    await ctx.no_more_inputs()
                    started = time.monotonic()
                    return await ctx.collect(), time.monotonic() - started

        segments, took = run(main())
    else:
        with emulator.running_in_thread() as emu:
            with sync.connect(emu.url, receive_timeout=0.5) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16)
                ctx.push("Hi.")
                ctx.no_more_inputs()
                started = time.monotonic()
                segments, took = ctx.collect(), time.monotonic() - started
    assert took > 1.0  # it did stream for longer than the timeout
    assert [s.samples.tobytes() for s in segments] == [expected("Hi.")]


def test_sync_receive_timeout_instead_of_a_hang():
    with Emulator(pace=0.05, chunk_ms=100).running_in_thread() as emu:  # a chunk every 2 s
        with sync.connect(emu.url, receive_timeout=0.3) as tts:
            ctx = tts.context(voice=VOICE, output_format=S16)
            ctx.push("This takes a while to arrive.")
            ctx.no_more_inputs()
            started = time.monotonic()
            with pytest.raises(ReceiveTimeout):
                ctx.collect()
            assert time.monotonic() - started < 1.5


def test_two_open_clients_cannot_share_a_sink(core):
    """Closing a connection closes its Sink (every context in it ends), so a Sink serves
    one open client at a time: a second connect(sink=...) is a ConfigError, asyncio or
    sync, until the first is closed or gone. Nothing is connected here."""
    import gc

    from flushsink.errors import ConfigError

    url = "ws://127.0.0.1:9"
    sink = core.Sink()
    first = flushsink.connect(url, sink=sink)
    for connect in (flushsink.connect, sync.connect):
        with pytest.raises(ConfigError) as refused:
            connect(url, sink=sink)
        assert isinstance(refused.value, ValueError) and isinstance(refused.value, FlushsinkError)
        assert "another client" in str(refused.value)
    flushsink.connect(url)  # clients with sinks of their own never conflict
    flushsink.connect(url, sink=core.Sink())
    run(first.close())  # a closed client releases its sink...
    second = sync.connect(url, sink=sink)
    with pytest.raises(ConfigError):
        run(first.connect())  # ...and cannot take it back while another has it
    second.close()
    third = flushsink.connect(url, sink=sink)
    del third
    gc.collect()  # a client that is gone releases it too
    flushsink.connect(url, sink=sink)


@pytest.mark.parametrize("client", ["asyncio", "sync"])
@pytest.mark.parametrize("bad_id", ["a\ud800b", "\udfff", "x" * 10 + "\udc80"])
def test_a_lone_surrogate_in_a_context_id_is_refused_before_anything_happens(client, bad_id):
    """JSON would carry it as a \\ud800 escape, which is no character: the server's frames
    could never be routed (the Sink rejects the escape) and the context would wait for
    nothing. Refused at context(): nothing registered, nothing sent."""
    from flushsink.errors import ConfigError

    tts = (flushsink.connect if client == "asyncio" else sync.connect)("ws://127.0.0.1:9")
    with pytest.raises(ConfigError) as refused:
        tts.context(voice=VOICE, context_id=bad_id)
    assert isinstance(refused.value, ValueError) and isinstance(refused.value, FlushsinkError)
    assert tts.session.contexts == {} and tts._contexts == {} and tts.connections == 0
    ok = tts.context(voice=VOICE, context_id="a\u00e9b")  # any real character is fine
    assert list(tts.session.contexts) == [ok.context_id]


# --- the sans-I/O session, with frames made by hand -----------------------------------------

def frame(**fields):
    return json.dumps(fields).encode()


def test_session_routes_events_and_ignores_foreign_done():
    delivered = []
    # the clients' Sinks drop frames of contexts they did not announce (drop_unannounced)
    session = Session(flushsink.Sink(drop_unannounced=True))
    a = session.new_context(model_id="m", voice=VOICE, context_id="a")
    session.new_context(model_id="m", voice=VOICE, context_id="b")
    session.request(a, "x")
    # an audio frame returns the Sink's empty tuple: nothing is built for it
    assert session.receive(frame(type="chunk", context_id="a", flush_id=1, data="AAAA")) == ()
    delivered += session.receive(frame(type="error", error="connection-level"))  # no context_id
    delivered += session.receive(frame(type="done", context_id="zzz"))  # never opened: dropped
    delivered += session.receive(frame(type="chunk", context_id="zzz", data="AAAA"))
    delivered += session.receive(frame(type="done", context_id="a"))
    kinds = [(e.context_id, type(e).__name__) for e in delivered]
    assert kinds == [("a", "SegmentReady"), ("a", "ContextDone"), ("a", "StreamEnd")]
    assert [e.message for e in session.server_errors] == ["connection-level"]
    assert session.sink.stats.dropped_frames == 2 and session.sink.stats.open_bytes == 0
    assert "b" in session.contexts


def test_session_returns_what_to_send_and_deliver_and_does_neither():
    session = Session(flushsink.Sink(drop_unannounced=True, max_segment_bytes=4))
    a, b, c = (session.new_context(model_id="m", voice=VOICE, context_id=cid) for cid in "abc")
    for state in (a, b):
        session.request(state, "x")
    session.receive(frame(type="chunk", context_id="a", flush_id=1, data="AAAA"))
    events, message = session.cancel(a)
    assert [type(e).__name__ for e in events] == ["SegmentReady", "StreamEnd"]
    assert not events[0].segment.complete and events[1].failure is None
    assert json.loads(message) == {"context_id": "a", "cancel": True}
    assert session.cancel(a) == ([], None)
    assert session.cancel(c) == ([StreamEnd("c", None)], None)  # never sent: nothing to cancel
    end = session.receive(frame(type="chunk", context_id="b", data="AAAAAAAA"))[-1]  # over the cap
    assert end.context_id == "b" and isinstance(end.failure, CapacityError)
    assert session.rejected_frames == 1 and session.contexts == {}


def test_session_request_json_matches_the_sdk_key_order():
    session = Session(flushsink.Sink())
    state = session.new_context(model_id="sonic-latest", voice={"mode": "id", "id": VOICE},
                                output_format=S16, context_id="c", language="en")
    message = json.loads(session.request(state, "", flush=True))
    assert list(message) == ["context_id", "model_id", "transcript", "voice", "output_format",
                             "continue", "language", "flush"]
    assert message["continue"] is True and message["flush"] is True


def test_urls_and_keys():
    assert normalize_url("ws://127.0.0.1:9") == "ws://127.0.0.1:9/tts/websocket"
    assert normalize_url("ws://h:1/x/tts/websocket?a=1") == "ws://h:1/x/tts/websocket?a=1"
    assert normalize_url(None) == "wss://api.cartesia.ai/tts/websocket"
    with pytest.raises(ValueError):
        normalize_url("http://h")
    old = os.environ.pop("CARTESIA_API_KEY", None)
    try:
        with pytest.raises(FlushsinkError):
            flushsink.connect()
    finally:
        if old is not None:
            os.environ["CARTESIA_API_KEY"] = old


def test_api_key_is_sent_and_checked():
    async def main(key):
        async with Emulator(api_key="secret") as emu:
            async with flushsink.connect(emu.url, api_key=key, receive_timeout=10) as tts:
                ctx = tts.context(voice=VOICE, output_format=S16)
                await ctx.push("Key.")
                await ctx.no_more_inputs()
                return await ctx.collect()

    assert run(main("secret"))[0].samples.tobytes() == expected("Key.")
    with pytest.raises(Exception, match="401"):
        run(main("wrong"))


# --- the context inbox ------------------------------------------------------------------------

def test_inbox_times_out_wakes_readers_in_turn_and_survives_cancellation():
    """The asyncio context's event inbox (a deque and waiting futures, no task per get):
    items come out in order, a reader waits until an item or its timeout, two readers
    each get one item, and a cancelled reader passes its wakeup on."""
    from flushsink.client import _Inbox

    async def main():
        inbox = _Inbox()
        inbox.put_nowait(1)
        inbox.put_nowait(2)
        assert [await inbox.get(1), await inbox.get(1)] == [1, 2]
        started = asyncio.get_running_loop().time()
        with pytest.raises(asyncio.TimeoutError):
            await inbox.get(0.05)
        assert asyncio.get_running_loop().time() - started >= 0.05
        readers = [asyncio.ensure_future(inbox.get(5)) for _ in range(2)]
        await asyncio.sleep(0)
        inbox.put_nowait("a")
        inbox.put_nowait("b")
        assert sorted(await asyncio.gather(*readers)) == ["a", "b"]
        # a reader cancelled after its wakeup must not strand the item or the next reader
        first, second = (asyncio.ensure_future(inbox.get(5)) for _ in range(2))
        await asyncio.sleep(0)
        inbox.put_nowait("c")
        first.cancel()
        assert await asyncio.wait_for(second, 1) == "c"
        # a reader that finds the item gone (taken by one that did not wait) waits on
        late = asyncio.ensure_future(inbox.get(0.2))
        await asyncio.sleep(0)
        inbox.put_nowait("d")
        assert await inbox.get(1) == "d"   # taken before the woken reader runs
        with pytest.raises(asyncio.TimeoutError):
            await late

    run(main())


def test_inbox_without_timeout_waits_and_leaves_no_waiters_behind():
    from flushsink.client import _Inbox

    async def main():
        inbox = _Inbox()
        for _ in range(50):  # timed-out and cancelled readers are not kept
            with pytest.raises(asyncio.TimeoutError):
                await inbox.get(0)
            reader = asyncio.ensure_future(inbox.get(5))
            await asyncio.sleep(0)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
        assert len(inbox._waiters) == 0
        forever = asyncio.ensure_future(inbox.get(None))
        await asyncio.sleep(0.05)
        assert not forever.done()
        inbox.put_nowait("late")
        assert await asyncio.wait_for(forever, 1) == "late"

    run(main())


def test_read_buffers_go_from_closed_connections_to_new_ones_within_a_bound():
    """The asyncio client reads into a 1 MiB mapping of its own; a closed connection
    leaves it to the next (at most four wait), and what a reused buffer delivers is exact."""
    from flushsink import client as client_module

    async def main():
        async with Emulator(chunk_ms=20) as emu:
            results = await asyncio.gather(*(seed_flow(emu.url) for _ in range(6)))
            kept = len(client_module._idle_read_buffers)
            again = await seed_flow(emu.url)
            return results + [again], kept

    results, kept = run(main())
    assert kept == client_module._KEPT_READ_BUFFERS
    assert len(client_module._idle_read_buffers) == kept
    for segments in results:
        assert [s.samples.tobytes() for s in segments] == [expected(text) for text in SEED]


def test_a_close_by_the_client_is_reported_as_ours_not_the_servers():
    """A context still open when the client closes ends with ConnectionLost saying who
    closed: flushsink (code 1000), not the server that only answered the close."""
    async def main():
        async with Emulator() as emu:
            tts = flushsink.connect(emu.url, receive_timeout=10)
            ctx = tts.context(voice=VOICE, output_format=S16)
            await ctx.push(SEED[0])  # no no_more_inputs: the context stays open
            await tts.close()
            with pytest.raises(ConnectionLost) as lost:
                await ctx.collect()
            return str(lost.value), tts.close_code

    message, code = run(main())
    assert "closed by flushsink with code 1000" in message and code == 1000, message


def test_a_failed_write_the_reader_gets_is_not_also_logged_as_an_error(caplog):
    """A complete segment's WriteError reaches the reader from the context's iterator, so
    it is logged at INFO only (an app that handles it must not see it printed twice); an
    incomplete one's is not raised (the context's own failure is), so it is an ERROR."""
    from flushsink.errors import WriteError as _WriteError

    def failing_writer(event):
        raise _WriteError("disk full", event.segment)

    shell = ClientBase("ws://127.0.0.1:9", writer=failing_writer)  # no connection: the write step
    session = shell.session
    state = session.new_context(model_id="m", voice="v", context_id="a")
    session.request(state, "x")
    chunk = b'{"type":"chunk","context_id":"a","flush_id":1,"data":"AAAA"}'
    with caplog.at_level("INFO", logger="flushsink"):
        shell._receive(chunk)
        shell._receive(b'{"type":"flush_done","context_id":"a","flush_id":1}')
        complete = [(r.levelname, r.getMessage()) for r in caplog.records]
        caplog.clear()
        shell._receive(chunk.replace(b'"flush_id":1', b'"flush_id":2'))
        shell._lost("gone")
        incomplete = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert complete == [("INFO", "flushsink: disk full")]
    assert ("ERROR", "flushsink: disk full") in incomplete
    assert session.write_error_count == 2
