"""Export, TEE side: turn a VM into a bundle stream, live (pre-copy rounds) or frozen.

Dirty-page tracking compares memory against the last content sent, chunk by chunk.  The
exporter keeps, inside the TEE, a copy of every page as it was sent (chunks never sent
stay ``None`` and compare against zeros).  A round reads guest memory in 1 MiB chunks and
compares each with its copy (one ``memcmp``); only chunks that differ are split into
pages.  Why not write-protect pages and catch the NPF?  That needs a hook in the exit path
for every first write of every page in every round, a fault rate the shim's own fault
policy would count against the host, and a per-level special case; the chunk compare is
exact (not probabilistic as hashes would be), has no per-instruction or per-fault cost
while the guest runs, and costs one memory pass per round (measured in
docs/performance.md, "Migration").  The price is one extra copy of guest memory in the TEE
for the length of the migration.

A round's dirty pages are found at its start and read again when sent, so a page written
after detection goes out with its newest content and is found again in the next round
only if it changed after it was sent.  ``final`` freezes the VM first (a guest request
the host has not answered yet blocks it; an answered one travels along), so the last round is exact: after it, STATE and END close the stream.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from typing import TYPE_CHECKING

from shim.errors import BadState
from shim.management import Session, state
from shim.management.stream import Kind, pack_pages
from shim.vm import Pending, Vm, VmState
from tvmm.hw.vcpu import PAGE

if TYPE_CHECKING:
    from shim.platform import Tee

CHUNK_PAGES = 256
CHUNK = CHUNK_PAGES * PAGE
_ZERO = bytes(CHUNK)
_LEN = struct.Struct("<I")


class Exporter:
    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.nchunks = (vm.memory.size + CHUNK - 1) // CHUNK
        self.sent: list[bytearray | None] = [None] * self.nchunks
        self.pending: deque[int] = deque()
        self.phase = "head"  # head → rounds → state → end → done
        self.rounds = 0
        self.pages_sent = 0

    # -- dirty tracking ---------------------------------------------------------------------
    def dirty_pages(self) -> list[int]:
        vcpu, size = self.vm.vcpu, self.vm.memory.size
        out: list[int] = []
        for i in range(self.nchunks):
            base = i * CHUNK
            n = min(CHUNK, size - base)
            data = vcpu.mem_read(base, n)
            old = self.sent[i]
            if (data == _ZERO[:n]) if old is None else (data == old):
                continue
            first = base // PAGE
            for p in range(n // PAGE):
                lo = p * PAGE
                page = data[lo : lo + PAGE]
                if old is None:
                    if page != _ZERO[:PAGE]:
                        out.append(first + p)
                elif page != old[lo : lo + PAGE]:
                    out.append(first + p)
        return out

    def _take_pages(self, max_pages: int) -> list[tuple[int, bytes]]:
        vcpu = self.vm.vcpu
        out = []
        while self.pending and len(out) < max_pages:
            index = self.pending.popleft()
            data = vcpu.mem_read(index * PAGE, PAGE)
            chunk = index // CHUNK_PAGES
            if self.sent[chunk] is None:
                self.sent[chunk] = bytearray(min(CHUNK, self.vm.memory.size - chunk * CHUNK))
            off = (index % CHUNK_PAGES) * PAGE
            self.sent[chunk][off : off + PAGE] = data  # type: ignore[index]
            out.append((index, data))
        self.pages_sent += len(out)
        return out

    # -- one call of EXPORT_VM --------------------------------------------------------------
    def next(self, tee: Tee, session: Session, final: bool, max_pages: int) -> tuple[bytes, int]:
        """(bundle or b"", more): ``more`` 0 means the round (or, when final, the stream)
        is complete."""
        vm = self.vm
        if self.phase == "head":
            self.phase = "rounds"
            return self._seal(session, Kind.HEAD, json.dumps(head_of(vm, session)).encode()), 1
        if final and vm.id not in state(tee).frozen:
            freeze(tee, vm, session)
            self.pending = deque(self.dirty_pages())
            self.rounds += 1
            self.phase = "final"
        if self.phase == "rounds":
            if not self.pending:
                self.pending = deque(self.dirty_pages())
                self.rounds += 1
                if not self.pending:
                    return b"", 0
            pages = self._take_pages(max_pages)
            return self._seal(session, Kind.PAGES, pack_pages(pages), len(pages)), \
                int(bool(self.pending))
        if self.phase == "final":
            if self.pending:
                pages = self._take_pages(max_pages)
                return self._seal(session, Kind.PAGES, pack_pages(pages), len(pages)), 1
            self.phase = "end"
            return self._seal(session, Kind.STATE, state_of(vm)), 1
        if self.phase == "end":
            self.phase = "done"
            session.done = True
            end = json.dumps({"bundles": session.counter + 1, "pages": self.pages_sent,
                              "rounds": self.rounds}).encode()
            return self._seal(session, Kind.END, end), 0
        raise BadState("session", "the stream has ended")

    def _seal(self, session: Session, kind: Kind, payload: bytes, items: int = 0) -> bytes:
        bundle = session.cipher.seal(kind, session.stream, session.counter, payload, items)
        session.counter += 1
        return bundle


def freeze(tee: Tee, vm: Vm, session: Session) -> None:
    """Stop the VM for the final round: it runs again only if the coordinator aborts."""
    for ctx in vm.vcpus:
        if ctx.pending is not None and ctx.completion is None:
            raise BadState("vm", "a guest request is waiting for COMPLETE_IO")
    if vm.state != VmState.RUNNABLE:
        raise BadState("vm", f"cannot freeze a VM in state {vm.state.name}")
    if vm.writeback is not None:
        vm.writeback.commit()
    why = f"frozen: exported as {session.vm_name} epoch {session.epoch}"
    state(tee).frozen[vm.id] = why
    vm.state = VmState.DEAD
    vm.end_detail = why


def head_of(vm: Vm, session: Session) -> dict:
    return {
        "vm": session.vm_name, "epoch": session.epoch, "level": vm.level.value,
        "memory": vm.memory.size, "shared": [vm.memory.shared.start, vm.memory.shared.stop],
        "policy": vm.policy, "digest": vm.launch_digest.hex(), "entry": vm.entry,
        "code": [[gpa, code.hex()] for gpa, code in vm.code_ranges],
    }


def state_of(vm: Vm) -> bytes:
    ctx = vm.vcpus[0]
    meta = {
        "rip": ctx.rip, "seq": ctx.seq, "retired": ctx.retired, "entries": ctx.entries,
        "registered": sorted(ctx.registered), "irqs": list(ctx.irqs), "tsc": vm.vcpu.tsc,
        "added": bytes(vm.added).hex(),
        "bounce": bytes(vm.bounce.used).hex() if vm.bounce is not None else "",
        "pending": _pending(ctx.pending), "completion": ctx.completion,
    }
    raw = json.dumps(meta).encode()
    return _LEN.pack(len(raw)) + raw + vm.vcpu.save()


def _pending(p: Pending | None) -> dict | None:
    """An answered guest request travels with the VM: it completes at the next entry."""
    if p is None:
        return None
    rec = p.record
    return {"kind": int(p.kind), "advance": p.advance, "size": p.size,
            "record": None if rec is None else [int(rec.device), rec.slot_gpa, rec.nslots,
                                                rec.length, rec.private_gpa, rec.sector]}
