"""Output for the CLI: rich for people, one JSON document with --json for programs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def fail(message: str, code: int = 2) -> int:
    errors.print(f"[bold red]error:[/] {message}", soft_wrap=True)  # one line, unbroken
    return code


def writable_file(text: str) -> Path:
    """An argparse type for a file to be written (--trace): its directory must exist, so a
    typo is one line at once, not an error from the TEE's process after a build and launch."""
    path = Path(text)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        what = "not a directory" if parent.exists() else "no such directory"
        raise argparse.ArgumentTypeError(f"{text}: {parent}: {what}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a directory")
    return path
