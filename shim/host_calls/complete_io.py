"""COMPLETE_IO(vm, vcpu, value): the host's answer to the guest's pending request.

The value is applied at the next entry: rax for a hypercall, al/ax/eax for port input.  At
``shim`` a device request's value is checked against the shim's own record of the request
(length within what was asked, slot unchanged) before anything reaches the guest.
Preconditions: a request is pending.  Results: OK, MALFORMED, BAD_OPERAND, BAD_STATE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.errors import BadState
from shim.host_calls import checks
from shim.vm import Vm
from tvmm.abi.messages import CompleteIo, Reply
from tvmm.abi.types import Result

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: CompleteIo) -> Reply:
    vcpu = checks.integer("vcpu", req.vcpu, 0, len(vm.vcpus) - 1)
    value = checks.integer("value", req.value, -(1 << 63), (1 << 63) - 1)
    ctx = vm.vcpus[vcpu]
    if ctx.pending is None or ctx.completion is not None:
        raise BadState("vcpu", "no guest request is waiting for an answer")
    ctx.completion = value
    return Reply(Result.OK)
