"""pipecat's ``CartesiaTTSService`` with flushsink's streaming Sink as its receive path.

    from flushsink.integrations.pipecat import CartesiaTTSService

    tts = CartesiaTTSService(api_key=..., settings=CartesiaTTSService.Settings(voice=...))

Same constructor, same frames out as ``pipecat.services.cartesia.tts.CartesiaTTSService``
(written against pipecat-ai 1.14.0; docs/integrations.md says what the stock service does
and, line by line, where this one differs). Only the receive loop is replaced: each
websocket message goes to a ``Sink(stream=True, keep_audio=False)`` as websockets gives
it (no ``json.loads`` of the audio frames, base64 decoded in C), and its events become
the stock service's calls:

- ``AudioChunk`` -> ``TTSAudioRawFrame(bytes(chunk.data), sample_rate, 1, context_id)``
  appended to the chunk's audio context;
- ``Timestamps`` (words) -> ``add_word_timestamps`` with the stock normalisation;
- ``ContextDone`` -> ``TTSStoppedFrame`` appended, the audio context removed;
- ``ContextError`` -> the stock error handling (``TTSStoppedFrame``, metrics stopped,
  ``push_error``, active context reset);
- ``ServerError`` (an error without ``context_id``) -> ``push_error``, and the service
  goes on (the stock loop raises ``KeyError`` on it and reconnects);
- a frame the Sink rejects -> ``push_error``, and the service goes on (the stock loop's
  ``json.loads`` raises and reconnects).

An interrupted context is cancelled in the Sink too, so its late frames are dropped before
their base64 is decoded. A Sink lives as long as its socket: the one that replaces it
after the idle close (Cartesia closes a socket idle for 5 minutes; the stock loop
reconnects) starts with a new Sink.
"""

from __future__ import annotations

from typing import Any

try:
    from pipecat.frames.frames import TTSAudioRawFrame, TTSStoppedFrame
    from pipecat.services.cartesia.tts import CartesiaTTSService as _StockCartesiaTTSService
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "flushsink.integrations.pipecat needs pipecat-ai with its Cartesia service: "
        "pip install flushsink[pipecat]"
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

__all__ = ["CartesiaTTSService"]


class CartesiaTTSService(_StockCartesiaTTSService):
    """``pipecat.services.cartesia.tts.CartesiaTTSService`` receiving through flushsink."""

    _flushsink: Sink | None = None

    def _new_sink(self) -> Sink | None:
        """A Sink for the socket about to be read, or None to use the stock loop (a
        container or encoding the Sink does not take: it reads raw PCM / G.711 only)."""
        if self._output_container != "raw":
            return None
        try:
            fmt = AudioFormat(self._output_encoding, self.sample_rate)
        except (ValueError, TypeError):
            return None
        return Sink(fmt, stream=True, keep_audio=False)

    async def _process_messages(self) -> None:
        sink = self._new_sink()
        if sink is None:
            await super()._process_messages()
            return
        self._flushsink = sink
        try:
            async for message in self._get_websocket():
                try:
                    out = sink.feed(message)
                except FlushsinkError as e:
                    await self.push_error(error_msg=f"Error: invalid message from Cartesia: {e}")
                    continue
                for item in out:
                    await self._flushsink_handle(item)
        finally:
            if self._flushsink is sink:
                self._flushsink = None

    async def _flushsink_handle(self, item: Any) -> None:
        if isinstance(item, AudioChunk):
            ctx_id = item.context_id
            if ctx_id is None or not self.audio_context_available(ctx_id):
                return
            frame = TTSAudioRawFrame(
                audio=bytes(item.data),
                sample_rate=self.sample_rate,
                num_channels=1,
                context_id=ctx_id,
            )
            await self.append_to_audio_context(ctx_id, frame)
        elif isinstance(item, Timestamps):
            ctx_id = item.context_id
            if item.kind != "words" or ctx_id is None or not self.audio_context_available(ctx_id):
                return
            processed = self._normalize_word_timestamps(
                [t.text for t in item.items], [t.start for t in item.items]
            )
            cjk = self._word_timestamps_include_inter_frame_spaces()
            await self.add_word_timestamps(
                processed,
                ctx_id,
                includes_inter_frame_spaces=True if cjk else None,
                pre_merge_tokens=cjk,
            )
        elif isinstance(item, ContextDone):
            ctx_id = item.context_id
            if ctx_id is None or not self.audio_context_available(ctx_id):
                return
            await self.stop_ttfb_metrics()
            await self.append_to_audio_context(ctx_id, TTSStoppedFrame(context_id=ctx_id))
            await self.remove_audio_context(ctx_id)
        elif isinstance(item, ContextError):
            ctx_id = item.context_id
            if ctx_id is None or not self.audio_context_available(ctx_id):
                return
            await self.push_frame(TTSStoppedFrame(context_id=ctx_id))
            await self.stop_all_metrics()
            await self.push_error(error_msg=f"Error: {item.raw}")
            self.reset_active_audio_context()
        elif isinstance(item, ServerError):
            await self.push_error(error_msg=f"Error: {item.raw}")
        elif isinstance(item, Unknown):
            ctx_id = item.context_id
            if ctx_id is not None and self.audio_context_available(ctx_id):
                await self.push_error(error_msg=f"Error, unknown message type: {item.message}")
        # SegmentReady (flush_done, done, cancel): the audio went out as it came; nothing
        # to do, as the stock service does nothing on flush_done.

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Cancel the context in the Sink as well, so its late frames are dropped."""
        sink = self._flushsink
        if context_id and sink is not None:
            sink.cancel(context_id)
        await super().on_audio_context_interrupted(context_id)
