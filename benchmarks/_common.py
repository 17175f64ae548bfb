"""Helpers shared by bench_e2e.py, bench_scale.py and bench_finalize.py: the environment
header, CPU and memory readings of this process, and a child process that is always
stopped. Import this module before numpy (it pins OPENBLAS_NUM_THREADS=1: idle BLAS
threads otherwise spin and steal one of the machine's cores from the measurement)."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from typing import Iterator, Optional, Sequence

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

PACKAGES = ("flushsink", "websockets", "numpy", "orjson", "pybase64", "cartesia", "pydantic")


# --- environment ---------------------------------------------------------------------------

def cpu_description() -> str:
    model, flags = platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512bw", "avx512vbmi") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, {' '.join(simd) or 'no AVX2/AVX-512'}"


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            module = sys.modules.get(name)
            versions[name] = getattr(module, "__version__", "source tree") if module else "missing"
    return versions


def environment(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """What a reader needs to compare two runs: machine, load, interpreter, core, versions."""
    import flushsink

    env = {
        "cpu": cpu_description(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min, at start)",
        "python": f"{platform.python_implementation()} {platform.python_version()} "
                  f"({platform.platform()})",
        "flushsink": f"{flushsink.__version__} core={flushsink.BACKEND} simd={flushsink.SIMD} "
                     f"({os.path.dirname(flushsink.__file__)})",
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", ""),
    }
    versions = package_versions([n for n in PACKAGES if n != "flushsink"])
    env["packages"] = ", ".join(f"{k} {v}" for k, v in versions.items())
    env.update(extra or {})
    return env


def first_touch_us(mib: int = 64) -> float:
    """CPU microseconds the kernel takes to hand this process a page on its first write:
    a fresh anonymous mapping written one byte per 4 KiB (numpy's strided store, so the
    loop costs next to nothing beside the faults). About 0.1-0.3 us on bare metal; on a
    VM whose host reclaims guest memory it can be ten times that, and a receiver keeping
    audio pays it for every page the audio fills."""
    import mmap

    import numpy as np

    size = mib << 20
    area = mmap.mmap(-1, size)
    try:
        pages = np.frombuffer(area, dtype=np.uint8)
        start = time.process_time()
        pages[::4096] = 1
        spent = time.process_time() - start
        del pages
    finally:
        area.close()
    return spent / (size // 4096) * 1e6


def print_environment(env: dict[str, str]) -> None:
    width = max(len(k) for k in env)
    for key, value in env.items():
        print(f"{key:<{width}}  {value}")
    print()


# --- readings of this process ----------------------------------------------------------------

def cpu_seconds() -> float:
    """CPU time of the whole process (every thread, user + system)."""
    return time.process_time()


def rss_bytes() -> int:
    """Current resident set size (VmRSS)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since the start or the last :func:`reset_peak_rss`
    (VmHWM; falls back to ru_maxrss where /proc is missing)."""
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """min-max of repeats relative to the median, to show the noise next to a median."""
    if len(values) < 2:
        return ""
    mid = statistics.median(values)
    return f"{(min(values) / mid - 1) * 100:+.0f}/{(max(values) / mid - 1) * 100:+.0f}%"


# --- a child process that is always stopped ----------------------------------------------------

@contextlib.contextmanager
def child_process(argv: Sequence[str], ready_prefix: str, timeout: float = 30.0,
                  env: Optional[dict[str, str]] = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start ``argv``, wait for a stdout line starting with ``ready_prefix`` and yield
    (process, rest of that line). The child is terminated (then killed) on exit; its
    stdin is a pipe, so a child that watches stdin also ends when this process dies."""
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv!r} did not become ready in {timeout} s")
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{argv!r} exited with {proc.wait()} before it was ready")
            if line.startswith(ready_prefix):
                yield proc, line[len(ready_prefix):].strip()
                break
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def exit_when_parent_goes() -> None:
    """In a child started by :func:`child_process`: exit as soon as stdin closes."""
    import threading

    def watch() -> None:
        try:
            sys.stdin.read()
        finally:
            os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def route_naively(frames, loads, b64decode, segments, handed=None):
    """The receive loop everybody writes, the baseline of bench_sink and bench_twin: each
    frame parsed, a chunk's data decoded onto a bytearray per (context_id, flush_id), the
    segment popped at its flush_done (and copied into ``handed`` when given, for checks).
    Each message is let go before the next frame is parsed (pysimdjson's parser refuses
    to parse again while a document of it is alive). Returns the last segment popped, or
    None."""
    done = None
    for frame in frames:
        message = loads(frame)
        kind = message["type"]
        if kind == "chunk":
            key = (message["context_id"], message.get("flush_id"))
            segment = segments.get(key)
            if segment is None:
                segment = segments[key] = bytearray()
            segment += b64decode(message["data"])
        elif kind == "flush_done":
            key = (message["context_id"], message.get("flush_id"))
            done = segments.pop(key)
            if handed is not None:
                handed[key] = bytes(done)
        message = None
    return done
