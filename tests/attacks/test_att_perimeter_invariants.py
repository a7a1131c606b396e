"""The judge's check of the perimeter's invariants (tvmm.harness.perimeter_invariants), on
audit logs written here in the coordinator's record format (tvmm/perimeter/coordinator.py).

A genuine perimeter's history has no breach, whatever it refused; a history in which a
rollback, a clone, a VM outside the perimeter or a refused stream went through has one —
and the judge scores it "tampered", not "blocked", beside any number of refusals."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tvmm.abi.types import Level
from tvmm.harness.perimeter import Reading
from tvmm.harness.perimeter_invariants import breaches
from tvmm.judge import judge
from tvmm_tools.attacks.base import Outcome, outcome_to_data

M = "ab" * 48  # the perimeter's measurement (hex); node_registered logs its first 24
VM = "counter-1"


class Log:
    """Audit records, numbered as the coordinator numbers them."""

    def __init__(self, nodes: tuple[str, ...] = ("n1", "n2", "n3")) -> None:
        self.records: list[dict] = []
        for n in nodes:
            self.add("node_registered", node=n, chip="c" * 32, measurement=M[:24])

    def add(self, event: str, **detail: object) -> Log:
        self.records.append({"seq": len(self.records) + 1, "time": 0.0, "event": event,
                             "detail": detail, "prev": "", "hash": ""})
        return self

    def launch(self, node: str = "n1") -> Log:
        return self.add("launch", vm=VM, node=node, level="shim").add(
            "launched", vm=VM, node=node, error="")

    def suspend(self, node: str, version: int) -> Log:
        return self.add("suspend_prepare", vm=VM, node=node, epoch=version).add(
            "suspended", vm=VM, node=node, version=version, bytes=1)

    def resume(self, node: str, version: int) -> Log:
        return self.add("resume_authorized", vm=VM, node=node, version=version).add(
            "resumed", vm=VM, node=node, version=version)

    def migrate(self, src: str, dst: str, epoch: int, refused: bool = False,
                commit: bool = True) -> Log:
        self.add("migrate_prepare", vm=VM, src=src, dst=dst, epoch=epoch, live=True, relay="")
        if refused:
            self.add("tee_refused", node=dst, tee={"event": "stream_refused", "stream": 7,
                                                   "vm": VM, "epoch": epoch,
                                                   "direction": "in", "check": "counter",
                                                   "reason": "replayed"})
        if commit:
            return self.add("migrate_commit", vm=VM, src=src, dst=dst, epoch=epoch)
        return self.add("migrate_abort", vm=VM, src=src, dst=dst, epoch=epoch, reason="x")

    def refused(self) -> Log:  # one trivially refused request
        return self.add("launch_refused", reason="not_in_perimeter", message="no",
                        node="nowhere")


def genuine() -> Log:
    """Launch on n1, suspend (2), resume on n2, suspend (3), resume on n1, a refused
    rollback and a refused clone, then a migration aborted for a refused stream and one
    committed."""
    log = Log().launch().suspend("n1", 2).resume("n2", 2).suspend("n2", 3).resume("n1", 3)
    log.add("resume_refused", vm=VM, node="n2", version=2, reason="rollback", message="")
    log.add("resume_refused", vm=VM, node="n3", version=3, reason="clone", message="")
    return log.migrate("n1", "n2", 4, refused=True, commit=False).migrate("n1", "n2", 4)


def test_a_genuine_history_has_no_breach_whatever_it_refused():
    log = genuine().refused()
    assert breaches(log.records, M) == []
    listing = [{"name": VM, "node": "n2", "state": "running", "version": 4}]
    assert breaches(log.records, M, listing) == []


def test_a_resume_that_failed_gives_its_checkpoint_back():
    log = Log().launch().suspend("n1", 2)
    log.add("resume_authorized", vm=VM, node="n2", version=2)
    log.add("resume_failed", vm=VM, node="n2", version=2, error="tee", tee=[])
    assert breaches(log.resume("n3", 2).records, M) == []


def test_a_rollback_that_went_through_is_a_breach():
    log = Log().launch().suspend("n1", 2).resume("n2", 2).suspend("n2", 3).refused()
    found = breaches(log.resume("n1", 2).records, M)
    assert any("older than its newest version 3 (rollback)" in b for b in found), found


def test_a_checkpoint_resumed_twice_is_a_clone():
    log = Log().launch().suspend("n1", 2).resume("n2", 2).refused()
    found = breaches(log.resume("n3", 2).records, M)
    assert any("while running on n2 (clone)" in b for b in found), found


def test_a_vm_placed_outside_the_perimeter_is_a_breach():
    never = Log().launch().suspend("n1", 2).resume("rogue", 2)
    assert any("rogue, not a node of the perimeter" in b for b in breaches(never.records, M))
    other = Log().add("node_registered", node="rogue", chip="c" * 32, measurement="cd" * 12)
    other.launch().migrate("n1", "rogue", 2)
    found = breaches(other.records, M)
    assert any("placed on rogue" in b for b in found), found
    assert breaches(Log().launch("nowhere").records, M)


def test_a_refused_stream_committed_is_a_breach():
    found = breaches(Log().launch().migrate("n1", "n2", 2, refused=True).records, M)
    assert any("committed a stream its destination TEE refused" in b for b in found), found
    assert breaches(Log().launch().migrate("n1", "n2", 2, refused=True, commit=False)
                    .migrate("n1", "n2", 2).records, M) == []
    unprepared = Log().launch().add("migrate_commit", vm=VM, src="n1", dst="n2", epoch=2)
    assert any("without its prepare" in b for b in breaches(unprepared.records, M))


def test_the_coordinators_state_must_be_in_its_log():
    log = Log().launch().suspend("n1", 2)
    assert breaches(log.records, M, [{"name": VM, "node": None, "state": "suspended",
                                      "version": 2}]) == []
    ahead = breaches(log.records, M, [{"name": VM, "node": None, "state": "suspended",
                                       "version": 3}])
    assert any("newer than any its log records" in b for b in ahead), ahead
    ghost = breaches(log.records, M, [{"name": "ghost-9", "node": "n1", "state": "running",
                                       "version": 1}])
    assert any("never in its log" in b for b in ghost), ghost


def verdict(reading: Reading):
    return judge("checkpoint-rollback", "integrity", "counter", Level.SHIM, b"\x01" * 8,
                 outcome_to_data(Outcome(notes={"detail": "x"})), [], 1.0,
                 perimeter=reading)


def test_a_breach_beside_a_refusal_scores_tampered_not_blocked():
    refusal = [{"event": "launch_refused", "reason": "not_in_perimeter"}]
    held = verdict(Reading(refusals=refusal, records=9))
    assert held.cell == "blocked"
    broken = verdict(Reading(refusals=refusal, breaches=["#9 resume_authorized: rollback"],
                             records=9))
    assert broken.cell == "tampered" and broken.integrity_violated and broken.blocked
    assert broken.evidence["perimeter"]["breaches"] == ["#9 resume_authorized: rollback"]


# A genuine coordinator's histories, drawn at random: each operation is one the coordinator
# would grant in that state, or refuse (an audited refusal changes nothing).
def random_history(rng: random.Random, steps: int) -> Log:
    log, state, node, version, checkpoints = Log().launch(), "running", "n1", 1, []
    for _ in range(steps):
        op = rng.choice(("suspend", "resume", "migrate", "refuse"))
        if op == "suspend" and state == "running":
            version += 1
            log.suspend(node, version)
            state, checkpoints = "suspended", [*checkpoints, version]
        elif op == "resume" and state == "suspended":
            node = rng.choice(("n1", "n2", "n3"))
            if rng.random() < 0.3:
                log.add("resume_authorized", vm=VM, node=node, version=version)
                log.add("resume_failed", vm=VM, node=node, version=version, error="x")
            else:
                log.resume(node, version)
                state = "running"
        elif op == "migrate" and state == "running":
            dst = rng.choice([n for n in ("n1", "n2", "n3") if n != node])
            ok = rng.random() < 0.6
            log.migrate(node, dst, version + 1, refused=not ok, commit=ok)
            if ok:
                node, version = dst, version + 1
        else:
            old = rng.choice(checkpoints) if checkpoints else 1
            log.add("resume_refused", vm=VM, node="n3", version=old, reason="rollback",
                    message="")
    return log


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 30))
def test_random_genuine_histories_have_no_breach(seed: int, steps: int):
    assert breaches(random_history(random.Random(seed), steps).records, M) == []


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 30))
def test_one_stale_resume_in_any_history_is_a_breach(seed: int, steps: int):
    """Version 1 (the launch) is older than any checkpoint: resuming "it" is a rollback
    of a suspended VM, or a clone of a running one."""
    log = random_history(random.Random(seed), steps)
    log.add("resume_authorized", vm=VM, node="n2", version=1)
    assert breaches(log.records, M)
