"""Shared test set-up.

The suite runs twice (see the Makefile): on the compiled core, then with
FLUSHSINK_PURE_PYTHON=1 on the pure-Python twin. FLUSHSINK_EXPECT=compiled|pure makes the
run fail at once if the wrong core was loaded (for example if the extension did not build).
Differential tests that need both cores use the ``cores`` fixture.
"""

from __future__ import annotations

import os

import pytest

import flushsink
from flushsink import _fallback

try:
    from flushsink import _speedups
except ImportError:  # pragma: no cover - only when the extension is not built
    _speedups = None


def pytest_report_header(config):
    return f"flushsink {flushsink.__version__}: core={flushsink.BACKEND} simd={flushsink.SIMD}"


def pytest_configure(config):
    expected = os.environ.get("FLUSHSINK_EXPECT")
    if expected and expected != flushsink.BACKEND:
        raise pytest.UsageError(
            f"FLUSHSINK_EXPECT={expected} but flushsink loaded the {flushsink.BACKEND} core"
        )


@pytest.fixture
def compiled_core():
    """The compiled core; skips only when it was not built (the run itself checks that)."""
    if _speedups is None:
        pytest.skip("compiled core not built")
    return _speedups


@pytest.fixture
def pure_core():
    return _fallback


@pytest.fixture(params=["compiled", "pure"])
def any_core(request):
    """Each core in turn, for tests that must hold for both whichever runs."""
    if request.param == "compiled":
        if _speedups is None:
            pytest.skip("compiled core not built")
        return _speedups
    return _fallback
