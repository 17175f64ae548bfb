"""LiveKit Agents' stock Cartesia TTS and flushsink's drop-in, against the emulator.

Runs where livekit-agents and livekit-plugins-cartesia are installed (the frameworks'
virtual environment; the main suite skips it). Both plugins are pointed at the emulator
with their own ``base_url`` option and driven through their public stream API
(``tts.stream()``, ``push_text``, ``flush``, ``end_input``, iteration, ``aclose``); each
must give the emulator's audio byte for byte, and the drop-in the same frames, word
timings and failures as the stock plugin.
"""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("livekit.plugins.cartesia")

import aiohttp  # noqa: E402
from livekit.agents import APIConnectionError, APIConnectOptions, APIError  # noqa: E402
from livekit.plugins.cartesia import TTS as StockTTS  # noqa: E402

from flushsink import AudioFormat  # noqa: E402
from flushsink.emulator import Emulator, render  # noqa: E402
from flushsink.integrations.livekit import TTS as DropIn  # noqa: E402

TEXT = "Stay hungry, stay foolish. The rest is detail."
VOICE = "livekit-voice"
RATE = 24000
SERVICES = {"stock": StockTTS, "flushsink": DropIn}
QUICK = APIConnectOptions(max_retry=1, retry_interval=0.1, timeout=5.0)


def full(text: str = TEXT) -> bytes:
    return render(text, VOICE, AudioFormat("pcm_s16le", RATE))


class Run:
    """What one stream gave: its SynthesizedAudio events, the exception that ended it
    (None if it ended cleanly), the TTS's "error" events and the emulator's connections."""

    def __init__(self, events, error, tts_errors, connections):
        self.events, self.error = events, error
        self.tts_errors, self.connections = tts_errors, connections

    @property
    def audio(self) -> bytes:
        return b"".join(bytes(ev.frame.data) for ev in self.events)

    def shape(self):
        """What must agree between the two plugins: each frame's size, finality and
        word timings (the context ids are random)."""
        return [
            (ev.frame.samples_per_channel, ev.is_final,
             [(str(w), w.start_time, w.end_time)
              for w in ev.frame.userdata.get("lk.timed_transcripts", [])])
            for ev in self.events
        ]

    @property
    def words(self) -> str:
        return "".join(w for _, _, ws in self.shape() for w, _, _ in ws)


async def feed(stream, script):
    for step in script:
        if step is None:
            stream.flush()
        elif isinstance(step, float):
            await asyncio.sleep(step)
        else:
            stream.push_text(step)
    stream.end_input()


async def speak(tts_class, scripts, *, emulator=None, conn_options=QUICK, stop_after=None,
                between=0.0):
    """Run one stream per script (text pieces; None = flush(); a float = sleep) on one
    TTS, one after another; with ``stop_after`` (seconds), the first stream is closed
    (``aclose``, what an interruption does) that long after its first audio."""
    runs = []
    async with Emulator(**(emulator or {})) as emu, aiohttp.ClientSession() as http:
        tts = tts_class(api_key="test-key", base_url=emu.url, voice=VOICE,
                        sample_rate=RATE, http_session=http)
        tts_errors = []
        tts.on("error", tts_errors.append)
        for n, script in enumerate(scripts):
            if n:
                await asyncio.sleep(between)
            stream = tts.stream(conn_options=conn_options)
            feeder = asyncio.create_task(feed(stream, script))
            events, error = [], None
            try:
                async with asyncio.timeout(30):
                    async for ev in stream:
                        events.append(ev)
                        if stop_after is not None and n == 0:
                            if len(events) == 1:
                                first = asyncio.get_running_loop().time()
                            elif asyncio.get_running_loop().time() - first >= stop_after:
                                break
            except APIError as e:
                error = e
            await stream.aclose()
            await feeder
            runs.append(Run(events, error, list(tts_errors), emu.connections))
            tts_errors.clear()
        await tts.aclose()
        await asyncio.sleep(0.05)  # let the emulator see the last close
        return runs


def one(tts_class, script=(TEXT,), **kw) -> Run:
    return asyncio.run(speak(tts_class, [script], **kw))[0]


@pytest.mark.parametrize("which", sorted(SERVICES))
def test_audio_is_the_emulators(which):
    run = one(SERVICES[which])
    assert run.error is None and run.tts_errors == []
    assert run.audio == full()
    assert {(ev.frame.sample_rate, ev.frame.num_channels) for ev in run.events} == {(RATE, 1)}
    # one context, named by the stream, all of it one segment ending in a final frame
    (conn,) = run.connections
    contexts = {m["context_id"] for m in conn.received}
    assert {ev.segment_id for ev in run.events} == contexts and len(contexts) == 1
    assert [ev.is_final for ev in run.events][-1] is True
    assert sum(ev.is_final for ev in run.events) == 1
    # the word timings carry the text as it was sent, punctuation included
    assert run.words.split() == TEXT.split()


