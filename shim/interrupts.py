"""Interrupts the host asks for: below ``shim`` event injection (unconditional) or a
virtual interrupt (delivered once the guest has IF = 1), at ``shim`` a filtered doorbell."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim import delivery
from shim.vm import VcpuContext, Vm
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import InjectMode

if TYPE_CHECKING:
    from shim.platform import Tee


def post(tee: Tee, vm: Vm, ctx: VcpuContext, vector: int,
         mode: InjectMode = InjectMode.EVENT) -> None:
    """Queue an event (delivered at the next entry) or post a virtual interrupt (held
    until the guest can take it); at shim both pass the filter, which holds them all."""
    if vm.policies is not None and vm.features.irq_filter:
        why = vm.policies.irq.refusal(ctx.registered, vector)
        if why:
            if vector < 32:  # no honest host injects an exception; an early tick is benign
                vm.policies.note_violation("irq_filter", why, ctx)
            tee.recorder.emit(
                EventKind.INJECT, "refused", inside={"vector": vector, "delivered": False,
                                                      "why": why}, vcpu=ctx.index,
            )
            return
    if mode == InjectMode.VIRTUAL and not vm.features.irq_filter:
        if vector in ctx.virqs:  # already pending: one bit per vector, as in the IRR
            return
        ctx.virqs.append(vector)
        why = "pending until IF=1"
    else:
        ctx.irqs.append(vector)
        why = "pending"
    tee.recorder.emit(EventKind.INJECT, "posted", inside={"vector": vector, "delivered": False,
                                                          "why": why}, vcpu=ctx.index)


def deliver_pending(tee: Tee, vm: Vm, ctx: VcpuContext) -> None:
    """Deliver at most one pending interrupt at this entry, as VMRUN injects one event:
    a queued event first (below shim whatever the guest's state), else a virtual interrupt
    if the guest has interrupts enabled (the CPU takes V_IRQ only when RFLAGS.IF = 1; a
    handler runs with IF = 0 until its iretq, so none nests in it)."""
    if ctx.irqs:
        if vm.features.irq_filter and not delivery.interrupts_enabled(vm.vcpu):
            return  # held until the guest can take it
        queue = ctx.irqs
    elif ctx.virqs and delivery.interrupts_enabled(vm.vcpu):
        queue = ctx.virqs
    else:
        return
    vector = queue.popleft()
    delivered = delivery.deliver(vm.vcpu, vm.memory, vector)
    if delivered:
        ctx.rip = vm.vcpu.read_rip()
    tee.recorder.emit(
        EventKind.INJECT, "delivered" if delivered else "no_handler",
        inside={"vector": vector, "delivered": delivered,
                "why": "" if delivered else "no IDT gate"},
        vcpu=ctx.index,
    )
