"""A scored attack run: the judge here (it holds the secret and the owner), the TEE in one
process, the attack — untrusted host code — in another.

The attack's process gets only its job (tvmm_tools/host_process.py): the link to the TEE, the
victim's public image path, level, memory, the public random stream's seed, a pipe for its trace notes, and this process at the end of a message
link for owner messages.  Its Outcome comes back as data; detections come from the TEE's
own records of every VM the run created (the judge-only control link) — violations,
kills, refusals, what each guest printed and how it ended — and, for an attack that asks
for a perimeter, from the audit log of the coordinator this process started for it
(tvmm.harness.perimeter), not from anything the attack says.  The secret is drawn from the OS in this process, for every run.  A crash or a dead attack process is an "error" verdict.
"""

from __future__ import annotations

import base64
import tempfile
import time
from pathlib import Path

from shim.policies.config import PolicyConfig
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import Level
from tvmm.guestimage import GuestImage
from tvmm.harness import launcher
from tvmm.harness.perimeter import JudgePerimeter
from tvmm.judge import (
    Owner,
    Verdict,
    draw_secret,
    judge,
    owner_refusals,
    public_rng_seed,
    verdict_event,
)
from tvmm.machine import DEFAULT_MEMORY, expected_measurement, owner_endpoint, trace_header
from tvmm.owner.broker import ReleasePolicy
from tvmm.owner.by_receipt import ReceiptPolicy
from tvmm.owner.ledger import SCORED_RUN_LAUNCHES, LaunchBudget, LaunchLedger
from tvmm.samples import resolve
from tvmm.transparency import bundle, keys
from tvmm.transparency.claims import Claim
from tvmm.transparency.service import LedgerService
from tvmm.transparency.statements import sign_statement


def error_verdict(name: str, kind: str, guest: str, level: Level, wall: float,
                  why: str) -> Verdict:
    return Verdict(
        attack=name, guest=guest, level=level.value, kind=kind, n_bits=0.0,
        bits_correct=0.0, leaked_bits=0.0, full_recovery=False, detected=False,
        detected_after_exits=None, integrity_violated=False, blocked=False, exits=0,
        wall_s=wall, detail=f"error: {why}", notes={"error": True})


