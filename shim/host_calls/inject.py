"""INJECT(vm, vcpu, vector, mode): ask for an interrupt.

Below ``shim`` ``mode`` chooses what the hardware offers a hypervisor:
* EVENT — event injection (SVM's EVENTINJ): the vector is delivered through the guest's
  IDT at the next entry, whatever it is and whether or not the guest can take it (with
  interrupts disabled, inside a handler).  What Heckler-style attacks use.
* VIRTUAL — a virtual interrupt (SVM's V_IRQ with the VINTR intercept, VMX's
  interrupt-window exiting): held pending, one per vector, and delivered at the first entry
  at which the guest has RFLAGS.IF = 1.  What an honest hypervisor's timer uses.
At ``shim`` it is a doorbell whatever the mode: the interrupt filter delivers only vectors
the guest registered, never 0-31, and only when the guest has interrupts enabled; every
refusal is traced.
Checked in this order: vcpu, vector, mode.
Results: OK, MALFORMED (a field not an integer; on the wire, a mode no InjectMode names),
BAD_OPERAND (vcpu, vector or mode out of range), BAD_STATE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim import interrupts
from shim.host_calls import checks
from shim.vm import Vm
from tvmm.abi.messages import Inject, Reply
from tvmm.abi.types import InjectMode, Result

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: Inject) -> Reply:
    vcpu = checks.integer("vcpu", req.vcpu, 0, len(vm.vcpus) - 1)
    vector = checks.integer("vector", req.vector, 0, 255)
    mode = InjectMode(checks.integer("mode", req.mode, min(InjectMode), max(InjectMode)))
    interrupts.post(tee, vm, vm.vcpus[vcpu], vector, mode)
    return Reply(Result.OK)
