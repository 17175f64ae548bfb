#!/usr/bin/env python3
"""Base64 decoder throughput: flushsink's kernels next to pybase64 and the standard library.

Two views, both in GB/s of base64 input:
  C      the kernels timed from C (benchmarks/_b64_kernels.c compiles ext/b64.c with
         setup.py's generic flags): best of 25 hot loops (~1 ms each, the thread's CPU
         time), no Python; input and output stay in L1/L2
  Python flushsink._speedups.b64decode(data) on each kernel, pybase64.b64decode(data,
         validate=True), binascii.a2b_base64(data, strict_mode=True) and
         base64.b64decode(data): median of interleaved repeats (the thread's CPU time, so
         other processes' time slices on a shared machine do not count), including the
         call and the allocation of the result

Sizes: 16 KiB and 64 KiB, and the data field of 20/100/500 ms chunks of 44.1 kHz s16le
(2352, 11760, 58800 characters). Every decoder's output is checked against the input.

Usage: python benchmarks/bench_b64.py [--repeats N] [--json]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _cbuild  # noqa: E402
from bench_sink import compiler_version, cpu_description  # noqa: E402

SIZES = {"20ms@44.1k": 2352, "100ms@44.1k": 11760, "16KiB": 16384, "500ms@44.1k": 58800,
         "64KiB": 65536}
KERNELS = ("avx512", "avx2", "scalar")

notes: list[str] = []


def payloads():
    rng = random.Random(64)
    out = {}
    for label, size in SIZES.items():
        raw = rng.randbytes(size // 4 * 3)
        out[label] = (raw, base64.b64encode(raw))
    return out


def c_view(data):
    try:
        driver = _cbuild.build("_flushsink_b64_kernels", HERE / "_b64_kernels.c",
                               ["-O3", "-std=c11", "-fno-strict-aliasing"],
                               [HERE.parent / "ext"])
    except OSError as exc:
        notes.append(f"C view skipped: {exc}")
        return {}
    results = {}
    for kernel in KERNELS:
        for label, (raw, encoded) in data.items():
            iterations = max(1, int(4e7 // len(encoded)))
            try:
                ns = driver.time_decode(kernel, encoded, iterations, 25)
            except ValueError:
                break
            results[(f"flushsink[{kernel}]", label)] = len(encoded) / ns
    return results


def python_decoders():
    decoders = []
    try:
        from flushsink import _speedups
    except ImportError as exc:
        notes.append(f"flushsink compiled core skipped: {exc}")
        _speedups = None
    if _speedups is not None:
        for kernel in KERNELS:
            try:
                _speedups._set_simd_path(kernel)
            except ValueError:
                notes.append(f"flushsink[{kernel}] skipped: not supported by this CPU")
                continue

            def decode(data, _kernel=kernel, _s=_speedups):
                return _s.b64decode(data)
            decode.kernel = kernel
            decoders.append((f"flushsink[{kernel}]", decode))
        _speedups._set_simd_path("auto")
    try:
        import pybase64
        decoders.append(("pybase64 validate=True", lambda d: pybase64.b64decode(d, validate=True)))
    except ImportError as exc:
        notes.append(f"pybase64 skipped: {exc}")
    decoders.append(("binascii strict_mode", lambda d: binascii.a2b_base64(d, strict_mode=True)))
    decoders.append(("base64.b64decode", base64.b64decode))
    return decoders, _speedups


def python_view(data, repeats):
    decoders, speedups = python_decoders()
    for name, decode in decoders:
        if speedups is not None and hasattr(decode, "kernel"):
            speedups._set_simd_path(decode.kernel)
        for label, (raw, encoded) in data.items():
            assert decode(encoded) == raw, (name, label)
    samples = {(name, label): [] for name, _ in decoders for label in data}
    for r in range(repeats):
        order = decoders[r % len(decoders):] + decoders[:r % len(decoders)]
        for name, decode in order:
            if speedups is not None and hasattr(decode, "kernel"):
                speedups._set_simd_path(decode.kernel)
            for label, (raw, encoded) in data.items():
                loops = max(1, int(2e7 // len(encoded)))
                start = time.thread_time_ns()
                for _ in range(loops):
                    decode(encoded)
                ns = (time.thread_time_ns() - start) / loops
                samples[(name, label)].append(len(encoded) / ns)
    if speedups is not None:
        speedups._set_simd_path("auto")
    return {k: statistics.median(v) for k, v in samples.items()}, [n for n, _ in decoders]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    data = payloads()
    env = {"cpu": cpu_description(),
           "python": f"{platform.python_implementation()} {platform.python_version()}",
           "compiler": compiler_version()}
    try:
        import flushsink
        env["flushsink"] = f"{flushsink.__version__} (core {flushsink.BACKEND}, default simd {flushsink.SIMD})"
    except ImportError:
        pass
    try:
        import pybase64
        env["pybase64"] = pybase64.get_version()
    except ImportError:
        pass
    c_results = c_view(data)
    py_results, names = python_view(data, args.repeats)
    labels = list(SIZES)
    if args.json:
        json.dump({"environment": env, "unit": "GB/s of base64 input",
                   "c": {name: {label: round(c_results[(name, label)], 2) for label in labels}
                         for name in dict.fromkeys(k[0] for k in c_results)},
                   "python": {name: {label: round(py_results[(name, label)], 2) for label in labels}
                              for name in names},
                   "notes": notes}, sys.stdout, indent=2)
        print()
        return
    print("flushsink base64 decoder benchmark (GB/s of base64 input)")
    for k, v in env.items():
        print(f"  {k:10} {v}")
    header = "".join(f"{label:>13}" for label in labels)
    if c_results:
        print(f"\nC, best of 25 hot loops {header}")
        for name in dict.fromkeys(k[0] for k in c_results):
            print(f"{name:24}" + "".join(f"{c_results[(name, l)]:13.2f}" for l in labels))
    print(f"\nPython call, median     {header}")
    for name in names:
        print(f"{name:24}" + "".join(f"{py_results[(name, l)]:13.2f}" for l in labels))
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
