"""Documentation that is generated from code stays equal to it."""

from __future__ import annotations

from pathlib import Path

from shim.views import markdown_table

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_exits_page_shows_the_table_the_shim_uses():
    assert markdown_table() in (DOCS / "exits.md").read_text()
