"""The judge: scores an attack against a victim, knowing what the attack does not.

The judge draws the victim's secret from the OS for every scored run (``draw_secret``:
nothing public — the seed drives only the attack's public random stream — lets an attacker
rebuild it), gives it to the owner's key broker, and afterwards reads the truth:

- what the attacker knows: its Outcome (as data) scored by key rank (tvmm.keyrank):
  leaked bits = n − log2(rank of the true secret);
- detection: the TEE's own records of every VM the run created (violations, kills),
  whatever the attack returned or destroyed;
- blocked: the TEE's records of the host requests it refused (DENIED, ENTRY_REFUSED), the
  owner's own refusals to release the secret, and — for an attack on a perimeter the judge
  started for it (tvmm.harness.perimeter) — the refusals in its coordinator's audit log,
  read by the judge over an attested connection — never what the attack says;
- integrity: what each victim VM wrote to its console and its exit status as the TEE saw
  them, against the owner's honest reference run of the same guest with the same secret
  and the same input (``reference_run``); and, for a perimeter, every breach of its
  invariants in that log (a rollback, a clone, a VM on a node outside it, a refused stream
  committed: tvmm.harness.perimeter_invariants), whatever else was refused.

Scored runs go through tvmm.harness.judge (the attack in a process of its own);
``run_attack`` here keeps the attack in this process, next to the platform, for unit tests.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shim.policies.config import PolicyConfig
from tvmm import keyrank
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import Level
from tvmm.guestimage import GuestImage
from tvmm.harness.perimeter import JudgePerimeter, Reading
from tvmm.harness.tee_server import vm_record
from tvmm.host.devices import BlockDevice, Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.machine import (
    DEFAULT_MEMORY,
    expected_measurement,
    make_machine,
    owner_endpoint,
    wrap_secret,
)
from tvmm.owner.broker import ReleasePolicy
from tvmm.owner.endpoint import OwnerEndpoint
from tvmm.owner.ledger import LaunchLedger
from tvmm.samples import Sample, resolve
from tvmm_tools.attacks.base import Attack, AttackContext, launch_secrets_from, outcome_to_data

REFERENCE_MAX_EXITS = 200_000  # an honest reference run that does not end by then: no verdict


def public_rng_seed(seed: int) -> int:
    """The seed of the attack's public random stream, from the run's public seed (which
    makes nothing secret: the victim's secret comes from the OS)."""
    return int.from_bytes(hashlib.sha256(b"tvmm attack rng %d" % seed).digest()[:8], "little")


def draw_secret(sample: Sample | None) -> bytes:
    """A fresh secret of the victim's declared size and form, from the OS (SystemRandom
    reads os.urandom): a scored run's secret depends on nothing an attacker can see."""
    return sample.make_secret(random.SystemRandom()) if sample else b""


def secret_form(sample: Sample | None) -> keyrank.SecretForm:
    if sample is not None and sample.form == "symbols":
        return keyrank.SecretForm("symbols", sample.alphabet)
    return keyrank.BITS


def check_secret(sample: Sample | None, secret: bytes) -> None:
    """A secret given by hand (``tvmm attack --secret HEX``) must fit the declaration."""
    want = len(draw_secret(sample))
    if len(secret) != want:
        raise ValueError(f"the secret must be {want} bytes, not {len(secret)}")
    if sample is not None and sample.form == "symbols" and not set(secret.decode("latin-1")) \
            <= set(sample.alphabet):
        raise ValueError(f"the secret's characters must be from {sample.alphabet!r}")


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
    log2_rank: float | None = None  # of the true secret in the attacker's order
    secret: str = ""  # the truth (hex), for replaying the scoring
    evidence: dict = field(default_factory=dict)  # the TEE's records the verdict rests on

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


# -- the owner's reference run ------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """What the owner's honest run of the victim printed and how it ended."""

    console: str
    status: int | None


class ReplayedInput(InputDevice):
    """The victim's input exactly as the TEE recorded each read (an empty one: end of
    input), then end of input."""

    def __init__(self, reads: tuple[bytes, ...]) -> None:
        super().__init__()
        self._reads = iter(reads)

    def read_line(self, capacity: int) -> bytes:
        data = next(self._reads, b"")[:capacity]
        self.served.append(data)
        return data


def reference_run(image: GuestImage, level: Level, secret: bytes, inputs: tuple[bytes, ...],
                  memory: int = DEFAULT_MEMORY) -> Reference | None:
    """The owner's honest run of ``image`` at ``level`` with ``secret`` and exactly the
    ``inputs`` the victim received (then end of input), on a fresh platform of the owner's
    own; None if it does not end by its own exit within REFERENCE_MAX_EXITS."""
    machine = make_machine(seed=None, image=image, level=level)
    try:
        host = HonestHypervisor(machine.client,
                                Devices(Console(), BlockDevice(None), ReplayedInput(inputs)))
        host.launch(image, level, memory,
                    secret_blob=wrap_secret(machine, secret, image, level, memory))
        result = host.run(max_exits=REFERENCE_MAX_EXITS)
    finally:
        machine.close()
    if result.how != "exit":
        return None
    return Reference(host.devices.console.text, result.status)


@dataclass
class Owner:
    """The owner's side of the integrity verdict: which VMs are its victim (its image's
    launch digest at the level, its secret) and its honest reference runs, one per input
    sequence the victims received."""

    image: GuestImage
    level: Level
    secret: bytes
    memory: int = DEFAULT_MEMORY
    runs: dict[tuple[bytes, ...], Reference | None] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return expected_measurement(self.image, self.memory, self.level).hex()

    def reference(self, inputs: tuple[bytes, ...]) -> Reference | None:
        if inputs not in self.runs:
            self.runs[inputs] = reference_run(self.image, self.level, self.secret, inputs,
                                              self.memory)
        return self.runs[inputs]


def _kept(text: str, varies: tuple[str, ...]) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if not (varies and line.startswith(varies)))


