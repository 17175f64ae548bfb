"""What the package says about itself and how it loads: ``--version``, the fallback from a
broken extension to the pure-Python twin, and the type information it ships (py.typed and
a _speedups.pyi stub that describes the same API as the twin)."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import typing
from pathlib import Path

import pytest

import flushsink
from flushsink import _fallback, segments
from flushsink._common import SinkStats
from flushsink.cli import version_text
from flushsink.formats import AudioFormat

PACKAGE_DIR = Path(flushsink.__file__).resolve().parent
STUB = PACKAGE_DIR / "_speedups.pyi"


def run_python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60,
                          env=env)


# --- --version ---------------------------------------------------------------------------

def check_version_output(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    # the subprocess inherits this environment, so it loads the same core and SIMD path
    assert result.stdout == version_text() + "\n"
    assert re.fullmatch(rf"flushsink {re.escape(flushsink.__version__)} \(core: "
                        rf"{flushsink.BACKEND}, simd: {flushsink.SIMD}, loop: (asyncio|uvloop), "
                        rf"Python [\d.]+\S* \w+\)\n", result.stdout), result.stdout


def test_python_m_flushsink_version():
    check_version_output(run_python("-m", "flushsink", "--version"))


def test_console_script_version():
    try:
        dist = importlib.metadata.distribution("flushsink")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("flushsink is not installed (run from a source tree): no console script")
    assert dist.version == flushsink.__version__  # pyproject.toml and __init__ agree
    (entry,) = [ep for ep in dist.entry_points
                if ep.group == "console_scripts" and ep.name == "flushsink"]
    assert entry.value == "flushsink.cli:main"
    name = "flushsink.exe" if os.name == "nt" else "flushsink"
    script = Path(sysconfig.get_path("scripts")) / name
    assert script.exists(), f"{script} was not installed"
    check_version_output(subprocess.run([str(script), "--version"], capture_output=True,
                                        text=True, timeout=60))


# --- the fallback from a broken extension -------------------------------------------------

# Imports flushsink and reports the core it chose and the warnings it gave. With ERROR set,
# flushsink._speedups is first found and then fails to load with ERROR, as a damaged or
# mismatched build does.
_IMPORT_FLUSHSINK = """
import importlib.abc, importlib.util, json, sys, warnings

class BrokenLoader(importlib.abc.Loader):
    def create_module(self, spec):
        raise ERROR

    def exec_module(self, module):
        pass

class BrokenExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "flushsink._speedups":
            return importlib.util.spec_from_loader(name, BrokenLoader())
        return None

if ERROR is not None:
    sys.meta_path.insert(0, BrokenExtension())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import flushsink
print(json.dumps({"backend": flushsink.BACKEND, "simd": flushsink.SIMD,
                  "warnings": [[w.category.__name__, str(w.message)] for w in caught]}))
"""

BROKEN = 'ImportError("broken")'
# a module the extension itself imports is missing: the extension is there but broken
DEPENDENCY_MISSING = 'ModuleNotFoundError("No module named \'numpy._x\'", name="numpy._x")'


def import_flushsink(error: str | None, *, require_ext: bool,
                     package_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Import flushsink in a fresh interpreter, from ``package_dir``'s parent if given."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLUSHSINK_PURE_PYTHON", "FLUSHSINK_REQUIRE_EXT")}
    if require_ext:
        env["FLUSHSINK_REQUIRE_EXT"] = "1"
    if package_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(package_dir.parent), env.get("PYTHONPATH")) if p)
    return run_python("-c", _IMPORT_FLUSHSINK.replace("ERROR", error or "None"), env=env)


def package_without_extension(tmp_path: Path) -> Path:
    """A copy of the installed package without the compiled core: a pure wheel's files."""
    copy = tmp_path / "flushsink"
    extension = shutil.ignore_patterns("_speedups*.so", "_speedups*.pyd", "_store_c*.so",
                                       "_store_c*.pyd", "__pycache__")
    shutil.copytree(PACKAGE_DIR, copy, ignore=extension)
    return copy


@pytest.mark.parametrize("error,reason", [(BROKEN, "broken"),
                                          (DEPENDENCY_MISSING, "No module named 'numpy._x'")])
def test_broken_extension_falls_back_with_a_runtime_warning(error, reason):
    result = import_flushsink(error, require_ext=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["backend"] == "pure" and report["simd"] == "none"
    assert report["warnings"] == [[
        "RuntimeWarning",
        f"flushsink: the compiled core failed to load ({reason}); using the pure-Python twin",
    ]]


def test_broken_extension_with_require_ext_is_an_import_error():
    result = import_flushsink(BROKEN, require_ext=True)
    assert result.returncode == 1
    assert result.stderr.rstrip().endswith("ImportError: broken"), result.stderr
    assert "RuntimeWarning" not in result.stderr


def test_package_without_extension_falls_back_silently(tmp_path):
    copy = package_without_extension(tmp_path)
    result = import_flushsink(None, require_ext=False, package_dir=copy)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"backend": "pure", "simd": "none", "warnings": []}


def test_package_without_extension_with_require_ext_is_an_import_error(tmp_path):
    copy = package_without_extension(tmp_path)
    result = import_flushsink(None, require_ext=True, package_dir=copy)
    assert result.returncode == 1
    last_line = result.stderr.rstrip().rpartition("\n")[2]
    assert last_line.split(":")[0] in ("ImportError", "ModuleNotFoundError"), result.stderr
    assert "_speedups" in last_line, result.stderr


