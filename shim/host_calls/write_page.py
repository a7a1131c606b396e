"""WRITE_PAGE(vm, gpa, data): the host writes a page (4096 bytes).

Shared pages take plaintext.  A private page takes ciphertext, which the memory encryption
engine decrypts under the VM's key: writing back an old ciphertext restores the old
plaintext (replay).  From ``snp`` up the ownership table refuses writes to private pages.
Results: OK, MALFORMED, BAD_OPERAND, BAD_STATE, DENIED.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.errors import BadOperand, Denied
from shim.host_calls import checks
from shim.vm import Vm
from tvmm.abi.messages import Reply, WritePage
from tvmm.abi.types import Result
from tvmm.hw.memory import OwnershipViolation
from tvmm.hw.vcpu import PAGE

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: WritePage) -> Reply:
    gpa = checks.integer("gpa", req.gpa)
    checks.page_range("gpa", gpa, 1, vm.memory.size)
    data = checks.raw("data", req.data, PAGE)
    if len(data) != PAGE:
        raise BadOperand("data", f"a page is {PAGE} bytes, got {len(data)}")
    try:
        vm.memory.host_write(gpa, data)
    except OwnershipViolation as exc:
        raise Denied("gpa", str(exc)) from None
    return Reply(Result.OK)
