"""Check what `make wheels` put in dist/: one sdist and the wheels a release ships, each
holding exactly the extension modules its tags promise.

    python tools/check_wheels.py dist [--expect cp310-cp310 --expect cp311-abi3 --expect py3-none]

For each wheel, from its file name and its contents:

- a compiled wheel holds each of the extension modules, flushsink/_speedups (the kernels)
  and flushsink/_store_c (the segment rules), exactly once, with the suffix of its tag
  (``.abi3.so`` for cp311-abi3, ``.cpython-310-*.so`` for cp310): a stale module of another
  build left in a build directory would otherwise ride along, and the interpreter that
  matches it would load it instead of the right one;
- its platform tag is a manylinux one (auditwheel repair set it) and `auditwheel show`
  agrees that the wheel is consistent with it;
- it bundles no shared library (no flushsink.libs/): the extension needs only libc;
- the pure wheel (py3-none-any) holds no extension module at all.

Exits 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

MODULES = ("_speedups", "_store_c")
EXTENSION = re.compile(r"^flushsink/(?P<module>_speedups|_store_c)\.(?P<suffix>[^/]+)\.(so|pyd)$")


def extension_suffix(python_tag: str, abi_tag: str, platform_tag: str) -> str:
    """The suffix flushsink/MODULE.SUFFIX.so must have in a wheel with these tags."""
    if abi_tag == "abi3":
        return "abi3"
    version = python_tag.removeprefix("cp")
    machine = re.sub(r"^(manylinux_\d+_\d+|linux)_", "", platform_tag)
    return f"cpython-{version}-{machine}-linux-gnu"


def platform_tags_consistent(wheel: Path, auditwheel: str) -> str:
    """The platform tag `auditwheel show` says the wheel is consistent with."""
    shown = subprocess.run([auditwheel, "show", str(wheel)], capture_output=True, text=True)
    if shown.returncode != 0:
        raise RuntimeError(f"auditwheel show failed: {shown.stderr.strip()}")
    match = re.search(r'consistent with\s+the\s+following\s+platform\s+tag:\s+"([^"]+)"',
                      shown.stdout)
    if not match:
        raise RuntimeError(f"auditwheel show said no platform tag:\n{shown.stdout}")
    return match.group(1)


def check_wheel(wheel: Path, auditwheel: str) -> tuple[str, list[str]]:
    """(python-abi tag, problems) of one wheel."""
    name, _version, python_tag, abi_tag, platform_tags = wheel.name[:-len(".whl")].split("-")
    problems = []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    extensions = [(m.group("module"), m.group("suffix")) for m in map(EXTENSION.match, names) if m]
    stray = [n for n in names if n.endswith((".so", ".pyd")) and not EXTENSION.match(n)]
    if stray:
        problems.append(f"shared objects besides the extension: {stray}")
    if any(n.startswith(f"{name}.libs/") for n in names):
        problems.append("bundles shared libraries (flushsink.libs/): the extension should need only libc")

    if abi_tag == "none":
        if extensions:
            problems.append(f"a pure wheel with extension modules: {extensions}")
        return f"{python_tag}-{abi_tag}", problems

    for platform_tag in platform_tags.split("."):
        if not platform_tag.startswith("manylinux"):
            problems.append(f"platform tag {platform_tag!r} is not a manylinux one "
                            "(the wheel did not go through auditwheel repair)")
    # manylinux2014_x86_64 and the like are aliases of a manylinux_X_Y tag beside them
    wanted = {extension_suffix(python_tag, abi_tag, t) for t in platform_tags.split(".")
              if not re.match(r"manylinux\d", t)}
    for module in MODULES:
        suffixes = [suffix for found, suffix in extensions if found == module]
        if len(suffixes) != 1 or suffixes[0] not in wanted:
            problems.append(f"{module} extension modules {suffixes}, expected exactly one of "
                            f"{sorted(wanted)}")
    try:
        consistent = platform_tags_consistent(wheel, auditwheel)
    except RuntimeError as exc:
        problems.append(str(exc))
    else:
        if consistent not in platform_tags.split("."):
            problems.append(f"auditwheel show: consistent with {consistent!r}, "
                            f"not with the wheel's tags {platform_tags!r}")
    return f"{python_tag}-{abi_tag}", problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dist", type=Path)
    parser.add_argument("--expect", action="append", default=[], metavar="PYTHON-ABI",
                        help="a wheel that must be there (e.g. cp311-abi3); repeat for each")
    parser.add_argument("--auditwheel", default="auditwheel")
    args = parser.parse_args(argv)

    problems = []
    sdists = sorted(args.dist.glob("*.tar.gz"))
    if len(sdists) != 1:
        problems.append(f"{args.dist}: {len(sdists)} sdists, expected one")
    found = {}
    for wheel in sorted(args.dist.glob("*.whl")):
        tags, wheel_problems = check_wheel(wheel, args.auditwheel)
        if tags in found:
            problems.append(f"{wheel.name}: a second {tags} wheel (after {found[tags]})")
        found[tags] = wheel.name
        problems += [f"{wheel.name}: {p}" for p in wheel_problems]
        print(f"{'ok  ' if not wheel_problems else 'BAD '} {wheel.name}")
    for tags in args.expect:
        if tags not in found:
            problems.append(f"{args.dist}: no {tags} wheel")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
