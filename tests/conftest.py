"""Shared test set-up, and how every test runs on both cores.

One mechanism: the suite runs once per core, and each run loads its core the way a user
would, through the package's selector (flushsink._accel). ``make test`` runs it on the
compiled core (test-compiled) and again with FLUSHSINK_PURE_PYTHON=1 on the pure-Python
twin (test-pure); test-kernels and test-sdk repeat parts of it the same way.
FLUSHSINK_EXPECT=compiled|pure makes a run fail at once if the other core was loaded (for
example, if the extension did not build).

A test reaches the core of its run through flushsink (``flushsink.Sink``, the clients) or
the ``core`` fixture (the module the selector picked, for ``b64decode`` and ``SinkStats``
too). No test is parametrized over the cores.

Some tests are about one core by name, or compare the two: the differential tests and
the fuzz smoke run (compiled core against the twin, tests/helpers/differential.py), the
SIMD kernels, the compiled core's buffer pool, the twin's fast intake. They import the
module they need, or take ``compiled_core``, which skips where the extension was not
built. Shared helpers live in tests/helpers/ (see its docstring), never in a test module.
"""

from __future__ import annotations

import os

import pytest

import flushsink
from flushsink import _accel

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
def core():
    """The core this run loaded (``flushsink.BACKEND`` says which)."""
    return _accel.core


@pytest.fixture
def compiled_core():
    """The compiled core, whichever core the run loaded; skips only when it was not built
    (the compiled run itself checks that it was)."""
    if _speedups is None:
        pytest.skip("compiled core not built")
    return _speedups
