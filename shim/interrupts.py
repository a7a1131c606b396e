"""Interrupts the host asks for: event injection below ``shim``, a filtered doorbell at it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim import delivery
from shim.vm import VcpuContext, Vm
from tvmm.abi.trace_events import EventKind

if TYPE_CHECKING:
    from shim.platform import Tee


def post(tee: Tee, vm: Vm, ctx: VcpuContext, vector: int) -> None:
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
    ctx.irqs.append(vector)
    tee.recorder.emit(EventKind.INJECT, "posted", inside={"vector": vector, "delivered": False,
                                                          "why": "pending"}, vcpu=ctx.index)


def deliver_pending(tee: Tee, vm: Vm, ctx: VcpuContext) -> None:
    """Deliver at most one pending interrupt at this entry, as VMRUN injects one event."""
    if not ctx.irqs:
        return
    if vm.features.irq_filter and not delivery.interrupts_enabled(vm.vcpu):
        return  # held until the guest can take it
    vector = ctx.irqs.popleft()
    delivered = delivery.deliver(vm.vcpu, vm.memory, vector)
    if delivered:
        ctx.rip = vm.vcpu.read_rip()
    tee.recorder.emit(
        EventKind.INJECT, "delivered" if delivered else "no_handler",
        inside={"vector": vector, "delivered": delivered,
                "why": "" if delivered else "no IDT gate"},
        vcpu=ctx.index,
    )
