"""ENTER(vm, vcpu, quantum, state) -> exit = the exit record.

Runs the vCPU until an exit, or until ``quantum`` guest instructions retired (0: no
timer).  ``state`` is what the host got at the last exit; what the TEE does with it
depends on the level (see exit_path.accept_host_state).  Preconditions: state RUNNABLE;
no guest request waiting for COMPLETE_IO.  Results: OK, MALFORMED, BAD_OPERAND,
BAD_STATE, DENIED (snp: the VMSA is guest-owned), ENTRY_REFUSED (a shim policy waits
for the host), VM_DEAD (operand ``vm``; with a KILLED exit record when this entry killed it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim import exit_path
from shim.host_calls import checks
from shim.vm import Vm
from tvmm.abi.messages import Enter, Reply

if TYPE_CHECKING:
    from shim.platform import Tee

MAX_QUANTUM = 1 << 40
MAX_STATE = 1 << 16


def handle(tee: Tee, vm: Vm, req: Enter) -> Reply:
    vcpu, quantum, state = req.vcpu, req.quantum, req.state
    # Every operand plainly in range (every entry of an honest host): the checks' own
    # calls are skipped; anything else goes through them, in order, to be named.
    if not (type(vcpu) is int and 0 <= vcpu < len(vm.vcpus) and type(quantum) is int
            and 0 <= quantum <= MAX_QUANTUM and type(state) is bytes
            and len(state) <= MAX_STATE):
        vcpu = checks.integer("vcpu", vcpu, 0, len(vm.vcpus) - 1)
        quantum = checks.integer("quantum", quantum, 0, MAX_QUANTUM)
        state = checks.raw("state", state, MAX_STATE)
    return exit_path.enter(tee, vm, vm.vcpus[vcpu], quantum, state)