def result_holds(record: dict, ref: Reference, varies: tuple[str, ...] = ()) -> bool:
    """Whether a victim VM's result, as the TEE saw it, is the honest one: a VM that ended
    by its own exit printed what the reference printed and exited with its status; one that
    did not end so (stopped, destroyed, killed) printed a prefix of it, in whole lines.
    Lines starting with a ``varies`` prefix (scheduling-dependent) are left out."""
    want = _kept(ref.console, varies)
    if record["exit_status"] is not None and not record["console_cut"]:
        return _kept(record["console"], varies) == want and record["exit_status"] == ref.status
    text = record["console"]
    whole = text[: text.rfind("\n") + 1]
    return want.startswith(_kept(whole, varies))


def victims_of(records: list[dict], secret: bytes, digest: str) -> list[dict]:
    """The run's VMs that are the owner's victim: launched from its image at its level
    (``digest``, the owner's predicted measurement) with its secret in the secrets page —
    not the attacker's own copies with secrets of its choosing."""
    owned = hashlib.sha256(secret).hexdigest()
    return [r for r in records if r["launch_digest"] == digest and r["secret_sha256"] == owned]


def integrity_broken(records: list[dict], owner: Owner, varies: tuple[str, ...]) -> list[int]:
    """The victim VMs whose result differs from the owner's reference run."""
    bad = []
    for rec in victims_of(records, owner.secret, owner.digest):
        ref = owner.reference(tuple(bytes.fromhex(x) for x in rec["inputs"]))
        if ref is not None and not result_holds(rec, ref, varies):
            bad.append(rec["id"])
    return bad


# -- scoring ----------------------------------------------------------------------------------------
def judge(name: str, kind: str, guest: str, level: Level, secret: bytes, outcome: dict,
          records: list[dict], wall: float, *, sample: Sample | None = None,
          owner: Owner | None = None, owner_refusals: int = 0,
          perimeter: Reading | None = None) -> Verdict:
    """Score an attack's outcome (as data: tvmm_tools.attacks.base.outcome_to_data) against the
    secret, with the TEE's own records of the VMs (tvmm.harness.tee_server.vm_record): the
    first violation, or a kill, is a detection; a refusal by the TEE, the owner's refusal
    to release the secret, or a refusal in the audit log of the run's ``perimeter`` (as
    the judge read it), is "blocked"; for integrity, each victim VM's result
    against ``owner``'s honest reference run, and any breach of the perimeter's
    invariants in that log — whatever the attack reports."""
    form = secret_form(sample)
    rank = keyrank.score(secret, outcome, form)
    detected_at: int | None = None
    for rec in records:
        if rec["violations"]:
            seq = rec["violations"][0]["exit_seq"]
            detected_at = seq if detected_at is None else min(detected_at, seq)
    if detected_at is None:
        kills = [rec["seq"] for rec in records if rec["kill_reason"] is not None]
        detected_at = min(kills) if kills else None
    refusals = [dict(r, vm=rec["id"]) for rec in records for r in rec.get("refusals", [])]
    bad: list[int] = []
    if kind in ("integrity", "benign") and owner is not None:
        bad = integrity_broken(records, owner, sample.varies if sample is not None else ())
    fenced = perimeter.refusals if perimeter is not None else []
    breached = perimeter.breaches if perimeter is not None else []
    # a perimeter breach (rollback, clone, VM outside it) stands whatever else happened
    violated = (bool(bad) and detected_at is None) or bool(breached)
    notes = dict(outcome.get("notes") or {})
    notes.pop("blocked", None)  # the attack's word: not evidence
    n = rank.n_bits
    bits_per = n / keyrank.length_of(secret, form) if secret else 0.0
    return Verdict(
        attack=name, guest=guest, level=level.value, kind=kind,
        n_bits=round(n, 1), bits_correct=round(rank.correct * bits_per, 1),
        leaked_bits=round(rank.leaked_bits, 1), full_recovery=rank.full_recovery,
        detected=detected_at is not None, detected_after_exits=detected_at,
        integrity_violated=violated,
        blocked=bool(refusals) or owner_refusals > 0 or bool(fenced),
        exits=outcome.get("exits", 0), wall_s=wall, stepping=outcome.get("stepping"),
        detail=str(notes.pop("detail", "")), notes=notes,
        log2_rank=round(rank.log2_rank, 3), secret=secret.hex(),
        evidence={"refusals": refusals[:16], "owner_refusals": owner_refusals,
                  "tampered_vms": bad, "vms": len(records),
                  **({"perimeter": {"refusals": fenced[:16], "breaches": breached[:16],
                                    "problem": perimeter.problem,
                                    "audit_records": perimeter.records}}
                     if perimeter is not None else {})},
    )


