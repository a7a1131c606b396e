"""An owner who releases by transparency ledger (docs/transparency.md) in scored runs:
the genuine build gets its secret when the host presents the receipt, and not without
it; a tampered image is refused on its measurement although the receipt verifies."""

from __future__ import annotations

from pathlib import Path

from tvmm.abi.types import Level
from tvmm.harness.judge import run_attack

ASK = '''
from tvmm_tools.attacks.base import Attack, Outcome
from tvmm.abi.guest import OWNER_EVIDENCE, OWNER_REFUSED
from tvmm.host.devices import Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor


class Relay(HonestHypervisor):
    def relay_owner(self, message):
        answer = super().relay_owner(message)
        if message.startswith(OWNER_EVIDENCE):
            self.answer = answer
        return answer


class GenuineAsk(Attack):
    """Launch the genuine image with no launch secret, so it asks its owner; say what the
    owner answered.  PRESENT says whether this host hands over the receipt."""

    name = "genuine-ask"
    summary = "the genuine build asks its owner"
    victims = ("modexp",)
    kind = "confidentiality"
    present = PRESENT

    def run(self, ctx):
        devices = Devices(Console(), input=InputDevice(["attempt"]), owner=ctx.owner,
                          receipt=ctx.receipt if self.present else None)
        host = Relay(ctx.client, devices)
        host.answer = None
        host.launch(ctx.image, ctx.level, ctx.memory)
        host.run(max_exits=20_000)
        refused = host.answer is None or host.answer.startswith(OWNER_REFUSED)
        reason = host.answer[4:].decode() if host.answer and refused else None
        return Outcome(hosts=[host], notes={"released": not refused, "reason": reason})
'''


def ask(tmp_path: Path, present: bool, owner_policy: str):
    path = tmp_path / f"ask_{present}.py"
    path.write_text(ASK.replace("PRESENT", repr(present)))
    verdict = run_attack(None, "confidentiality", "modexp", Level.SNP, file=path,
                         owner_policy=owner_policy)
    return {k: v for k, v in verdict.notes.items() if k != "host_separation"}  # the judge's


def test_the_genuine_build_is_released_with_its_receipt_and_not_without(tmp_path) -> None:
    assert ask(tmp_path, True, "ledger") == {"released": True, "reason": None}
    assert ask(tmp_path, False, "ledger") == {"released": False, "reason": "transparency"}
    assert ask(tmp_path, False, "digest")["released"] is True  # the pinned digest needs none


def test_a_tampered_launch_is_refused_on_its_measurement_under_a_ledger() -> None:
    verdict = run_attack("tampered-launch-ledger", "confidentiality", "modexp", Level.SNP)
    assert verdict.cell == "blocked" and verdict.leaked_bits == 0
    assert "refused (measurement)" in verdict.detail  # the receipt itself verified
