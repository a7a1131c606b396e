"""IMPORT_VM(vm, stream, data) -> value = vm id when the stream ended, data = state blob.

Management, host side of resume and migration: feed one bundle of checkpoint stream
``stream`` into ``vm``, an empty VM the host created with the stream's level, memory and
shared region.  The stream must have been opened on this TEE by the node's trusted agent
(shim.management.open_import) with the key agreed with the source TEE or released by
the coordinator.  Every bundle is checked once (shim.management.importer): header,
stream, counter (replay and reorder), authenticity, order of kinds, payload.  After END
the VM holds the source's memory and vCPU, but stays un-enterable until the agent
activates it on the coordinator's commit; ``data`` is the register state the host hands
back at its first ENTER.
Preconditions: state CREATED, no pages added (the first accepted bundle seals the VM off:
it is DEAD to every other call until the agent activates it; a refused first bundle leaves
the VM as it was, CREATED and free for another import).
Results: OK, MALFORMED, NO_VM, BAD_OPERAND (garbage bundle, unknown stream), BAD_STATE,
DENIED (a bundle that is well-formed but replayed, reordered, forged or out of place: the
stream is refused for good and the refusal goes to the perimeter's audit log).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.errors import BadOperand, BadState, Denied
from shim.host_calls import checks
from shim.management import state
from shim.management.importer import Importer
from shim.management.stream import MAX_PAYLOAD
from shim.vm import Vm, VmState
from tvmm.abi.messages import ImportVm, Reply
from tvmm.abi.types import Result

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: ImportVm) -> Reply:
    stream = checks.integer("stream", req.stream)
    data = checks.raw("data", req.data, MAX_PAYLOAD + 64)
    session = state(tee).sessions.get(stream)
    if session is None or session.direction != "in":
        raise BadOperand("stream", f"no import stream {stream}")
    if session.failed:
        raise Denied("stream", f"the stream was refused: {session.failed}")
    if session.done:
        raise BadState("stream", "the stream has ended")
    first = session.vm is None
    if first:
        if any(vm.added):
            raise BadState("vm", "import needs an empty VM (no pages added)")
        if vm.state != VmState.CREATED:
            raise BadState("vm", "import needs an empty VM in state CREATED")
        session.vm = vm.id
        session.worker = Importer(vm)
        # Sealed off while the import runs and until the commit: no ADD_PAGES, FINALIZE
        # or ENTER can reach it (every such call is illegal in DEAD).
        vm.state = VmState.DEAD
        vm.end_detail = f"importing {session.vm_name} epoch {session.epoch}"
    elif session.vm != vm.id:
        raise BadOperand("vm", f"stream {stream} imports into VM {session.vm}")
    try:
        vm_id, blob = session.worker.feed(tee, session, data)
    except Exception:
        if first:  # a refused first bundle changes nothing: the empty VM is the host's again
            session.vm, session.worker = None, None
            vm.state, vm.end_detail = VmState.CREATED, ""
        raise
    return Reply(Result.OK, value=vm_id, data=blob)
