"""The trace benchmark: a smoke run always, the 1,000,000-event budget with ``-m bench``."""

from __future__ import annotations

import pytest

from tools.bench_trace import OPEN_BUDGET_S, RSS_BUDGET_MB, run


def test_benchmark_smoke() -> None:
    result = run(n=2000, seed=1)
    assert result["events"] == 2000 and result["index_written_back"]
    assert result["within_budget"]


@pytest.mark.bench
def test_million_event_trace_opens_within_budget() -> None:
    result = run()
    assert result["events"] == 1_000_000
    for mode in ("index", "rebuild"):
        assert result[f"open_{mode}_s"] <= OPEN_BUDGET_S
        assert result[f"open_{mode}_rss_mb"] <= RSS_BUDGET_MB