@pytest.mark.parametrize("which", sorted(SERVICES))
def test_what_livekit_sends_is_taken_as_it_is(which):
    """The plugin's own handshake and requests, unchanged: its API version in the query,
    its key header and user agent, a regional language, timestamps asked for. The
    emulator answers no error and speaks the text (issue 15 item 4)."""
    async def go():
        async with Emulator() as emu, aiohttp.ClientSession() as http:
            tts = SERVICES[which](api_key="test-key", base_url=emu.url, voice=VOICE,
                                  sample_rate=RATE, language="en-GB", http_session=http)
            stream = tts.stream(conn_options=QUICK)
            stream.push_text(TEXT)
            stream.end_input()
            audio = b"".join([bytes(ev.frame.data) async for ev in stream])
            await stream.aclose()
            await tts.aclose()
            return audio, emu.connections

    audio, (log,) = asyncio.run(go())
    assert audio == full()
    assert log.version == "2025-04-16" and "cartesia_version=2025-04-16" in log.path
    assert log.headers["x-api-key"] == "test-key" and "LiveKit" in log.headers["user-agent"]
    assert log.sent["error"] == 0
    requests = [m for m in log.received if "transcript" in m]
    assert requests and {m["language"] for m in requests} <= {"en", "en-GB"}
    assert all(m["add_timestamps"] is True for m in requests)


def test_dropin_gives_the_stock_frames_and_word_timings():
    script = ("Stay hungry, ", "stay foolish. ", None, "The rest ", "is detail. ",
              "Ein Satz, noch einer.")
    stock, ours = (one(cls, script) for cls in (StockTTS, DropIn))
    assert ours.audio == stock.audio
    assert ours.shape() == stock.shape()
    sent = [m["transcript"] for m in ours.connections[0].received]
    assert sent == [m["transcript"] for m in stock.connections[0].received]
    assert ours.audio == full("".join(sent))


def test_streams_one_after_another_reuse_the_socket():
    texts = [TEXT, "Here again. Still here.", "And a third time."]
    for cls in (StockTTS, DropIn):
        runs = asyncio.run(speak(cls, [(t,) for t in texts]))
        assert [r.audio for r in runs] == [full(t) for t in texts]
        assert len(runs[-1].connections) == 1  # the pooled socket, three contexts on it


def provoking(tts_class):
    """The plugin, made to send a request without ``context_id`` on each new socket: the
    emulator answers it with an error without ``context_id`` (as Cartesia does for some
    errors about the connection), before the text's audio."""

    class Provoking(tts_class):
        async def _connect_ws(self, timeout):
            ws = await super()._connect_ws(timeout)
            await ws.send_str(json.dumps({"transcript": "no context"}))
            return ws

    return Provoking


def test_dropin_goes_on_after_an_error_without_context_id():
    run = one(provoking(DropIn))
    assert run.error is None and run.tts_errors == []
    assert run.audio == full()
    assert len(run.connections) == 1


def test_stock_takes_an_error_without_context_id_for_its_done():
    """Why the drop-in differs: livekit-plugins-cartesia 1.8.9 checks ``done`` before
    ``type == "error"``, and Cartesia's errors carry ``done: true``. So the error ends the
    stream once its input has ended, with no audio, and LiveKit retries it (an "error"
    event, recoverable). If a plugin upgrade changes this, this test says so."""
    run = one(provoking(StockTTS))
    assert run.audio == full()  # from the retry
    assert [e.recoverable for e in run.tts_errors] == [True]
    assert "no audio frames" in str(run.tts_errors[0].error)


@pytest.mark.parametrize("which", sorted(SERVICES))
def test_a_context_error_fails_the_stream(which):
    """An embedding voice is refused by the emulator with an error for the context; both
    plugins fail the stream with an APIError after the retry, with no audio."""
    async def go():
        async with Emulator() as emu, aiohttp.ClientSession() as http:
            tts = SERVICES[which](api_key="k", base_url=emu.url,
                                  voice=[0.1] * 8, sample_rate=RATE, http_session=http)
            errors = []
            tts.on("error", errors.append)
            stream = tts.stream(conn_options=QUICK)
            stream.push_text(TEXT)
            stream.end_input()
            with pytest.raises(APIError):
                async with asyncio.timeout(30):
                    async for ev in stream:
                        raise AssertionError(f"audio for a refused context: {ev}")
            await stream.aclose()
            await tts.aclose()
            return errors
    errors = asyncio.run(go())
    assert [e.recoverable for e in errors] == [True, False]