def run_attack(name: str | None, kind: str, guest: str, level: Level, *, seed: int = 0,
               trace: Path | str | None = None, policy_config: PolicyConfig | None = None,
               memory: int = DEFAULT_MEMORY, file: Path | str | None = None,
               link: str = launcher.DEFAULT_LINK, secret: bytes | None = None,
               launches: int | None = SCORED_RUN_LAUNCHES, owner_policy: str = "digest"
               ) -> Verdict:
    """Run the attack ``name`` (registered, with ``kind`` as its class says) against
    ``guest`` at ``level`` across the boundary, and judge it.  With ``file`` (a user's
    attack, loaded only in the attack's process) the name and kind are the file's.

    The victim's secret is drawn from the OS here, in the judge's process (``secret``:
    a fixed one, for debugging and tests); ``seed`` drives only the attack's public
    random stream.

    The owner releases the victim's secret at most ``launches`` times (its launch budget,
    per hour, counted in a ledger of this run; None: no bound), as a real owner bounds
    relaunches: an attack that relaunches the victim to average pays in launches, and a
    refused launch is on the owner's record.  ``owner_policy`` "ledger": the owner releases
    to any build registered in a transparency ledger instead of one predicted digest (the
    judge registers the genuine build, and the host gets its statement and receipt)."""
    image, sample = resolve(guest)
    if secret is None:
        secret = draw_secret(sample)
    memory = max(memory, sample.memory) if sample else memory  # a Linux image's
    session = launcher.start(policy_config=policy_config, trace=trace,
                             header=trace_header(image, level, seed, {"attack": name or str(file)}),
                             link=link, notes=True)
    # The owner issues a launch secret per launch (each opens once in the TEE), counted
    # against its launch budget, wrapped to the TEE process's public launch key and bound
    # to the digest it predicts at the run's level (the TEE releases it into no other).
    ledger_dir = tempfile.TemporaryDirectory(prefix="tvmm-owner-")
    digest = expected_measurement(image, memory, level if level in (Level.SNP, Level.SHIM)
                                  else Level.SNP)
    budget = LaunchBudget(launches, 3600) if launches is not None else None
    receipt = None
    if owner_policy == "ledger":
        receipts, receipt = registered_build(image, level, digest, Path(ledger_dir.name))
        policy = ReleasePolicy(measurement=None, transparency=receipts, budget=budget)
    else:
        policy = ReleasePolicy(measurement=digest, budget=budget)
    owner = owner_endpoint(image, secret, memory=memory, launch_key=lambda: session.launch_key,
                           launch_level=level, policy=policy,
                           ledger=LaunchLedger(Path(ledger_dir.name) / "launches"))
    fence = JudgePerimeter()
    try:
        # Files go as bytes: a separated host (tvmm.link.privsep) reads none of this
        # process's directories.
        session.start_job({
            "job": "attack", "attack": name, **attack_file(file),
            "image": str(image.path), "image_data": _b64(image.path.read_bytes()),
            "guest": guest, **victim_files(guest), "level": level.value,
            "memory": memory, "rng_seed": public_rng_seed(seed),
            "receipt": receipt.hex() if receipt is not None else None})
        start = time.perf_counter()
        outcome = session.serve(owner, perimeter=fence.offer)
        wall = time.perf_counter() - start
        if outcome is None or "error" in outcome:
            why = "the attack's process died" if outcome is None else outcome["error"]
            verdict = error_verdict(name or "?", kind, guest, level, wall, why)
            verdict.notes["host_separation"] = session.separation
            return verdict
        if file:
            name, kind = str(outcome.get("attack")), str(outcome.get("kind"))
        verdict = judge(name, kind, guest, level, secret, outcome, session.records(), wall,
                        sample=sample, owner=Owner(image, level, secret, memory),
                        owner_refusals=owner_refusals(owner), perimeter=fence.read())
        verdict.notes["host_separation"] = session.separation
        session.emit(EventKind.VERDICT.value, name,
                     inside=verdict_event(verdict, secret, outcome))
        return verdict
    finally:
        fence.close()
        session.close()
        ledger_dir.cleanup()


def victim_files(guest: str) -> dict:
    """A victim given by its source path goes along as bytes with its owner's public
    declaration (``<name>.toml``): the attack reads what its size and form are, as any
    reader of the victim can, where a separated host sees none of the user's files."""
    source = Path(guest)
    if source.suffix not in (".c", ".S", ".s") or not source.is_file():
        return {}
    files = [source, *([source.with_suffix(".toml")] if source.with_suffix(".toml").is_file()
                       else [])]
    return {"guest_data": {p.name: _b64(p.read_bytes()) for p in files}}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SIBLINGS_MAX = 64  # Python files beside a user's attack that go with it, at most


def attack_file(file: Path | str | None) -> dict:
    """A user's attack file as the job carries it: its name, and its source with the
    Python files beside it (modules it may import from its own directory)."""
    if not file:
        return {"file": None}
    file = Path(file)
    siblings = sorted(p for p in file.parent.glob("*.py") if p.is_file() and p != file)
    files = [file, *siblings[:SIBLINGS_MAX]]
    return {"file": file.name, "file_data": {p.name: _b64(p.read_bytes()) for p in files}}


def registered_build(image: GuestImage, level: Level, digest: bytes, where: Path
                     ) -> tuple[ReceiptPolicy, bytes]:
    """The vendor, its ledger and the owner's policy for a run whose owner releases by
    transparency: a fresh issuer registers the genuine image's claim in a fresh ledger
    under ``where``; (the owner's policy, the statement-and-receipt bundle a host presents)."""
    issuer = keys.new_key()
    (where / "issuer.pub.pem").write_bytes(keys.public_pem(issuer.public_key()))
    ledger = LedgerService.create(where / "transparency",
                                  [(where / "issuer.pub.pem", [FEED])])
    try:
        claim = Claim(digest, image.name, FEED, 1, bytes.fromhex(image.sha256), level.value)
        statement = sign_statement(claim, issuer)
        _index, receipt = ledger.register(statement)
        policy = ReceiptPolicy(ledger.public_key, issuer.public_key(), FEED, 1)
    finally:
        ledger.close()
    return policy, bundle.pack(statement, receipt)


FEED = "tvmm/judge"
