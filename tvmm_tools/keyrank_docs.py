"""``python -m tvmm_tools.keyrank_docs``: write the key-rank worked examples of docs/attacks.md
(the block ``keyrank-examples``) from tvmm.keyrank's own computation."""

from __future__ import annotations

from pathlib import Path

from tvmm.keyrank import examples_markdown
from tvmm_tools.doc_block import write_block

DOC = Path(__file__).resolve().parents[1] / "docs" / "attacks.md"
BLOCK = "keyrank-examples"

if __name__ == "__main__":
    write_block(DOC, BLOCK, examples_markdown())
    print(f"wrote {BLOCK} in {DOC}")
