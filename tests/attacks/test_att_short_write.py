"""An outside red team's console Iago, as a regression (tests/attacks/redteam/short_write.py,
as they wrote it): the host acknowledges every console write one byte short.

On main before the fix, at shim, a glibc program's libc wrote the unacknowledged tail
again, so the TEE's record of the guest's output held it twice: scored tampered,
undetected (at snp the personality's driver does not pass the count on: no effect).  Now
the shim takes a console write whole or fails it, so the short count is a violation."""

from __future__ import annotations

from pathlib import Path

from tvmm.abi.types import Level
from tvmm.harness.judge import run_attack

SHORT_WRITE = Path(__file__).parent / "redteam" / "short_write.py"


def test_a_short_console_count_is_detected_at_shim_on_a_glibc_program():
    verdict = run_attack(None, "?", "spellcheck", Level.SHIM, seed=1, file=SHORT_WRITE)
    assert not verdict.notes.get("error"), verdict.detail
    assert verdict.detected and not verdict.integrity_violated, verdict.detail
    assert verdict.cell == "detected"


def test_below_shim_the_short_count_changes_nothing():
    verdict = run_attack(None, "?", "spellcheck", Level.SNP, seed=1, file=SHORT_WRITE)
    assert not verdict.notes.get("error"), verdict.detail
    assert not verdict.integrity_violated and not verdict.detected, verdict.detail
