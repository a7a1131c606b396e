"""Outside red teams' attacks as regressions, run as they wrote them (tests/attacks/redteam/)
through the scored path (`tvmm attack --file`: the attack in its own process).

Red team 1 (docs only, a victim we had not seen: guests/victims/dispatch.c) read all 64
bits at shim, undetected, by page faults at distinct handler-entry RIPs over a few
launches: under the TDX rule's 6 a RIP and the window budget.  Pinning (docs/policies.md:
entry is refused while a private page is unmapped) closes it.  At snp, where no policy
acts, the same attack must still read everything: so the test can fail.

Each run is given the secret the red team met on that seed (then made from the seed; a
scored run now draws one from the OS): how many launches their attack takes, and whether
it finishes within the six it allows itself, depends on the secret (over OS-drawn secrets
at snp it read 23-64 bits; docs/policies.md measures it over fresh secrets).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from shim.policies.config import PolicyConfig
from tvmm.abi.types import Level
from tvmm.harness.judge import run_attack
from tvmm.samples import resolve

REDTEAM = Path(__file__).parent / "redteam"
RELAUNCH = REDTEAM / "shim_relaunch.py"


def _met_secret(seed: int) -> bytes:
    """The secret red team 1 attacked on ``seed``."""
    _, sample = resolve("dispatch")
    return sample.make_secret(random.Random(seed))


def _run(level: Level, seed: int, config: PolicyConfig | None = None, **kwargs):
    verdict = run_attack(None, "?", "dispatch", level, seed=seed, file=RELAUNCH,
                         policy_config=config, secret=_met_secret(seed), **kwargs)
    assert not verdict.notes.get("error"), verdict.detail
    return verdict


def _holds_at_shim(seed: int) -> None:
    """Every entry refused: the host saw no exit at all, so its guess is blind (its
    all-xor default, which the judge scores like any guess: a few bits by chance on some
    secrets), and the refusal is a detection."""
    shim = _run(Level.SHIM, seed)
    assert shim.exits == 0 and shim.detected, shim.detail
    assert "0 non-xor" in shim.detail and not shim.full_recovery
    # At snp no shim policy acts: with the launches it asks for (the owner's bound off;
    # under its 3 an hour, seed 1 stops at 33 bits) the same attack reads everything.
    assert _run(Level.SNP, seed, launches=None).full_recovery


def test_redteam1_relaunch_gets_nothing_at_shim_and_everything_at_snp():
    _holds_at_shim(1)


def test_redteam1_relaunch_read_everything_before_pinning():
    """The gap it found, with pinning off (the policy it met): the data-fault budget now
    catches its re-arming through .rodata, so it is detected, but only after it has read
    the whole secret: detection without prevention.  (Its owner then set no launch budget;
    seed 1 took 4 launches, one more than the scored runs' owner now allows.)"""
    verdict = _run(Level.SHIM, 1, PolicyConfig(pin_working_set=False), launches=None)
    assert verdict.full_recovery


@pytest.mark.bench
@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_redteam1_relaunch_on_their_other_seeds(seed: int):
    _holds_at_shim(seed)
