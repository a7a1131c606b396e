"""INJECT(vm, vcpu, vector): ask for a virtual interrupt.

Below ``shim`` this is event injection: the vector is delivered through the guest's IDT at
the next entry, whatever it is and whether or not the guest can take it.  At ``shim`` it
is a doorbell: the interrupt filter delivers only vectors the guest registered, never 0-31,
and only when the guest has interrupts enabled; every refusal is traced.
Results: OK, MALFORMED, BAD_OPERAND, BAD_STATE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim import interrupts
from shim.host_calls import checks
from shim.vm import Vm
from tvmm.abi.messages import Inject, Reply
from tvmm.abi.types import Result

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: Inject) -> Reply:
    vcpu = checks.integer("vcpu", req.vcpu, 0, len(vm.vcpus) - 1)
    vector = checks.integer("vector", req.vector, 0, 255)
    interrupts.post(tee, vm, vm.vcpus[vcpu], vector)
    return Reply(Result.OK)
