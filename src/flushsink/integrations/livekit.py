"""LiveKit Agents' Cartesia ``TTS`` with flushsink's streaming Sink as its receive path.

    from flushsink.integrations.livekit import TTS

    tts = TTS(voice=..., api_key=...)   # the arguments of livekit.plugins.cartesia.TTS

Same constructor, same streams, same ``SynthesizedAudio`` out as
``livekit.plugins.cartesia.TTS`` (written against livekit-agents and
livekit-plugins-cartesia 1.8.9; docs/integrations.md says what the stock plugin does and,
step by step, where this one differs). ``stream()`` returns a ``SynthesizeStream`` whose
receive loop feeds each websocket message to a ``Sink(stream=True, keep_audio=False)`` as
aiohttp gives it (no ``json.loads`` of the audio frames, base64 decoded in C) and turns
its events into the stock plugin's calls on the ``AudioEmitter``:

- the first event of the stream's context -> ``start_segment(segment_id=context_id)``;
- ``AudioChunk`` -> ``push(bytes)``: the emitter re-frames it exactly as it does the stock
  plugin's decoded bytes;
- ``Timestamps`` (words) -> ``push_timed_transcript``, each word given the text it was
  sent as, by the stock plugin's rule;
- ``ContextDone`` once the input has ended -> ``end_input()``, and the stream is done; one
  before it is ignored, as stock does (a new Sink then takes the context's later frames);
- ``ContextError`` -> ``APIError`` (retried by LiveKit when no audio went out yet);
- ``ServerError`` (an error without ``context_id``) -> logged, and the stream goes on (if
  it was about this stream's request, the stream then waits ``conn_options.timeout`` for
  audio before LiveKit retries it; stock retries at once);
- a frame the Sink rejects (not JSON, bad base64, over a cap) -> logged, and the stream
  goes on without it (the stock plugin's ``json.loads`` raises and fails the stream; its
  ``b64decode`` skips the characters that are not base64).

The Sink lives as long as one attempt of one stream, the stock plugin's unit: it is told
the stream's context, and drops any other context's frames (a pooled socket's leftovers)
before decoding them. Sending (the sentence tokenizer, the requests, the connection pool)
is the stock plugin's, step for step. ``synthesize()`` (the HTTP bytes endpoint, no
base64) is the stock plugin's, unchanged.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

try:
    import aiohttp
    from livekit.agents import (
        APIConnectionError,
        APIConnectOptions,
        APIError,
        APIStatusError,
        APITimeoutError,
        tokenize,
        tts,
        utils,
    )
    from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS
    from livekit.agents.voice.io import TimedString
    from livekit.plugins.cartesia import tts as _stock
    from livekit.plugins.cartesia.log import logger
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "flushsink.integrations.livekit needs livekit-agents with the Cartesia plugin: "
        "pip install flushsink[livekit]"
    ) from exc

from .. import (
    AudioChunk,
    AudioFormat,
    ContextDone,
    ContextError,
    FlushsinkError,
    ServerError,
    Sink,
    Timestamps,
    Unknown,
)

__all__ = ["TTS", "SynthesizeStream"]

_CLOSING = (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING)
_DONE, _GOES_ON = object(), object()  # what SynthesizeStream._take says of a done


class TTS(_stock.TTS):
    """``livekit.plugins.cartesia.TTS`` whose streams receive through flushsink."""

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream


class _WordAligner:
    """The text each timestamped word was sent as, punctuation and spaces included: the
    words are matched in order against the sentences sent (``sent``, which the sending
    side appends to). Once a word is not found, or the sentences run out, every word
    after it is given as ``word + " "``. The stock plugin's rule."""

    def __init__(self, sent: deque[str]) -> None:
        self._sent = sent
        self._lost = False

    def text(self, word: str) -> str:
        sent = self._sent
        if self._lost or not sent:
            self._lost = True
            return word + " "
        sentence = sent.popleft()
        at = sentence.find(word)
        if at < 0:
            self._lost = True
            return word + " "
        end = at + len(word)
        rest = sentence[end:]
        if rest.strip():
            sent.appendleft(rest)          # more words to come from this sentence
        elif rest and sent:
            sent[0] = rest + sent[0]       # trailing spaces go with the next one
        return sentence[:end]


