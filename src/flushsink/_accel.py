"""The one place that picks the compiled core or the pure-Python twin.

FLUSHSINK_PURE_PYTHON=1 forces the twin. FLUSHSINK_REQUIRE_EXT=1 turns a missing or
broken extension into an ImportError instead of a fallback. Nothing else in the
package imports ``_speedups`` directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


if _flag("FLUSHSINK_PURE_PYTHON"):
    from . import _fallback as core

    BACKEND = "pure"
else:
    try:
        # import_module, not "from . import": a missing module then says so plainly
        # instead of blaming a circular import
        core = importlib.import_module(f"{__package__}._speedups")

        BACKEND = "compiled"
    except ImportError as exc:
        if _flag("FLUSHSINK_REQUIRE_EXT"):
            raise
        # A wheel built without the extension is a choice; a present but broken one is not.
        if importlib.util.find_spec(f"{__package__}._speedups") is not None:
            warnings.warn(
                f"flushsink: the compiled core failed to load ({exc}); using the pure-Python twin",
                RuntimeWarning,
                stacklevel=2,
            )
        from . import _fallback as core

        BACKEND = "pure"

Sink = core.Sink
AudioChunk = core.AudioChunk
SinkStats = core.SinkStats
b64decode = core.b64decode
SIMD = core.simd_path()
