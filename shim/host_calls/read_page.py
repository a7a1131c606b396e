"""READ_PAGE(vm, gpa) -> data = the page as the host sees it.

Shared pages in plaintext; private pages as the memory encryption engine's ciphertext
from ``sev`` to ``snp`` (plaintext at ``plain``), and at ``shim`` as 4096 bytes of 0xff:
SEV-SNP ciphertext hiding, where a host read of a private page sees a constant, not its
ciphertext.  There is no call that returns private plaintext.
Results: OK, MALFORMED, BAD_OPERAND, NO_VM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.host_calls import checks
from shim.vm import Vm
from tvmm.abi.messages import ReadPage, Reply
from tvmm.abi.types import Result

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: ReadPage) -> Reply:
    gpa = checks.integer("gpa", req.gpa)
    checks.page_range("gpa", gpa, 1, vm.memory.size)
    return Reply(Result.OK, data=vm.memory.host_read(gpa))
