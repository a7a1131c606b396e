"""Export, TEE side: turn a VM into a bundle stream, live (pre-copy rounds) or frozen.

Dirty pages are tracked by write protection, inside the TEE.  The first round sends every
page that is not zero (the destination starts from zeros: a 1 MiB-chunk compare with
zeros finds them) after ``Vcpu.track_dirty`` has removed the write permission from every
mapped page.  The guest's first store to such a page stops the vCPU with a write fault
that the exit path serves inside the TEE (``Vcpu.serve_dirty_fault``: the page is marked
and writable again, the guest runs on) — it never reaches the host nor the fault policy,
because the page is mapped as far as the host is concerned.  Writes by the TEE or the host
(``Vcpu.mem_write``) and pages the host maps during the migration count as dirty too.
Each later round takes the pages written since the previous one and protects again, so
the final round, with the VM frozen, costs only its dirty pages instead of a pass over
all memory (docs/performance.md, "Migration").  Costs: one guest stop per first write of
a page per round while the migration runs, and, as for any guest stop served inside,
the instruction timer restarts after it.

A round's pages are read when sent, so a page written after detection goes out with its
newest content and is found again in the next round.  Pages are read in runs of
consecutive pages (one ``mem_read`` a run) and a bundle carries up to 256 pages.
``final`` freezes the VM first (a guest request the host has not answered yet blocks it;
an answered one travels along), so the last round is exact: after it, STATE and END close
the stream.
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
_ZERO_PAGE = bytes(PAGE)
_LEN = struct.Struct("<I")


class Exporter:
    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.pending: deque[int] = deque()
        self.phase = "head"  # head → rounds → state → end → done
        self.rounds = 0
        self.pages_sent = 0
        self.frozen_chunks: dict[int, bytes] = {}  # read by the scan of a frozen VM

    # -- dirty tracking ---------------------------------------------------------------------
    def dirty_pages(self, final: bool = False) -> list[int]:
        vcpu, mapped = self.vm.vcpu, self.vm.memory.mapped
        if final and not self.rounds:  # frozen before any live round: no tracking
            return self._nonzero_pages(keep=True)
        # Frozen, it stays protected (cheap): it is destroyed, or thaw() restores it.
        written = vcpu.track_dirty(mapped)
        if self.rounds:
            return sorted(written.union(self.pending))
        return self._nonzero_pages()

    def _nonzero_pages(self, keep: bool = False) -> list[int]:
        """Pages that are not zero; ``keep``: the VM is frozen, keep what was read."""
        vcpu, size = self.vm.vcpu, self.vm.memory.size
        out: list[int] = []
        for base in range(0, size, CHUNK):
            data = vcpu.mem_read(base, min(CHUNK, size - base))
            if data == (_ZERO if len(data) == CHUNK else bytes(len(data))):
                continue
            if keep:
                self.frozen_chunks[base // CHUNK] = data
            out.extend(base // PAGE + p for p in range(len(data) // PAGE)
                       if not data.startswith(_ZERO_PAGE, p * PAGE))  # no slice copy
        return out

    def _take_pages(self, max_pages: int) -> tuple[list[int], list[bytes | memoryview]]:
        """Up to ``max_pages`` pending pages, read in runs of consecutive pages."""
        pending = self.pending
        indices = [pending.popleft() for _ in range(min(max_pages, len(pending)))]
        runs, start = [], 0
        for i in range(1, len(indices) + 1):
            if i == len(indices) or indices[i] != indices[i - 1] + 1 \
                    or not indices[i] % CHUNK_PAGES:  # a run stays in one chunk
                runs.append(self._read(indices[start] * PAGE, (i - start) * PAGE))
                start = i
        self.pages_sent += len(indices)
        return indices, runs

    def _read(self, gpa: int, size: int) -> bytes | memoryview:
        chunk = self.frozen_chunks.get(gpa // CHUNK)
        off = gpa % CHUNK
        if chunk is not None and off + size <= len(chunk):
            return memoryview(chunk)[off : off + size]
        return self.vm.vcpu.mem_read(gpa, size)

    def _pages(self, session: Session, max_pages: int) -> bytes:
        indices, runs = self._take_pages(max_pages)
        return self._seal(session, Kind.PAGES, pack_pages(indices, runs), len(indices))

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
            self.pending = deque(self.dirty_pages(final=True))
            self.rounds += 1
            self.phase = "final"
        if self.phase == "rounds":
            if not self.pending:
                self.pending = deque(self.dirty_pages())
                self.rounds += 1
                if not self.pending:
                    return b"", 0
            return self._pages(session, max_pages), int(bool(self.pending))
        if self.phase == "final":
            if self.pending:
                return self._pages(session, max_pages), 1
            self.phase = "end"
            self.frozen_chunks.clear()
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
