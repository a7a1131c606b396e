"""Scenario 12d — clone a VM: resume one checkpoint twice.

The host suspends the VM, resumes the checkpoint on one node, then the same checkpoint
on another.  The judge reads the coordinator's audit log for the refusal of the second
resume (tvmm.harness.perimeter); the detail says what the attack saw."""

from __future__ import annotations

from tvmm_tools.attacks._perimeter import (
    audit_has,
    launch_counter,
    perimeter,
    refusal,
    vm_row,
    without_perimeter,
)
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, needs_symbols


class CloneResume(Attack):
    name = "clone-resume"
    summary = "resume one sealed checkpoint on two nodes (two running copies)"
    victims = ("counter",)
    kind = "integrity"
    published = ("TDX migration: at most one copy ever runs (abort token only from an "
                 "uncommitted destination); docs/attacks.md §12")

    def run(self, ctx: AttackContext) -> Outcome:
        if (na := without_perimeter(ctx)) is not None:
            return na
        if (na := needs_symbols(ctx, "counter", why="a guest that keeps running to clone")) is not None:
            return na
        with perimeter(ctx, ("n1", "n2", "n3")) as (_per, op):
            vm = launch_counter(ctx, op)
            ckpt = op.suspend(vm)
            op.resume(ckpt, "n2")
            ctx.record("resume", again="n3")
            refused = refusal(lambda: op.resume(ckpt, "n3"))
            logged = audit_has(op, "resume_refused", vm=vm, reason="clone")
            row = vm_row(op, vm)
        return Outcome(notes={"detail": (
            f"second resume {'refused: ' + refused if refused else 'ACCEPTED'}; audit: "
            f"{logged}; the VM runs on {row['node']} only")})
