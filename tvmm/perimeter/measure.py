"""The measurement of the perimeter's trusted code: what a node's report attests.

SHA-384 over the trusted packages' source files — tvmm/hw, shim, tvmm/abi (with the
formats both sides share: launch secrets, key release, trace events), the owner-side
verifier the agents run (and its package's __init__, which importing it runs), and
tvmm/perimeter (all of it trusted or data only: the untrusted host and operator code
lives elsewhere) — walked in sorted order: digest = SHA-384(digest ‖ path ‖ NUL ‖
SHA-384(content)), starting from 48 zero bytes.  Changing one line of the shim changes
the measurement, and a coordinator that pins the measurement of its own release refuses
the node.  ``patch`` models a node running modified trusted code (the rogue node of the
attacks): its bytes are appended to one file before hashing.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRUSTED_TREES = ("tvmm/hw", "shim", "tvmm/abi")
TRUSTED_FILES = ("tvmm/owner/__init__.py", "tvmm/owner/verify.py")
UNTRUSTED_PERIMETER = frozenset({"node_host.py", "client.py", "launcher.py"})
PATCHED_FILE = "shim/exit_path.py"


def trusted_files(root: Path = ROOT) -> list[Path]:
    files: set[Path] = set()
    for tree in TRUSTED_TREES:
        files.update(p for p in (root / tree).rglob("*.py") if "__pycache__" not in p.parts)
    files.update(root / f for f in TRUSTED_FILES if (root / f).is_file())
    files.update((root / "tvmm" / "perimeter").glob("*.py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def measure_tree(root: Path = ROOT, patch: bytes = b"") -> bytes:
    digest = bytes(48)
    for path in trusted_files(root):
        rel = path.relative_to(root).as_posix()
        content = path.read_bytes()
        if patch and rel == PATCHED_FILE:
            content += patch
        digest = hashlib.sha384(digest + rel.encode() + b"\0"
                                + hashlib.sha384(content).digest()).digest()
    return digest


@lru_cache(maxsize=4)
def measurement(patch: bytes = b"") -> bytes:
    """The measurement of this installation's trusted code (cached per process)."""
    return measure_tree(ROOT, patch)
