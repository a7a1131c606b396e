"""The narrow management operations, TEE side: checkpoint export and import.

Suspend, resume and migration are one mechanism here: the VM leaves the TEE only as an
encrypted bundle stream (shim.management.stream) under a session key, and enters another
TEE only from such a stream.  Two kinds of caller reach this package:

* the **host**, through two ABI calls (shim/host_calls/export_vm.py, import_vm.py): it
  pumps opaque bundles and can do nothing else with them;
* the **trusted management agent** of the node (tvmm.perimeter.node, the analogue of
  TDX's MigTD or SNP's migration agent), through the functions below, never through the
  ABI: it installs session keys agreed with another attested TEE or released by the
  coordinator, and decides — only on the coordinator's word — whether a frozen source is
  destroyed (commit) or thawed (abort), and when an imported VM may start.

Sessions and refusal events live on the Tee (``state(tee)``); the agent drains
``events`` and reports refusals to the coordinator's audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shim.management.stream import StreamCipher
from shim.vm import VmState

if TYPE_CHECKING:
    from shim.platform import Tee


@dataclass
class Session:
    stream: int
    direction: str  # "out" (export) or "in" (import)
    cipher: StreamCipher
    vm_name: str
    epoch: int
    vm: int | None = None  # the platform VM it is bound to
    counter: int = 0  # next bundle counter (sent, or expected)
    failed: str = ""  # a refused stream stays refused
    done: bool = False
    worker: object | None = None  # export.Exporter / importer.Importer


@dataclass
class ManagementState:
    sessions: dict[int, Session] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    frozen: dict[int, str] = field(default_factory=dict)  # vm id -> why
    awaiting_commit: set[int] = field(default_factory=set)  # imported, may not run yet


def state(tee: Tee) -> ManagementState:
    found = tee.__dict__.get("_management")
    if found is None:
        found = ManagementState()
        tee.__dict__["_management"] = found
    return found


def refuse(tee: Tee, session: Session, check: str, reason: str) -> None:
    """Poison a session and queue the refusal for the agent (and the audit log): ``check``
    names the check that failed ("counter", "tag", "kind", "payload"), ``reason`` says how."""
    session.failed = reason
    state(tee).events.append({"event": "stream_refused", "stream": session.stream,
                              "vm": session.vm_name, "epoch": session.epoch,
                              "direction": session.direction, "check": check,
                              "reason": reason})


# -- the trusted agent's calls (never reachable through the ABI) ---------------------------------
def open_export(tee: Tee, vm_id: int, key: bytes, stream: int, vm_name: str, epoch: int
                ) -> None:
    if stream in state(tee).sessions:
        raise ValueError(f"stream {stream} exists")
    state(tee).sessions[stream] = Session(stream, "out", StreamCipher(key), vm_name, epoch,
                                          vm=vm_id)


def open_import(tee: Tee, key: bytes, stream: int, vm_name: str, epoch: int) -> None:
    if stream in state(tee).sessions:
        raise ValueError(f"stream {stream} exists")
    state(tee).sessions[stream] = Session(stream, "in", StreamCipher(key), vm_name, epoch)


def close(tee: Tee, stream: int) -> None:
    session = state(tee).sessions.pop(stream, None)
    vm = tee.vms.get(session.vm) if session is not None and session.direction == "out" \
        else None
    if vm is not None:
        vm.vcpu.stop_dirty(vm.memory.mapped)  # an unfinished export: writable again


def thaw(tee: Tee, vm_id: int) -> bool:
    """Abort: the frozen source runs again (only on the coordinator's abort decision)."""
    ms = state(tee)
    vm = tee.vms.get(vm_id)
    if vm is None or vm_id not in ms.frozen:
        return False
    del ms.frozen[vm_id]
    vm.vcpu.stop_dirty(vm.memory.mapped)  # the export's write protection ends
    vm.state = VmState.RUNNABLE
    vm.end_detail = ""
    return True


def destroy_frozen(tee: Tee, vm_id: int) -> None:
    """Commit: the destination owns the VM now; the frozen source is gone for good."""
    state(tee).frozen.pop(vm_id, None)
    tee.forget(vm_id)


def activate(tee: Tee, vm_id: int) -> bool:
    """The coordinator committed: the imported VM may run."""
    ms = state(tee)
    vm = tee.vms.get(vm_id)
    if vm is None or vm_id not in ms.awaiting_commit:
        return False
    ms.awaiting_commit.discard(vm_id)
    vm.state = VmState.RUNNABLE
    vm.end_detail = ""
    return True


def drain_events(tee: Tee) -> list[dict]:
    ms = state(tee)
    out, ms.events = ms.events, []
    return out
