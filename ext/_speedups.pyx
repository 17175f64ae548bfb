# cython: language_level=3
"""Compiled core of flushsink: the kernels under the segment store (see docs/sink.md).

The segment rules (contexts, labels, caps, finishing, drops) are flushsink/_store.py,
compiled as flushsink._store_c; its Store is this Sink's base class, and the pure twin's
too. What is here has no Python counterpart: the C scanner (frame.c) and base64 kernels
(b64.c) with their statuses mapped to flushsink.errors' exceptions, the segments' malloc'd
buffers and their pool, the thread guard that waits without the GIL, and the steady-state
append, which takes a chunk of an open segment in one step, reading the store's typed
attributes directly (the general path hands the chunk to Store._chunk). The pure twin,
flushsink/_fallback.py, must behave identically; tests compare them frame by frame.
"""

cimport cython
from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBuffer_FillInfo,
                             PyBuffer_Release, PyObject_GetBuffer)
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.object cimport PyObject_GenericSetAttr
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy

import json
import os

import numpy as np

from flushsink._store_c cimport (TYPE_CHUNK, TYPE_DONE, TYPE_ERROR, TYPE_NONE, TYPE_UNKNOWN,
                                 AudioChunk, _Context, _Segment, Store)

from ._common import SinkStats, envelope_layout, frame_type_error, load_payload, str_frame_error
from ._store_c import KIND_CODES, REENTRANT, TYPE_CODES
from . import _store_c
from .errors import FrameError
from .segments import SegmentReady


cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t *size) except NULL
    unsigned long PyThread_get_thread_ident() nogil
    Py_ssize_t _refcount "Py_REFCNT"(PyObject *o)

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
        B64_NSTATUS
    const char * const *b64_status_codes
    size_t b64_decoded_size(const uint8_t *src, size_t n) nogil
    b64_status b64_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap,
                          size_t *written, size_t *error_pos) nogil
    b64_status hex_decode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap,
                          size_t *written, size_t *error_pos) nogil
    const char *b64_kernel_name()
    int b64_set_kernel(const char *name)

cdef extern from "frame.h":
    ctypedef enum fs_status:
        FS_OK
        FS_NSTATUS
    enum:
        FS_NKEYS
        FS_NTYPES
    const char * const *fs_status_codes
    const char * const *fs_key_names
    const char * const *fs_type_names
    ctypedef enum fs_kind:
        FS_ABSENT
        FS_NULL
        FS_STRING
        FS_NUMBER
        FS_OTHER
        FS_OBJECT
    ctypedef struct fs_value:
        fs_kind kind
        size_t value_offset
        size_t start
        size_t end
        int has_escape
    ctypedef struct fs_frame:
        fs_value keys[FS_NKEYS]
        size_t object_offset
        int data_checked
        int data_tentative
    int FS_KEY_TYPE, FS_KEY_CONTEXT_ID, FS_KEY_FLUSH_ID, FS_KEY_DATA
    int FS_KEY_WORD_TIMESTAMPS, FS_KEY_PHONEME_TIMESTAMPS, FS_KEY_FINAL, FS_KEY_ERROR
    int FS_KEY_CONTEXT_FALLBACK
    ctypedef enum fs_type:
        FS_TYPE_NONE
        FS_TYPE_CHUNK
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
    enum:
        FS_ENV_NODES
        FS_ENV_NAME_MAX
    ctypedef struct fs_env_node:
        uint8_t name[64]
        uint8_t len
        signed char slot
        short parent
    ctypedef struct fs_env:
        int count
        fs_env_node node[128]
    ctypedef struct fs_env_memo:
        pass
    fs_status fs_scan_env(const uint8_t *buf, size_t n, fs_frame *frame, fs_value *inner,
                          size_t *error_offset, const fs_env *env, fs_env_memo *memo)
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
# what a streaming Sink returns for audio: the rules' type, this core's (flushsink.AudioChunk)
globals()["AudioChunk"] = _store_c.AudioChunk
_frombuffer = np.frombuffer
_object_new = object.__new__



cdef tuple _names(const char * const *table, int count):
    """A C table of names (ext/frame.h, ext/b64.h) as a tuple of str, None for ""."""
    names = []
    for i in range(count):
        names.append(table[i].decode("ascii") if table[i][0] else None)
    return tuple(names)


# What the C kernels name, read from their tables, the one place each is listed:
#: FrameError codes by fs_status and by b64_status (None: not an error)
SCAN_CODES = _names(fs_status_codes, FS_NSTATUS)
BASE64_CODES = _names(b64_status_codes, B64_NSTATUS)
#: the envelope's key names by fs_key, and the frame types by fs_type
FIELD_NAMES = _names(fs_key_names, FS_NKEYS)
FRAME_TYPE_NAMES = _names(fs_type_names, FS_NTYPES)

# fs_type -> the store's frame type (_store.py's TYPE_*), matched by name
cdef int _store_type[FS_NTYPES]
for _t in range(FS_NTYPES):
    _store_type[_t] = TYPE_NONE if _t == FS_TYPE_NONE else \
        TYPE_CODES.get(FRAME_TYPE_NAMES[_t], TYPE_UNKNOWN)
