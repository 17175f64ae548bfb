# cython: language_level=3
"""Compiled core of flushsink: the frame scanner and segment store (see docs/sink.md).

The C files (frame.c, b64.c) do the byte work and return status codes; this module is
the glue: it finds the segment of a chunk, makes room, decodes straight into the
segment's buffer (without the GIL for large payloads) and maps statuses to the
exceptions of flushsink.errors. The pure-Python twin, flushsink/_fallback.py, must
behave identically; tests compare them frame by frame.
"""

cimport cython
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBuffer_FillInfo,
                             PyBuffer_Release, PyObject_GetBuffer)
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.object cimport PyObject_GenericSetAttr
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

import json
import os

import numpy as np

from ._common import (BASE64_CODES, SCAN_CODES, SinkStats, cap_reason, check_sink_args,
                      frame_type_error, load_payload, lost_error, open_segments_cap_error,
                      prealloc_bytes,
                      segment_cap_error, str_frame_error, timestamps_cap_error,
                      total_cap_error)
from .errors import FRAME_ERROR_REASONS, FrameError
from .formats import DEFAULT_FORMAT, AudioFormat
from .segments import (ContextDone, Segment, SegmentReady, Timestamps, Unknown,
                       error_event, parse_timed_text, shift)


cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL
    unsigned long PyThread_get_thread_ident() nogil

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<unistd.h>" nogil:
    int usleep(unsigned int usec)

cdef extern from "pycompat.h":
    const char *FS_BYTES_DATA(object) except NULL
    Py_ssize_t FS_BYTES_SIZE(object) except -1

cdef extern from "b64.h":
    ctypedef enum b64_status:
        B64_OK
        B64_NO_SPACE
    size_t b64_decoded_size(const uint8_t *src, size_t n) nogil
    b64_status b64_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap,
                          size_t *written, size_t *error_pos) nogil
    const char *b64_kernel_name()
    int b64_set_kernel(const char *name)

cdef extern from "frame.h":
    ctypedef enum fs_status:
        FS_OK
    ctypedef enum fs_kind:
        FS_ABSENT
        FS_NULL
        FS_STRING
        FS_NUMBER
        FS_OTHER
    ctypedef struct fs_value:
        fs_kind kind
        size_t value_offset
        size_t start
        size_t end
        int has_escape
    ctypedef struct fs_frame:
        fs_value keys[6]
        size_t object_offset
        int data_checked
        int data_tentative
    int FS_KEY_TYPE, FS_KEY_CONTEXT_ID, FS_KEY_FLUSH_ID, FS_KEY_DATA
    int FS_KEY_WORD_TIMESTAMPS, FS_KEY_PHONEME_TIMESTAMPS
    ctypedef enum fs_type:
        FS_TYPE_NONE
        FS_TYPE_CHUNK
        FS_TYPE_FLUSH_DONE
        FS_TYPE_DONE
        FS_TYPE_ERROR
        FS_TYPE_TIMESTAMPS
        FS_TYPE_PHONEME_TIMESTAMPS
        FS_TYPE_UNKNOWN
        FS_TYPE_BAD
    fs_type fs_frame_type(const uint8_t *buf, const fs_frame *frame)
    int fs_label(const uint8_t *buf, const fs_value *value, int64_t *label)
    ctypedef struct fs_memo:
        pass
    void fs_prefetch(const uint8_t *buf, size_t n)
    enum:
        FS_GUESS_LAST
        FS_GUESS_SUFFIX
    fs_status fs_scan(const uint8_t *buf, size_t n, fs_frame *frame, size_t *error_offset,
                      int guesses, fs_memo *memo)
    int fs_confirm_data_end(const uint8_t *buf, const fs_frame *frame)
    int fs_data_is_last(const uint8_t *buf, size_t n, const fs_frame *frame)
    fs_status fs_check_string(const uint8_t *buf, size_t n, size_t start, size_t *end,
                              int *has_escape, size_t *error_offset)
    size_t fs_unescape_chars(const uint8_t *buf, size_t start, size_t end,
                             uint8_t *chars, size_t *offsets)


# Below this many base64 bytes (about 1.5 us of AVX-512 decoding), releasing and
# re-taking the GIL costs more than the decode it would let other threads overlap with.
cdef enum:
    GIL_RELEASE_BYTES = 65536

cdef tuple _EMPTY = ()
_frombuffer = np.frombuffer
_object_new = object.__new__  # SegmentReady made as its dataclass __init__ would, not
                              # through it (a Python call: 300 of ~2,000 ns per segment)


_FIELD_NAMES = ("type", "context_id", "flush_id", "data", "word_timestamps",
                "phoneme_timestamps")


def simd_path():
    """The base64 kernel this process uses."""
    return b64_kernel_name().decode("ascii")


def _set_simd_path(name):
    """Force a base64 kernel ("scalar", "avx2", "avx512", or "auto"); for tests and
    benchmarks. ValueError if unknown or unsupported by this CPU."""
    if b64_set_kernel(name.encode("ascii")) != 0:
        raise ValueError(f"base64 kernel {name!r} is unknown or not supported by this CPU")
    return simd_path()


_set_simd_path(os.environ.get("FLUSHSINK_SIMD", "auto").strip().lower() or "auto")


def b64decode(data):
    """Strict base64 decode (the rule of docs/sink.md); FrameError offsets are into data."""
    cdef const uint8_t[::1] src = data
    cdef size_t n = src.shape[0], written = 0, pos = 0
    cdef const uint8_t *p = &src[0] if n else <const uint8_t *>b""
    cdef size_t size = b64_decoded_size(p, n)
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>size)
    cdef b64_status st = b64_decode(p, n, <uint8_t *><char *>out, size, &written, &pos)
    if st != B64_OK:
        raise FrameError(BASE64_CODES[st], pos)
    return out


