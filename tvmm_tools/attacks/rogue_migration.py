"""Scenario 12a — migrate a VM to a node outside the perimeter.

The host starts a node from a copy of the code tree with one line of the shim changed
(tvmm.operator.launcher.rogue_tree: the process really runs that code, and its measurement
is taken over what it loaded), then asks the coordinator to move the victim there.  The
judge reads the coordinator's audit log for the refusals (tvmm.harness.perimeter); the
detail says what the attack saw."""

from __future__ import annotations

from tvmm_tools.attacks._perimeter import (
    audit_has,
    launch_counter,
    perimeter,
    refusal,
    vm_row,
    without_perimeter,
)
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome


class RogueMigration(Attack):
    name = "rogue-migration"
    summary = "migrate the VM to a node whose trusted code is modified (outside the perimeter)"
    victims = ("counter",)
    kind = "integrity"
    published = ("TDX migration: only a MigTD with an accepted measurement gets the "
                 "migration key (Intel TDX Migration spec); docs/attacks.md §12")

    def run(self, ctx: AttackContext) -> Outcome:
        if (na := without_perimeter(ctx)) is not None:
            return na
        with perimeter(ctx, ("n1",), rogue=("rogue",)) as (_per, op):
            vm = launch_counter(ctx, op)
            ctx.record("migrate", vm=vm, to="rogue")
            refused = refusal(lambda: op.migrate(vm, "rogue", live=True))
            registered = audit_has(op, "attestation_refused", node="rogue")
            logged = audit_has(op, "migrate_refused", vm=vm, to="rogue")
            row = vm_row(op, vm)
        return Outcome(notes={"detail": (
            f"rogue node refused at registration ({registered}); migration refused: "
            f"{refused or 'NO'} (audit: {logged}); VM on {row['node']}")})
