"""Every ```python block of README.md runs, as a user pasting it into a file would run it:
a subprocess of its own in an empty directory. The blocks use the embedded emulator, so
they need no network and no API key.

A block that imports a framework's drop-in (``from flushsink.integrations.pipecat ...``)
runs where that framework is installed: make test-frameworks selects them by their id
(``README.md:LINE-pipecat``), the main suite skips them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[int, str]]:
    """(line number of the opening fence, code) of each python block."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


BLOCKS = python_blocks()
#: The framework a drop-in module needs, by module name.
FRAMEWORKS = {"pipecat": "pipecat", "livekit": "livekit.plugins.cartesia"}
_DROP_IN = re.compile(r"^from flushsink\.integrations\.(\w+) import", re.MULTILINE)


def framework_of(code: str) -> str | None:
    m = _DROP_IN.search(code)
    return m.group(1) if m else None


def block_id(line: int, code: str) -> str:
    framework = framework_of(code)
    return f"README.md:{line}" + (f"-{framework}" if framework else "")


def test_readme_has_the_quickstarts():
    # guards the extraction itself: a changed fence must not make the test below vacuous
    assert len(BLOCKS) >= 3
    assert {framework_of(code) for _, code in BLOCKS} >= set(FRAMEWORKS) | {None}


@pytest.mark.parametrize("line,code", BLOCKS, ids=[block_id(line, code) for line, code in BLOCKS])
def test_readme_block_runs(tmp_path, line, code):
    framework = framework_of(code)
    if framework is not None:
        pytest.importorskip(FRAMEWORKS[framework],
                            reason=f"needs {framework} (make test-frameworks runs this block)")
    script = tmp_path / f"readme_line_{line}.py"
    script.write_text(code, encoding="utf-8")
    # the parent's environment, so the block runs on the core this suite tests
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"README.md block at line {line} failed:\n{result.stderr}"
    # a failure in a background thread or task does not set the exit status
    for sign in ("Traceback", "was never retrieved"):
        assert sign not in result.stderr, result.stderr
