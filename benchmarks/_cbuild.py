"""Build a one-file CPython extension on the fly (for the benchmarks' C helpers)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def compiler() -> str | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("cc")


def build(name: str, source: Path, flags: list[str], include_dirs: list[Path] = ()):
    """Compile source into module `name` in a temp dir and import it; raises OSError with
    the compiler's output when the build fails."""
    cc = compiler()
    if cc is None:
        raise OSError("no C compiler found")
    out_dir = Path(tempfile.mkdtemp(prefix="flushsink-bench-"))
    target = out_dir / (name + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = [cc, "-shared", "-fPIC", *flags, "-I", sysconfig.get_paths()["include"],
           *[f"-I{d}" for d in include_dirs], str(source), "-o", str(target)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(cmd)}\n{proc.stderr}")
    spec = importlib.util.spec_from_file_location(name, target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    # the loaded library stays mapped; the directory would pile up in /tmp, one per run
    shutil.rmtree(out_dir, ignore_errors=True)
    return module
