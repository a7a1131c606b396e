"""Documentation that is generated from code stays equal to it."""

from __future__ import annotations

from pathlib import Path

from shim.policies import uncertainty
from shim.views import markdown_table

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_exits_page_shows_the_table_the_shim_uses():
    assert markdown_table() in (DOCS / "exits.md").read_text()


def test_policies_page_shows_the_bits_each_policy_hides():
    assert uncertainty.markdown_table() in (DOCS / "policies.md").read_text()


def test_the_bits_are_those_of_the_parameters():
    assert uncertainty.uniform_bits(32) == 5.0
    assert abs(uncertainty.sum_entropy(33, 1) - uncertainty.uniform_bits(33)) < 1e-9
    assert uncertainty.sum_entropy(2, 2) == 1.5  # 0, 1, 2 with 1/4, 1/2, 1/4
