"""The judge: scores an attack against a victim, knowing what the attack does not.

``judge`` reads the truth: the attack's guess (its Outcome, as data) against the secret,
whether the shim detected anything (the TEE's own records: violations, a killed VM), and
whether the victim's result was changed without anyone noticing.  Scored runs go through
tvmm.harness.judge (the attack in a process of its own); ``run_attack`` here keeps the
attack in this process, next to the platform, for unit tests.

Scoring (DESIGN.md §9): a secret is n bits; for secrets made of symbols (password
characters) each symbol counts log2(alphabet) bits and accuracy is per symbol.
leaked_bits = n × max(0, (accuracy − chance) / (1 − chance)), which for bits (chance ½) is
n × max(0, 2·accuracy − 1): 0 for guessing, n for full recovery.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shim.policies.config import PolicyConfig
from tools.attacks.base import Attack, AttackContext, launch_secrets_from, outcome_to_data
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import Level
from tvmm.harness.tee_server import vm_record
from tvmm.host.devices import BlockDevice, Console, InputDevice
from tvmm.host.hypervisor import Devices
from tvmm.machine import DEFAULT_MEMORY, make_machine, owner_endpoint
from tvmm.owner.broker import ReleasePolicy
from tvmm.owner.ledger import LaunchLedger
from tvmm.samples import PASSWORD_ALPHABET, expected_console_ok, resolve


def public_rng_seed(seed: int) -> int:
    """The seed of the attack's public random stream: derived from the run's seed one way
    (the run's seed also makes the owner's secret)."""
    return int.from_bytes(hashlib.sha256(b"tvmm attack rng %d" % seed).digest()[:8], "little")


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
        """The matrix cell: leaked bits, or tampered / detected / blocked / ✗, or "n/a"
        (the attack says the scenario does not apply); for a benign workload "ok",
        "false positive" or "wrong result"."""
        if self.notes.get("na") and not self.detected:
            return "n/a"  # the scenario does not apply to this victim (detail: why)
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
    """The attack in this process, next to the platform: for unit tests only — the attack
    could reach the platform's objects here.  Scored runs: tvmm.harness.judge.  The
    victim's owner serves each launch a launch secret (and the attested path its key
    release) under ``release_policy``, counted in ``ledger`` (its budget bounds relaunches)."""
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
    ctx = AttackContext(
        client=machine.client, image=image, guest=guest, level=level,
        rng=random.Random(public_rng_seed(seed)), memory=memory, secret_blob=b"",
        record=record, devices=devices, owner=owner,
        launch_secret=launch_secrets_from(owner, record),
    )
    start = time.perf_counter()
    try:
        outcome = outcome_to_data(attack.run(ctx))
        wall = time.perf_counter() - start
        records = [vm_record(vm) for vm in machine.platform.tee.vms.values()]
        verdict = judge(attack.name, attack.kind, guest, level, secret, outcome, records, wall)
        recorder.emit(EventKind.VERDICT, attack.name, inside=verdict_event(verdict, secret,
                                                                           outcome))
        return verdict
    finally:
        machine.close()


def verdict_event(verdict: Verdict, secret: bytes, outcome: dict) -> dict:
    """The trace's VERDICT event: the verdict, the truth and the guess."""
    return {**verdict.to_dict(), "truth": secret.hex(), "guess": outcome["guess"]}


def judge(name: str, kind: str, guest: str, level: Level, secret: bytes, outcome: dict,
          records: list[dict], wall: float) -> Verdict:
    """Score an attack's outcome (as data: tools.attacks.base.outcome_to_data) against the
    secret, with the TEE's own records of the VMs (shim.server.vm_record): the first
    violation, or a kill, is a detection, whatever the attack reports."""
    spec = secret_spec(guest, secret)
    guess = bytes.fromhex(outcome["guess"]) if outcome.get("guess") is not None else None
    correct, leaked, full = score(spec, guess, guest)
    notes = outcome.get("notes") or {}
    detected_at: int | None = None
    for rec in records:
        if rec["violations"]:
            seq = rec["violations"][0]["exit_seq"]
            detected_at = seq if detected_at is None else min(detected_at, seq)
    if detected_at is None:
        kills = [rec["seq"] for rec in records if rec["kill_reason"] is not None]
        detected_at = min(kills) if kills else None
    violated = False
    if kind in ("integrity", "benign"):  # benign: an honest host's result must hold
        violated = any(
            not expected_console_ok(guest, secret, h["console"],
                                    [bytes.fromhex(line) for line in h["served"]])
            for h in outcome.get("hosts", []) if h["ended"] == "exit")
        violated = violated and detected_at is None
    bits_per = spec.bits_per_symbol
    return Verdict(
        attack=name, guest=guest, level=level.value, kind=kind,
        n_bits=round(spec.n_bits, 1), bits_correct=round(correct * bits_per, 1),
        leaked_bits=round(leaked, 1), full_recovery=full,
        detected=detected_at is not None, detected_after_exits=detected_at,
        integrity_violated=violated, blocked=bool(notes.get("blocked")),
        exits=outcome.get("exits", 0), wall_s=wall, stepping=outcome.get("stepping"),
        detail=str(notes.get("detail", "")),
        notes={k: v for k, v in notes.items() if k not in ("detail",)},
    )
