"""ADD_PAGES(vm, gpa, page_type, count, data, executable): add pages before finalize.

Each page is measured into the launch digest in the order added (SEV-SNP PAGE_INFO).
NORMAL pages carry count * 4096 bytes of contents; ZERO, UNMEASURED, SECRETS and CPUID
pages carry none (SECRETS carries the owner's wrapped secret, opaque to the host);
VMSA pages cannot be added by the host (the TEE measures the initial vCPU at finalize).
The TEE fills the CPUID page with the boot info; the SECRETS page stays empty until
FINALIZE, which writes the secret (``u64 length ‖ secret``, one page) only into a launch
whose digest is the one the blob is bound to.  The launch key is public, so the host can
wrap a secret of any size: one that would not fit the page, a blob whose bound-digest
field is not 48 bytes, or one that does not open, is refused (``data``) before anything is
written, and so is a blob this TEE already opened for an earlier launch (each launch
secret opens once: shim.launch).
Preconditions: state CREATED; pages inside memory, private, not yet added.
Results: OK, MALFORMED, BAD_OPERAND, BAD_STATE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim import launch
from shim.errors import BadOperand
from shim.host_calls import checks
from shim.vm import Vm
from tvmm.abi.messages import AddPages, Reply
from tvmm.abi.types import PageType, Result
from tvmm.hw.vcpu import PAGE

if TYPE_CHECKING:
    from shim.platform import Tee

MAX_PAGES = 1 << 16


def handle(tee: Tee, vm: Vm, req: AddPages) -> Reply:
    gpa = checks.integer("gpa", req.gpa)
    page_type = checks.enum("page_type", req.page_type, PageType)
    count = checks.integer("count", req.count, 1, MAX_PAGES)
    checks.page_range("gpa", gpa, count, vm.memory.size)
    data = checks.raw("data", req.data, MAX_PAGES * PAGE)
    executable = checks.flag("executable", req.executable)
    if page_type == PageType.VMSA:
        raise BadOperand("page_type", "the VMSA is measured by the TEE at finalize")
    for i in range(count):
        if not vm.memory.is_private(gpa + i * PAGE):
            raise BadOperand("gpa", f"{gpa + i * PAGE:#x} is in the shared region")
    launch.check_unadded(vm, gpa, count)
    if page_type == PageType.NORMAL and len(data) != count * PAGE:
        raise BadOperand("data", f"{count} NORMAL pages need {count * PAGE} bytes")
    if page_type == PageType.SECRETS:
        if count != 1:
            raise BadOperand("count", "one SECRETS page at a time")
    elif page_type != PageType.NORMAL and data:
        raise BadOperand("data", f"{page_type.name} pages carry no contents")
    launch.add_pages(tee, vm, gpa, page_type, count, data, executable)
    return Reply(Result.OK)
