"""A host that single-steps a routine: from the first fault on one of its pages (which it
maps back) to the first console write, keeping the RIP of every step (None where the
level hides it).  The adaptive attacks step their own copies with it, and cipher-stack the
victim; a subclass looks at more of each step in ``on_step``."""

from __future__ import annotations

from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import ExitReason, Field
from tvmm.host.hypervisor import HonestHypervisor
from tvmm_tools.attacks._decode import fault_page, is_console_write
from tvmm_tools.attacks.base import AttackContext
from tvmm_tools.attacks.calibrate import finish, launch_own_copy

MAX_STEPS = 20_000


class RoutineStepper(HonestHypervisor):
    def __init__(self, *args, pages: list[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pages = pages
        self.stepping = False
        self.rips: list[int | None] = []

    def enter(self) -> Reply:
        self.quantum = 1 if self.stepping else 0
        return super().enter()

    def on_step(self, rec: ExitRecord) -> bool:
        """Look at one step's exit (its RIP is kept already); False stops the stepping."""
        return True

    def on_exit(self, rec: ExitRecord) -> bool:
        if rec.reason == ExitReason.NPF and fault_page(rec) in self.pages and not self.rips:
            for page in self.pages:
                self.client.map(self.vm, page)
            self.stepping = True
        if self.stepping:
            self.rips.append(rec.get(Field.RIP))
            if (not self.on_step(rec) or len(self.rips) >= MAX_STEPS
                    or is_console_write(rec)):
                self.stepping = False
        return super().on_exit(rec)


def step_own_copy(ctx: AttackContext, host: RoutineStepper) -> None:
    """Launch the attacker's own copy on ``host``, unmap the routine pages so that the
    first call faults, run it stepping, and tear the copy down."""
    launch_own_copy(ctx, host)
    try:
        for page in host.pages:
            ctx.client.unmap(host.vm, page)
        host.run(max_exits=MAX_STEPS + 5_000)
    finally:
        finish(host)
