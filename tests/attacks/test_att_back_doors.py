"""The process boundary takes the run-time back doors away: an attack that imports nothing
trusted finds the secret through its own process's objects and memory when it runs next to
the platform (tvmm.judge.run_attack, the in-process path — proof that the probes work), and
nothing at any level when it runs in the host's process (tvmm.harness.judge)."""

from __future__ import annotations

import pytest

from tvmm.abi.types import Level
from tvmm.harness.judge import run_attack as run_across
from tvmm.judge import run_attack as run_in_process
from tvmm_tools.attacks.back_doors import BackDoors

PROBES = ("transport", "owner", "modules", "gc", "frames", "memory")
# modules: the platform is not reachable from module globals even in-process (the judge
# keeps it in locals); the probe runs everywhere to show it stays empty across.
FOUND_IN_PROCESS = ("transport", "owner", "gc", "frames", "memory")


@pytest.mark.parametrize("level", [lv.value for lv in Level])
def test_no_back_door_reaches_the_secret_across_the_boundary(level):
    verdict = run_across(BackDoors.name, BackDoors.kind, "modexp", Level(level), seed=0)
    assert not verdict.notes.get("error"), verdict.detail
    assert verdict.notes["printed"]  # the victim ran and printed: candidates were checkable
    assert verdict.notes["probes"] == dict.fromkeys(PROBES, False)
    assert verdict.leaked_bits == 0 and verdict.bits_correct <= verdict.n_bits


# in this process the back doors walk pytest's own objects too: getattr on its mark
# generator makes a mark of every attribute name it tries
@pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")
@pytest.mark.parametrize("level", [Level.PLAIN, Level.SHIM])
def test_the_same_back_doors_find_the_secret_in_process(level):
    verdict = run_in_process(BackDoors(), "modexp", level, seed=0)
    assert verdict.full_recovery and verdict.leaked_bits == verdict.n_bits
    assert {p for p, ok in verdict.notes["probes"].items() if ok} >= set(FOUND_IN_PROCESS)
