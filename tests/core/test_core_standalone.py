"""The repository stands on its own: nothing imports the old name of the untrusted package
(``tools``, renamed ``tvmm_tools`` because other distributions install a ``tools`` too),
and nothing points at design notes or test data a clone does not have."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".git", ".venv", "__pycache__", "build", "dist", ".hypothesis", ".pytest_cache",
             ".ruff_cache", ".mypy_cache", "fuzz-findings", "node_modules"}
TEXT = {".py", ".md", ".toml", ".txt", ".cfg", ".yml", ".yaml", ".c", ".h", ".S", ".ld", ""}
# spelled in pieces so that this file does not match itself
OUTSIDE = re.compile("|".join([r"\bATTACKS" + r"\.md", r"\bDESIGN" + r"\.md",
                               r"\.\./" + "shared", r"\bshared" + "/testdata"]))


def _files() -> list[Path]:
    out = []
    for top, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in names:
            path = Path(top, name)
            if path.suffix in TEXT and path.stat().st_size < 2_000_000:
                out.append(path)
    return out


def _imports_old_package(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        if any(n == "tools" or n.startswith("tools.") for n in names):
            lines.append(node.lineno)
    return lines


def test_no_module_imports_the_old_package_name() -> None:
    bad = []
    for path in _files():
        text = path.read_text(encoding="utf-8") if path.suffix == ".py" else ""
        if re.search(r"\btools\b", text):  # parse only what might import it
            tree = ast.parse(text, str(path))
            bad += [f"{path.relative_to(ROOT)}:{n}" for n in _imports_old_package(tree)]
    assert not bad, f"imports of `tools` (now tvmm_tools): {bad}"


def test_the_check_sees_an_old_import() -> None:
    assert _imports_old_package(ast.parse("def f():\n    from tools import bench_core\n")) == [2]
    assert _imports_old_package(ast.parse("import tools.attacks as a")) == [1]
    assert not _imports_old_package(ast.parse("from tvmm_tools import bench_core"))


def test_nothing_points_outside_the_repository() -> None:
    bad = []
    for path in _files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace")
                                 .splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:80]}")
    assert not bad, "\n".join(bad)


def test_the_pattern_sees_each_outside_name() -> None:
    for text in ("see " + "ATTACKS" + ".md §3", "DESIGN" + ".md §2",
                 "../" + "shared/x", "shared" + "/testdata/milan"):
        assert OUTSIDE.search(text), text