# --- type information --------------------------------------------------------------------

def test_typing_files_are_installed_with_the_package():
    # PACKAGE_DIR is where flushsink was imported from: site-packages under `make test`,
    # so this checks what the wheel installed
    assert (PACKAGE_DIR / "py.typed").is_file()
    assert STUB.is_file()


def _stub() -> tuple[dict[str, ast.FunctionDef], dict[str, ast.FunctionDef], set[str], set[str]]:
    """(module functions, Sink methods, Sink properties, re-exported names) of the stub."""
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    (sink,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Sink"]
    methods: dict[str, ast.FunctionDef] = {}
    for node in sink.body:  # a property's setter shares its name: keep the getter
        if isinstance(node, ast.FunctionDef):
            methods.setdefault(node.name, node)
    properties = {name for name, n in methods.items()
                  if any(isinstance(d, ast.Name) and d.id == "property" for d in n.decorator_list)}
    reexports = {a.asname for n in tree.body if isinstance(n, ast.ImportFrom)
                 for a in n.names if a.asname == a.name}
    return functions, methods, properties, reexports


#: (name, kind, default, annotation) of one parameter
Row = tuple[str, str, object, object]


class _ReadableBuffer:
    """Stands in for _typeshed.ReadableBuffer, which exists only for type checkers."""


_NAMESPACE = {**vars(typing), **vars(segments), "AudioFormat": AudioFormat,
              "AudioChunk": _fallback.AudioChunk,
              "SinkStats": SinkStats, "ReadableBuffer": _ReadableBuffer,
              "Envelope": flushsink.envelopes.Envelope}


def _stub_parameters(node: ast.FunctionDef) -> list[Row]:
    """(name, kind, default, annotation) of each parameter; default ... = "has one"."""
    args = node.args
    positional = args.posonlyargs + args.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults)) + args.defaults
    rows = [(a, "POSITIONAL_OR_KEYWORD", d) for a, d in zip(positional, defaults)]
    rows += [(a, "KEYWORD_ONLY", d if d is not None else inspect.Parameter.empty)
             for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    return [(a.arg, kind, default if default is inspect.Parameter.empty
             else ast.literal_eval(default),
             eval(ast.unparse(a.annotation), _NAMESPACE) if a.annotation else None)
            for a, kind, default in rows]


def _twin_parameters(function: typing.Any) -> list[Row]:
    rows = []
    for p in inspect.signature(function).parameters.values():
        annotation = None if p.annotation is p.empty else eval(p.annotation, _NAMESPACE)
        rows.append((p.name, p.kind.name, p.default, annotation))
    return rows


def _filled(stub_rows: list[Row], twin_rows: list[Row]) -> list[Row]:
    """The stub's rows with each ``...`` default replaced by the twin's default, if any."""
    rows = []
    for i, (name, kind, default, annotation) in enumerate(stub_rows):
        twin_default = twin_rows[i][2] if i < len(twin_rows) else inspect.Parameter.empty
        if default is Ellipsis and twin_default is not inspect.Parameter.empty:
            default = twin_default
        rows.append((name, kind, default, annotation))
    return rows


def assert_same_signature(node: ast.FunctionDef, twin: typing.Any) -> None:
    twin_rows = _twin_parameters(twin)
    assert _filled(_stub_parameters(node), twin_rows) == twin_rows, node.name


def _return(node: ast.FunctionDef) -> object:
    return eval(ast.unparse(node.returns), _NAMESPACE) if node.returns else None


def test_stub_describes_the_twin():
    functions, methods, properties, reexports = _stub()
    assert set(_fallback.__all__) == set(functions) | {"Sink"} | reexports
    for name in functions:
        twin = getattr(_fallback, name)
        assert_same_signature(functions[name], twin)
        assert _return(functions[name]) == eval(inspect.signature(twin).return_annotation,
                                                _NAMESPACE), name
    # the twin's own members and its rules' (flushsink._store.Store, its base class)
    members = {name: member for cls in reversed(_fallback.Sink.__mro__[:-1])
               for name, member in vars(cls).items()}
    public = {n for n in members if not n.startswith("_")}
    assert public == set(methods) - {"__init__"}
    assert properties == {n for n in public if isinstance(members[n], property)}
    for name, node in methods.items():
        twin = members[name]
        if name in properties:
            twin = twin.fget
        else:
            assert_same_signature(node, twin)
        assert _return(node) == eval(inspect.signature(twin).return_annotation, _NAMESPACE), name
    assert _fallback.SinkStats is SinkStats


def test_stub_describes_the_compiled_core(compiled_core):
    functions, methods, properties, _ = _stub()
    for name in functions:
        parameters = inspect.signature(getattr(compiled_core, name)).parameters
        assert list(parameters) == [a.arg for a in functions[name].args.args], name
    public = {n for n in dir(compiled_core.Sink) if not n.startswith("_")}
    assert public == set(methods) - {"__init__"}
    for name in public - properties:
        parameters = inspect.signature(getattr(compiled_core.Sink, name)).parameters
        assert list(parameters) == [a.arg for a in methods[name].args.args], name
    for name in properties:
        assert inspect.isdatadescriptor(getattr(compiled_core.Sink, name)), name
    assert compiled_core.SinkStats is SinkStats
