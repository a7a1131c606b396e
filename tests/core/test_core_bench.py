"""Benchmarks run only when asked (pytest -m bench); a smoke run keeps the script working."""

from __future__ import annotations

import pytest

from tools import bench_core
from tvmm.abi.types import Level


def test_bench_pieces_run():
    image = bench_core.compute_image()
    assert bench_core.bare_unicorn(image) > 0
    tvmm_s, bare_s = bench_core.round_trip(Level.SNP, 1_000, 50)
    assert tvmm_s > 0 and bare_s > 0


@pytest.mark.bench
def test_core_benchmark_ratios():
    results = bench_core.run(rounds=3)
    for key in ("compute_no_timer_plain", "compute_timer_shim", "exit_round_trip_shim",
                "single_step_sev-es"):
        assert key in results
    print(results)
