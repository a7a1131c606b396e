"""The cost of issue 15's defences as docs/tradeoff.md measures it (tvmm_tools.tradeoff):
what an honest host loses by each — its count of instructions, launches its owner refuses."""

from __future__ import annotations

from pathlib import Path

from tvmm_tools.tradeoff import count_shortfall, launches_refused


def test_an_honest_host_counts_short_by_the_jitter_at_shim():
    """No count at a timer exit: the host counts the quanta it asked for, the TEE what ran
    — the quantum plus a draw of 0..32, 16 on average (about 0.4 of spread over some 600
    timer exits).  With the count shown (or no jitter) the shortfall would be 0."""
    short, timers = count_shortfall()
    assert timers > 300
    assert 14 <= short <= 18, short


def test_the_launch_budget_refuses_an_honest_restart_loop_past_its_count(tmp_path: Path):
    """A budget of 3 launches an hour: one launch and two restarts within the hour pass;
    each restart beyond is refused, and a budget of 6 refuses none of them."""
    assert [launches_refused(3, 3600, r, tmp_path) for r in range(1, 7)] == [0, 0, 1, 2, 3, 4]
    assert launches_refused(6, 3600, 5, tmp_path) == 0
