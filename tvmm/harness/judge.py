"""A scored attack run: the judge here (it holds the secret and the owner), the TEE in one
process, the attack — untrusted host code — in another.

The attack's process gets only its job (tools/host_process.py): the link to the TEE, the
victim's public image path, level, memory, the public random stream's seed, a pipe for its trace notes, and this process at the end of a message
link for owner messages.  Its Outcome comes back as data; detections come from the TEE's
own records of every VM the run created (the judge-only control link) — violations,
kills, refusals, what each guest printed and how it ended — not from anything the attack
says.  The secret is drawn from the OS in this process, for every run.  A crash or a dead attack process is an "error" verdict.
"""

from __future__ import annotations

import time
from pathlib import Path

from shim.policies.config import PolicyConfig
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import Level
from tvmm.harness import launcher
from tvmm.judge import (
    Owner,
    Verdict,
    draw_secret,
    judge,
    owner_refusals,
    public_rng_seed,
    verdict_event,
)
from tvmm.machine import DEFAULT_MEMORY, owner_endpoint, trace_header
from tvmm.samples import resolve


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
               link: str = launcher.DEFAULT_LINK, secret: bytes | None = None) -> Verdict:
    """Run the attack ``name`` (registered, with ``kind`` as its class says) against
    ``guest`` at ``level`` across the boundary, and judge it.  With ``file`` (a user's
    attack, loaded only in the attack's process) the name and kind are the file's.

    The victim's secret is drawn from the OS here, in the judge's process (``secret``:
    a fixed one, for debugging and tests); ``seed`` drives only the attack's public
    random stream."""
    image, sample = resolve(guest)
    if secret is None:
        secret = draw_secret(sample)
    session = launcher.start(policy_config=policy_config, trace=trace,
                             header=trace_header(image, level, seed, {"attack": name or str(file)}),
                             link=link, notes=True)
    # The owner issues a launch secret per launch (each opens once in the TEE), counted
    # against its launch budget, wrapped to the TEE process's public launch key.
    owner = owner_endpoint(image, secret, memory=memory, launch_key=lambda: session.launch_key)
    try:
        session.start_job({
            "job": "attack", "attack": name, "file": str(file) if file else None,
            "image": str(image.path), "guest": guest, "level": level.value,
            "memory": memory, "rng_seed": public_rng_seed(seed)})
        start = time.perf_counter()
        outcome = session.serve(owner)
        wall = time.perf_counter() - start
        if outcome is None or "error" in outcome:
            why = "the attack's process died" if outcome is None else outcome["error"]
            return error_verdict(name or "?", kind, guest, level, wall, why)
        if file:
            name, kind = str(outcome.get("attack")), str(outcome.get("kind"))
        verdict = judge(name, kind, guest, level, secret, outcome, session.records(), wall,
                        sample=sample, owner=Owner(image, level, secret, memory),
                        owner_refusals=owner_refusals(owner))
        session.emit(EventKind.VERDICT.value, name,
                     inside=verdict_event(verdict, secret, outcome))
        return verdict
    finally:
        session.close()