# Released segment buffers kept for reuse. A segment buffer is preallocated and then
# trimmed, so glibc hands out every new one as a fresh mmap: each first touch of a page
# then faults (1.5-2.5 us per 4 KiB on a VM, more than decoding the audio in it). The
# most recently released buffers are kept warm instead, within a byte bound
# (FLUSHSINK_POOL_BYTES, default 64 MiB per process, 0 to keep none), and a new segment
# starts in one of them and grows geometrically as usual. Enough slots for a caller that
# keeps a few dozen segments and then lets them all go (measured in bench_e2e: with 8
# slots, 32 of 40 segments of each such run were faulted in afresh). Within that bound
# the pool keeps at most POOL_FLOOR_BYTES or a POOL_SHARE-th of the audio the process's
# Sinks hold open, whichever is more: warm buffers are memory too, and 1,000 contexts
# releasing their segments (bench_scale) had the pool add 0.17x to peak RSS over the
# audio held (1.32x; 1.15x with no pool, for the same CPU). Only touched with the GIL
# held (dealloc and _new_segment).
cdef enum:
    POOL_SLOTS = 256
    POOL_MIN_BYTES = 4096           # a block under a page is not worth a slot
    POOL_FLOOR_BYTES = 8 * 1024 * 1024
    POOL_SHARE = 16
cdef size_t _open_everywhere = 0    # audio bytes in the open segments of every Sink
cdef uint8_t *_pool_data[POOL_SLOTS]
cdef size_t _pool_size[POOL_SLOTS]
cdef int _pool_count = 0
cdef size_t _pool_bytes = 0
cdef size_t _pool_max_bytes = 64 * 1024 * 1024


def _pool_limit(text):
    """The pool's byte bound from FLUSHSINK_POOL_BYTES (bytes, or with k/M/G)."""
    global _pool_max_bytes
    text = text.strip()
    scale = {"k": 2**10, "m": 2**20, "g": 2**30}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = int(number) * scale
    except ValueError:
        raise ValueError(f"FLUSHSINK_POOL_BYTES must be a byte count like 64M, not {text!r}") from None
    if not 0 <= value < 2**62:
        raise ValueError(f"FLUSHSINK_POOL_BYTES must be a byte count like 64M, not {text!r}")
    _pool_max_bytes = value
    _pool_trim()
    return value


cdef void _pool_trim() noexcept:
    """Free the oldest kept buffers until the pool is within its bound."""
    global _pool_count, _pool_bytes
    cdef int k, kept = 0
    for k in range(_pool_count):
        if _pool_bytes > _pool_max_bytes:
            _pool_bytes -= _pool_size[k]
            free(_pool_data[k])
        else:
            _pool_data[kept] = _pool_data[k]
            _pool_size[kept] = _pool_size[k]
            kept += 1
    _pool_count = kept


_pool_limit(os.environ.get("FLUSHSINK_POOL_BYTES", "64M") or "64M")


cdef void _pool_give(uint8_t *data, size_t size) noexcept:
    global _pool_count, _pool_bytes
    cdef size_t bound = _open_everywhere // POOL_SHARE
    if bound < POOL_FLOOR_BYTES:
        bound = POOL_FLOOR_BYTES
    if bound > _pool_max_bytes:
        bound = _pool_max_bytes
    if size >= POOL_MIN_BYTES and _pool_count < POOL_SLOTS and _pool_bytes + size <= bound:
        _pool_data[_pool_count] = data
        _pool_size[_pool_count] = size
        _pool_count += 1
        _pool_bytes += size
    else:
        free(data)


cdef uint8_t *_pool_take(size_t *size) noexcept:
    """The most recently released buffer (the warmest), or NULL."""
    global _pool_count, _pool_bytes
    if _pool_count == 0:
        return NULL
    _pool_count -= 1
    size[0] = _pool_size[_pool_count]
    _pool_bytes -= size[0]
    return _pool_data[_pool_count]


def _pool_state():
    """(buffers, bytes) kept for reuse; for tests and benchmarks."""
    return _pool_count, _pool_bytes


cdef class _AudioBuffer:
    """Owns a finished segment's malloc'd bytes and lends them to numpy (no copy)."""

    cdef uint8_t *data
    cdef Py_ssize_t length

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.data, self.length, 0, flags)

    def __releasebuffer__(self, Py_buffer *view):
        pass

    def __dealloc__(self):
        if self.data != NULL:
            _pool_give(self.data, <size_t>self.length)


cdef class _Format:
    """An AudioFormat with what the store needs of it computed once (its properties
    are Python-level and a numpy dtype costs ~150 ns to make)."""
    cdef object format            # the AudioFormat
    cdef object dtype             # its numpy dtype
    cdef size_t width, bytes_per_second, prealloc

    @staticmethod
    cdef _Format of(object format, double prealloc_seconds, size_t max_segment_bytes):
        cdef _Format f = _Format.__new__(_Format)
        f.format = format
        f.dtype = format.dtype
        f.width = format.sample_width
        f.bytes_per_second = format.bytes_per_second
        f.prealloc = prealloc_bytes(format, prealloc_seconds, max_segment_bytes)
        return f


cdef class _Segment:
    cdef uint8_t *data
    cdef size_t length, capacity
    cdef int64_t label
    cdef bint unlabelled
    cdef _Format fmt
    cdef double start
    cdef list words, phonemes
    cdef unsigned long long lost_chunks, lost_bytes  # chunks rejected (Sink._lose)
    cdef object lost_reason

    def __dealloc__(self):
        global _open_everywhere
        if self.data != NULL:  # still open: its Sink went away
            _open_everywhere -= self.length
        free(self.data)


# Contexts recently given audio, by a hash of their raw id (direct-mapped: a context
# takes its slot back whenever the general path stores a chunk for it): a chunk of
# another context than the previous frame's (many contexts interleaved on one
# connection) finds its context here without decoding the id or a dict lookup, and
# takes the steady-state step.
cdef enum:
    RECENT_SLOTS = 512

cdef inline size_t _recent_slot(const uint8_t *p, size_t length) noexcept nogil:
    """A slot of Sink._recent for a raw id: its first and last 8 bytes and its length."""
    cdef uint64_t a = 0, b = 0
    if length >= 8:
        memcpy(&a, p, 8)
        memcpy(&b, p + length - 8, 8)
    else:
        memcpy(&a, p, length)
    return <size_t>(((a * 0x9E3779B97F4A7C15ULL) ^ (b * 0xC2B2AE3D27D4EB4FULL)
                     ^ (length * 0x165667B19E3779F9ULL)) >> 55)


