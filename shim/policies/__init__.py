"""The shim's policies, switched on by the ``shim`` level: each a small module, joined
here into the calls the exit path makes.  Every decision is a trace event and every
violation is kept (``violations``) so the owner and the judge can read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shim.errors import EntryRefused
from shim.policies.config import PolicyConfig, Response
from shim.policies.draws import Draws, OsDraws
from shim.policies.faults import FaultPolicy
from shim.policies.irq import IrqFilter
from shim.policies.step import StepPolicy
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import ExitReason, Field, KillReason
from tvmm.hw.vcpu import PAGE, Access

if TYPE_CHECKING:
    from shim.exit_path import Exit
    from shim.platform import Tee
    from shim.vm import VcpuContext, Vm
    from tvmm.hw.vcpu import Stop


@dataclass(frozen=True, slots=True)
class Violation:
    exit_seq: int  # the number of the next exit record when it was found
    policy: str
    why: str
    response: str


class PolicySet:
    def __init__(self, config: PolicyConfig | None, draws: Draws | None = None) -> None:
        self.config = config or PolicyConfig()
        self.step = StepPolicy(self.config, draws if draws is not None else OsDraws())
        self.faults = FaultPolicy(self.config)
        self.irq = IrqFilter(self.config)
        self.violations: list[Violation] = []
        self._terminate: tuple[KillReason, str] | None = None

    def note_violation(self, policy: str, why: str, ctx: VcpuContext,
                       response: Response | str = "recorded") -> None:
        self.violations.append(Violation(ctx.seq, policy, why, str(response)))

    def _respond(self, tee: Tee, vm: Vm, ctx: VcpuContext, policy: str, why: str,
                 response: Response, reason: KillReason) -> None:
        self.note_violation(policy, why, ctx, response)
        tee.recorder.emit(EventKind.POLICY, policy, inside={
            "policy": policy, "reason": why, "response": response.value}, vcpu=ctx.index)
        if response == Response.TERMINATE:
            self._terminate = (reason, f"{policy}: {why}")
        elif response == Response.NOTIFY and self.config.notify_vector in ctx.registered:
            ctx.irqs.append(self.config.notify_vector)

    # -- calls from the exit path ----------------------------------------------------------
    def before_entry(self, tee: Tee, vm: Vm, ctx: VcpuContext) -> Exit | None:
        if self._terminate is not None:
            from shim.exit_path import kill

            reason, why = self._terminate
            return kill(vm, reason, why)
        if self.faults.listed:
            missing = vm.memory.unmapped_pages(sorted(self.faults.listed))
            if missing:
                tee.recorder.emit(EventKind.POLICY, "refuse_entry", inside={
                    "policy": "fault_rule", "reason": "listed pages unmapped",
                    "pages": missing[:32]}, vcpu=ctx.index)
                raise EntryRefused("vm", f"{len(missing)} pages on the fault list must be mapped")
        if self.config.pin_working_set:
            missing = vm.memory.unmapped_private()
            if missing:
                tee.recorder.emit(EventKind.POLICY, "refuse_entry", inside={
                    "policy": "pinning", "reason": "private pages unmapped",
                    "pages": missing}, vcpu=ctx.index)
                if not any(v.policy == "pinning" for v in self.violations):  # once: no flood
                    self.note_violation("pinning", f"entry with {missing} private pages "
                                        "unmapped", ctx, Response.REFUSE)
                raise EntryRefused("vm", f"{missing} private pages must be mapped")
        return None

    def step_quantum(self, tee: Tee, vm: Vm, ctx: VcpuContext, quantum: int) -> int:
        armed, short = self.step.quantum(quantum)
        if short:
            if armed != quantum:
                tee.recorder.emit(EventKind.POLICY, "step_extend", inside={
                    "policy": "step", "reason": f"quantum {quantum} < {self.config.min_progress}",
                    "armed": armed}, vcpu=ctx.index)
            if self.step.count_short(ctx.retired):
                self._respond(tee, vm, ctx, "step_detect",
                              f"more than {self.config.detect_short_entries} short entries in "
                              f"{self.config.detect_window} instructions",
                              self.config.step_response, KillReason.STEP_POLICY)
        return armed

    def on_fault(self, tee: Tee, vm: Vm, ctx: VcpuContext, stop: Stop,
                 fields: dict[Field, int]) -> Exit:
        from shim.exit_path import Exit

        page = stop.addr & ~(PAGE - 1)
        if (self.config.pin_working_set and vm.memory.contains(page)
                and vm.memory.is_private(page)):
            # Entry needs every private page mapped, so the host unmapped this one while
            # the guest ran: the fault is the channel itself, never benign.  The VM ends
            # here, and the host is not shown the fault's page.
            from shim.exit_path import kill

            why = "a private page was unmapped while the guest ran"
            self._respond(tee, vm, ctx, "pinning", why, Response.TERMINATE,
                          KillReason.FAULT_POLICY)
            return kill(vm, KillReason.FAULT_POLICY, f"pinning: {why}")
        tripped, over_budget = self.faults.record(stop.rip, page, ctx.retired)
        if tripped:
            self._respond(tee, vm, ctx, "fault_rule",
                          f"more than {self.config.fault_same_rip} faults at one RIP",
                          self.config.fault_rule_response, KillReason.FAULT_POLICY)
        if over_budget:
            self._respond(tee, vm, ctx, "fault_budget",
                          f"more than {self.config.fault_budget} faults in a window",
                          self.config.fault_budget_response, KillReason.FAULT_POLICY)
        if stop.access != Access.FETCH and self.faults.record_data():
            self._respond(tee, vm, ctx, "fault_data",
                          f"more than {self.config.data_fault_budget} data-page faults in "
                          "the launch", self.config.data_fault_response,
                          KillReason.FAULT_POLICY)
        return Exit(ExitReason.NPF, fields, inside={"fault_gpa": stop.addr})