del _t


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
    """Owns a segment's malloc'd bytes and lends them to numpy and memoryviews (no copy):
    a finished segment's, and in stream mode an open segment's too, whose AudioChunks
    are views of it (the segment writes on past them, or moves to a new buffer if it
    must grow while any view lives: Sink._reserve). Its memory goes back to the pool
    when the last view and the segment let go of it."""

    cdef uint8_t *data
    cdef Py_ssize_t length        # bytes lent (an open segment's: up to its last chunk)
    cdef size_t capacity          # bytes malloc'd
    cdef Py_ssize_t exports       # buffer views alive
    cdef bint readonly            # stream mode: views cannot write

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, self.data, self.length, self.readonly, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self.exports -= 1

    def __dealloc__(self):
        if self.data != NULL:
            _pool_give(self.data, self.capacity)


# Stream mode: buffers copied because a view held the old one when a segment grew (tests)
cdef unsigned long long _grown_by_copy = 0


def _stream_copies():
    """How many times a streaming segment moved to a new buffer to grow; for tests."""
    return _grown_by_copy



cdef class _CSegment(_Segment):
    """A segment whose audio is a malloc'd buffer: reserved with its first audio
    (Sink._reserve), handed to an _AudioBuffer when it finishes (Sink._hand_over).
    In stream mode the buffer has its _AudioBuffer from the first AudioChunk on
    (``owner``, which then owns the memory: ``lent``). With keep_audio=False it has no
    buffer at all, only the bytes of a sample split across frames (``tail``)."""
    cdef uint8_t *data
    cdef size_t capacity
    cdef _AudioBuffer owner
    cdef bint lent
    cdef uint8_t tail[4]

    def __dealloc__(self):
        global _open_everywhere
        if self.data != NULL:  # still open: its Sink went away
            _open_everywhere -= self.length
            if not self.lent:
                free(self.data)


cdef inline bint _only_segment(_CSegment seg) noexcept:
    """The segment's _AudioBuffer is held by the segment alone: no AudioChunk, no view."""
    return _refcount(<PyObject *>seg.owner) == 1 and seg.owner.exports == 0


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




