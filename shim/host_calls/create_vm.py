"""CREATE_VM(level, memory_size, shared_base, shared_size, policy) -> value = vm id.

Preconditions: memory_size a multiple of 4 KiB in [2 MiB + 64 KiB, 1 GiB]; the shared
region page-aligned inside memory and below the image base; policy bits 0..20 only.
Results: OK, MALFORMED, BAD_OPERAND.  The VM starts in CREATED with every page private,
zero and unmapped in the host's nested page table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.host_calls import checks
from shim.levels import FEATURES
from tvmm.abi.guest import IMAGE_BASE
from tvmm.abi.messages import CreateVm, Reply
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import Level, Result

if TYPE_CHECKING:
    from shim.platform import Tee

MIN_MEMORY = IMAGE_BASE + 0x10000
MAX_MEMORY = 1 << 30
POLICY_BITS = (1 << 21) - 1


def handle(tee: Tee, req: CreateVm) -> Reply:
    level = checks.enum("level", req.level, Level)
    size = checks.integer("memory_size", req.memory_size, MIN_MEMORY, MAX_MEMORY)
    checks.page_aligned("memory_size", size)
    base = checks.integer("shared_base", req.shared_base, 0x1000, IMAGE_BASE)
    checks.page_aligned("shared_base", base)
    shared = checks.integer("shared_size", req.shared_size, 0x1000, IMAGE_BASE - base)
    checks.page_aligned("shared_size", shared)
    policy = checks.integer("policy", req.policy, 0, POLICY_BITS)
    vm = tee.new_vm(level, FEATURES[level], size, range(base, base + shared), policy)
    if tee.recorder.enabled:  # marks where this VM's events start in a trace of several
        tee.recorder.emit(EventKind.MGMT, "create_vm",
                          inside={"vm": vm.id, "level": level.value, "memory": size})
    return Reply(Result.OK, value=vm.id)
