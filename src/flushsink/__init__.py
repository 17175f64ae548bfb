"""flushsink: receive Cartesia-style TTS websocket audio fast, one file per flush.

The hot path (:class:`Sink`) is compiled C/Cython when available, with a pure-Python
twin of identical behaviour; ``flushsink.BACKEND`` says which one runs.
"""

from __future__ import annotations

from ._accel import BACKEND, SIMD, AudioChunk, Sink, SinkStats
from .errors import (
    AudioOverflow,
    CapacityError,
    ConnectionLost,
    ContextClosed,
    ContextFailed,
    FlushsinkError,
    FormatError,
    FrameError,
    ReceiveTimeout,
    WriteError,
    SendTimeout,
    HandshakeError,
    AuthenticationError,
    RateLimited,
    ConnectionRateLimited,
    ContextRateLimited,
    ConfigError,
)
from .formats import DEFAULT_FORMAT, AudioFormat
from .envelopes import Envelope
from .segments import (
    ContextDone,
    ContextError,
    Segment,
    SegmentReady,
    ServerError,
    TimedText,
    Event,
    Timestamps,
    Unknown,
)

from .writers import FileWriter
from ._shell import AudioStats
from .client import connect
from ._connection import Retry
from . import sync

from ._version import __version__

__all__ = [
    "BACKEND", "SIMD", "Sink", "SinkStats", "AudioChunk", "AudioFormat", "DEFAULT_FORMAT",
    "Envelope",
    "Segment", "SegmentReady", "ContextDone", "ContextError", "ServerError",
    "Timestamps", "Unknown", "TimedText", "Event",
    "FileWriter", "connect", "sync", "Retry",
    "FlushsinkError", "FrameError", "CapacityError", "FormatError", "WriteError",
    "ContextFailed", "ConnectionLost", "ContextClosed", "ReceiveTimeout", "SendTimeout",
    "HandshakeError", "AuthenticationError", "RateLimited", "ConnectionRateLimited",
    "ContextRateLimited", "ConfigError",
    "AudioOverflow", "AudioStats",
    "__version__",
]