cdef class Sink(Store):
    """Turns TTS websocket frames into finished audio segments: Cartesia's, or any
    provider's that an Envelope describes (``envelope=``, flushsink.envelopes).

    See docs/sink.md for the exact behaviour; ``flushsink._fallback.Sink`` is the
    pure-Python twin with the same API, results and errors. The rules are its base
    class's, flushsink._store.Store.
    """

    cdef _Context _last           # the previous chunk's context (the steady state's)
    cdef list _recent             # RECENT_SLOTS contexts, by _recent_slot of raw_id
    cdef fs_memo _memo            # the scanner's memory of recent envelopes (zeroed by tp_alloc)
    cdef object _cid              # scratch: the id _lookup found
    cdef size_t _reserved         # capacity of the open segments' buffers (address space)
    cdef int _unguessed           # the FS_GUESS_* the scanner may not make now (see _feed)
    cdef bint _busy               # a call is running (see _take)
    cdef int _waiting             # threads waiting for it to end
    # the frame being fed, for the store's hooks (valid during _dispatch only)
    cdef const uint8_t *_buf
    cdef size_t _n
    cdef fs_frame *_fr
    cdef const uint8_t *_src      # the chunk's base64: in the frame, or unescaped into
    cdef size_t _src_len          # _chars, whose offsets into the frame are _offsets
    cdef uint8_t *_chars
    cdef size_t *_offsets
    cdef size_t _appended         # the size of the chunk _append stored (stream mode)
    cdef _AudioBuffer _pending    # keep_audio=False: the chunk _decode decoded, for its event
    cdef tuple _out               # stream mode: the last (AudioChunk,) _streamed returned
    cdef uint8_t *_raw            # keep_audio=False: the chunk _append_apart decoded
    cdef size_t _raw_size
    # an envelope's reading (_start; NULL _env: Cartesia's frames, read by fs_scan)
    cdef fs_env *_env
    cdef fs_value *_inner         # the values of its objects on the way (fs_scan_env)
    cdef fs_env_memo *_env_memo   # the envelope's frames the stream repeats (templates)
    cdef bint _typeless, _hex, _nested
    cdef tuple _field_names       # per slot: the name its field_type error gives
    cdef tuple _on_the_way        # per slot: ((node, name), ...) of its objects on the way
    cdef dict _type_codes         # type value (UTF-8 bytes) -> the store's frame type
    cdef tuple _audio_types       # the audio type values (bytes), for _append, which
    cdef const char *_audio_text[8]   # compares the first 8 of them (a frame of another
    cdef size_t _audio_size[8]        # takes the general path)
    cdef int _audio_count

    def __cinit__(self, *args, **kwargs):
        self._recent = [None] * RECENT_SLOTS

    def __dealloc__(self):
        free(self._raw)  # (always NULL between calls: _streamed_apart takes it)
        free(self._env)
        free(self._inner)
        free(self._env_memo)

    cdef void _start(self) except *:
        """Read the envelope (Store.__init__ set it) into the scanner's tree of names."""
        cdef fs_env *env
        cdef fs_env_node *node
        self._field_names = FIELD_NAMES
        if self._envelope is None:
            return
        layout = envelope_layout(self._envelope)
        self._env = env = <fs_env *>calloc(1, sizeof(fs_env))
        self._inner = <fs_value *>calloc(FS_ENV_NODES, sizeof(fs_value))
        self._env_memo = <fs_env_memo *>calloc(1, sizeof(fs_env_memo))
        if env == NULL or self._inner == NULL or self._env_memo == NULL:
            raise MemoryError()
        nodes = {}
        on_the_way = []
        for slot, path in enumerate(layout.paths):
            way = []
            parent = -1
            for depth in range(len(path) if path is not None else 0):
                prefix = path[:depth + 1]
                k = nodes.get(prefix)
                if k is None:
                    k = nodes[prefix] = env.count
                    env.count += 1
                    node = &env.node[k]
                    name = path[depth].encode("ascii")
                    memcpy(node.name, <const char *>name, len(name))
                    node.len = len(name)
                    node.parent = parent
                    node.slot = slot if depth == len(path) - 1 else -1
                if depth < len(path) - 1:
                    way.append((k, ".".join(prefix)))
                parent = k
            on_the_way.append(tuple(way))
        self._on_the_way = tuple(on_the_way)
        self._nested = any(on_the_way)
        self._field_names = tuple(layout.names)
        self._typeless = layout.typeless
        self._hex = layout.hex
        self._type_codes = {value.encode("utf-8"): KIND_CODES[kind]
                            for value, kind in layout.types.items()}
        self._audio_types = tuple(value.encode("utf-8") for value, kind in layout.types.items()
                                  if kind == "audio")
        for name in self._audio_types[:8]:
            self._audio_text[self._audio_count] = <const char *>name
            self._audio_size[self._audio_count] = len(name)
            self._audio_count += 1

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
            self._take()
            try:
                return self._feed(<const uint8_t *>FS_BYTES_DATA(frame),
                                  <size_t>FS_BYTES_SIZE(frame))
            finally:
                self._busy = False
        if isinstance(frame, str):
            self._take()
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
            self._take()
            try:
                return self._feed(<const uint8_t *>view.buf, <size_t>view.len)
            finally:
                self._busy = False
        finally:
            PyBuffer_Release(&view)

    # ---- one call at a time ---------------------------------------------------------
    # The contract is Store's (docs/sink.md "Threads"); this is its compiled mechanism.
    # The lock is a flag the GIL protects: taking it uncontended is one load and two
    # stores; a thread that finds it taken waits without the GIL until it is free. A
    # newcomer lets threads already waiting go first, so a thread feeding in a loop
    # cannot starve a close() from another.

    @cython.final
    cdef inline int _take(self) except -1:
        if not self._busy and self._waiting == 0:
            self._busy = True
            self._owner = PyThread_get_thread_ident()
            return 0
        return self._take_slowly()

    @cython.final
    cdef int _take_slowly(self) except -1:
        cdef unsigned long me = PyThread_get_thread_ident()
        cdef bint defer = self._waiting > 0
        cdef unsigned int rounds = 0
        if self._busy and self._owner == me:
            # a finalizer or signal handler calling in while this thread's call runs:
            # waiting would wait for ourselves
            raise RuntimeError(REENTRANT)
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

    cdef int _acquire(self) except -1:
        return self._take()

    cdef void _release(self):
        self._busy = False

    cdef object _feed(self, const uint8_t *buf, size_t n):
        # Every path that accepts a frame counts it in _frames exactly once, so the
        # rejected ones are _fed - _frames, with no bookkeeping (or try) on the hot path.
        cdef fs_frame fr
        cdef size_t offset = 0
        self._fed += 1
        fs_prefetch(buf, n)
        cdef fs_status st
        if self._env != NULL:
            st = fs_scan_env(buf, n, &fr, self._inner, &offset, self._env, self._env_memo)
            if st != FS_OK:
                raise FrameError(SCAN_CODES[st], offset)
            _fall_back(&fr)
            if not self._hex and self._append(buf, &fr):
                if self._stream:
                    return self._streamed()
                return _EMPTY
            # a guess of the audio's end that no decode proved (see _feed's Cartesia path)
            if fr.data_tentative and not fs_confirm_data_end(buf, &fr):
                st = fs_scan_env(buf, n, &fr, self._inner, &offset, self._env, NULL)
                if st != FS_OK:
                    raise FrameError(SCAN_CODES[st], offset)
                _fall_back(&fr)
            return self._dispatch(buf, n, &fr)
        st = fs_scan(buf, n, &fr, &offset, ~self._unguessed, &self._memo)
        if st != FS_OK:
            raise FrameError(SCAN_CODES[st], offset)
        if self._append(buf, &fr):
            if self._stream:
                return self._streamed()
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
        with nothing changed, for anything else: the general path (_dispatch, then
        Store._chunk) decides the same way and reports errors exactly."""
        global _open_everywhere
        cdef _Context ctx = self._last
        cdef _CSegment seg
        cdef fs_value *v = &fr.keys[FS_KEY_TYPE]
        cdef fs_value *data = &fr.keys[FS_KEY_DATA]
        cdef int64_t label
        cdef size_t length, size, written, pos
        cdef bint switched = ctx is None or not self._is_last_context(buf, fr)
        if switched:
            ctx = self._recent_context(buf, fr)
            if ctx is None:
                return False
        seg = <_CSegment>ctx.current
        if seg is None:
            return False
        if data.kind != FS_STRING or data.has_escape or (seg.data == NULL and self._keep_audio):
            return False
        if self._env != NULL:
            if not self._envelope_chunk(buf, fr):
                return False
        elif v.kind != FS_STRING or v.has_escape or v.end - v.start != 5 \
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
        if seg.data == NULL:  # keep_audio=False: no segment buffer, no byte caps
            return self._append_apart(ctx, seg, buf + data.start, length, size, switched)
        if seg.length + size > seg.capacity or seg.length + size > self._max_segment_bytes \
                or self._open_bytes + size > self._max_total_bytes:
            return False
        if b64_decode(buf + data.start, length, seg.data + seg.length, size,
                      &written, &pos) != B64_OK:
            return False  # the general path finds the error (or the escapes) again
        # Store._stored's commit, inlined (the steady state makes no call), and the pool's
        # count of open audio
        seg.length += size
        ctx.stored += size
        ctx.frames += 1
        self._open_bytes += size
        self._audio_bytes += size
        self._chunks += 1
        self._frames += 1
        _open_everywhere += size
        self._appended = size
        if switched:
            self._last = ctx
        return True

    @cython.final
    cdef bint _append_apart(self, _Context ctx, _CSegment seg, const uint8_t *src,
                            size_t length, size_t size, bint switched) noexcept:
        """_append's step with keep_audio=False (Sink._decode_apart's work): the chunk
        into a buffer of its own, after the carried bytes of a split sample; _streamed
        hands that buffer to the chunk's AudioChunk (self._raw until then)."""
        cdef size_t shift = seg.fmt.shift
        cdef size_t carried = seg.length & ((<size_t>1 << shift) - 1)
        cdef size_t total = carried + size
        cdef size_t whole = total >> shift << shift
        cdef size_t written, pos
        cdef uint8_t *raw = <uint8_t *>malloc(total if total else 1)
        if raw == NULL:
            return False
        memcpy(raw, seg.tail, carried)
        if b64_decode(src, length, raw + carried, size, &written, &pos) != B64_OK:
            free(raw)
            return False
        memcpy(seg.tail, raw + whole, total - whole)
        # Store._stored's commit (no audio held: _open_bytes does not move)
        seg.length += size
        ctx.stored += size
        ctx.frames += 1
        self._audio_bytes += size
        self._chunks += 1
        self._frames += 1
        self._appended = size
        free(self._raw)  # (NULL: _streamed took the last one)
        self._raw = raw
        self._raw_size = total
        if switched:
            self._last = ctx
        return True

    @cython.final
    cdef object _streamed_apart(self, _CSegment seg, size_t first, size_t end):
        """_streamed for _append_apart's chunk, the segment's bytes [first, end): its
        buffer becomes its AudioChunk's alone (no event is reused here: the sink must
        hold nothing once a chunk is returned)."""
        cdef uint8_t *raw = self._raw
        cdef _AudioBuffer audio
        cdef AudioChunk chunk
        self._raw = NULL
        if end == first:
            free(raw)
            return _EMPTY
        try:
            audio = _AudioBuffer.__new__(_AudioBuffer)
        except BaseException:
            free(raw)
            raise
        audio.data = raw
        audio.capacity = self._raw_size
        audio.length = <Py_ssize_t>(end - first)
        audio.readonly = True
        chunk = AudioChunk.__new__(AudioChunk)
        self._fill(chunk, self._last, seg, first, end, audio, 0)
        return (chunk,)

    @cython.final
    cdef object _streamed(self):
        """Stream mode, after _append stored a chunk: its event, as Store._put makes it
        (whole-sample boundaries by shifts: the widths are powers of two).

        A consumer that drops each event at once leaves the previous event's tuple and
        chunk to the sink alone: they are then filled anew and returned again, as
        CPython's zip() reuses its result tuple (a tuple and a chunk made and freed per
        chunk frame cost 75 ns, 40% of a 20 ms chunk at 16 kHz). One that keeps the
        last chunk (``for event in sink.feed(frame)`` does) gets a new chunk in the same
        tuple. No one else can see an object only the sink references. The sink lets go
        of them when the segment grows (so the buffer may move) or finishes (so it holds
        no finished audio)."""
        cdef _CSegment seg = <_CSegment>self._last.current
        cdef size_t shift = seg.fmt.shift
        cdef size_t first = (seg.length - self._appended) >> shift << shift
        cdef size_t end = seg.length >> shift << shift
        cdef AudioChunk chunk
        cdef PyObject *previous
        if not self._keep_audio:
            return self._streamed_apart(seg, first, end)
        if end == first:
            return _EMPTY
        if self._out is not None and _refcount(<PyObject *>self._out) == 1:
            previous = PyTuple_GET_ITEM(self._out, 0)
            if _refcount(previous) == 1:
                chunk = <AudioChunk>previous
                chunk._samples = None
                chunk._data = None
                self._fill(chunk, self._last, seg, first, end, self._lend(seg, end), first)
                return self._out
            chunk = AudioChunk.__new__(AudioChunk)
            self._fill(chunk, self._last, seg, first, end, self._lend(seg, end), first)
            Py_INCREF(chunk)
            PyTuple_SET_ITEM(self._out, 0, chunk)  # (takes the reference)
            Py_XDECREF(previous)
            return self._out
        chunk = AudioChunk.__new__(AudioChunk)
        self._fill(chunk, self._last, seg, first, end, self._lend(seg, end), first)
        self._out = (chunk,)
        return self._out

    @cython.final
    cdef inline bint _out_free(self) noexcept:
        """The last tuple _streamed returned, and its chunk, are the sink's alone."""
        return self._out is not None and _refcount(<PyObject *>self._out) == 1 \
            and _refcount(PyTuple_GET_ITEM(self._out, 0)) == 1

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

    cdef int _check_json(self, const uint8_t *buf, size_t n, fs_frame *fr) except -1:
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
        self._check_json(buf, n, fr)
        raise FrameError("field_type", fr.keys[key].value_offset, self._field_names[key])

    cdef int _check_slot(self, const uint8_t *buf, size_t n, fs_frame *fr, int key) except -1:
        """The field type rule of one slot: type, context_id, data a string; flush_id a
        label; final true or false; each may be absent or null."""
        cdef fs_value *v = &fr.keys[key]
        cdef int64_t label
        if v.kind == FS_ABSENT or v.kind == FS_NULL:
            return 0
        if key == FS_KEY_TYPE or key == FS_KEY_CONTEXT_ID or key == FS_KEY_DATA \
                or key == FS_KEY_CONTEXT_FALLBACK:
            if v.kind != FS_STRING:
                self._field_error(buf, n, fr, key)
        elif key == FS_KEY_FLUSH_ID:
            if fs_label(buf, v, &label) != 0:
                self._field_error(buf, n, fr, key)
        elif key == FS_KEY_FINAL:
            if v.kind != FS_OTHER or (buf[v.value_offset] != b't' and buf[v.value_offset] != b'f'):
                self._field_error(buf, n, fr, key)
        return 0

    cdef int _classify(self, const uint8_t *buf, size_t n, fs_frame *fr) except -1:
        """An envelope's frame: its field types in slot order (the objects on a field's
        way first, outermost first: each must be an object or null), then the store's
        frame type (_fallback._exact_env_frame is the same in Python)."""
        cdef fs_value *v
        cdef int key
        for key in range(FS_NKEYS):
            if self._field_names[key] is None:
                continue
            for node, name in self._on_the_way[key]:
                v = &self._inner[<int>node]
                if v.kind != FS_ABSENT and v.kind != FS_NULL and v.kind != FS_OBJECT:
                    self._check_json(buf, n, fr)
                    raise FrameError("field_type", v.value_offset, name)
            self._check_slot(buf, n, fr, key)
        if self._typeless:
            if fr.keys[FS_KEY_DATA].kind == FS_STRING:
                return TYPE_CHUNK
            if self._final(buf, fr):
                return TYPE_DONE
            if fr.keys[FS_KEY_ERROR].kind == FS_STRING:
                return TYPE_ERROR
            return TYPE_NONE
        v = &fr.keys[FS_KEY_TYPE]
        if v.kind != FS_STRING:
            return TYPE_NONE
        text = _raw_string(buf, v)
        if not isinstance(text, bytes):
            text = text.encode("utf-8")
        return self._type_codes.get(text, TYPE_UNKNOWN)

    @cython.final
    cdef inline bint _final(self, const uint8_t *buf, fs_frame *fr) noexcept:
        cdef fs_value *v = &fr.keys[FS_KEY_FINAL]
        return v.kind == FS_OTHER and buf[v.value_offset] == b't'

    @cython.final
    cdef bint _envelope_chunk(self, const uint8_t *buf, fs_frame *fr) noexcept:
        """_append's test of an envelope's frame: an audio frame (data a string) whose
        other fields pass their checks as _classify makes them, with nothing to end."""
        cdef fs_value *v
        cdef int k
        cdef size_t length
        if self._nested:
            for k in range(self._env.count):
                if self._env.node[k].slot < 0 and self._inner[k].kind != FS_ABSENT \
                        and self._inner[k].kind != FS_NULL and self._inner[k].kind != FS_OBJECT:
                    return False
        v = &fr.keys[FS_KEY_FINAL]
        if v.kind != FS_ABSENT and v.kind != FS_NULL \
                and (v.kind != FS_OTHER or buf[v.value_offset] != b'f'):
            return False
        if self._typeless:
            return True  # (data is a string: _append checked)
        v = &fr.keys[FS_KEY_TYPE]
        if v.kind != FS_STRING or v.has_escape:
            return False
        length = v.end - v.start
        for k in range(self._audio_count):
            if self._audio_size[k] == length \
                    and memcmp(buf + v.start, self._audio_text[k], length) == 0:
                return True
        return False

    cdef object _dispatch(self, const uint8_t *buf, size_t n, fs_frame *fr):
        cdef fs_value *v
        cdef int code
        cdef bint has_flush = False, final = False
        cdef int64_t label = 0
        cdef _Context ctx
        if self._env == NULL:
            # field types, in the documented order
            code = _store_type[<int>fs_frame_type(buf, fr)]
            self._check_slot(buf, n, fr, FS_KEY_TYPE)
            self._check_slot(buf, n, fr, FS_KEY_CONTEXT_ID)
            self._check_slot(buf, n, fr, FS_KEY_FLUSH_ID)
            self._check_slot(buf, n, fr, FS_KEY_DATA)
        else:
            code = self._classify(buf, n, fr)
            final = self._final(buf, fr)
        v = &fr.keys[FS_KEY_FLUSH_ID]
        if v.kind != FS_ABSENT and v.kind != FS_NULL:
            fs_label(buf, v, &label)  # (checked above)
            has_flush = True
        v = &fr.keys[FS_KEY_DATA]
        self._buf = buf
        self._n = n
        self._fr = fr
        if code != TYPE_CHUNK:
            self._check_json(buf, n, fr)
            ctx = self._lookup(buf, fr)
            return self._other(ctx, self._cid, code, has_flush, label)
        ctx = self._lookup(buf, fr)
        cid = self._cid
        self._chars = NULL
        self._offsets = NULL
        if v.kind != FS_STRING:
            self._src = NULL
            self._src_len = 0
        elif v.has_escape:
            self._unescape()
        else:
            self._src = buf + v.start
            self._src_len = v.end - v.start
        try:
            events = self._chunk(ctx, cid, has_flush, label)
        finally:
            free(self._chars)
            free(self._offsets)
            self._chars = NULL
            self._offsets = NULL
        if final and self._contexts.get(cid) is not None:
            # audio that also ends its context (an envelope without types): the end
            # follows the chunk, and the frame counts once
            self._frames -= 1
            events += self._other(self._contexts.get(cid), cid, TYPE_DONE, False, 0)
        return events

    cdef int _unescape(self) except -1:
        """The chunk's data has escapes: its characters, unescaped, become the source,
        with their offsets into the frame (for error offsets)."""
        cdef fs_value *data = &self._fr.keys[FS_KEY_DATA]
        cdef size_t length = data.end - data.start
        self._chars = <uint8_t *>malloc(length + 1)
        self._offsets = <size_t *>malloc((length + 1) * sizeof(size_t))
        if self._chars == NULL or self._offsets == NULL:
            raise MemoryError()
        self._src_len = fs_unescape_chars(self._buf, data.start, data.end, self._chars,
                                          self._offsets)
        self._src = self._chars
        return 0

    # ---- the store's hooks ----------------------------------------------------------

    cdef Py_ssize_t _data_size(self) except -1:
        if self._hex:
            return <Py_ssize_t>(self._src_len // 2)
        return <Py_ssize_t>b64_decoded_size(self._src, self._src_len) if self._src_len else 0

    cdef bint _check_data(self) except -1:
        cdef fs_value *data = &self._fr.keys[FS_KEY_DATA]
        self._check_json(self._buf, self._n, self._fr)
        if data.kind == FS_STRING and data.has_escape and self._offsets == NULL:
            # a backslash the scanner skipped: the exact, escaped source from now on
            self._unescape()
            return True
        return False

    cdef object _decode_into(self, uint8_t *target, size_t size):
        """Decode the chunk's base64 (self._src) into target, which has room for size
        bytes, without the GIL for a large one: None when done, True when the data
        turned out to hold escapes (_check_data), or the FrameError of invalid base64
        with its offset in the frame."""
        cdef size_t written = 0, pos = 0
        cdef b64_status st
        cdef const uint8_t *src = self._src
        cdef size_t length = self._src_len
        if self._hex:
            st = hex_decode(src, length, target, size, &written, &pos)
        elif length >= GIL_RELEASE_BYTES:
            with nogil:
                st = b64_decode(src, length, target, size, &written, &pos)
        else:
            st = b64_decode(src, length, target, size, &written, &pos)
        if st == B64_OK:
            return None
        if self._offsets == NULL:
            if self._check_data():
                return True
            return FrameError(BASE64_CODES[st], self._fr.keys[FS_KEY_DATA].start + pos)
        return FrameError(BASE64_CODES[st], self._offsets[pos])

    cdef object _decode(self, _Segment segment, size_t size):
        global _open_everywhere
        cdef _CSegment seg = <_CSegment>segment
        cdef uint8_t no_output = 0
        cdef uint8_t *target
        if not self._keep_audio:
            return self._decode_apart(seg, size)
        if size == 0:
            target = &no_output  # still decoded: "=" has no output but is invalid
        else:
            if seg.length + size > seg.capacity or seg.data == NULL:
                self._reserve(seg, seg.length + size)
            target = seg.data + seg.length
        error = self._decode_into(target, size)
        if error is None:
            _open_everywhere += size
        return error

    cdef object _decode_apart(self, _CSegment seg, size_t size):
        """keep_audio=False: decode the chunk into a buffer of its own, after the bytes of
        a sample split across frames that the segment carried; what is left of a sample
        at its end is carried on. Its AudioChunk (self._pending) is then the only holder
        of that buffer: nothing a view sees is ever written again."""
        cdef size_t width = seg.fmt.width
        cdef size_t carried = seg.length % width
        cdef size_t total = carried + size
        cdef size_t whole = total // width * width
        cdef _AudioBuffer audio = _AudioBuffer.__new__(_AudioBuffer)
        audio.data = <uint8_t *>malloc(total if total else 1)
        if audio.data == NULL:
            raise MemoryError()
        audio.capacity = total
        audio.readonly = True
        memcpy(audio.data, seg.tail, carried)
        error = self._decode_into(audio.data + carried, size)
        if error is not None:
            return error
        memcpy(seg.tail, audio.data + whole, total - whole)
        audio.length = <Py_ssize_t>whole
        if whole:
            self._pending = audio
        return None

    cdef object _chunk_event(self, _Context ctx, _Segment segment, size_t first, size_t end):
        cdef _CSegment seg = <_CSegment>segment
        cdef _AudioBuffer audio
        cdef AudioChunk chunk = AudioChunk.__new__(AudioChunk)
        if not self._keep_audio:
            audio = self._pending
            self._pending = None
            self._fill(chunk, ctx, seg, first, end, audio, 0)
        else:
            self._fill(chunk, ctx, seg, first, end, self._lend(seg, end), first)
        return chunk

    @cython.final
    cdef inline void _fill(self, AudioChunk chunk, _Context ctx, _CSegment seg, size_t first,
                           size_t end, _AudioBuffer audio, size_t offset):
        """Store._new_chunk's work, with C stores (no call into the rules' module)."""
        chunk.context_id = ctx.context_id
        chunk.flush_id = seg.label
        chunk.start = first >> seg.fmt.shift
        chunk._fmt = seg.fmt
        chunk._owner = audio
        chunk._offset = offset
        chunk._nbytes = end - first

    @cython.final
    cdef inline _AudioBuffer _lend(self, _CSegment seg, size_t end):
        """The segment's buffer as an _AudioBuffer lending its first ``end`` bytes: made
        with the segment's first chunk, which it then owns (``lent``)."""
        cdef _AudioBuffer audio = seg.owner
        if audio is None:
            audio = _AudioBuffer.__new__(_AudioBuffer)
            audio.data = seg.data
            audio.capacity = seg.capacity
            audio.readonly = True
            seg.owner = audio
            seg.lent = True
        audio.length = <Py_ssize_t>end
        return audio

    cdef void _discard(self, _Segment segment):
        cdef _CSegment seg = <_CSegment>segment
        self._reserved -= seg.capacity
        seg.capacity = 0
        if not seg.lent:
            free(seg.data)
        seg.data = NULL
        seg.owner = None
        seg.lent = False

    cdef _Segment _new_blank_segment(self):
        return _CSegment.__new__(_CSegment)

    cdef object _hand_over(self, _Segment segment):
        global _open_everywhere
        cdef _CSegment seg = <_CSegment>segment
        cdef _AudioBuffer audio
        cdef uint8_t *trimmed
        cdef size_t width = seg.fmt.width
        cdef size_t whole = seg.length // width * width
        cdef bint alone
        if not self._keep_audio:
            self._trailing = PyBytes_FromStringAndSize(<const char *>seg.tail,
                                                       seg.length - whole)
            return _frombuffer(b"", seg.fmt.dtype)
        _open_everywhere -= seg.length
        self._reserved -= seg.capacity
        # stream mode: the buffer the chunks' views share becomes the samples' (trimmed
        # only if no view holds it: realloc may move it). The sink lets go of its last
        # event (_streamed): it holds no finished audio.
        self._out = None
        alone = seg.owner is None or _only_segment(seg)
        if seg.owner is None:
            audio = _AudioBuffer.__new__(_AudioBuffer)
            audio.readonly = self._stream
        else:
            audio = seg.owner
            seg.owner = None
            seg.lent = False
        audio.capacity = seg.capacity
        seg.capacity = 0
        if seg.data != NULL and alone:
            trimmed = <uint8_t *>realloc(seg.data, seg.length if seg.length else 1)
            if trimmed != NULL:
                seg.data = trimmed
                audio.capacity = seg.length
        audio.data = seg.data
        audio.length = seg.length
        seg.data = NULL
        self._trailing = PyBytes_FromStringAndSize(<const char *>audio.data + whole,
                                                   seg.length - whole)
        if whole == seg.length:  # (numpy takes 300 ns longer to parse a count)
            return _frombuffer(audio, seg.fmt.dtype)
        return _frombuffer(audio, seg.fmt.dtype, whole // width)

    cdef object _ready(self, object segment):
        ready = _object_new(SegmentReady)
        PyObject_GenericSetAttr(ready, "segment", segment)
        return ready

    cdef object _payload(self):
        return load_payload(PyBytes_FromStringAndSize(<const char *>self._buf, self._n))

    cdef Py_ssize_t _field_offset(self, object name) except -1:
        cdef int key = FS_KEY_WORD_TIMESTAMPS if name == "word_timestamps" \
            else FS_KEY_PHONEME_TIMESTAMPS
        if self._fr.keys[key].kind != FS_ABSENT:
            return self._fr.keys[key].value_offset
        return self._fr.object_offset

    cdef void _touch(self, _Context ctx):
        self._last = ctx
        if ctx.raw_id is not None:
            self._recent[_recent_slot(ctx.raw_id, len(ctx.raw_id))] = ctx

    cdef void _forget(self, _Context ctx):
        cdef size_t slot
        if ctx is self._last:
            self._last = None
        if ctx.raw_id is not None:
            slot = _recent_slot(ctx.raw_id, len(ctx.raw_id))
            if self._recent[slot] is ctx:
                self._recent[slot] = None

    # ---- contexts ---------------------------------------------------------------------

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

    # ---- buffers ----------------------------------------------------------------------

    cdef int _reserve(self, _CSegment seg, size_t needed) except -1:
        """Make room for needed bytes: the first time a warm pooled buffer or the
        prealloc reservation, then geometric growth (never past the cap unless needed).

        The reservation is address space, not memory, but address space runs out too
        (ulimit -v, overcommit limits: 100,000 open segments of 10 s at 44.1 kHz would
        reserve 84 GB). So the reserved room no audio fills yet, over all open segments,
        stays within max_total_bytes: past that, a segment starts with what its first
        chunk needs and grows geometrically. Address space is then bounded by about
        three times max_total_bytes."""
        global _grown_by_copy
        cdef size_t capacity, pooled = 0, unused
        cdef uint8_t *grown
        cdef uint8_t *warm
        if seg.data == NULL:
            capacity = seg.fmt.prealloc if seg.fmt.prealloc > needed else needed
            unused = self._reserved - self._open_bytes if self._reserved > self._open_bytes else 0
            if capacity > needed and unused + capacity - needed > self._max_total_bytes:
                capacity = needed
            warm = _pool_take(&pooled)
            if warm != NULL and pooled >= needed \
                    and unused + pooled - needed <= self._max_total_bytes:
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
        if capacity > self._max_segment_bytes:
            capacity = self._max_segment_bytes
        if capacity < needed:
            capacity = needed
        if seg.owner is not None and self._out_free():
            self._out = None  # the last event, unseen: it must not keep the buffer in place
        if seg.owner is not None and not _only_segment(seg):
            # stream mode, and a chunk or a view holds the buffer: realloc could move or
            # free it under them. Grow into a new buffer; the old one stays theirs (its
            # _AudioBuffer returns it to the pool when the last of them lets go).
            grown = <uint8_t *>malloc(capacity)
            if grown == NULL:
                raise MemoryError()
            memcpy(grown, seg.data, seg.length)
            seg.owner = None
            seg.lent = False
            _grown_by_copy += 1
        else:
            grown = <uint8_t *>realloc(seg.data, capacity)
            if grown == NULL:
                raise MemoryError()
            if seg.owner is not None:
                seg.owner.data = grown
                seg.owner.capacity = capacity
        seg.data = grown
        self._reserved += capacity - seg.capacity
        seg.capacity = capacity
        return 0


cdef inline void _fall_back(fs_frame *fr) noexcept:
    """An envelope's frame without its context at context_key (absent or null) names it
    at context_fallback_key, when that is a string (else its field check reports it)."""
    cdef fs_value *v = &fr.keys[FS_KEY_CONTEXT_ID]
    if (v.kind == FS_ABSENT or v.kind == FS_NULL) \
            and fr.keys[FS_KEY_CONTEXT_FALLBACK].kind == FS_STRING:
        v[0] = fr.keys[FS_KEY_CONTEXT_FALLBACK]


cdef object _raw_string(const uint8_t *buf, fs_value *v):
    """A validated JSON string value: bytes when written without escapes, else str."""
    if not v.has_escape:
        return PyBytes_FromStringAndSize(<const char *>buf + v.start, v.end - v.start)
    return json.loads(PyBytes_FromStringAndSize(<const char *>buf + v.start - 1,
                                                v.end - v.start + 2))
