"""The C scanner with and without its memory of earlier frames (frame.c's envelope
template) agrees on every frame: tests/scan_memo.c, built here with the system
compiler (and AddressSanitizer + UBSan where it has them), scans mutated near-copies of
server frames both ways. The Python-level tests compare the compiled core with the twin;
this one reaches the scanner directly, a million frames a second.

Skipped where there is no C compiler or no ext/ sources (an installed wheel).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

import reference as ref

HERE = Path(__file__).resolve().parent
EXT = HERE.parent / "ext"


def compiler() -> str | None:
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("cc")


@pytest.fixture(scope="module")
def scan_memo(tmp_path_factory) -> Path:
    cc = compiler()
    if cc is None or not (EXT / "frame.c").exists():
        pytest.skip("needs a C compiler and the ext/ sources")
    binary = tmp_path_factory.mktemp("scan_memo") / "scan_memo"
    sources = [str(HERE / "scan_memo.c"), str(EXT / "frame.c"), f"-I{EXT}",
               "-DFS_TEMPLATE_STATS", "-o", str(binary)]
    for flags in (["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
                  ["-O2"]):
        if subprocess.run([cc, "-std=c11", *flags, *sources], capture_output=True).returncode == 0:
            return binary
    pytest.fail("tests/scan_memo.c did not build")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scan_with_and_without_memory_agree(scan_memo, seed):
    iterations = ref.examples(200_000)  # (a tenth in make check)
    result = subprocess.run([str(scan_memo), str(iterations), str(seed)], capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"{iterations} iterations, 0 mismatches" in result.stdout
    # both kinds of template answered frames: data last and data inside, the latter with
    # data's end guessed from the suffix too (not vacuous): about 1 in 150 iterations each
    hits = re.search(r"template hits: (\d+) data last, (\d+) data inside \((\d+) of them guessed",
                     result.stdout)
    assert hits and all(int(count) > iterations // 2000 for count in hits.groups()), result.stdout
    # and the envelopes' templates (fs_scan_env) answered many too (1 in 4), most guessing
    # where the audio ends
    env_hits = re.search(r"envelope template hits: (\d+) \((\d+) of them guessed", result.stdout)
    assert env_hits and int(env_hits.group(1)) > iterations // 20 \
        and int(env_hits.group(2)) > iterations // 200, result.stdout
