"""Scenario 12c — resume an older suspended checkpoint (rollback).

The host keeps every checkpoint it stored: it suspends the VM (version 2), resumes it,
suspends it again (version 3), then offers version 2.  The judge reads the
coordinator's audit log for the refusal (tvmm.harness.perimeter); the detail says what the
attack saw."""

from __future__ import annotations

from tvmm_tools.attacks._perimeter import (
    audit_has,
    launch_counter,
    perimeter,
    refusal,
    without_perimeter,
)
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, needs_symbols


class CheckpointRollback(Attack):
    name = "checkpoint-rollback"
    summary = "resume an older sealed checkpoint after a newer one exists"
    victims = ("counter",)
    kind = "integrity"
    published = "monotonic counters at the coordinator (TCCP; docs/attacks.md §12)"

    def run(self, ctx: AttackContext) -> Outcome:
        if (na := without_perimeter(ctx)) is not None:
            return na
        if (na := needs_symbols(ctx, "counter", why="a guest that keeps running to checkpoint")) is not None:
            return na
        with perimeter(ctx, ("n1", "n2")) as (_per, op):
            vm = launch_counter(ctx, op)
            old = op.suspend(vm)
            op.resume(old, "n2")
            newer = op.suspend(vm)
            ctx.record("resume", version="old")
            refused = refusal(lambda: op.resume(old, "n1"))
            logged = audit_has(op, "resume_refused", vm=vm, reason="rollback")
            op.resume(newer, "n1")  # the newest one still works
        return Outcome(notes={"detail": (
            f"old checkpoint {'refused: ' + refused if refused else 'RESUMED'}; "
            f"audit: {logged}; newest version resumed")})
