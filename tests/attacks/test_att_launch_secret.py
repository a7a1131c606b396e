"""An outside red team's launch-secret attacks, as regressions: the owner's blob for one
launch of its victim, spent on a launch of the host's choosing.

- blob_downgrade.py (tests/attacks/redteam/, as they wrote it; launch-secret-downgrade,
  registered): the victim's image at plain, then READ_PAGE of the secrets page;
- blob_tamper.py (as they wrote it; launch-secret-tamper, registered): a puts-patched
  image at the run's own level, whose first console write is the secret.

On main before the fix both read 64 of 64 bits of modexp's exponent at every level,
undetected, on every seed: the TEE opened the blob at ADD_PAGES for any launch.  Now the
blob is bound to the digest the owner predicts at the run's level, and FINALIZE refuses
any other launch (DENIED, ``launch_secret``), which the judge reads from the TEE's record
as blocked.  A couple of levels run by default, the rest with ``-m bench``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tvmm.abi.types import Level
from tvmm.harness.judge import run_attack

REDTEAM = Path(__file__).parent / "redteam"
REFUSAL = {"call": "Finalize", "result": "DENIED", "operand": "launch_secret"}
DOWNGRADED = [Level.SEV, Level.SEV_ES, Level.SNP, Level.SHIM]  # at plain: nothing to downgrade


def _blocked(verdict) -> None:
    assert not verdict.notes.get("error"), verdict.detail
    assert verdict.leaked_bits < 1 and not verdict.full_recovery, verdict.detail
    assert verdict.blocked and verdict.cell == "blocked", verdict.detail
    refusals = [{k: r.get(k) for k in REFUSAL} for r in verdict.evidence["refusals"]]
    assert REFUSAL in refusals, verdict.evidence  # the TEE's own record of FINALIZE's


def _levels(default: list[Level], every: list[Level]) -> list:
    return [pytest.param(lv, marks=() if lv in default else pytest.mark.bench) for lv in every]


@pytest.mark.parametrize("level", _levels([Level.SEV], DOWNGRADED))
def test_launch_secret_downgrade_is_blocked(level: Level):
    _blocked(run_attack("launch-secret-downgrade", "confidentiality", "modexp", level))


@pytest.mark.parametrize("level", _levels([Level.SHIM], list(Level)))
def test_launch_secret_tamper_is_blocked(level: Level):
    _blocked(run_attack("launch-secret-tamper", "confidentiality", "modexp", level))


@pytest.mark.parametrize("level", _levels([Level.SNP], DOWNGRADED))
def test_the_red_teams_blob_downgrade_as_written_is_blocked(level: Level):
    _blocked(run_attack(None, "?", "modexp", level, file=REDTEAM / "blob_downgrade.py"))


@pytest.mark.bench
@pytest.mark.parametrize("level", list(Level))
def test_the_red_teams_blob_tamper_as_written_gets_nothing(level: Level):
    """Their attack does not expect the launch to be refused: the refusal ends it (an
    error verdict whose detail is FINALIZE's DENIED), before anything ran."""
    verdict = run_attack(None, "?", "modexp", level, file=REDTEAM / "blob_tamper.py")
    assert verdict.leaked_bits < 1 and "FINALIZE refused: DENIED (launch_secret)" in \
        verdict.detail, verdict.detail


def test_at_plain_the_downgrade_does_not_apply_and_the_owner_binds_plain():
    """The run at plain: its owner binds the secret to a plain launch of the victim, which
    the host reads whole (memory-scan's 64 bits there): no downgrade to make."""
    verdict = run_attack("launch-secret-downgrade", "confidentiality", "modexp", Level.PLAIN)
    assert verdict.cell == "n/a" and verdict.leaked_bits < 1, verdict.detail
