"""EXPORT_VM(vm, stream, final, max_pages) -> data = one bundle, value = more to come.

Management, host side of suspend and migration: the host pumps the VM's encrypted
checkpoint stream out of the TEE, one bundle per call, and carries it where it likes (a
file, a socket).  The stream must have been opened for this VM by the node's trusted
agent (shim.management.open_export) with a key the host never sees.  Without ``final``
the call runs pre-copy rounds while the guest keeps running (value 0: round complete);
``final`` freezes the VM (it stays frozen until the perimeter commits or aborts) and ends
the stream with STATE and END bundles (value 0 after END).
Preconditions: state RUNNABLE (DEAD only while frozen for this stream); no guest request
waiting for COMPLETE_IO when freezing; 1 <= max_pages <= 256.
Results: OK, MALFORMED, NO_VM, BAD_OPERAND (no such stream for this VM), BAD_STATE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.errors import BadOperand, BadState
from shim.host_calls import checks
from shim.management import state
from shim.management.export import Exporter
from shim.management.stream import MAX_ITEMS
from shim.vm import Vm, VmState
from tvmm.abi.messages import ExportVm, Reply
from tvmm.abi.types import Result

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: ExportVm) -> Reply:
    stream = checks.integer("stream", req.stream)
    final = checks.flag("final", req.final)
    max_pages = checks.integer("max_pages", req.max_pages, 1, MAX_ITEMS)
    session = state(tee).sessions.get(stream)
    if session is None or session.direction != "out" or session.vm != vm.id:
        raise BadOperand("stream", f"no export stream {stream} for VM {vm.id}")
    if session.done or session.failed:
        raise BadState("stream", "the stream has ended")
    if vm.state == VmState.DEAD and vm.id not in state(tee).frozen:
        raise BadState("vm", "the VM is dead")
    if session.worker is None:
        session.worker = Exporter(vm)
    bundle, more = session.worker.next(tee, session, final, max_pages)
    return Reply(Result.OK, value=more, data=bundle)
