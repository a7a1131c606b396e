"""Fault injection (tvmm_tools/fault_injection.py): a small seeded sample here, ≥ 1,000 trials
with ``-m stress``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tvmm.abi.state_dir import default_state_dir
from tvmm_tools import fault_injection


@pytest.mark.parametrize("trials", [int(os.environ.get("TVMM_FAULT_TRIALS", "5"))])
def test_fault_injection_sample(trials: int, tmp_path, capsys) -> None:
    state = os.environ.get("TVMM_STATE_DIR")
    argv = ["--trials", str(trials), "--seed", "7"] + (["--state-dir", state] if state else [])
    assert fault_injection.main(argv) == 0, capsys.readouterr().out


@pytest.mark.parametrize(("who", "point", "copy_on"), [
    ("src", "suspend_after_store", "n2"),  # resumed from the file its host stored
    ("coordinator", "suspend_before_commit", "n1"),  # aborted on recovery: n1 thaws it
])
def test_interrupted_suspend_keeps_one_copy(who: str, point: str, copy_on: str) -> None:
    state = Path(os.environ.get("TVMM_STATE_DIR") or default_state_dir())
    result = fault_injection.run_trial(state, "suspend-resume", who, point)
    assert result["ok"] and result["died"], result
    assert result["copies"] == [copy_on] and not result["lost"], result


@pytest.mark.stress
def test_fault_injection_stress(capsys) -> None:
    assert fault_injection.main(["--trials", "1000", "--seed", "1"]) == 0, \
        capsys.readouterr().out