cdef class _Context:
    cdef object context_id        # str, or None for frames without context_id
    cdef bytes raw_id             # the id's UTF-8, to recognise it without decoding
    cdef _Format fmt
    cdef dict open                # label -> _Segment, in opening order
    cdef _Segment current         # the most recently opened segment still open
    cdef int64_t next_label
    cdef set finished             # labels of the last max_finished_labels finished segments
    cdef list finished_order      # the same, as a ring in finishing order (oldest at _pos)
    cdef size_t finished_pos
    cdef size_t stored
    cdef unsigned long long frames  # accepted frames of this context (Sink.activity)

    cdef void refresh_current(self):
        self.current = next(reversed(self.open.values())) if self.open else None


cdef class Sink:
    """Turns Cartesia TTS websocket frames into finished audio segments.

    See docs/sink.md for the exact behaviour; ``flushsink._fallback.Sink`` is the
    pure-Python twin with the same API, results and errors.
    """

    cdef readonly object format
    cdef readonly double prealloc_seconds
    cdef readonly size_t max_segment_bytes, max_total_bytes, max_ended_contexts
    cdef readonly size_t max_open_segments, max_timestamps, max_finished_labels
    cdef dict _contexts, _ended, _formats
    cdef _Context _last
    cdef list _recent             # RECENT_SLOTS contexts, by _recent_slot of raw_id
    cdef _Format _default         # self.format, prepared
    cdef fs_memo _memo            # the scanner's memory of recent envelopes (zeroed by tp_alloc)
    cdef object _cid              # scratch: the id _lookup found
    cdef size_t _open_bytes
    cdef size_t _reserved         # capacity of the open segments' buffers (address space)
    cdef size_t _open_timestamps  # timestamp items held by open segments
    cdef Py_ssize_t _open_segments
    cdef unsigned long long _fed, _frames, _chunks, _audio_bytes, _dropped, _segments
    cdef int _unguessed           # the FS_GUESS_* the scanner may not make now (see _feed)
    cdef bint _busy               # a call is running (see _acquire)
    cdef unsigned long _owner     # the thread it runs in
    cdef int _waiting             # threads waiting for it to end
    cdef public bint drop_unannounced
    cdef object __weakref__       # a client registers the Sink it uses (one client each)

    def __cinit__(self, *args, **kwargs):
        self._recent = [None] * RECENT_SLOTS

    def __init__(self, format=DEFAULT_FORMAT, *, prealloc_seconds=10.0,
                 max_segment_bytes=256 * 2**20, max_total_bytes=1024 * 2**20,
                 max_ended_contexts=10_000, max_open_segments=100_000,
                 max_timestamps=1_000_000, max_finished_labels=10_000,
                 drop_unannounced=False):
        check_sink_args(format, prealloc_seconds, max_segment_bytes, max_total_bytes,
                        max_ended_contexts, max_open_segments, max_timestamps,
                        max_finished_labels)
        self.max_open_segments = max_open_segments
        self.max_timestamps = max_timestamps
        self.max_finished_labels = max_finished_labels
        self.drop_unannounced = bool(drop_unannounced)
        self.format = format
        self.prealloc_seconds = prealloc_seconds
        self.max_segment_bytes = max_segment_bytes
        self.max_total_bytes = max_total_bytes
        self.max_ended_contexts = max_ended_contexts
        self._contexts = {}
        self._ended = {}
        self._formats = {}
        self._default = _Format.of(format, prealloc_seconds, max_segment_bytes)

    @property
    def stats(self):
        self._acquire()  # one consistent snapshot
        try:
            return SinkStats(self._frames, self._chunks, self._audio_bytes, self._dropped,
                             self._fed - self._frames, self._segments, self._open_segments,
                             self._open_bytes)
        finally:
            self._busy = False

    def activity(self, context_id):
        """How many frames the sink has accepted for ``context_id`` (chunks, flush_done,
        timestamps): it grows while frames of the context arrive, and is 0 when the sink
        holds no state for it (unknown, or ended). The clients' receive timeout uses it."""
        cdef _Context ctx
        self._acquire()
        try:
            ctx = self._contexts.get(context_id)
            return ctx.frames if ctx is not None else 0
        finally:
            self._busy = False

    def set_format(self, context_id, format):
        """Use ``format`` for the segments ``context_id`` opens from now on."""
        if not isinstance(format, AudioFormat):
            raise TypeError(f"format must be an AudioFormat, not {type(format).__name__}")
        cdef _Context ctx
        self._acquire()
        try:
            self._formats[context_id] = format
            ctx = self._contexts.get(context_id)
            if ctx is not None:
                self._apply_format(ctx, format)
        finally:
            self._busy = False

    cdef int _apply_format(self, _Context ctx, object format) except -1:
        ctx.fmt = self._default if format is self.format else \
            _Format.of(format, self.prealloc_seconds, self.max_segment_bytes)
        return 0

    # ---- intake -------------------------------------------------------------------

    @cython.always_allow_keywords(False)  # METH_O: the cheapest call CPython has
    def feed(self, frame):
        """Feed one websocket message; returns a tuple of events (``()`` for audio).

        Raises FrameError (a ValueError) for a malformed frame and CapacityError when
        a cap would be exceeded; either way no stored audio changes. TypeError for a
        frame that is not bytes-like or str.
        """
        cdef Py_buffer view
        cdef const char *text
        cdef Py_ssize_t size
        if type(frame) is bytes:  # the common case: no buffer request needed
            self._acquire()
            try:
                return self._feed(<const uint8_t *>FS_BYTES_DATA(frame),
                                  <size_t>FS_BYTES_SIZE(frame))
            finally:
                self._busy = False
        if isinstance(frame, str):
            self._acquire()
            try:
                try:
                    text = PyUnicode_AsUTF8AndSize(frame, &size)
                except UnicodeEncodeError:
                    self._fed += 1
                    raise str_frame_error(frame) from None
                return self._feed(<const uint8_t *>text, <size_t>size)
            finally:
                self._busy = False
        try:
            PyObject_GetBuffer(frame, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
        except (BufferError, ValueError):  # numpy says ValueError for non-contiguous
            raise TypeError("frame buffer must be C-contiguous") from None
        except TypeError:
            raise frame_type_error(frame) from None
        try:
            if view.itemsize != 1:
                raise TypeError("frame buffer must have 1-byte items")
            self._acquire()
            try:
                return self._feed(<const uint8_t *>view.buf, <size_t>view.len)
            finally:
                self._busy = False
        finally:
            PyBuffer_Release(&view)

    # ---- one call at a time ---------------------------------------------------------
    # Every public method runs with the sink to itself (docs/sink.md "Threads"). A call
    # can lose the GIL half way (the decode of a large chunk releases it; building a
    # Segment runs Python code), and another thread's close() or cancel() would then
    # free or move the buffer being decoded into. The lock is a flag the GIL protects:
    # taking it uncontended is one load and two stores; a thread that finds it taken
    # waits without the GIL until it is free. A newcomer lets threads already waiting
    # go first, so a thread feeding in a loop cannot starve a close() from another.

    @cython.final
    cdef inline int _acquire(self) except -1:
        if not self._busy and self._waiting == 0:
            self._busy = True
            self._owner = PyThread_get_thread_ident()
            return 0
        return self._acquire_slowly()

    @cython.final
    cdef int _acquire_slowly(self) except -1:
        cdef unsigned long me = PyThread_get_thread_ident()
        cdef bint defer = self._waiting > 0
        cdef unsigned int rounds = 0
        if self._busy and self._owner == me:
            # a finalizer or signal handler calling in while this thread's call runs:
            # waiting would wait for ourselves
            raise RuntimeError("Sink method called while another call of the same thread "
                               "is running (re-entrant call)")
        self._waiting += 1
        try:
            while self._busy or defer:
                defer = False
                with nogil:
                    if rounds < 64:
                        sched_yield()
                    else:
                        usleep(200)
                rounds += 1
        finally:
            self._waiting -= 1
        self._busy = True
        self._owner = me
        return 0

    cdef object _feed(self, const uint8_t *buf, size_t n):
        # Every path that accepts a frame counts it in _frames exactly once, so the
        # rejected ones are _fed - _frames, with no bookkeeping (or try) on the hot path.
        cdef fs_frame fr
        cdef size_t offset = 0
        self._fed += 1
        fs_prefetch(buf, n)
        cdef fs_status st = fs_scan(buf, n, &fr, &offset, ~self._unguessed, &self._memo)
        if st != FS_OK:
            raise FrameError(SCAN_CODES[st], offset)
        if self._append(buf, &fr):
            return _EMPTY
        # Off the hot path: make sure of data's end before anything is decoded (a decode
        # that succeeded proved it: no quote is base64). A guess that was wrong is not
        # made again: FS_GUESS_LAST until a frame has data last again (a server whose
        # frames put data before other members, as Cartesia's documented example does:
        # "type", "data", ..., "flush_id", "context_id"), FS_GUESS_SUFFIX for good (only
        # a frame built to defeat it, with a quote inside data where the suffix would
        # start, can make it wrong).
        if fr.data_tentative:
            if not fs_confirm_data_end(buf, &fr):
                self._unguessed |= fr.data_tentative
                st = fs_scan(buf, n, &fr, &offset, 0, &self._memo)
                if st != FS_OK:
                    raise FrameError(SCAN_CODES[st], offset)
        elif (self._unguessed & FS_GUESS_LAST) and fs_data_is_last(buf, n, &fr):
            self._unguessed &= ~FS_GUESS_LAST
        return self._dispatch(buf, n, &fr)

    @cython.final
    cdef inline bint _append(self, const uint8_t *buf, fs_frame *fr) noexcept:
        """The steady state in one step: a chunk of the previous frame's context, for
        its current segment (its label, or none given), unescaped data that decodes into
        the room the buffer has, under the caps. True when the chunk is stored; False,
        with nothing changed, for anything else: the general path (_dispatch) decides
        the same way and reports errors exactly."""
        cdef _Context ctx = self._last
        cdef _Segment seg
        cdef fs_value *v = &fr.keys[FS_KEY_TYPE]
        cdef fs_value *data = &fr.keys[FS_KEY_DATA]
        cdef int64_t label
        cdef size_t length, size, written, pos
        cdef bint switched = ctx is None or not self._is_last_context(buf, fr)
        if switched:
            ctx = self._recent_context(buf, fr)
            if ctx is None:
                return False
        seg = ctx.current
        if seg is None:
            return False
        if seg.data == NULL or data.kind != FS_STRING or data.has_escape:
            return False
        if v.kind != FS_STRING or v.has_escape or v.end - v.start != 5 \
                or memcmp(buf + v.start, b"chunk", 5) != 0:
            return False
        v = &fr.keys[FS_KEY_FLUSH_ID]
        if v.kind != FS_ABSENT and v.kind != FS_NULL:
            if fs_label(buf, v, &label) != 0 or label != seg.label or seg.unlabelled:
                return False
        length = data.end - data.start
        if length >= GIL_RELEASE_BYTES:
            return False
        size = b64_decoded_size(buf + data.start, length)
        if seg.length + size > seg.capacity or seg.length + size > self.max_segment_bytes \
                or self._open_bytes + size > self.max_total_bytes:
            return False
        if b64_decode(buf + data.start, length, seg.data + seg.length, size,
                      &written, &pos) != B64_OK:
            return False  # the general path finds the error (or the escapes) again
        self._stored(ctx, seg, size)
        if switched:
            self._last = ctx
        return True

    @cython.final
    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef inline _Context _recent_context(self, const uint8_t *buf, fs_frame *fr):
        """The open context in _recent whose id the frame's context_id is (written
        without escapes), else None."""
        cdef fs_value *v = &fr.keys[FS_KEY_CONTEXT_ID]
        cdef size_t length = v.end - v.start
        if v.kind != FS_STRING or v.has_escape:
            return None
        cdef _Context ctx = <_Context>self._recent[_recent_slot(buf + v.start, length)]
        if ctx is None or <size_t>len(ctx.raw_id) != length \
                or memcmp(<const char *>ctx.raw_id, buf + v.start, length) != 0:
            return None
        return ctx

    cdef int _check_data(self, const uint8_t *buf, size_t n, fs_frame *fr) except -1:
        """Validate the data string the scanner skipped: its JSON errors come first.
        Every path but a successful decode calls this before it changes anything."""
        cdef size_t end = 0, offset = 0
        cdef int escaped = 0
        cdef fs_status st
        if fr.data_checked:
            return 0
        st = fs_check_string(buf, n, fr.keys[FS_KEY_DATA].start, &end, &escaped, &offset)
        if st != FS_OK:
            raise FrameError(SCAN_CODES[st], offset)
        if fr.data_tentative:
            # _feed confirmed the end (no quote before it), so a valid string ends there
            if end != fr.keys[FS_KEY_DATA].end:
                raise SystemError("flushsink: the data string's end moved after it was confirmed")
            fr.data_tentative = 0
        fr.data_checked = 1
        fr.keys[FS_KEY_DATA].has_escape = escaped
        return 0

    cdef int _field_error(self, const uint8_t *buf, size_t n, fs_frame *fr, int key) except -1:
        self._check_data(buf, n, fr)
        raise FrameError("field_type", fr.keys[key].value_offset, _FIELD_NAMES[key])

    cdef object _dispatch(self, const uint8_t *buf, size_t n, fs_frame *fr):
        cdef fs_value *v
        cdef int ftype = fs_frame_type(buf, fr)
        cdef bint has_flush = False
        cdef int64_t label = 0
        # field types, in the documented order
        if ftype == FS_TYPE_BAD:
            self._field_error(buf, n, fr, FS_KEY_TYPE)
        v = &fr.keys[FS_KEY_CONTEXT_ID]
        if v.kind != FS_ABSENT and v.kind != FS_NULL and v.kind != FS_STRING:
            self._field_error(buf, n, fr, FS_KEY_CONTEXT_ID)
        v = &fr.keys[FS_KEY_FLUSH_ID]
        if v.kind != FS_ABSENT and v.kind != FS_NULL:
            if fs_label(buf, v, &label) != 0:
                self._field_error(buf, n, fr, FS_KEY_FLUSH_ID)
            has_flush = True
        v = &fr.keys[FS_KEY_DATA]
        if v.kind != FS_ABSENT and v.kind != FS_NULL and v.kind != FS_STRING:
            self._field_error(buf, n, fr, FS_KEY_DATA)
        if ftype == FS_TYPE_CHUNK:
            return self._chunk(buf, n, fr, has_flush, label)
        self._check_data(buf, n, fr)
        return self._other(buf, n, fr, ftype, has_flush, label)

    # ---- contexts and segments ----------------------------------------------------

    cdef object _context_id(self, const uint8_t *buf, fs_frame *fr):
        cdef fs_value *v = &fr.keys[FS_KEY_CONTEXT_ID]
        if v.kind != FS_STRING:
            return None
        text = _raw_string(buf, v)
        return text.decode("utf-8") if isinstance(text, bytes) else text

    @cython.final
    cdef inline bint _is_last_context(self, const uint8_t *buf, fs_frame *fr) noexcept:
        """The frame's context_id is the previous frame's, written without escapes (the
        hot path: compared as bytes, nothing decoded)."""
        cdef fs_value *v = &fr.keys[FS_KEY_CONTEXT_ID]
        cdef _Context last = self._last
        cdef size_t length = v.end - v.start
        return last is not None and last.raw_id is not None and v.kind == FS_STRING \
            and not v.has_escape and <size_t>len(last.raw_id) == length \
            and memcmp(<const char *>last.raw_id, buf + v.start, length) == 0

    cdef _Context _lookup(self, const uint8_t *buf, fs_frame *fr):
        """The frame's context, or None if it is new or ended; self._cid gets its id."""
        if self._is_last_context(buf, fr):
            self._cid = self._last.context_id
            return self._last
        cid = self._context_id(buf, fr)
        self._cid = cid
        return self._contexts.get(cid)

    cdef _Context _new_context(self, object cid):
        cdef _Context ctx = _Context.__new__(_Context)
        ctx.context_id = cid
        ctx.raw_id = cid.encode("utf-8") if cid is not None else None
        ctx.open = {}
        ctx.finished = set()
        self._apply_format(ctx, self._formats.get(cid, self.format))
        return ctx

    cdef _Segment _new_segment(self, _Context ctx, int64_t label, bint unlabelled):
        # No buffer yet: it is reserved with the first audio (_reserve), so that segments
        # that never get any (flush_done, timestamps, empty chunks) cost no memory.
        cdef _Segment seg = _Segment.__new__(_Segment)
        seg.label = label
        seg.unlabelled = unlabelled
        seg.fmt = ctx.fmt
        seg.start = ctx.stored / <double>ctx.fmt.bytes_per_second
        return seg

    cdef int _reserve(self, _Context ctx, _Segment seg, size_t needed) except -1:
        """Make room for needed bytes: the first time a warm pooled buffer or the
        prealloc reservation, then geometric growth (never past the cap unless needed).

        The reservation is address space, not memory, but address space runs out too
        (ulimit -v, overcommit limits: 100,000 open segments of 10 s at 44.1 kHz would
        reserve 84 GB). So the reserved room no audio fills yet, over all open segments,
        stays within max_total_bytes: past that, a segment starts with what its first
        chunk needs and grows geometrically. Address space is then bounded by about
        three times max_total_bytes."""
        cdef size_t capacity, pooled = 0, unused
        cdef uint8_t *grown
        cdef uint8_t *warm
        if seg.data == NULL:
            capacity = ctx.fmt.prealloc if ctx.fmt.prealloc > needed else needed
            unused = self._reserved - self._open_bytes if self._reserved > self._open_bytes else 0
            if capacity > needed and unused + capacity - needed > self.max_total_bytes:
                capacity = needed
            warm = _pool_take(&pooled)
            if warm != NULL and pooled >= needed \
                    and unused + pooled - needed <= self.max_total_bytes:
                # a released segment's buffer: warm pages, no faults. Even one shorter
                # than the reservation: voice agents speak in 1-3 s sentences, and a
                # fresh reservation faults a page per 4 KiB filled (+3-5 us per 100 ms
                # message), while growing a warm buffer later costs one realloc.
                seg.data = warm
                seg.capacity = pooled
                self._reserved += pooled
                return 0
            free(warm)  # smaller than the first chunk: not worth keeping
            # the reservation is address space: malloc does not touch (commit) the pages
            seg.data = <uint8_t *>malloc(capacity if capacity else 1)
            if seg.data == NULL:
                raise MemoryError()
            seg.capacity = capacity
            self._reserved += capacity
            return 0
        capacity = seg.capacity * 2
        if capacity > self.max_segment_bytes:
            capacity = self.max_segment_bytes
        if capacity < needed:
            capacity = needed
        grown = <uint8_t *>realloc(seg.data, capacity)
        if grown == NULL:
            raise MemoryError()
        seg.data = grown
        self._reserved += capacity - seg.capacity
        seg.capacity = capacity
        return 0

    cdef int _register(self, _Context ctx, bint new_context, _Segment seg, bint new_segment,
                       bint adopt, int64_t label) except -1:
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
        self._last = ctx
        if ctx.raw_id is not None:
            self._recent[_recent_slot(ctx.raw_id, len(ctx.raw_id))] = ctx
        return 0

    cdef object _resolve(self, _Context ctx, bint has_flush, int64_t label,
                         bint *adopt, bint *new_segment):
        """The open segment a chunk or timestamps frame goes to; None means drop if
        *new_segment is false, or open a new one if it is true."""
        adopt[0] = False
        new_segment[0] = False
        if ctx is None:
            new_segment[0] = True
            return None
        cdef _Segment cur = ctx.current
        if has_flush:
            if cur is not None and cur.label == label and not cur.unlabelled:
                return cur
            if label in ctx.finished:
                return None
            seg = ctx.open.get(label)
            if seg is not None:
                # the server's label equals the one we gave an unlabelled segment: now
                # it is the server's, and no later label may adopt it
                adopt[0] = (<_Segment>seg).unlabelled
                return seg
            if cur is not None and cur.unlabelled:
                adopt[0] = True
                return cur
            new_segment[0] = True
            return None
        if cur is not None:
            return cur
        new_segment[0] = True
        return None

    cdef object _finish(self, _Context ctx, _Segment seg, bint complete, object error):
        global _open_everywhere
        cdef _AudioBuffer audio = _AudioBuffer.__new__(_AudioBuffer)
        cdef uint8_t *trimmed
        cdef size_t width = seg.fmt.width
        cdef size_t whole = seg.length // width * width
        if seg.lost_chunks:
            complete = False
            error = lost_error(error, seg.lost_chunks, seg.lost_bytes, seg.lost_reason)
        # The segment leaves the store first, before anything below can run Python code:
        # the buffer is handed over once, and no later call finds it open.
        if seg.label in ctx.open:
            del ctx.open[seg.label]
            self._open_segments -= 1
            self._open_bytes -= seg.length
            _open_everywhere -= seg.length
            self._reserved -= seg.capacity
            seg.capacity = 0
            self._open_timestamps -= (len(seg.words) if seg.words else 0) + \
                (len(seg.phonemes) if seg.phonemes else 0)
        self._remember_finished(ctx, seg.label)
        if ctx.current is seg:
            ctx.refresh_current()
        self._segments += 1
        if seg.data != NULL:
            trimmed = <uint8_t *>realloc(seg.data, seg.length if seg.length else 1)
            if trimmed != NULL:
                seg.data = trimmed
        audio.data = seg.data
        audio.length = seg.length
        seg.data = NULL
        trailing = PyBytes_FromStringAndSize(<const char *>audio.data + whole,
                                             seg.length - whole)
        if whole == seg.length:  # (numpy takes 300 ns longer to parse a count)
            samples = _frombuffer(audio, seg.fmt.dtype)
        else:
            samples = _frombuffer(audio, seg.fmt.dtype, whole // width)
        segment = Segment(ctx.context_id, seg.label, seg.fmt.format, samples, complete, error,
                          trailing, seg.start,
                          shift(tuple(seg.words), seg.start) if seg.words else _EMPTY,
                          shift(tuple(seg.phonemes), seg.start) if seg.phonemes else _EMPTY)
        ready = _object_new(SegmentReady)
        PyObject_GenericSetAttr(ready, "segment", segment)
        return ready

    cdef int _remember_finished(self, _Context ctx, int64_t label) except -1:
        """Remember that label finished, so that its late frames are dropped: the last
        max_finished_labels of the context, so that a server finishing flush after flush
        cannot grow the sink without bound (docs/sink.md)."""
        cdef size_t cap = self.max_finished_labels
        if cap == 0 or label in ctx.finished:
            return 0
        ctx.finished.add(label)
        if ctx.finished_order is None:
            ctx.finished_order = []
        if <size_t>len(ctx.finished_order) < cap:
            ctx.finished_order.append(label)
            return 0
        ctx.finished.discard(ctx.finished_order[ctx.finished_pos])
        ctx.finished_order[ctx.finished_pos] = label
        ctx.finished_pos = (ctx.finished_pos + 1) % cap
        return 0

    cdef list _finish_all(self, _Context ctx, bint complete, object error):
        events = []
        if ctx is not None:
            for seg in list(ctx.open.values()):
                events.append(self._finish(ctx, seg, complete, error))
        return events

    cdef void _end(self, object cid):
        cdef _Context ctx = self._contexts.pop(cid, None)
        cdef size_t slot
        if ctx is self._last:
            self._last = None
        if ctx is not None and ctx.raw_id is not None:
            slot = _recent_slot(ctx.raw_id, len(ctx.raw_id))
            if self._recent[slot] is ctx:
                self._recent[slot] = None
        self._formats.pop(cid, None)
        self._ended.pop(cid, None)
        self._ended[cid] = True
        while len(self._ended) > self.max_ended_contexts:
            del self._ended[next(iter(self._ended))]

    cdef bint _unwelcome(self, object cid) except -1:
        """A context that may not start: ended, or never announced (drop_unannounced)."""
        return cid in self._ended or (self.drop_unannounced and cid not in self._formats)

    cdef object _drop(self):
        self._frames += 1
        self._dropped += 1
        return _EMPTY

    # ---- chunk: the hot path ------------------------------------------------------

    cdef object _chunk(self, const uint8_t *buf, size_t n, fs_frame *fr, bint has_flush,
                       int64_t label):
        # (the steady state never gets here: _append took it)
        cdef _Context ctx = self._lookup(buf, fr)
        cdef object cid = self._cid
        cdef bint new_context = ctx is None, adopt, new_segment
        cdef fs_value *data = &fr.keys[FS_KEY_DATA]
        if new_context and self._unwelcome(cid):
            self._check_data(buf, n, fr)
            return self._drop()
        found = self._resolve(ctx, has_flush, label, &adopt, &new_segment)
        if found is None and not new_segment:
            self._check_data(buf, n, fr)
            return self._drop()
        if new_context:
            ctx = self._new_context(cid)
        if data.kind != FS_STRING:
            return self._store(ctx, new_context, found, new_segment, adopt, has_flush, label,
                               NULL, 0, NULL, buf, n, fr)
        if data.has_escape:
            return self._store_escaped(ctx, new_context, found, new_segment, adopt, has_flush,
                                       label, buf, n, fr)
        return self._store(ctx, new_context, found, new_segment, adopt, has_flush, label,
                           buf + data.start, data.end - data.start, NULL, buf, n, fr)

    cdef object _store_escaped(self, _Context ctx, bint new_context, object found,
                               bint new_segment, bint adopt, bint has_flush, int64_t label,
                               const uint8_t *buf, size_t n, fs_frame *fr):
        cdef fs_value *data = &fr.keys[FS_KEY_DATA]
        cdef size_t length = data.end - data.start, count
        cdef uint8_t *chars = <uint8_t *>malloc(length + 1)
        cdef size_t *offsets = <size_t *>malloc((length + 1) * sizeof(size_t))
        try:
            if chars == NULL or offsets == NULL:
                raise MemoryError()
            count = fs_unescape_chars(buf, data.start, data.end, chars, offsets)
            return self._store(ctx, new_context, found, new_segment, adopt, has_flush, label,
                               chars, count, offsets, buf, n, fr)
        finally:
            free(chars)
            free(offsets)

    cdef object _store(self, _Context ctx, bint new_context, object found, bint new_segment,
                       bint adopt, bint has_flush, int64_t label, const uint8_t *src,
                       size_t length, size_t *offsets, const uint8_t *buf, size_t n,
                       fs_frame *fr):
        """Decode src[0:length] (base64) onto the end of the resolved segment.
        offsets maps src positions to frame offsets (NULL: src is in the frame)."""
        cdef _Segment seg
        cdef size_t size = b64_decoded_size(src, length) if length else 0
        cdef size_t written = 0, pos = 0, base = 0, needed, capacity
        cdef uint8_t *grown
        cdef b64_status st
        cdef int64_t seg_label
        cdef size_t current
        cdef uint8_t *target
        cdef uint8_t no_output = 0
        if new_segment:
            seg_label = label if has_flush else ctx.next_label
            current = 0
        else:
            seg = <_Segment>found
            seg_label = label if adopt else seg.label
            current = seg.length
        # caps, after the data is known to be valid JSON (its errors come first)
        if new_segment and <size_t>self._open_segments >= self.max_open_segments:
            self._check_data(buf, n, fr)
            if fr.keys[FS_KEY_DATA].has_escape and offsets == NULL:
                return self._store_escaped(ctx, new_context, found, new_segment, adopt,
                                           has_flush, label, buf, n, fr)
            raise open_segments_cap_error(ctx.context_id, seg_label, self.max_open_segments)
        if current + size > self.max_segment_bytes:
            self._check_data(buf, n, fr)
            if fr.keys[FS_KEY_DATA].has_escape and offsets == NULL:
                return self._store_escaped(ctx, new_context, found, new_segment, adopt,
                                           has_flush, label, buf, n, fr)
            self._lose(ctx, new_context, found, None, new_segment, adopt, has_flush, label, size,
                       cap_reason("max_segment_bytes", self.max_segment_bytes))
            raise segment_cap_error(ctx.context_id, seg_label, current + size,
                                    self.max_segment_bytes)
        if self._open_bytes + size > self.max_total_bytes:
            self._check_data(buf, n, fr)
            if fr.keys[FS_KEY_DATA].has_escape and offsets == NULL:
                return self._store_escaped(ctx, new_context, found, new_segment, adopt,
                                           has_flush, label, buf, n, fr)
            self._lose(ctx, new_context, found, None, new_segment, adopt, has_flush, label, size,
                       cap_reason("max_total_bytes", self.max_total_bytes))
            raise total_cap_error(ctx.context_id, seg_label, self._open_bytes + size,
                                  self.max_total_bytes)
        if new_segment:
            seg = self._new_segment(ctx, seg_label, not has_flush)
        needed = seg.length + size
        if size == 0:
            target = &no_output  # still decoded: "=" has no output but is invalid
        else:
            if needed > seg.capacity or seg.data == NULL:
                self._reserve(ctx, seg, needed)
            target = seg.data + seg.length
        if length >= GIL_RELEASE_BYTES:
            with nogil:
                st = b64_decode(src, length, target, size, &written, &pos)
        else:
            st = b64_decode(src, length, target, size, &written, &pos)
        if st != B64_OK:
            if offsets == NULL:
                self._check_data(buf, n, fr)
                if fr.keys[FS_KEY_DATA].has_escape:
                    # a backslash stopped the fast path: take the exact, escaped one
                    return self._store_escaped(ctx, new_context, found, new_segment, adopt,
                                               has_flush, label, buf, n, fr)
            self._lose(ctx, new_context, found, seg if new_segment else None, new_segment, adopt,
                       has_flush, label, size, FRAME_ERROR_REASONS[BASE64_CODES[st]])
            if offsets == NULL:
                raise FrameError(BASE64_CODES[st], fr.keys[FS_KEY_DATA].start + pos)
            raise FrameError(BASE64_CODES[st], offsets[pos])
        self._register(ctx, new_context, seg, new_segment, adopt, label)
        self._stored(ctx, seg, size)
        return _EMPTY

    cdef int _lose(self, _Context ctx, bint new_context, object found, _Segment opened,
                   bint new_segment, bint adopt, bint has_flush, int64_t label, size_t size,
                   object reason) except -1:
        """A chunk of this segment is being rejected (a cap, its base64): the segment
        records the loss, so that it finishes incomplete and says what it lost. A chunk
        that would have opened the segment opens it, empty (docs/sink.md "Lost chunks")."""
        cdef _Segment seg
        if not new_segment:
            seg = <_Segment>found
        elif opened is not None:
            seg = opened
        else:
            seg = self._new_segment(ctx, label if has_flush else ctx.next_label, not has_flush)
        self._register(ctx, new_context, seg, new_segment, adopt, label)
        seg.lost_chunks += 1
        seg.lost_bytes += size
        if seg.lost_reason is None:
            seg.lost_reason = reason
        return 0

    cdef inline void _stored(self, _Context ctx, _Segment seg, size_t size) noexcept:
        """Commit a decoded chunk: the one place the counters of stored audio move."""
        global _open_everywhere
        seg.length += size
        _open_everywhere += size
        ctx.stored += size
        ctx.frames += 1
        self._open_bytes += size
        self._audio_bytes += size
        self._chunks += 1
        self._frames += 1

    # ---- everything but chunks ----------------------------------------------------

    cdef object _other(self, const uint8_t *buf, size_t n, fs_frame *fr, int ftype,
                       bint has_flush, int64_t label):
        cdef object cid = None
        cdef _Context ctx
        cdef bint has_context = fr.keys[FS_KEY_CONTEXT_ID].kind == FS_STRING
        cdef bint adopt, new_segment
        cdef _Segment seg
        cdef int key
        message = None
        items = None
        if ftype == FS_TYPE_ERROR or ftype == FS_TYPE_TIMESTAMPS or ftype == FS_TYPE_PHONEME_TIMESTAMPS \
                or ftype == FS_TYPE_NONE or ftype == FS_TYPE_UNKNOWN:
            message = load_payload(PyBytes_FromStringAndSize(<const char *>buf, n))
        if ftype == FS_TYPE_TIMESTAMPS or ftype == FS_TYPE_PHONEME_TIMESTAMPS:
            key = FS_KEY_WORD_TIMESTAMPS if ftype == FS_TYPE_TIMESTAMPS else FS_KEY_PHONEME_TIMESTAMPS
            try:
                items = parse_timed_text(message, "words" if ftype == FS_TYPE_TIMESTAMPS else "phonemes")
            except ValueError:
                where = fr.keys[key].value_offset if fr.keys[key].kind != FS_ABSENT \
                    else fr.object_offset
                raise FrameError("field_type", where, _FIELD_NAMES[key]) from None
        if ftype == FS_TYPE_ERROR and not has_context:
            self._frames += 1
            return (error_event(None, False, message),)
        ctx = self._lookup(buf, fr)
        cid = self._cid
        if ctx is None and self._unwelcome(cid):
            return self._drop()
        if ftype == FS_TYPE_NONE or ftype == FS_TYPE_UNKNOWN:
            self._frames += 1
            return (Unknown(cid, message.get("type"), message),)
        if ftype == FS_TYPE_DONE or ftype == FS_TYPE_ERROR:
            event = error_event(cid, True, message) if ftype == FS_TYPE_ERROR else ContextDone(cid)
            events = self._finish_all(ctx, ftype == FS_TYPE_DONE,
                                      None if ftype == FS_TYPE_DONE else event.message)
            events.append(event)
            self._end(cid)
            self._frames += 1
            return tuple(events)
        new_context = ctx is None
        if new_context:
            ctx = self._new_context(cid)
        if ftype == FS_TYPE_FLUSH_DONE:
            if has_flush and label in ctx.finished:
                return self._drop()
            if has_flush:
                found = ctx.open.get(label)
                if found is None and ctx.current is not None and ctx.current.unlabelled:
                    seg = ctx.current
                    self._register(ctx, new_context, seg, False, True, label)
                    found = seg
            else:
                found = ctx.current
            if found is None:
                seg = self._new_segment(ctx, label if has_flush else ctx.next_label, False)
                self._register(ctx, new_context, seg, True, False, label)
                found = seg
            self._frames += 1
            ctx.frames += 1
            return (self._finish(ctx, <_Segment>found, True, None),)
        # timestamps / phoneme_timestamps
        found = self._resolve(None if new_context else ctx, has_flush, label, &adopt,
                              &new_segment)
        if found is None and not new_segment:
            return self._drop()
        if new_segment and <size_t>self._open_segments >= self.max_open_segments:
            raise open_segments_cap_error(cid, label if has_flush else ctx.next_label,
                                          self.max_open_segments)
        if self._open_timestamps + <size_t>len(items) > self.max_timestamps:
            raise timestamps_cap_error(
                cid, label if has_flush else ctx.next_label if new_segment
                else (<_Segment>found).label,
                self._open_timestamps + len(items), self.max_timestamps)
        if new_segment:
            seg = self._new_segment(ctx, label if has_flush else ctx.next_label, not has_flush)
        else:
            seg = <_Segment>found
        self._register(ctx, new_context, seg, new_segment, adopt, label)
        if ftype == FS_TYPE_TIMESTAMPS:
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
        return (Timestamps(cid, seg.label, "words" if ftype == FS_TYPE_TIMESTAMPS else "phonemes",
                           items, seg.start),)

    # ---- ending -------------------------------------------------------------------

    def cancel(self, context_id):
        """Finish the context's open segments as incomplete ("cancelled") and drop its
        later frames. Returns the SegmentReady events."""
        self._acquire()
        try:
            events = self._finish_all(self._contexts.get(context_id), False, "cancelled")
            self._end(context_id)
            return tuple(events)
        finally:
            self._busy = False

    def close(self, reason="closed"):
        """Finish every open segment as incomplete with ``error=reason`` (for example
        when the connection dropped) and end those contexts. The sink stays usable."""
        self._acquire()
        try:
            events = []
            for cid in list(self._contexts):
                events.extend(self._finish_all(self._contexts[cid], False, reason))
                self._end(cid)
            return tuple(events)
        finally:
            self._busy = False


cdef object _raw_string(const uint8_t *buf, fs_value *v):
    """A validated JSON string value: bytes when written without escapes, else str."""
    if not v.has_escape:
        return PyBytes_FromStringAndSize(<const char *>buf + v.start, v.end - v.start)
    return json.loads(PyBytes_FromStringAndSize(<const char *>buf + v.start - 1,
                                                v.end - v.start + 2))
