"""Launch-measurement benchmark, run only when asked: pytest -m bench."""

from __future__ import annotations

import json

import pytest

from tools.bench_measure import run


@pytest.mark.bench
def test_launch_measurement_benchmark() -> None:
    result = run(size_mib=32)
    print(json.dumps(result))
    assert result["pages"] == 32 * 256
    assert result["digest"] == run(size_mib=32)["digest"]  # the seeded image is reproducible
    assert result["ratio"] > 0.5  # a floor against regressions; the target is 0.8
