"""The code version a cell was run with: a digest of the source that decides a verdict
(the TEE, the host, the attacks, the judge, the guests), so a stored cell is reused only
by the same code, and a doc names the code it came from."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("tvmm", "shim", "tvmm_tools", "guests")
SUFFIXES = {".py", ".c", ".h", ".S", ".ld", ".toml"}
# What presents or measures verdicts but cannot change one: editing a report does not
# invalidate a store's cells.
PRESENTATION = ("tvmm/campaign", "tvmm/commands", "tvmm/tui", "tvmm/cli.py", "tvmm_tools/bench_",
                "tvmm_tools/tradeoff.py", "tvmm_tools/fuzz", "tvmm_tools/doc_block.py",
                "tvmm_tools/matrix_expectations.toml")


@functools.cache
def code_version() -> str:
    """12 hex digits of SHA-256 over every source file's path and bytes, in path order."""
    digest = hashlib.sha256()
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            name = path.relative_to(ROOT).as_posix()
            if (path.suffix in SUFFIXES and path.is_file() and "__pycache__" not in path.parts
                    and not name.startswith(PRESENTATION)):
                digest.update(name.encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def git_commit() -> str:
    """The checkout's commit (short), "+dirty" when the source differs from it; "" outside
    git."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                                *SOURCES], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
