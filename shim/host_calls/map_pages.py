"""MAP(vm, gpa, count) and UNMAP(vm, gpa, count): the host's own nested page table.

Unmapping a page makes the guest's next access to it a nested page fault exit.  The host
may do this at any level; what it learns from the fault depends on the level.
Preconditions: pages inside guest memory.  Results: OK, MALFORMED, BAD_OPERAND, BAD_STATE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.host_calls import checks
from shim.vm import Vm
from tvmm.abi.messages import Map, Reply, Unmap
from tvmm.abi.types import Result

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: Map | Unmap) -> Reply:
    gpa = checks.integer("gpa", req.gpa)
    count = checks.integer("count", req.count, 1, vm.memory.npages)
    checks.page_range("gpa", gpa, count, vm.memory.size)
    vm.memory.set_mapped(gpa, count, isinstance(req, Map))
    return Reply(Result.OK)