def test_a_dropped_connection_fails_both_alike():
    """The connection drops after three chunks: both plugins have passed on the same
    audio, and fail the stream with the same error and no retry (audio already went out)."""
    stock, ours = (one(cls, emulator={"faults": ["drop@chunk:3"]}) for cls in (StockTTS, DropIn))
    assert ours.audio == stock.audio
    # three 100 ms chunks came, less the 10 ms tail LiveKit's emitter holds back
    assert ours.audio == full()[:3 * (RATE // 10) * 2 - (RATE // 100) * 2]
    assert type(ours.error) is type(stock.error) and isinstance(ours.error, APIError)
    assert [e.recoverable for e in ours.tts_errors] == [False]
    assert [e.recoverable for e in stock.tts_errors] == [False]


def test_dropin_skips_a_frame_it_cannot_read_and_goes_on():
    """A frame that is not JSON: the stock plugin's ``json.loads`` raises, and the stream
    fails after the audio before it; the drop-in skips the frame and speaks the rest."""
    fault = {"faults": ["malformed_json@chunk:3"]}
    stock, ours = (one(cls, emulator=fault) for cls in (StockTTS, DropIn))
    assert isinstance(stock.error, APIConnectionError)
    assert full().startswith(stock.audio) and 0 < len(stock.audio) < len(full())
    assert ours.error is None and ours.tts_errors == [] and ours.audio == full()


@pytest.mark.parametrize("which", sorted(SERVICES))
def test_a_chunk_that_is_not_base64_adds_no_audio(which):
    """``"data": "@@@@"``: the stock plugin's lenient ``b64decode`` makes it b"", the
    drop-in rejects the frame; either way the audio is the emulator's, whole."""
    run = one(SERVICES[which], emulator={"faults": ["bad_base64@chunk:3"]})
    assert run.error is None and run.audio == full()


@pytest.mark.slow
@pytest.mark.parametrize("which", sorted(SERVICES))
def test_interruption_closes_the_stream_and_the_next_one_speaks(which):
    """An interruption is ``aclose()`` on the stream: in real time, half a second after its
    first audio. The plugin's pool closes that socket; the next stream opens another and
    gets its text's audio whole."""
    second = "Here again. Still here."
    interrupted, after = asyncio.run(speak(SERVICES[which], [(TEXT,), (second,)],
                                           emulator={"pace": "realtime"}, stop_after=0.5))
    assert interrupted.error is None
    assert 0 < len(interrupted.audio) < len(full()) and full().startswith(interrupted.audio)
    # (in real time LiveKit's emitter sends what it holds back on a timer, and so ends the
    # segment with its 10 ms silent marker: tts/tts.py, AudioEmitter._emit_frame)
    assert after.error is None
    assert after.audio in (full(second), full(second) + bytes(RATE // 100 * 2))
    # the interrupted socket was closed when its stream was, the next stream had a new one
    first, again = after.connections
    assert first.closed and first.sent["done"] == 0
    assert {m["context_id"] for m in again.received}.isdisjoint(
        m["context_id"] for m in first.received)


@pytest.mark.slow
@pytest.mark.parametrize("which", sorted(SERVICES))
def test_the_idle_close_is_survived(which):
    """The emulator closes a socket idle for ``idle_timeout`` as Cartesia does after 5
    minutes (1000, "connection idle timeout"); the next stream finds its pooled socket
    closed, and LiveKit's retry opens a new one."""
    second = "Here again. Still here."
    first, again = asyncio.run(speak(SERVICES[which], [(TEXT,), (second,)],
                                     emulator={"idle_timeout": 0.4}, between=1.0))
    assert first.audio == full() and again.audio == full(second)
    assert again.error is None
    assert len(again.connections) == 2


def test_import_flushsink_leaves_livekit_alone():
    import subprocess
    import sys

    code = "import sys, flushsink, flushsink.integrations; assert 'livekit' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_done_before_the_input_ended_is_ignored_as_stock_does():
    """A server that sends a context's done after its first sentence, then more audio and
    another done after continue: false. The stock plugin ignores the early done and keeps
    receiving; so must the drop-in, whose Sink had ended the context at that done."""
    from websockets.asyncio.server import serve

    pieces = [bytes([n]) * 4800 for n in range(1, 4)]

    async def handler(ws):
        sent = 0
        async for raw in ws:
            request = json.loads(raw)
            if not request["transcript"].strip() and request["continue"]:
                continue
            chunk = {"type": "chunk", "context_id": request["context_id"], "status_code": 206,
                     "done": False, "data": __import__("base64").b64encode(pieces[sent]).decode()}
            sent += 1
            await ws.send(json.dumps(chunk))
            if sent == 1 or not request["continue"]:
                await ws.send(json.dumps({"type": "done", "context_id": request["context_id"],
                                          "status_code": 206, "done": True}))

    async def go(cls):
        async with serve(handler, "127.0.0.1", 0) as server, aiohttp.ClientSession() as http:
            port = next(iter(server.sockets)).getsockname()[1]
            tts = cls(api_key="k", base_url=f"ws://127.0.0.1:{port}", voice=VOICE,
                      sample_rate=RATE, http_session=http)
            stream = tts.stream(conn_options=QUICK)
            stream.push_text("Stay hungry, stay foolish. ")
            stream.flush()
            audio = bytes((await stream.__anext__()).frame.data)  # the input is still open
            await asyncio.sleep(0.2)  # (the early done has come)
            stream.push_text("The rest is detail.")
            stream.end_input()
            audio += b"".join([bytes(ev.frame.data) async for ev in stream])
            await stream.aclose()
            await tts.aclose()
            return audio

    stock, ours = (asyncio.run(go(cls)) for cls in (StockTTS, DropIn))
    assert ours == stock, (len(ours), len(stock))
    assert stock.startswith(b"".join(pieces[:2])), len(stock)  # stock speaks on past it