def owner_refusals(owner: OwnerEndpoint) -> int:
    """How often the owner's broker refused to release the secret (its own record)."""
    return sum(1 for r in owner.releases if not r.released)


def verdict_event(verdict: Verdict, secret: bytes, outcome: dict) -> dict:
    """The trace's VERDICT event: the verdict, the truth and the guess."""
    return {**verdict.to_dict(), "truth": secret.hex(), "guess": outcome["guess"],
            "known": outcome.get("known"), "candidates": outcome.get("candidates")}


# -- in process, for unit tests -------------------------------------------------------------------
def run_attack(attack: Attack, guest: str, level: Level, *, seed: int = 0,
               trace: Path | str | None = None, policy_config: PolicyConfig | None = None,
               memory: int = DEFAULT_MEMORY, release_policy: ReleasePolicy | None = None,
               ledger: LaunchLedger | None = None, secret: bytes | None = None) -> Verdict:
    """The attack in this process, next to the platform: for unit tests only — the attack
    could reach the platform's objects here.  Scored runs: tvmm.harness.judge.  The
    victim's owner serves each launch a launch secret (and the attested path its key
    release) under ``release_policy``, counted in ``ledger`` (its budget bounds relaunches).
    ``secret``: a fixed secret for a test; by default one drawn from the OS."""
    image, sample = resolve(guest)
    if secret is None:
        secret = draw_secret(sample)
    memory = max(memory, sample.memory) if sample else memory  # a Linux image's
    machine = make_machine(seed=seed, trace=trace, image=image, level=level,
                           policy_config=policy_config,
                           extra_header={"attack": attack.name})
    recorder = machine.recorder

    def record(action: str, **outside: object) -> None:
        recorder.emit(EventKind.ATTACK, action, outside=dict(outside))

    def devices() -> Devices:
        return Devices(Console(), BlockDevice(None), InputDevice())

    owner = owner_endpoint(image, secret, memory=memory, policy=release_policy, ledger=ledger,
                           launch_key=lambda: machine.platform.launch_public_key,
                           launch_level=level)
    fence = JudgePerimeter()
    ctx = AttackContext(
        client=machine.client, image=image, guest=guest, level=level,
        rng=random.Random(public_rng_seed(seed)), memory=memory, secret_blob=b"",
        record=record, devices=devices, owner=owner,
        launch_secret=launch_secrets_from(owner, record),
        perimeter=lambda nodes: fence.offer({"nodes": nodes}),
    )
    start = time.perf_counter()
    try:
        outcome = outcome_to_data(attack.run(ctx))
        wall = time.perf_counter() - start
        records = [vm_record(vm) for vm in machine.platform.tee.vms.values()]
        verdict = judge(attack.name, attack.kind, guest, level, secret, outcome, records, wall,
                        sample=sample, owner=Owner(image, level, secret, memory),
                        owner_refusals=owner_refusals(owner), perimeter=fence.read())
        recorder.emit(EventKind.VERDICT, attack.name, inside=verdict_event(verdict, secret,
                                                                           outcome))
        return verdict
    finally:
        fence.close()
        machine.close()
