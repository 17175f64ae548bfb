"""The suite's own rules (tests/conftest.py, tests/helpers/__init__.py): what test modules
share lives in tests/helpers/, so no module under tests/ imports a test module or
conftest, and none edits sys.path (to reach fuzz/ or anything else)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def is_sys_path(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "path"
            and isinstance(node.value, ast.Name) and node.value.id == "sys")


def sys_path_edits(tree: ast.AST):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and is_sys_path(node.func.value)):
            yield node.lineno  # sys.path.insert(...), .append(...), ...
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(is_sys_path(target) for target in targets):
                yield node.lineno


def test_tests_import_helpers_not_each_other_and_leave_sys_path_alone():
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        name = path.relative_to(TESTS)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for line, module in imported_modules(tree):
            top = module.split(".")[0]
            if top.startswith("test_") or top in ("conftest", "tests", "fuzz"):
                found.append(f"{name}:{line} imports {module}")
        found += [f"{name}:{line} edits sys.path" for line in sys_path_edits(tree)]
    assert not found, found
