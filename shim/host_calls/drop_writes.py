"""DROP_WRITES(vm): the host discards the guest's stores still in the cache (INVD).

Models CacheWarp (USENIX Security 2024): dirty lines of the guest's most recent entry
that are still in the write-back buffer (tvmm.hw.writeback) are reverted, so memory
keeps its older values.  Encryption and the ownership table do not stop it; at ``shim``
the exit path writes the buffer back before the host gets control, so nothing is left to
drop.  The VM's buffer is created by its first DROP_WRITES, which therefore drops
nothing: runs that never call it pay nothing.  The reply carries no count (no oracle on
how much the guest wrote); the inside trace has it.
Preconditions: state RUNNABLE.  Results: OK, MALFORMED, NO_VM, BAD_STATE, VM_DEAD.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.vm import Vm
from tvmm.abi.messages import DropWrites, Reply
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import Result
from tvmm.hw.writeback import WriteBackBuffer

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: DropWrites) -> Reply:
    if vm.writeback is None:
        vm.writeback = WriteBackBuffer(vm.memory)
        dropped, note = 0, "write-back buffer modeled from the next entry on"
    else:
        dropped = vm.writeback.drop()
        note = f"{dropped} dirty lines reverted" if dropped else "nothing to drop"
    tee.recorder.emit(EventKind.POLICY, "drop_writes", inside={
        "lines": dropped, "note": note}, vcpu=0)
    return Reply(Result.OK)
