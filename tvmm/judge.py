"""The judge: runs an attack against a victim and scores it, knowing what the attack does not.

It owns the secret (made by the owner side from the seed), builds the platform, hands the
attack only a host client, and afterwards reads the truth: the attack's guess against the
secret, whether the shim detected anything (its recorded violations, a killed VM), and
whether the victim's result was changed without anyone noticing.

Scoring (DESIGN.md §9): a secret is n bits; for secrets made of symbols (password
characters) each symbol counts log2(alphabet) bits and accuracy is per symbol.
leaked_bits = n × max(0, (accuracy − chance) / (1 − chance)), which for bits (chance ½) is
n × max(0, 2·accuracy − 1): 0 for guessing, n for full recovery.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shim.policies.config import PolicyConfig
from tools.attacks.base import Attack, AttackContext, Outcome
from tvmm.abi.guest import OWNER_LAUNCH_SECRET, OWNER_REFUSED
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import Level
from tvmm.host.devices import BlockDevice, Console, InputDevice
from tvmm.host.hypervisor import Devices
from tvmm.machine import DEFAULT_MEMORY, make_machine, owner_endpoint
from tvmm.owner.broker import ReleasePolicy
from tvmm.owner.ledger import LaunchLedger
from tvmm.samples import PASSWORD_ALPHABET, expected_console_ok, resolve


@dataclass(frozen=True)
class SecretSpec:
    symbols: tuple[int, ...]  # the secret as a sequence of symbols
    chance: float  # accuracy of a blind guess per symbol
    bits_per_symbol: float

    @property
    def n_bits(self) -> float:
        return len(self.symbols) * self.bits_per_symbol


def secret_spec(guest: str, secret: bytes) -> SecretSpec:
    if guest == "password":
        return SecretSpec(tuple(secret), 1 / len(PASSWORD_ALPHABET),
                          math.log2(len(PASSWORD_ALPHABET)))
    value = int.from_bytes(secret, "little")
    return SecretSpec(tuple((value >> i) & 1 for i in range(8 * len(secret))), 0.5, 1.0)


def score(spec: SecretSpec, guess: bytes | None, guest: str) -> tuple[int, float, bool]:
    """(symbols correct, leaked bits, full recovery)."""
    if guess is None or not spec.symbols:
        return 0, 0.0, False
    if guest == "password":
        got = tuple(guess[: len(spec.symbols)])
    else:
        value = int.from_bytes(guess[: len(spec.symbols) // 8].ljust(len(spec.symbols) // 8,
                                                                       b"\0"), "little")
        got = tuple((value >> i) & 1 for i in range(len(spec.symbols)))
    correct = sum(1 for a, b in zip(spec.symbols, got, strict=False) if a == b)
    accuracy = correct / len(spec.symbols)
    leaked = spec.n_bits * max(0.0, (accuracy - spec.chance) / (1 - spec.chance))
    return correct, leaked, correct == len(spec.symbols)


@dataclass
class Verdict:
    attack: str
    guest: str
    level: str
    kind: str
    n_bits: float
    bits_correct: float
    leaked_bits: float
    full_recovery: bool
    detected: bool
    detected_after_exits: int | None
    integrity_violated: bool
    blocked: bool
    exits: int
    wall_s: float
    stepping: dict[str, int] | None = None
    detail: str = ""
    notes: dict = field(default_factory=dict)

    @property
    def cell(self) -> str:
        """The matrix cell: leaked bits, or tampered / detected / blocked / ✗; for a
        benign workload "ok", "false positive" or "wrong result"."""
        if self.kind == "benign":
            if self.detected:
                return "false positive"
            return "wrong result" if self.integrity_violated else "ok"
        if self.kind == "integrity":
            if self.integrity_violated:
                return "tampered"
            return "detected" if self.detected else ("blocked" if self.blocked else "✗")
        if self.detected:
            return f"detected ({self.leaked_bits:.0f} b)" if self.leaked_bits >= 1 else "detected"
        if self.leaked_bits >= 1:
            return f"{self.leaked_bits:.0f} b"
        return "blocked" if self.blocked else "✗"  # as tvmm.matrix.outcome_class

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cell"] = self.cell
        return d


def run_attack(attack: Attack, guest: str, level: Level, *, seed: int = 0,
               trace: Path | str | None = None, policy_config: PolicyConfig | None = None,
               memory: int = DEFAULT_MEMORY, release_policy: ReleasePolicy | None = None,
               ledger: LaunchLedger | None = None) -> Verdict:
    """Run ``attack`` against ``guest`` at ``level`` and score it.  The victim's owner
    serves each launch a launch secret (and the attested path its key release) under
    ``release_policy``, counted in ``ledger`` (its launch budget bounds relaunches)."""
    image, sample = resolve(guest)
    secret = sample.make_secret(random.Random(seed)) if sample else b""
    machine = make_machine(seed=seed, trace=trace, image=image, level=level,
                           policy_config=policy_config,
                           extra_header={"attack": attack.name})
    recorder = machine.recorder

    def record(action: str, **outside: object) -> None:
        recorder.emit(EventKind.ATTACK, action, outside=dict(outside))

    def devices() -> Devices:
        return Devices(Console(), BlockDevice(None), InputDevice())

    owner = owner_endpoint(image, secret, memory=memory, policy=release_policy, ledger=ledger,
                           launch_key=lambda: machine.platform.launch_public_key)

    def launch_secret() -> bytes:  # the host asks the owner for one launch's secret
        answer = owner(OWNER_LAUNCH_SECRET)
        if answer.startswith(OWNER_REFUSED):
            record("owner_refused_launch_secret", reason=answer[len(OWNER_REFUSED):].decode())
            return b""
        return answer

    ctx = AttackContext(
        client=machine.client, image=image, guest=guest, level=level, seed=seed,
        rng=random.Random(seed ^ 0x5EED), memory=memory, secret_blob=b"", record=record,
        devices=devices, owner=owner, launch_secret=launch_secret,
    )
    start = time.perf_counter()
    try:
        outcome = attack.run(ctx)
        wall = time.perf_counter() - start
        verdict = _judge(attack, guest, level, secret, outcome, machine, wall)
        recorder.emit(EventKind.VERDICT, attack.name, inside={
            **verdict.to_dict(), "truth": secret.hex(),
            "guess": outcome.guess.hex() if outcome.guess is not None else None})
        return verdict
    finally:
        machine.close()


def _judge(attack: Attack, guest: str, level: Level, secret: bytes, outcome: Outcome,
           machine, wall: float) -> Verdict:
    spec = secret_spec(guest, secret)
    correct, leaked, full = score(spec, outcome.guess, guest)
    detected_at: int | None = None
    blocked = bool(outcome.notes.get("blocked"))
    for host in outcome.hosts:
        vm = machine.platform.tee.vms.get(host.vm)
        if vm is not None and vm.policies is not None and vm.policies.violations:
            seq = vm.policies.violations[0].exit_seq
            detected_at = seq if detected_at is None else min(detected_at, seq)
        if vm is not None and vm.kill_reason is not None and detected_at is None:
            detected_at = vm.vcpus[0].seq
    violated = False
    if attack.kind in ("integrity", "benign"):  # benign: an honest host's result must hold
        violated = any(
            not expected_console_ok(guest, secret, h.devices.console.text,
                                    h.devices.input.served)
            for h in outcome.hosts if _ran_to_end(h))
        violated = violated and detected_at is None
    bits_per = spec.bits_per_symbol
    return Verdict(
        attack=attack.name, guest=guest, level=level.value, kind=attack.kind,
        n_bits=round(spec.n_bits, 1), bits_correct=round(correct * bits_per, 1),
        leaked_bits=round(leaked, 1), full_recovery=full,
        detected=detected_at is not None, detected_after_exits=detected_at,
        integrity_violated=violated, blocked=blocked, exits=outcome.exits, wall_s=wall,
        stepping=outcome.stepping,
        detail=str(outcome.notes.get("detail", "")),
        notes={k: v for k, v in outcome.notes.items() if k not in ("detail",)},
    )


def _ran_to_end(host) -> bool:
    result = host.run_result
    return result is not None and result.how == "exit"