class SynthesizeStream(_stock.SynthesizeStream):
    """The stock stream with the receive loop replaced (see the module's docstring)."""

    _tts: TTS

    def _sink_format(self) -> AudioFormat | None:
        """The Sink's format, or None to use the stock plugin's ``_run``: the emitter is
        told the audio is 16-bit PCM (``audio/pcm``), so that is all the Sink takes."""
        opts = self._opts
        if opts.encoding != "pcm_s16le":
            return None
        try:
            return AudioFormat(opts.encoding, opts.sample_rate)
        except (ValueError, TypeError):
            return None

    def _new_sink(self, fmt: AudioFormat, context_id: str) -> Sink:
        """The Sink one attempt receives through: it decodes ``context_id`` only."""
        sink = Sink(fmt, stream=True, keep_audio=False, drop_unannounced=True)
        sink.set_format(context_id, fmt)
        return sink

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        fmt = self._sink_format()
        if fmt is None:
            await super()._run(output_emitter)
            return
        opts = self._opts
        request_id = utils.shortuuid()
        output_emitter.initialize(
            request_id=request_id,
            sample_rate=opts.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        input_sent = asyncio.Event()
        sent: deque[str] = deque()
        sentences = self._tts._sentence_tokenizer.stream()
        flush_on_chunk = isinstance(self._tts._sentence_tokenizer, tokenize.SentenceTokenizer)
        if self._tts._stream_pacer:
            sentences = self._tts._stream_pacer.wrap(
                sent_stream=sentences, audio_emitter=output_emitter
            )
        context_id = utils.shortuuid()
        sink = self._new_sink(fmt, context_id)

        async def send_sentences(ws: aiohttp.ClientWebSocketResponse) -> None:
            base = _stock._to_cartesia_options(opts, streaming=True)
            if flush_on_chunk:
                base["max_buffer_delay_ms"] = 0

            async def send(transcript: str, more: bool) -> None:
                request = dict(base, context_id=context_id, transcript=transcript)
                request["continue"] = more
                sent.append(transcript)
                if more:
                    self._mark_started()
                await ws.send_str(json.dumps(request))
                input_sent.set()

            async for ev in sentences:
                await send(ev.token + " ", True)
            await send(" ", False)

        async def take_input() -> None:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    sentences.flush()
                else:
                    sentences.push_text(data)
            sentences.end_input()

        async def receive(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal sink
            await input_sent.wait()
            words = _WordAligner(sent)
            started = False
            while True:
                msg = await ws.receive(timeout=self._conn_options.timeout)
                if msg.type in _CLOSING:
                    logger.error(
                        "Cartesia connection closed unexpectedly. Include the "
                        "cartesia_context_id to support@cartesia.ai for help debugging.",
                        extra={"cartesia_context_id": context_id},
                    )
                    raise APIStatusError(
                        "Cartesia connection closed unexpectedly",
                        request_id=request_id,
                        status_code=ws.close_code or -1,
                        body=f"{msg.data=} {msg.extra=}",
                    )
                if msg.type != aiohttp.WSMsgType.TEXT:
                    logger.warning("unexpected Cartesia message type %s", msg.type)
                    continue
                try:
                    events = sink.feed(msg.data)
                except FlushsinkError as e:
                    logger.error("invalid message from Cartesia, skipped: %s", e,
                                 extra={"cartesia_context_id": context_id})
                    continue
                for event in events:
                    if isinstance(event, ServerError):
                        logger.error(
                            "Cartesia returned an error without context_id; going on",
                            extra={"cartesia_context_id": context_id, "error": event.raw},
                        )
                        continue
                    if getattr(event, "context_id", None) != context_id:
                        continue  # flush_done of another context (its audio was dropped)
                    if not started:
                        started = True
                        output_emitter.start_segment(segment_id=context_id)
                    step = self._take(event, output_emitter, words, sentences.closed)
                    if step is _DONE:
                        return
                    if step is _GOES_ON:
                        # a done before the input ended, which stock ignores: the Sink has
                        # ended the context, so a new one takes what still comes for it
                        sink = self._new_sink(fmt, context_id)

        try:
            async with self._tts._pool.connection(timeout=self._conn_options.timeout) as ws:
                self._acquire_time = self._tts._pool.last_acquire_time
                self._connection_reused = self._tts._pool.last_connection_reused
                tasks = [
                    asyncio.create_task(take_input()),
                    asyncio.create_task(send_sentences(ws)),
                    asyncio.create_task(receive(ws)),
                ]
                try:
                    await asyncio.gather(*tasks)
                finally:
                    input_sent.set()
                    await sentences.aclose()
                    await utils.aio.gracefully_cancel(*tasks)
        except asyncio.TimeoutError:
            raise APITimeoutError() from None
        except aiohttp.ClientResponseError as e:
            raise APIStatusError(
                message=e.message, status_code=e.status, request_id=None, body=None
            ) from None
        except APIError:
            raise
        except Exception as e:
            logger.exception(
                "Cartesia connection error. Include the cartesia_context_id to "
                "support@cartesia.ai for help debugging.",
                extra={"cartesia_context_id": context_id},
            )
            raise APIConnectionError() from e

    @staticmethod
    def _take(
        event: Any, emitter: tts.AudioEmitter, words: _WordAligner, input_ended: bool
    ) -> object:
        """One event of the stream's own context: _DONE when the stream is done,
        _GOES_ON for a done that came before the input ended, else None."""
        if isinstance(event, AudioChunk):
            emitter.push(bytes(event.data))
        elif isinstance(event, Timestamps):
            if event.kind == "words":
                for item in event.items:
                    emitter.push_timed_transcript(
                        TimedString(text=words.text(item.text), start_time=item.start,
                                    end_time=item.end)
                    )
        elif isinstance(event, ContextDone):
            if not input_ended:  # ignored, as stock does (its audio may still come)
                return _GOES_ON
            emitter.end_input()
            return _DONE
        elif isinstance(event, ContextError):
            logger.error(
                "Cartesia returned error. Include the cartesia_context_id to "
                "support@cartesia.ai for help debugging.",
                extra={"cartesia_context_id": event.context_id, "error": event.raw},
            )
            raise APIError(f"Cartesia returned error: {event.raw}")
        elif isinstance(event, Unknown):
            logger.warning("unexpected message", extra={"lk.pii.data": event.message})
        # SegmentReady (flush_done): the audio went out as it came; nothing to do.
        return None
