"""``flushsink.batch.ray`` imports ray only when a job runs: ``import flushsink``,
``import flushsink.batch`` and the module itself leave it out, whether or not ray is
installed, and without ray a job says which extra to install."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import flushsink
import flushsink.batch
assert "flushsink.batch.ray" not in sys.modules
import flushsink.batch.ray
assert "ray" not in sys.modules, "ray imported"
"""

WITHOUT_RAY = """
import sys
sys.modules["ray"] = None  # as if it were not installed
from flushsink.batch import MissingDependency
from flushsink.batch.ray import run
try:
    run(sys.argv[1], sys.argv[2], url="ws://127.0.0.1:9")
except MissingDependency as exc:
    assert "flushsink[ray]" in str(exc), exc
else:
    raise AssertionError("no MissingDependency")
"""


def test_ray_is_imported_only_when_a_job_runs():
    subprocess.run([sys.executable, "-c", CHECK], check=True, timeout=60)


def test_without_ray_a_job_names_the_extra(tmp_path):
    source = tmp_path / "rows.jsonl"
    source.write_text('{"id": "a", "text": "Hi."}\n')
    subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(source), str(tmp_path / "out")],
                   check=True, timeout=60)
