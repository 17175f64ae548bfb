"""The segment store: the rules of docs/sink.md written once (issue 13).

Contexts, labels and adoption, the caps, finishing, timestamps, drops, lost-chunk marks,
ended contexts, finished-label rings and the one-call-at-a-time contract all live here.
Each core subclasses ``Store`` with what it does its own way, its intake and its audio
storage:

- the compiled core, ``ext/_speedups.pyx``: this very file compiled by Cython as
  ``flushsink._store_c`` (``_store_c.py`` is a link to it; ``_store_c.pxd`` gives the hot
  attributes and methods their C types), with the C frame scanner, the base64 kernels,
  malloc'd segment buffers with their pool, and the steady-state append, which reads this
  module's typed attributes directly;
- the pure twin, ``_fallback.py``: the same file run as plain Python, with a regex/json
  intake, binascii and bytearrays.

The hooks a core provides are the methods below that raise NotImplementedError. The
intake looks a frame's context up and calls ``_chunk`` or ``_other``; everything after
that is decided here, so the two cores cannot drift apart. Model: aiohttp's
``_websocket/reader_py.py`` + ``reader_c.pxd``.

Concessions to Cython, each as aiohttp makes them: frame types are small integers (so
they can be C ints); a flush_id is ``has_flush`` and ``label`` (an int64) rather than an
Optional; "no owner thread" is 0, not None.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import numpy as np

from ._common import (SinkStats, at_path, cap_reason, check_sink_args, lost_error,
                      open_segments_cap_error, prealloc_bytes, segment_cap_error,
                      timestamps_cap_error, total_cap_error)
from .envelopes import CARTESIA, Envelope
from .errors import FRAME_ERROR_REASONS, FrameError
from .formats import DEFAULT_FORMAT, AudioFormat
from .segments import (ContextDone, Segment, SegmentReady, Timestamps, Unknown,
                       envelope_error_event, error_event, parse_timed_text, shift)

# Frame types, as the store's rules know them. An intake gives the type by name (the
# twin), or maps its own codes by name (the compiled core maps ext/frame.h's fs_type
# through TYPE_CODES once, at import), so nothing else copies these numbers.
TYPE_NONE = 0          # no type member, or null
TYPE_CHUNK = 1
TYPE_FLUSH_DONE = 2
TYPE_DONE = 3
TYPE_ERROR = 4
TYPE_TIMESTAMPS = 5
TYPE_PHONEME_TIMESTAMPS = 6
TYPE_UNKNOWN = 7

#: the known types by name, for an intake that reads the type as text
TYPE_CODES = {"chunk": TYPE_CHUNK, "flush_done": TYPE_FLUSH_DONE, "done": TYPE_DONE,
              "error": TYPE_ERROR, "timestamps": TYPE_TIMESTAMPS,
              "phoneme_timestamps": TYPE_PHONEME_TIMESTAMPS}

#: the frame types by the kind an Envelope gives them (Envelope.kind_of)
KIND_CODES = {"audio": TYPE_CHUNK, "segment_end": TYPE_FLUSH_DONE, "context_end": TYPE_DONE,
              "error": TYPE_ERROR, "timestamps": TYPE_TIMESTAMPS,
              "phoneme_timestamps": TYPE_PHONEME_TIMESTAMPS}

REENTRANT = ("Sink method called while another call of the same thread is running "
             "(re-entrant call)")

_EMPTY: tuple[Any, ...] = ()


class _Format:
    """An AudioFormat with what the store needs of it computed once (its properties are
    Python-level, and a numpy dtype costs ~150 ns to make)."""

    def __init__(self, format: AudioFormat, prealloc_seconds: float,
                 max_segment_bytes: int) -> None:
        self.format = format
        self.dtype = format.dtype
        self.width = format.sample_width
        self.shift = self.width.bit_length() - 1  # widths are 1, 2, 4: log2 of it
        self.bytes_per_second = format.bytes_per_second
        self.prealloc = prealloc_bytes(format, prealloc_seconds, max_segment_bytes)


class _Segment:
    """An open (context, label) segment: the rules' side of it. Its audio is the core's
    (a subclass's buffer); ``length`` counts the bytes stored."""

    def __init__(self) -> None:
        # (the compiled core makes its segments without __init__: these are C's zeroes)
        self.length = 0
        self.label = 0
        self.unlabelled = False
        self.fmt: Any = None
        self.start = 0.0
        self.words: Any = None                # list of TimedText, once some arrive
        self.phonemes: Any = None
        self.lost_chunks = 0                  # chunks rejected (Store._lose)
        self.lost_bytes = 0
        self.lost_reason: Any = None


class AudioChunk:
    """The whole samples one chunk frame completed, as a streaming Sink returns them
    (``Sink(..., stream=True)``; docs/sink.md "Streaming").

    ``samples`` (numpy, read-only) and ``data`` (a read-only memoryview of the same bytes)
    are views, made on first use, of the memory the audio was decoded into: no copy. They
    stay valid and unchanged for as long as they (or the chunk) are held, whatever the
    Sink does next (grow, finish or drop the segment). ``start`` is the index of the first
    sample in its segment; a sample split across frames belongs to the chunk that
    completes it.

    Made by a Sink (Store._new_chunk sets its fields; the compiled core's is a C type
    made without a Python-level call), never by users.
    """

    context_id: Optional[str]
    flush_id: int
    start: int                         # first sample's index in the segment
    _fmt: _Format
    _owner: Any                        # what exports the bytes (the core's storage)
    _offset: int                       # where they start in it
    _nbytes: int
    _samples: Any                      # the views, made on first use
    _data: Any

    @property
    def format(self) -> AudioFormat:
        return self._fmt.format

    @property
    def samples(self) -> Any:
        """The chunk's samples: a read-only numpy array over its bytes (no copy)."""
        if self._samples is None:
            self._samples = np.frombuffer(self._owner, self._fmt.dtype,
                                          self._nbytes // self._fmt.width, self._offset)
        return self._samples

    @property
    def data(self) -> memoryview:
        """The chunk's bytes (whole samples, little-endian): a read-only memoryview."""
        if self._data is None:
            view = memoryview(self._owner)
            self._data = view[self._offset:self._offset + self._nbytes].toreadonly()
            view.release()
        return self._data  # type: ignore[no-any-return]

    @property
    def nbytes(self) -> int:
        return self._nbytes

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return float(self._nbytes) / self._fmt.bytes_per_second  # (float: C would divide ints)

    def __len__(self) -> int:
        return self._nbytes // self._fmt.width

    def __repr__(self) -> str:
        fmt = self._fmt.format
        return (f"<AudioChunk context_id={self.context_id!r} flush_id={self.flush_id} "
                f"{fmt.encoding}/{fmt.sample_rate} samples {self.start}.."
                f"{self.start + len(self)}>")


class _Context:
    """A context the sink holds state for; made by Store._new_context (no __init__: the
    compiled core makes it without a Python-level call)."""

    context_id: Optional[str]          # str, or None for frames without context_id
    raw_id: Optional[bytes]            # its UTF-8, for an intake that recognises the id
    fmt: _Format
    open: dict[int, Any]               # label -> _Segment, in opening order
    current: Any                       # the most recently opened segment still open
    next_label: int
    finished: set[int]                 # labels of the last max_finished_labels finished
    finished_order: Any                # the same, a ring in finishing order (oldest at
    finished_pos: int                  # finished_pos), made with the first one
    stored: int                        # audio bytes (segment start times)
    frames: int                        # accepted frames (Sink.activity)

    def refresh_current(self) -> None:
        self.current = next(reversed(self.open.values())) if self.open else None


class Store:
    """The state and rules of a Sink; a core subclasses it (see the module docstring).

    Counters: every frame fed counts in ``_fed``, every accepted one (stored, dropped,
    events) in ``_frames`` exactly once, so the rejected ones are the difference.
    """

    def __init__(self, format: AudioFormat = DEFAULT_FORMAT, *,
                 prealloc_seconds: float = 10.0, max_segment_bytes: int = 256 * 2**20,
                 max_total_bytes: int = 1024 * 2**20, max_ended_contexts: int = 10_000,
                 max_open_segments: int = 100_000, max_timestamps: int = 1_000_000,
                 max_finished_labels: int = 10_000, drop_unannounced: bool = False,
                 stream: bool = False, keep_audio: bool = True,
                 envelope: Optional[Envelope] = None) -> None:
        check_sink_args(format, prealloc_seconds, max_segment_bytes, max_total_bytes,
                        max_ended_contexts, max_open_segments, max_timestamps,
                        max_finished_labels)
        if envelope is not None and not isinstance(envelope, Envelope):
            raise TypeError(f"envelope must be a flushsink.envelopes.Envelope, not "
                            f"{type(envelope).__name__}")
        # None: Cartesia's frames, read by the cores' own intake for them (an envelope
        # equal to CARTESIA is the same thing); else the envelope the intake reads by
        self._envelope = None if envelope is None or envelope == CARTESIA else envelope
        if not keep_audio and not stream:
            raise ValueError("keep_audio=False needs stream=True: the audio would be lost")
        self._stream = bool(stream)
        self._keep_audio = bool(keep_audio)
        self._format = format
        self._prealloc_seconds = float(prealloc_seconds)
        self._max_segment_bytes = max_segment_bytes
        self._max_total_bytes = max_total_bytes
        self._max_ended_contexts = max_ended_contexts
        self._max_open_segments = max_open_segments
        self._max_timestamps = max_timestamps
        self._max_finished_labels = max_finished_labels
        self._drop_unannounced = bool(drop_unannounced)
        self._contexts: dict[Any, _Context] = {}
        self._ended: dict[Any, bool] = {}   # ended ids, oldest first (max_ended_contexts)
        self._formats: dict[Any, AudioFormat] = {}  # set_format's, by context id
        self._default = _Format(format, prealloc_seconds, max_segment_bytes)
        self._open_bytes = 0
        self._open_timestamps = 0           # timestamp items held by open segments
        self._open_segments = 0
        self._fed = self._frames = self._chunks = self._audio_bytes = 0
        self._dropped = self._segments = 0
        self._lock = threading.Lock()       # (the pure core's; see _acquire)
        self._owner = 0                     # the thread whose call runs (0: none)
        self._adopting = self._opening = False  # _resolve's second and third answers
        self._trailing = b""                # _hand_over's second answer
        self._start()

    # read-only: the caps hold for the sink's whole life
    @property
    def format(self) -> AudioFormat:
        return self._format

    @property
    def prealloc_seconds(self) -> float:
        return self._prealloc_seconds

    @property
    def max_segment_bytes(self) -> int:
        return self._max_segment_bytes

    @property
    def max_total_bytes(self) -> int:
        return self._max_total_bytes

    @property
    def max_ended_contexts(self) -> int:
        return self._max_ended_contexts

    @property
    def max_open_segments(self) -> int:
        return self._max_open_segments

    @property
    def max_timestamps(self) -> int:
        return self._max_timestamps

    @property
    def max_finished_labels(self) -> int:
        return self._max_finished_labels

    @property
    def stream(self) -> bool:
        return self._stream

    @property
    def envelope(self) -> Envelope:
        """Where the sink reads things in a frame (flushsink.envelopes; CARTESIA by
        default)."""
        return CARTESIA if self._envelope is None else self._envelope

    @property
    def keep_audio(self) -> bool:
        return self._keep_audio

    @property
    def drop_unannounced(self) -> bool:
        return self._drop_unannounced

    @drop_unannounced.setter
    def drop_unannounced(self, value: bool) -> None:
        self._drop_unannounced = bool(value)

    # ---- one call at a time ---------------------------------------------------------
    # Every public method runs with the sink to itself (docs/sink.md "Threads"): a call
    # may lose the GIL half way (the decode of a large chunk releases it; building a
    # Segment runs Python code), and another thread's close() or cancel() would then move
    # the segment being stored into. A call from the thread whose call is running (a
    # finalizer, a signal handler) raises RuntimeError(REENTRANT) rather than wait for
    # itself. Here a lock, which is what pure Python has; the compiled core overrides
    # both methods with a flag the GIL protects (one load and two stores uncontended,
    # waiting without the GIL, waiting threads before newcomers).

    def _acquire(self) -> int:
        if not self._lock.acquire(False):
            if self._owner == threading.get_ident():
                raise RuntimeError(REENTRANT)
            self._lock.acquire()
        self._owner = threading.get_ident()
        return 0

    def _release(self) -> None:
        self._owner = 0
        self._lock.release()

    # ---- what a core provides -------------------------------------------------------
    # The chunk being stored is the core's (it keeps the frame being fed): _chunk and
    # _other ask it through these.

    def _start(self) -> None:
        """Make the core's own state (the end of __init__)."""

    def _data_size(self) -> int:
        """The decoded size of the chunk's data (0 without data)."""
        raise NotImplementedError

    def _check_data(self) -> bool:
        """Make sure the data string is valid JSON (FrameError if not) before a rule
        rejects or drops the chunk: a frame's JSON errors come first. True when the data
        turned out to hold escapes: the chunk must be sized and stored anew."""
        raise NotImplementedError

    def _decode(self, seg: Any, size: int) -> Any:
        """Decode the chunk's data into room for ``size`` more bytes after the segment's
        ``length`` (which _stored moves). None when done, the FrameError of invalid
        base64 (offsets into the frame), or True as _check_data's True."""
        raise NotImplementedError

    def _discard(self, seg: Any) -> None:
        """A segment _decode wrote into that is not kept (it said True): free its storage."""

    def _new_blank_segment(self) -> Any:
        """A _Segment of the core's kind, with no audio."""
        raise NotImplementedError

    def _hand_over(self, seg: Any) -> Any:
        """The finished segment's samples (a numpy array over its whole samples, no copy
        where the core can avoid one); the core keeps nothing of its audio after this.
        Sets self._trailing to the bytes past the last whole sample. In stream mode the
        array is read-only (it shares the AudioChunks' memory where the core can), and
        with keep_audio=False it is empty (nothing was kept)."""
        raise NotImplementedError

    def _chunk_event(self, ctx: _Context, seg: Any, first: int, end: int) -> AudioChunk:
        """Stream mode: the AudioChunk of the segment's bytes [first, end), which the chunk
        just stored completed (whole samples; _new_chunk makes it). With keep_audio=False
        the core keeps nothing of them after this."""
        raise NotImplementedError

    def _new_chunk(self, ctx: _Context, seg: Any, first: int, end: int, owner: Any,
                   offset: int) -> AudioChunk:
        """An AudioChunk of the segment's bytes [first, end), which are ``owner``'s
        buffer from ``offset`` on (made without __init__: the compiled core sets C fields)."""
        chunk = AudioChunk.__new__(AudioChunk)
        chunk.context_id = ctx.context_id
        chunk.flush_id = seg.label
        chunk.start = first // seg.fmt.width
        chunk._fmt = seg.fmt
        chunk._owner = owner
        chunk._offset = offset
        chunk._nbytes = end - first
        chunk._samples = None
        chunk._data = None
        return chunk

    def _ready(self, segment: Segment) -> SegmentReady:
        """SegmentReady(segment), made as its dataclass __init__ would, not through it (a
        Python call: 300 of ~2,000 ns a segment); the compiled core sets the field in C."""
        ready: SegmentReady = object.__new__(SegmentReady)
        object.__setattr__(ready, "segment", segment)
        return ready

    def _payload(self) -> Any:
        """The frame being fed, parsed (load_payload), for the events that carry it."""
        raise NotImplementedError

    def _field_offset(self, name: str) -> int:
        """The offset of the frame member ``name``'s value (the object's, if absent)."""
        raise NotImplementedError

    def _touch(self, ctx: _Context) -> None:
        """A context was given a segment or audio (the intake's recent-context memory)."""

    def _forget(self, ctx: _Context) -> None:
        """A context ended: the intake must not find it any more."""

    # ---- public calls -----------------------------------------------------------------

    @property
    def stats(self) -> SinkStats:
        self._acquire()  # one consistent snapshot
        try:
            return SinkStats(self._frames, self._chunks, self._audio_bytes, self._dropped,
                             self._fed - self._frames, self._segments, self._open_segments,
                             self._open_bytes)
        finally:
            self._release()

    def activity(self, context_id: Optional[str]) -> int:
        """How many frames the sink has accepted for ``context_id`` (chunks, flush_done,
        timestamps): it grows while frames of the context arrive, and is 0 when the sink
        holds no state for it (unknown, or ended). The clients' receive timeout uses it."""
        self._acquire()
        try:
            ctx = self._contexts.get(context_id)
            return ctx.frames if ctx is not None else 0
        finally:
            self._release()

    def set_format(self, context_id: Optional[str], format: AudioFormat) -> None:
        """Use ``format`` for the segments ``context_id`` opens from now on."""
        if not isinstance(format, AudioFormat):
            raise TypeError(f"format must be an AudioFormat, not {type(format).__name__}")
        self._acquire()
        try:
            self._formats[context_id] = format
            ctx = self._contexts.get(context_id)
            if ctx is not None:
                ctx.fmt = self._prepared(format)
        finally:
            self._release()

    def cancel(self, context_id: Optional[str]) -> tuple[SegmentReady, ...]:
        """Finish the context's open segments as incomplete ("cancelled") and drop its
        later frames. Returns the SegmentReady events."""
        self._acquire()
        try:
            events = self._finish_all(self._contexts.get(context_id), False, "cancelled")
            self._end(context_id)
            return tuple(events)
        finally:
            self._release()

    def close(self, reason: str = "closed") -> tuple[SegmentReady, ...]:
        """Finish every open segment as incomplete with ``error=reason`` (for example
        when the connection dropped) and end those contexts. The sink stays usable."""
        self._acquire()
        try:
            events: list[Any] = []
            for cid in list(self._contexts):
                events.extend(self._finish_all(self._contexts[cid], False, reason))
                self._end(cid)
            return tuple(events)
        finally:
            self._release()

    # ---- contexts and segments --------------------------------------------------------

    def _prepared(self, format: AudioFormat) -> _Format:
        if format is self._format:
            return self._default
        return _Format(format, self._prealloc_seconds, self._max_segment_bytes)

    def _new_context(self, cid: Any) -> _Context:
        ctx = _Context.__new__(_Context)
        ctx.context_id = cid
        ctx.raw_id = cid.encode("utf-8") if cid is not None else None
        ctx.fmt = self._prepared(self._formats.get(cid, self._format))
        ctx.open = {}
        ctx.current = None
        ctx.next_label = 0
        ctx.finished = set()
        ctx.finished_order = None
        ctx.finished_pos = 0
        ctx.stored = 0
        ctx.frames = 0
        return ctx

    def _new_segment(self, ctx: _Context, label: int, unlabelled: bool) -> Any:
        # No audio storage yet: the core makes room with the first audio, so that
        # segments that never get any (flush_done, timestamps, empty chunks) cost nothing.
        seg = self._new_blank_segment()
        seg.label = label
        seg.unlabelled = unlabelled
        seg.fmt = ctx.fmt
        seg.start = float(ctx.stored) / ctx.fmt.bytes_per_second  # (float: C would divide ints)
        return seg

    def _unwelcome(self, cid: Any) -> bool:
        """A context that may not start: ended, or never announced (drop_unannounced)."""
        return cid in self._ended or (self._drop_unannounced and cid not in self._formats)

    def _drop(self) -> tuple[Any, ...]:
        self._frames += 1
        self._dropped += 1
        return _EMPTY

    def _resolve(self, ctx: Optional[_Context], has_flush: bool, label: int) -> Any:
        """The open segment a chunk or timestamps frame goes to. None means drop, unless
        it sets self._opening (open a new segment); self._adopting: the segment found is
        an unlabelled one that takes the frame's label."""
        self._adopting = False
        self._opening = False
        if ctx is None:
            self._opening = True
            return None
        cur = ctx.current
        if has_flush:
            if cur is not None and cur.label == label and not cur.unlabelled:
                return cur
            if label in ctx.finished:
                return None
            seg = ctx.open.get(label)
            if seg is not None:
                # the server's label equals the one we gave an unlabelled segment: now
                # it is the server's, and no later label may adopt it
                self._adopting = seg.unlabelled
                return seg
            if cur is not None and cur.unlabelled:
                self._adopting = True
                return cur
            self._opening = True
            return None
        if cur is not None:
            return cur
        self._opening = True
        return None

    def _register(self, ctx: _Context, new_context: bool, seg: Any, new_segment: bool,
                  adopt: bool, label: int) -> None:
        """The frame is accepted for seg: the context, the segment and its label enter
        the store."""
        if new_context:
            self._contexts[ctx.context_id] = ctx
        if adopt:
            del ctx.open[seg.label]
            seg.label = label
            seg.unlabelled = False
            ctx.open[label] = seg
        elif new_segment:
            ctx.open[seg.label] = seg
            ctx.current = seg
            self._open_segments += 1
        if seg.label >= ctx.next_label:
            ctx.next_label = seg.label + 1
        self._touch(ctx)

    def _stored(self, ctx: _Context, seg: Any, size: int) -> None:
        """Commit a decoded chunk: where the counters of stored audio move (the compiled
        core's steady-state append moves the same ones). ``seg.length`` counts every byte
        received; ``_open_bytes``, what the byte caps bound, only the audio held (none
        with keep_audio=False)."""
        seg.length += size
        ctx.stored += size
        ctx.frames += 1
        if self._keep_audio:  # (the byte caps count the audio held)
            self._open_bytes += size
        self._audio_bytes += size
        self._chunks += 1
        self._frames += 1

    # ---- chunk ------------------------------------------------------------------------

    def _chunk(self, ctx: Optional[_Context], cid: Any, has_flush: bool,
               label: int) -> tuple[Any, ...]:
        """A chunk frame that the core's steady state did not take. ctx: the context of
        cid, if the sink holds it."""
        new_context = ctx is None
        if new_context and self._unwelcome(cid):
            self._check_data()
            return self._drop()
        found = self._resolve(ctx, has_flush, label)
        new_segment = self._opening
        if found is None and not new_segment:
            self._check_data()
            return self._drop()
        if ctx is None:
            ctx = self._new_context(cid)
        return self._put(ctx, new_context, found, new_segment, self._adopting, has_flush,
                         label)

    def _put(self, ctx: _Context, new_context: bool, found: Any, new_segment: bool,
             adopt: bool, has_flush: bool, label: int) -> tuple[Any, ...]:
        """The caps, then the decode, then the commit (docs/sink.md, phases 3 and 4)."""
        size = self._data_size()
        if new_segment:
            seg_label = label if has_flush else ctx.next_label
            current = 0
        else:
            seg_label = label if adopt else found.label
            current = found.length
        # caps, after the data is known to be valid JSON (its errors come first)
        if new_segment and self._open_segments >= self._max_open_segments:
            if self._check_data():
                return self._put(ctx, new_context, found, new_segment, adopt, has_flush, label)
            raise open_segments_cap_error(ctx.context_id, seg_label, self._max_open_segments)
        if not self._keep_audio:
            pass  # the byte caps bound audio held, and none is (docs/sink.md "Streaming")
        elif current + size > self._max_segment_bytes:
            if self._check_data():
                return self._put(ctx, new_context, found, new_segment, adopt, has_flush, label)
            self._lose(ctx, new_context, found, None, new_segment, adopt, has_flush, label,
                       size, cap_reason("max_segment_bytes", self._max_segment_bytes))
            raise segment_cap_error(ctx.context_id, seg_label, current + size,
                                    self._max_segment_bytes)
        elif self._open_bytes + size > self._max_total_bytes:
            if self._check_data():
                return self._put(ctx, new_context, found, new_segment, adopt, has_flush, label)
            self._lose(ctx, new_context, found, None, new_segment, adopt, has_flush, label,
                       size, cap_reason("max_total_bytes", self._max_total_bytes))
            raise total_cap_error(ctx.context_id, seg_label, self._open_bytes + size,
                                  self._max_total_bytes)
        seg = self._new_segment(ctx, seg_label, not has_flush) if new_segment else found
        error = self._decode(seg, size)
        if error is not None:
            if error is True:
                if new_segment:
                    self._discard(seg)
                return self._put(ctx, new_context, found, new_segment, adopt, has_flush, label)
            self._lose(ctx, new_context, found, seg if new_segment else None, new_segment,
                       adopt, has_flush, label, size, FRAME_ERROR_REASONS[error.code])
            raise error
        self._register(ctx, new_context, seg, new_segment, adopt, label)
        before = seg.length
        self._stored(ctx, seg, size)
        if self._stream:
            # the whole samples this chunk completed: from the last whole-sample boundary
            # before it to the one after it; none (a chunk that only adds to a sample split
            # across frames) returns ()
            width = seg.fmt.width
            first = before // width * width
            end = seg.length // width * width
            if end > first:
                return (self._chunk_event(ctx, seg, first, end),)
        return _EMPTY

    def _lose(self, ctx: _Context, new_context: bool, found: Any, opened: Any,
              new_segment: bool, adopt: bool, has_flush: bool, label: int, size: int,
              reason: str) -> None:
        """A chunk of this segment is being rejected (a cap, its base64): the segment
        records the loss, so that it finishes incomplete and says what it lost. A chunk
        that would have opened the segment opens it, empty (docs/sink.md "Lost chunks")."""
        if not new_segment:
            seg = found
        elif opened is not None:
            seg = opened
        else:
            seg = self._new_segment(ctx, label if has_flush else ctx.next_label,
                                    not has_flush)
        self._register(ctx, new_context, seg, new_segment, adopt, label)
        seg.lost_chunks += 1
        seg.lost_bytes += size
        if seg.lost_reason is None:
            seg.lost_reason = reason

    # ---- everything but chunks ----------------------------------------------------------

    def _other(self, ctx: Optional[_Context], cid: Any, ftype: int, has_flush: bool,
               label: int) -> tuple[Any, ...]:
        """A frame of any type but chunk, its JSON and field types checked. ctx: the
        context of cid, if the sink holds it."""
        message: Any = None
        items: Any = None
        if ftype == TYPE_ERROR or ftype == TYPE_TIMESTAMPS or \
                ftype == TYPE_PHONEME_TIMESTAMPS or ftype == TYPE_NONE or ftype == TYPE_UNKNOWN:
            message = self._payload()
        if ftype == TYPE_TIMESTAMPS or ftype == TYPE_PHONEME_TIMESTAMPS:
            name = "word_timestamps" if ftype == TYPE_TIMESTAMPS else "phoneme_timestamps"
            try:
                items = parse_timed_text(message,
                                         "words" if ftype == TYPE_TIMESTAMPS else "phonemes")
            except ValueError:
                raise FrameError("field_type", self._field_offset(name), name) from None
        if ftype == TYPE_ERROR and cid is None:
            self._frames += 1
            return (self._error_event(None, False, message),)
        if ctx is None and self._unwelcome(cid):
            return self._drop()
        if ftype == TYPE_NONE or ftype == TYPE_UNKNOWN:
            self._frames += 1
            return (Unknown(cid, self._type_of(message), message),)
        if ftype == TYPE_DONE or ftype == TYPE_ERROR:
            event: Any = self._error_event(cid, True, message) if ftype == TYPE_ERROR \
                else ContextDone(cid)
            events = self._finish_all(ctx, ftype == TYPE_DONE,
                                      None if ftype == TYPE_DONE else event.message)
            events.append(event)
            self._end(cid)
            self._frames += 1
            return tuple(events)
        new_context = ctx is None
        if ctx is None:
            ctx = self._new_context(cid)
        if ftype == TYPE_FLUSH_DONE:
            if has_flush and label in ctx.finished:
                return self._drop()
            if has_flush:
                found = ctx.open.get(label)
                cur = ctx.current
                if found is None and cur is not None and cur.unlabelled:
                    self._register(ctx, new_context, cur, False, True, label)
                    found = cur
            else:
                found = ctx.current
            if found is None:
                found = self._new_segment(ctx, label if has_flush else ctx.next_label, False)
                self._register(ctx, new_context, found, True, False, label)
            self._frames += 1
            ctx.frames += 1
            return (self._finish(ctx, found, True, None),)
        # timestamps / phoneme_timestamps
        found = self._resolve(None if new_context else ctx, has_flush, label)
        new_segment = self._opening
        adopt = self._adopting
        if found is None and not new_segment:
            return self._drop()
        if new_segment and self._open_segments >= self._max_open_segments:
            raise open_segments_cap_error(cid, label if has_flush else ctx.next_label,
                                          self._max_open_segments)
        if self._open_timestamps + len(items) > self._max_timestamps:
            raise timestamps_cap_error(
                cid, label if has_flush else ctx.next_label if new_segment else found.label,
                self._open_timestamps + len(items), self._max_timestamps)
        seg = self._new_segment(ctx, label if has_flush else ctx.next_label, not has_flush) \
            if new_segment else found
        self._register(ctx, new_context, seg, new_segment, adopt, label)
        if ftype == TYPE_TIMESTAMPS:
            if seg.words is None:
                seg.words = []
            seg.words.extend(items)
        else:
            if seg.phonemes is None:
                seg.phonemes = []
            seg.phonemes.extend(items)
        self._open_timestamps += len(items)
        self._frames += 1
        ctx.frames += 1
        return (Timestamps(cid, seg.label, "words" if ftype == TYPE_TIMESTAMPS else "phonemes",
                           items, seg.start),)

    def _type_of(self, message: Any) -> Any:
        """The type an Unknown event shows: the value at the envelope's type path."""
        if self._envelope is None:
            return message.get("type")
        return at_path(message, self._envelope.type_key)

    def _error_event(self, cid: Any, has_context: bool, message: Any) -> Any:
        if self._envelope is None:
            return error_event(cid, has_context, message)
        return envelope_error_event(self._envelope, cid, has_context, message)

    # ---- finishing and ending -----------------------------------------------------------

    def _finish(self, ctx: _Context, seg: Any, complete: bool, error: Any) -> Any:
        if seg.lost_chunks:
            complete = False
            error = lost_error(error, seg.lost_chunks, seg.lost_bytes, seg.lost_reason)
        # The segment leaves the store first, before anything below can run Python code:
        # its audio is handed over once, and no later call finds it open.
        if seg.label in ctx.open:
            del ctx.open[seg.label]
            self._open_segments -= 1
            if self._keep_audio:
                self._open_bytes -= seg.length
            self._open_timestamps -= (len(seg.words) if seg.words else 0) + \
                (len(seg.phonemes) if seg.phonemes else 0)
        self._remember_finished(ctx, seg.label)
        if ctx.current is seg:
            ctx.refresh_current()
        self._segments += 1
        samples = self._hand_over(seg)
        segment = Segment(ctx.context_id, seg.label, seg.fmt.format, samples, complete, error,
                          self._trailing, seg.start,
                          shift(tuple(seg.words), seg.start) if seg.words else _EMPTY,
                          shift(tuple(seg.phonemes), seg.start) if seg.phonemes else _EMPTY,
                          seg.length // seg.fmt.width)
        return self._ready(segment)

    def _remember_finished(self, ctx: _Context, label: int) -> None:
        """Remember that label finished, so that its late frames are dropped: the last
        max_finished_labels of the context, so that a server finishing flush after flush
        cannot grow the sink without bound (docs/sink.md)."""
        cap = self._max_finished_labels
        if cap == 0 or label in ctx.finished:
            return
        ctx.finished.add(label)
        if ctx.finished_order is None:
            ctx.finished_order = []
        if len(ctx.finished_order) < cap:
            ctx.finished_order.append(label)
            return
        ctx.finished.discard(ctx.finished_order[ctx.finished_pos])
        ctx.finished_order[ctx.finished_pos] = label
        ctx.finished_pos = (ctx.finished_pos + 1) % cap

    def _finish_all(self, ctx: Optional[_Context], complete: bool, error: Any) -> list[Any]:
        events: list[Any] = []
        if ctx is not None:
            for seg in list(ctx.open.values()):
                events.append(self._finish(ctx, seg, complete, error))
        return events

    def _end(self, cid: Any) -> None:
        ctx = self._contexts.pop(cid, None)
        if ctx is not None:
            self._forget(ctx)
        self._formats.pop(cid, None)
        self._ended.pop(cid, None)
        self._ended[cid] = True
        while len(self._ended) > self._max_ended_contexts:
            del self._ended[next(iter(self._ended))]
