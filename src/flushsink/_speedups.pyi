"""Type stub of the compiled core (ext/_speedups.pyx).

It must describe the same API as the pure-Python twin, ``flushsink._fallback``: the two
are interchangeable behind ``flushsink._accel`` (tests/test_packaging.py compares them).
"""

from _typeshed import ReadableBuffer

from ._common import SinkStats as SinkStats
from .formats import AudioFormat
from .segments import Event, SegmentReady

class Sink:
    """Turns Cartesia TTS websocket frames into finished audio segments (docs/sink.md)."""

    def __init__(
        self,
        format: AudioFormat = ...,
        *,
        prealloc_seconds: float = 10.0,
        max_segment_bytes: int = 268435456,
        max_total_bytes: int = 1073741824,
        max_ended_contexts: int = 10000,
    ) -> None: ...
    @property
    def format(self) -> AudioFormat: ...
    @property
    def stats(self) -> SinkStats: ...
    def set_format(self, context_id: str | None, format: AudioFormat) -> None: ...
    def feed(self, frame: ReadableBuffer | str) -> tuple[Event, ...]: ...
    def cancel(self, context_id: str | None) -> tuple[SegmentReady, ...]: ...
    def close(self, reason: str = "closed") -> tuple[SegmentReady, ...]: ...

def b64decode(data: ReadableBuffer) -> bytes: ...
def simd_path() -> str: ...
def _set_simd_path(name: str) -> str: ...
