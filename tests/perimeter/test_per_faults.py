"""Fault injection (tools/fault_injection.py): a small seeded sample here, ≥ 1,000 trials
with ``-m stress``."""

from __future__ import annotations

import os

import pytest

from tools import fault_injection


@pytest.mark.parametrize("trials", [int(os.environ.get("TVMM_FAULT_TRIALS", "5"))])
def test_fault_injection_sample(trials: int, tmp_path, capsys) -> None:
    state = os.environ.get("TVMM_STATE_DIR")
    argv = ["--trials", str(trials), "--seed", "7"] + (["--state-dir", state] if state else [])
    assert fault_injection.main(argv) == 0, capsys.readouterr().out


@pytest.mark.stress
def test_fault_injection_stress(capsys) -> None:
    assert fault_injection.main(["--trials", "1000", "--seed", "1"]) == 0, \
        capsys.readouterr().out
