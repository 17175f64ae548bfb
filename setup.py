"""Declares the one extension; all metadata lives in pyproject.toml.

FLUSHSINK_BUILD_EXT=auto (default): build the extension if possible, else ship the pure twin.
FLUSHSINK_BUILD_EXT=required: a failed build is an error (CI, wheels).
FLUSHSINK_BUILD_EXT=no: pure-Python package.
FLUSHSINK_LIMITED_API=1: build against the stable ABI (Python >= 3.11): one cp311-abi3
    wheel for every later CPython, at a small cost per frame.
FLUSHSINK_SANITIZE=1: build with -fsanitize=address,undefined (debugging only).
FLUSHSINK_ANNOTATE=1: write Cython's annotated HTML next to the .pyx.
"""

import os
import sys

from setuptools import Extension, setup

mode = os.environ.get("FLUSHSINK_BUILD_EXT", "auto").strip().lower()
if mode not in ("auto", "required", "no"):
    raise SystemExit(f"FLUSHSINK_BUILD_EXT must be auto, required or no, not {mode!r}")

limited_api = os.environ.get("FLUSHSINK_LIMITED_API") == "1"
if limited_api and sys.version_info < (3, 11):
    raise SystemExit("FLUSHSINK_LIMITED_API=1 needs Python >= 3.11 (the buffer protocol)")

ext_modules = []
if mode != "no":
    try:
        from Cython.Build import cythonize
    except ImportError:
        if mode == "required":
            raise
        cythonize = None
    if cythonize is not None:
        # -fvisibility=hidden: only PyInit_* is exported, so calls between the
        # extension's own C files (fs_scan, b64_decode) are direct, not through the PLT
        # (an indirect jump that the CPU must predict, and a few % of a chunk when it
        # does not)
        compile_args = ["-O3", "-std=c11", "-Wall", "-Wno-unused-function",
                        "-fvisibility=hidden"]
        link_args = []
        if os.environ.get("FLUSHSINK_SANITIZE") == "1":
            san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
            compile_args += san
            link_args += san
        common = dict(
            py_limited_api=limited_api,
            define_macros=[("Py_LIMITED_API", "0x030B0000"), ("CYTHON_LIMITED_API", "1")]
            if limited_api else [],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
        extensions = [
            # the segment rules: the pure twin's _store.py compiled as it is, typed by
            # src/flushsink/_store_c.pxd (_store_c.py is a link to _store.py)
            Extension("flushsink._store_c", sources=["src/flushsink/_store_c.py"],
                      depends=["src/flushsink/_store_c.pxd"], **common),
            # the kernels: scanner, base64, segment buffers, the steady-state append
            Extension("flushsink._speedups",
                      sources=["ext/_speedups.pyx", "ext/b64.c", "ext/frame.c"],
                      include_dirs=["ext"],
                      depends=["ext/b64.h", "ext/frame.h", "ext/pycompat.h",
                               "src/flushsink/_store_c.pxd"], **common),
        ]
        ext_modules = cythonize(
            extensions,
            include_path=["src"],
            compiler_directives={"language_level": 3, "boundscheck": False,
                                 "wraparound": False, "cdivision": True,
                                 # _store.py's annotations are for mypy; its C types
                                 # come from _store_c.pxd
                                 "annotation_typing": False},
            annotate=os.environ.get("FLUSHSINK_ANNOTATE") == "1",
        )
        # cythonize() returns fresh Extension objects and drops `optional`: set it again.
        for ext in ext_modules:
            ext.optional = mode == "auto"

setup(
    ext_modules=ext_modules,
    options={"bdist_wheel": {"py_limited_api": "cp311"}} if limited_api and ext_modules else {},
)
