"""Atheris target: the compiled Sink against the pure twin, frame sequence by frame sequence.

    python fuzz/fuzz_sink.py [libFuzzer flags] [corpus dirs]      (see `make fuzz`)
    python fuzz/fuzz_sink.py --make-corpus DIR                     (the seed corpus)

FUZZ_MODE=raw (default) reads each input as a length-prefixed program of Sink calls
(differential.decode_raw), so libFuzzer's byte mutations hit frames directly;
FUZZ_MODE=structured reads it as the choices of the structure-aware generator (real
frames mutated at the JSON level: differential.generate_structured). Every operation
runs on the compiled core, on the twin and on a shadow sink that never sees rejected
frames; any difference, any exception other than FrameError / CapacityError, or a broken
invariant raises differential.Finding, which libFuzzer reports as a crash (the input is
saved as crash-*; turn it into a test in tests/test_hostile.py).

Coverage: atheris instruments the Python side (the twin's scanner mirrors the C one
branch for branch). When the extension is built with -fsanitize-coverage=trace-pc,trace-cmp
and fuzz/covshim.so is preloaded (the Makefile does both), the C core's basic blocks count
too; see fuzz/covshim.c for why gcc needs the shim.
FLUSHSINK_SIMD picks the base64 kernel; the target refuses to run on another one.
"""

from __future__ import annotations

import importlib
import os
import sys

# the differential engine lives with the tests (tests/helpers/differential.py), which share it
TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests")
sys.path.insert(0, TESTS)

import atheris  # noqa: E402

# a broken sanitizer build must stop the run, not fall back to fuzzing the twin against itself
os.environ.setdefault("FLUSHSINK_REQUIRE_EXT", "1")

with atheris.instrument_imports(include=["flushsink"],
                                exclude=["flushsink.client", "flushsink.sync",
                                         "flushsink.emulator", "flushsink.emulator.speech",
                                         "flushsink.emulator.faults",
                                         "flushsink.emulator.connection",
                                         "flushsink.emulator.server", "flushsink.cli",
                                         "flushsink.session", "flushsink.writers",
                                         "flushsink._bench"]):
    import flushsink  # noqa: E402
    importlib.import_module("flushsink._fallback")  # the twin: its branches are the coverage

from helpers import differential  # noqa: E402  (not instrumented: the generator's branches)
from flushsink import _speedups  # noqa: E402

MODE = os.environ.get("FUZZ_MODE", "raw")
if MODE not in ("raw", "structured"):
    raise SystemExit(f"FUZZ_MODE must be raw or structured, not {MODE!r}")


def test_one_input(data: bytes) -> None:
    if MODE == "raw":
        config, ops = differential.decode_raw(data)
    else:
        config, ops = differential.generate_structured(atheris.FuzzedDataProvider(data))
    differential.run_program(config, ops)


def make_corpus(directory: str) -> None:
    import hashlib
    import random
    os.makedirs(directory, exist_ok=True)
    programs = differential.seed_programs()
    rng = random.Random(3)
    for config, ops in list(programs):  # and each frame of them on its own
        for op in ops[:6]:
            programs.append((config, [op]))
    inputs = [differential.encode_raw(c, o) for c, o in programs]
    inputs += differential.big_seed_inputs()
    if MODE == "structured":
        inputs = [rng.randbytes(rng.randint(16, 400)) for _ in range(64)]
    for data in inputs:
        name = hashlib.sha1(data).hexdigest()
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    print(f"{len(inputs)} seed inputs ({MODE}) in {directory}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make-corpus":
        make_corpus(sys.argv[2])
        return
    wanted = os.environ.get("FLUSHSINK_SIMD", "auto").strip().lower() or "auto"
    path = _speedups.simd_path()
    if wanted != "auto" and path != wanted:
        raise SystemExit(f"FLUSHSINK_SIMD={wanted} but the core uses {path}")
    print(f"fuzz_sink: mode={MODE} core={flushsink.BACKEND} simd={path}", file=sys.stderr)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
