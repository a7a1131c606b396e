"""Launch-measurement benchmark, run only when asked: pytest -m bench."""

from __future__ import annotations

import json

import pytest

from tvmm_tools.bench_measure import TARGET_RATIO, run


@pytest.mark.bench
def test_launch_measurement_benchmark() -> None:
    result = run(mib=256, rounds=6)
    print(json.dumps(result))
    assert result["pages"] == 256 * 256 + 4 + 16  # data, code, bss
    assert result["sha384_s"] >= 2 and result["measure_s"] >= 2  # seconds on each side
    # A floor against regressions (the doc block reports the ratio against the target,
    # which a shared machine moves by a few hundredths between runs).
    assert result["ratio"] >= TARGET_RATIO - 0.1
