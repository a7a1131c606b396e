"""REMAP(vm, gpa, source): point guest page ``gpa`` at the backing of page ``source``.

Works below ``snp`` (SEVered-style page swaps); the ownership table refuses it for
private pages from ``snp`` up.  The host moves only what it sees (GuestMemory.host_remap):
ciphertext from ``sev`` up, which decrypts to garbage at another private address; plaintext
at ``plain``.  Results: OK, MALFORMED, BAD_OPERAND, BAD_STATE, DENIED.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.errors import Denied
from shim.host_calls import checks
from shim.vm import Vm
from tvmm.abi.messages import Remap, Reply
from tvmm.abi.types import Result
from tvmm.hw.memory import OwnershipViolation

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: Remap) -> Reply:
    gpa = checks.integer("gpa", req.gpa)
    source = checks.integer("source", req.source)
    checks.page_range("gpa", gpa, 1, vm.memory.size)
    checks.page_range("source", source, 1, vm.memory.size)
    try:
        vm.memory.host_remap(gpa, source)
    except OwnershipViolation as exc:
        raise Denied("gpa", str(exc)) from None
    return Reply(Result.OK)
