"""The judge sees for itself, for any guest.

A victim written only from docs/guests.md (its C source and its secret's declaration,
taken from the doc's own code blocks) into a temporary directory, attacked by user attack
files, across the process boundary (tvmm.harness.judge):

- integrity is the owner's reference run against the TEE's record of what the guest
  printed: an attack that rewrites the guest's copy of its input in memory at ``plain`` is
  "tampered"; an honest host is "ok"; the same rewrite at ``snp`` is refused by the TEE
  (its record of the refusal) — "blocked";
- detection survives an attack that destroys its VMs and returns nothing;
- an attack that only says it was blocked is not "blocked".

The guest's buffer is found by its symbol in the public ELF (``line``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tvmm.abi.types import Level
from tvmm.harness.judge import run_attack
from tvmm.judge import Reference, draw_secret, result_holds
from tvmm.samples import resolve

DOC = Path(__file__).resolve().parents[2] / "docs" / "guests.md"

PRELUDE = '''
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome
from tvmm.abi.guest import Hypercall
from tvmm.abi.types import ExitReason
from tvmm.host.devices import BlockDevice, Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor

LINE = b"abcdefgh"


def devices():
    return Devices(Console(), BlockDevice(None), InputDevice([LINE]))
'''

HONEST = PRELUDE + '''
class Honest(Attack):
    name, summary, victims, kind = "honest", "an honest host", ("mixer",), "benign"

    def run(self, ctx):
        host = HonestHypervisor(ctx.client, devices(), quantum=2000)
        ctx.launch(host)
        host.run()
        return Outcome(hosts=[host], notes={"blocked": True, "detail": "blocked, it says"})
'''

TAMPER = PRELUDE + '''
class _Rewriter(HonestHypervisor):
    """Serves the line honestly, then at the next timer exit rewrites every copy of it in
    guest memory (the guest's own buffer too) before the guest uses it."""

    served = done = False
    refused = 0

    def serve_guest_call(self, nr, a0, a1, a2):
        if nr == Hypercall.INPUT_READ:
            self.served = True
        return super().serve_guest_call(nr, a0, a1, a2)

    def on_exit(self, rec):
        if rec.reason == ExitReason.TIMER and self.served and not self.done:
            self.done = True
            page = self.target & ~0xFFF  # the guest's buffer: its symbol in the public ELF
            data = self.client.read_page(self.vm, page)
            if LINE in data:  # plaintext (plain): rewrite the line
                data = data.replace(LINE, LINE.upper())
            else:  # ciphertext: write it back changed, blind
                data = bytes([data[0] ^ 1]) + data[1:]
            reply = self.client.write_page(self.vm, page, data)
            self.refused += reply.result.name != "OK"
        return super().on_exit(rec)


class Tamper(Attack):
    name, summary, victims, kind = "tamper", "rewrite the input in memory", ("mixer",), \\
        "integrity"

    def run(self, ctx):
        host = _Rewriter(ctx.client, devices(), quantum=2000)
        host.target = ctx.image.symbol("line")
        ctx.launch(host)
        host.run()
        return Outcome(hosts=[host], notes={"detail": f"refused {host.refused}x"})
'''

DESTROY = PRELUDE + '''
class Vanish(Attack):
    name, summary, victims, kind = "vanish", "tamper, destroy, say nothing", ("mixer",), \\
        "integrity"

    def run(self, ctx):
        host = HonestHypervisor(ctx.client, devices(), quantum=500)
        ctx.launch(host)
        reply = host.enter()
        state = bytearray(reply.exit.state)
        state[-1] ^= 1  # a sealed state that does not open: the shim kills the VM
        ctx.client.enter(host.vm, 500, bytes(state))
        ctx.client.destroy(host.vm)
        return Outcome()
'''

def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def mixer(tmp_path_factory) -> Path:
    """The example victim of docs/guests.md, written from the doc alone."""
    section = DOC.read_text().split("## Your guest as a victim")[1]
    where = tmp_path_factory.mktemp("guest")
    (where / "mixer.c").write_text(_blocks(section, "c")[0])
    (where / "mixer.toml").write_text(_blocks(section, "toml")[0])
    return where / "mixer.c"


def _run(tmp_path: Path, source: str, guest: Path, level: Level):
    attack = tmp_path / "attack.py"
    attack.write_text(source)
    verdict = run_attack(None, "?", str(guest), level, file=attack)
    assert not verdict.notes.get("error"), verdict.detail
    return verdict


def test_a_custom_guest_is_a_victim_and_its_honest_host_is_ok(mixer, tmp_path):
    sample = resolve(str(mixer))[1]
    assert len(draw_secret(sample)) == 8 and draw_secret(sample) != draw_secret(sample)
    verdict = _run(tmp_path, HONEST, mixer, Level.SNP)
    assert verdict.n_bits == 64 and len(bytes.fromhex(verdict.secret)) == 8
    assert verdict.cell == "ok" and not verdict.integrity_violated
    assert not verdict.blocked and "blocked" not in verdict.notes  # saying so is not being so


def test_rewriting_the_guests_input_is_tampered_and_refused_where_memory_is_owned(mixer,
                                                                                 tmp_path):
    plain = _run(tmp_path, TAMPER, mixer, Level.PLAIN)
    assert plain.cell == "tampered" and plain.evidence["tampered_vms"], plain.detail
    snp = _run(tmp_path, TAMPER, mixer, Level.SNP)
    assert snp.cell == "blocked" and not snp.integrity_violated, snp.detail
    assert {r["call"] for r in snp.evidence["refusals"]} == {"WritePage"}


def test_detection_survives_an_attack_that_destroys_its_vm_and_returns_nothing(mixer,
                                                                              tmp_path):
    verdict = _run(tmp_path, DESTROY, mixer, Level.SHIM)
    assert verdict.detected and verdict.cell == "detected", verdict.evidence


def _record(console: str, status: int | None) -> dict:
    return {"console": console, "exit_status": status, "console_cut": False}


def test_a_result_holds_only_as_the_reference_printed_it():
    ref = Reference("count=1\ncount=2\nticks=3\n", 0)
    assert result_holds(_record("count=1\ncount=2\nticks=9\n", 0), ref, ("ticks=",))
    assert not result_holds(_record("count=1\ncount=2\nticks=9\n", 0), ref)
    assert not result_holds(_record("count=1\ncount=2\nticks=3\n", 1), ref)  # its status
    assert result_holds(_record("count=1\ncou", None), ref)  # stopped early: a prefix
    assert not result_holds(_record("count=1\ncount=1\n", None), ref)
