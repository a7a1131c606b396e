"""Rewrite a marked block of a doc with figures a tool just measured.

A block is the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` (each on a
line of its own); everything outside it is kept byte for byte, so a doc's prose stays
hand-written while its figures are always the command's own output.
"""

from __future__ import annotations

from pathlib import Path


class DocBlockError(ValueError):
    pass


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the block ``name`` holding ``body`` instead (which must not contain
    the markers); the block must occur exactly once."""
    begin, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1:
        raise DocBlockError(f"need exactly one {begin.strip()} … {end} block")
    head, rest = text.split(begin)
    if end not in rest:
        raise DocBlockError(f"{end} comes before {begin.strip()}")
    _old, tail = rest.split(end)
    if begin.strip() in body or end in body:
        raise DocBlockError("the block's body contains its own markers")
    return head + begin + body.rstrip("\n") + "\n" + end + tail


def write_block(path: Path, name: str, body: str) -> None:
    path.write_text(replace_block(path.read_text(), name, body))
