"""Import, TEE side: rebuild a VM from a bundle stream, checking every bundle once.

The host creates an empty VM (CREATE_VM with the level, memory and shared region the
stream will name) and feeds bundles with IMPORT_VM.  Checks, in order, for each bundle:
the clear header parses; it names this session's stream; its counter is exactly the next
one (a replayed, reordered, dropped or spliced bundle fails here); it authenticates under
the session key; its kind is legal now (HEAD first, then PAGES, STATE, END); its payload
decodes.  HEAD must name the VM and epoch the trusted agent expected and match the empty
VM's parameters.  Any refusal poisons the session for good and is queued for the audit
log.  On END the VM is complete but stays sealed off — it cannot be entered — until the
agent, on the coordinator's commit, activates it: so source and destination never both run.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from typing import TYPE_CHECKING

from shim.errors import BadOperand, Denied
from shim.exit_path import host_state
from shim.management import Session, refuse, state
from shim.management.stream import Kind, StreamError, parse_header, unpack_pages
from shim.vm import BounceRecord, Pending, PendingKind, Vm
from tvmm.abi.types import Device, Level
from tvmm.hw.code_traps import sweep
from tvmm.hw.vcpu import MAX_LOADED_TRAPS, PAGE

if TYPE_CHECKING:
    from shim.platform import Tee

_LEN = struct.Struct("<I")
# What decoding an authentic but wrong payload can raise (a source TEE of other code, or
# a bug): each is a refusal of the stream, never an error out of IMPORT_VM.
_PAYLOAD_ERRORS = (StreamError, ValueError, KeyError, TypeError, IndexError, struct.error,
                   RecursionError, OverflowError)
_NEXT = {None: {Kind.HEAD}, Kind.HEAD: {Kind.PAGES, Kind.STATE},
         Kind.PAGES: {Kind.PAGES, Kind.STATE}, Kind.STATE: {Kind.END}, Kind.END: set()}


class Importer:
    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.last: Kind | None = None
        self.pages = 0
        self.traps: tuple[list[int], list[int]] = ([], [])  # (hlt, rdtsc), from HEAD
        self.loaded: list[int] = []  # the RDTSC traps of code the guest loaded, from HEAD

    def feed(self, tee: Tee, session: Session, data: bytes) -> tuple[int, bytes]:
        """(vm id when the stream ended else 0, the host's state blob when it ended)."""
        try:
            header = parse_header(data)
        except StreamError as exc:
            raise BadOperand("data", str(exc)) from None  # garbage: no state changes
        if header.stream != session.stream:
            raise BadOperand("data", f"bundle of stream {header.stream}, not {session.stream}")
        if header.counter != session.counter:
            what = "replayed" if header.counter < session.counter else "out of order"
            return self._refuse(tee, session, "counter", f"bundle counter {header.counter} "
                                f"{what}, expected {session.counter}")
        try:
            header, payload = session.cipher.open(data)
        except StreamError:
            return self._refuse(tee, session, "tag", "bundle does not authenticate")
        if header.kind not in _NEXT[self.last]:
            return self._refuse(tee, session, "kind", f"{header.kind.name} bundle after "
                                f"{self.last.name if self.last else 'nothing'}")
        try:
            result = self._apply(tee, session, header.kind, header.items, payload)
        except _PAYLOAD_ERRORS as exc:
            return self._refuse(tee, session, "payload", f"{header.kind.name} payload: {exc}")
        session.counter += 1
        self.last = header.kind
        return result

    def _refuse(self, tee: Tee, session: Session, check: str, reason: str
                ) -> tuple[int, bytes]:
        refuse(tee, session, check, reason)
        raise Denied("data", reason)

    def _apply(self, tee: Tee, session: Session, kind: Kind, items: int, payload: memoryview
               ) -> tuple[int, bytes]:
        vm = self.vm
        if kind == Kind.PAGES:
            for first, data in unpack_pages(payload, items, vm.memory.npages):
                vm.vcpu.mem_write(first * PAGE, data)  # a run of pages, one write
            self.pages += items
            return 0, b""
        payload = bytes(payload)  # small, and the cipher's buffer is reused
        if kind == Kind.HEAD:
            head = json.loads(payload)
            self._check_head(session, head)
            vm.launch_digest = bytes.fromhex(head["digest"])
            vm.entry = int(head["entry"])
            vm.code_ranges = [(int(g), bytes.fromhex(c)) for g, c in head["code"]]
            # The measured code travels in HEAD: its traps are found now, while the
            # pages stream, not in the final (downtime) window.
            self.traps = sweep(vm.code_ranges)
            self.loaded = _loaded_traps(head.get("rdtsc", ()), vm.memory.size)  # absent: older
        elif kind == Kind.STATE:
            self._restore(payload)
        else:
            end = json.loads(payload)
            if int(end["bundles"]) != session.counter + 1:
                raise ValueError("END counts a different number of bundles")
            return self._finish(tee, session)
        return 0, b""

    def _check_head(self, session: Session, head: dict) -> None:
        vm = self.vm
        if head["vm"] != session.vm_name or int(head["epoch"]) != session.epoch:
            raise ValueError(f"stream is {head['vm']} epoch {head['epoch']}, expected "
                             f"{session.vm_name} epoch {session.epoch}")
        expect = (vm.level, vm.memory.size, [vm.memory.shared.start, vm.memory.shared.stop],
                  vm.policy)
        got = (Level(head["level"]), int(head["memory"]), list(head["shared"]),
               int(head["policy"]))
        if got != expect:
            raise ValueError(f"stream VM {got} does not match the empty VM {expect}")

    def _restore(self, payload: bytes) -> None:
        vm = self.vm
        (n,) = _LEN.unpack_from(payload)
        meta = json.loads(payload[4 : 4 + n])
        vm.vcpu.restore(payload[4 + n :])
        if "regs" in meta:  # absent: an older stream, whose context holds it all
            vm.vcpu.write_state([int(v, 16) for v in meta["regs"]])
        ctx = vm.vcpus[0]
        ctx.rip, ctx.seq = int(meta["rip"]), int(meta["seq"])
        ctx.retired, ctx.entries = int(meta["retired"]), int(meta["entries"])
        ctx.registered = {int(v) for v in meta["registered"]}
        ctx.irqs = deque(int(v) for v in meta["irqs"])
        ctx.virqs = deque(int(v) for v in meta.get("virqs", ()))  # absent: an older stream
        vm.vcpu.tsc = int(meta["tsc"])
        ctx.pending = _pending(meta["pending"])
        ctx.completion = None if meta["completion"] is None else int(meta["completion"])
        added = bytes.fromhex(meta["added"])
        if len(added) != len(vm.added):
            raise ValueError("page bitmap has the wrong size")
        vm.added[:] = added
        if vm.bounce is not None and meta["bounce"]:
            used = bytes.fromhex(meta["bounce"])
            if len(used) != len(vm.bounce.used):
                raise ValueError("bounce bitmap has the wrong size")
            vm.bounce.used[:] = used
        if vm.vcpu.read_rip() != ctx.rip:
            raise ValueError("vCPU context and RIP disagree")

    def _finish(self, tee: Tee, session: Session) -> tuple[int, bytes]:
        vm = self.vm
        vm.vcpu.install_code_traps(*self.traps, loaded=self.loaded)
        session.done = True
        state(tee).awaiting_commit.add(vm.id)
        ctx = vm.vcpus[0]
        assert vm.vcpu.read_rip() == ctx.rip
        # What the source handed its host at the last exit, in this TEE's form (a fresh
        # sealer: its own key and nonce counter).
        blob = (b"" if vm.features.sealed_state and not ctx.seq
                else host_state(vm, ctx, ctx.seq - 1))
        ctx.handed_out = blob
        state(tee).events.append({"event": "stream_complete", "stream": session.stream,
                                  "vm": session.vm_name, "epoch": session.epoch,
                                  "direction": "in", "pages": self.pages})
        return vm.id, blob


def _pending(raw: dict | None) -> Pending | None:
    if raw is None:
        return None
    rec = raw["record"]
    record = None if rec is None else BounceRecord(Device(int(rec[0])), *(int(v) for v in rec[1:]))
    return Pending(PendingKind(int(raw["kind"])), int(raw["advance"]), int(raw["size"]), record)


def _loaded_traps(value: object, memory: int) -> list[int]:
    """HEAD's traps of loaded code: addresses in guest RAM, at most MAX_LOADED_TRAPS."""
    if not isinstance(value, list | tuple) or len(value) > MAX_LOADED_TRAPS:
        raise ValueError(f"rdtsc traps: a list of at most {MAX_LOADED_TRAPS} addresses")
    if not all(type(a) is int and 0 <= a < memory for a in value):
        raise ValueError("rdtsc traps: an address outside guest memory")
    return list(value)
