"""FINALIZE(vm, entry) -> data = launch digest (48 bytes).

Measures the initial vCPU state (RIP = entry) as a VMSA page, fixes the digest, installs
the code traps, and makes the VM runnable.  A launch secret given at ADD_PAGES goes into
its secrets page here, and only if the launch digest is the one its owner bound it to;
otherwise FINALIZE is refused (DENIED, operand ``launch_secret``), the secret is discarded
and nothing else changes (shim.launch).  Preconditions: state CREATED; entry inside an
executable page.  Results: OK, MALFORMED, BAD_OPERAND, BAD_STATE, DENIED.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim import launch
from shim.errors import BadOperand
from shim.host_calls import checks
from shim.vm import Vm
from tvmm.abi.messages import Finalize, Reply
from tvmm.abi.types import Result

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: Finalize) -> Reply:
    entry = checks.integer("entry", req.entry, 0, vm.memory.size - 1)
    if not any(base <= entry < base + len(code) for base, code in vm.code_ranges):
        raise BadOperand("entry", f"{entry:#x} is not in an executable page")
    digest = launch.finalize(tee, vm, entry)
    return Reply(Result.OK, data=digest)
