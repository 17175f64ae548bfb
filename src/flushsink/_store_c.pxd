# C types for _store.py compiled as flushsink._store_c (_store_c.py links to it): the
# attributes the compiled core's steady-state append reads directly, and the store's
# methods as C methods, which ext/_speedups.pyx's Sink overrides where it says so in
# _store.py ("what a core provides"). Keep in step with _store.py: Cython checks that
# every name declared here is defined there.

import cython
from libc.stdint cimport int64_t

cdef int TYPE_NONE, TYPE_CHUNK, TYPE_FLUSH_DONE, TYPE_DONE, TYPE_ERROR
cdef int TYPE_TIMESTAMPS, TYPE_PHONEME_TIMESTAMPS, TYPE_UNKNOWN
cdef tuple _EMPTY


cdef class _Format:
    cdef object format, dtype
    cdef size_t width, bytes_per_second, prealloc, shift


cdef class _Segment:
    cdef size_t length
    cdef int64_t label
    cdef bint unlabelled
    cdef _Format fmt
    cdef double start
    cdef list words, phonemes
    cdef unsigned long long lost_chunks, lost_bytes
    cdef object lost_reason


cdef class AudioChunk:
    cdef readonly object context_id
    cdef readonly int64_t flush_id
    cdef readonly size_t start
    cdef _Format _fmt
    cdef object _owner
    cdef size_t _offset, _nbytes
    cdef object _samples, _data


cdef class _Context:
    cdef object context_id
    cdef bytes raw_id
    cdef public _Format fmt       # (public: set_format, a def method, sets it)
    cdef dict open
    cdef _Segment current
    cdef int64_t next_label
    cdef set finished
    cdef list finished_order
    cdef size_t finished_pos
    cdef size_t stored
    cdef readonly unsigned long long frames  # (readonly: activity reads it)

    cdef void refresh_current(self)


cdef class Store:
    cdef object _format
    cdef double _prealloc_seconds
    cdef size_t _max_segment_bytes, _max_total_bytes, _max_ended_contexts
    cdef size_t _max_open_segments, _max_timestamps, _max_finished_labels
    cdef bint _drop_unannounced
    cdef bint _stream, _keep_audio
    cdef object _envelope         # None: Cartesia's frames (the cores' own intake)
    cdef dict _contexts, _ended, _formats
    cdef _Format _default
    cdef size_t _open_bytes, _open_timestamps
    cdef size_t _open_segments
    cdef unsigned long long _fed, _frames, _chunks, _audio_bytes, _dropped, _segments
    cdef object _lock
    cdef unsigned long _owner
    cdef bint _adopting, _opening
    cdef object _trailing
    cdef object __weakref__       # a client registers the Sink it uses (one client each)

    # the thread contract (the compiled core overrides both)
    cdef int _acquire(self) except -1
    cdef void _release(self)

    # what a core provides
    cdef void _start(self) except *
    cdef Py_ssize_t _data_size(self) except -1
    cdef bint _check_data(self) except -1
    cdef object _decode(self, _Segment seg, size_t size)
    cdef void _discard(self, _Segment seg)
    cdef _Segment _new_blank_segment(self)
    cdef object _hand_over(self, _Segment seg)
    cdef object _ready(self, object segment)
    cdef object _chunk_event(self, _Context ctx, _Segment seg, size_t first, size_t end)
    @cython.locals(chunk=AudioChunk)
    cdef AudioChunk _new_chunk(self, _Context ctx, _Segment seg, size_t first, size_t end,
                               object owner, size_t offset)
    cdef object _payload(self)
    cdef Py_ssize_t _field_offset(self, object name) except -1
    cdef void _touch(self, _Context ctx)
    cdef void _forget(self, _Context ctx)

    # the rules
    cdef _Format _prepared(self, object format)
    @cython.locals(ctx=_Context)
    cdef _Context _new_context(self, object cid)
    @cython.locals(seg=_Segment)
    cdef _Segment _new_segment(self, _Context ctx, int64_t label, bint unlabelled)
    cdef bint _unwelcome(self, object cid) except -1
    cdef tuple _drop(self)
    @cython.locals(cur=_Segment, seg=_Segment)
    cdef _Segment _resolve(self, _Context ctx, bint has_flush, int64_t label)
    cdef void _register(self, _Context ctx, bint new_context, _Segment seg, bint new_segment,
                       bint adopt, int64_t label)
    cdef void _stored(self, _Context ctx, _Segment seg, size_t size)
    @cython.locals(new_context=bint, new_segment=bint)
    cdef object _chunk(self, _Context ctx, object cid, bint has_flush, int64_t label)
    @cython.locals(size=size_t, current=size_t, seg_label=int64_t, seg=_Segment,
                   before=size_t, width=size_t, first=size_t, end=size_t)
    cdef object _put(self, _Context ctx, bint new_context, _Segment found, bint new_segment,
                     bint adopt, bint has_flush, int64_t label)
    @cython.locals(seg=_Segment)
    cdef void _lose(self, _Context ctx, bint new_context, _Segment found, _Segment opened,
                   bint new_segment, bint adopt, bint has_flush, int64_t label, size_t size,
                   object reason)
    @cython.locals(new_context=bint, new_segment=bint, adopt=bint, found=_Segment,
                   cur=_Segment, seg=_Segment)
    cdef tuple _other(self, _Context ctx, object cid, int ftype, bint has_flush, int64_t label)
    cdef object _finish(self, _Context ctx, _Segment seg, bint complete, object error)
    @cython.locals(cap=size_t)
    cdef void _remember_finished(self, _Context ctx, int64_t label)
    cdef list _finish_all(self, _Context ctx, bint complete, object error)
    cdef object _type_of(self, object message)
    cdef object _error_event(self, object cid, bint has_context, object message)
    cdef void _end(self, object cid)
