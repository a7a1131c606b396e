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
newest content and is found again in the next round; the first round's scan, too, runs
along with the stream (no pass over all memory before the first bundle).  A bundle carries
up to 256 pages, copied once (a run of consecutive pages at a time) out of guest RAM
(``Vcpu.ram``, a view) into the exporter's payload buffer; zero pages are found there by a
substring search; the payload is encrypted straight into the bundle.
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
from shim.management.stream import MAX_PAYLOAD, Kind
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
        self.pending: deque[int] = deque()  # dirty pages still to send in this round
        self.scan = -1  # next page of a first round's scan of all memory (-1: none)
        self.phase = "head"  # head → rounds → state → end → done
        self.rounds = 0
        self.pages_sent = 0
        self._payload = bytearray(MAX_PAYLOAD)  # a PAGES payload is assembled here

    # -- dirty tracking ---------------------------------------------------------------------
    def start_round(self, final: bool = False) -> None:
        """Queue the round's pages: the first round scans all memory as it goes (only pages
        that are not zero leave: the destination starts from zeros); a later one takes the
        pages written since the previous round."""
        vcpu, mapped = self.vm.vcpu, self.vm.memory.mapped
        if not (final and not self.rounds):  # frozen before any live round: no tracking
            # Frozen, it stays protected (cheap): it is destroyed, or thaw() restores it.
            written = vcpu.track_dirty(mapped)
            if self.rounds:
                self.pending = deque(sorted(written.union(self.pending)))
                self.rounds += 1
                return
        self.scan = 0
        self.rounds += 1

    def more(self) -> bool:
        return bool(self.pending) or 0 <= self.scan < self.vm.memory.npages

    def _pages(self, session: Session, max_pages: int) -> bytes | bytearray:
        """A PAGES bundle, or b"" when the round has nothing left (no pending page, and
        the rest of its scan, if any, found only zeros).  Pages are copied once, out of
        guest RAM into the payload buffer, which is encrypted straight into the bundle."""
        if self.pending:
            pending = self.pending
            indices = [pending.popleft() for _ in range(min(max_pages, len(pending)))]
            end = self._copy(indices, 0)
        else:
            indices, end = self._scan(max_pages)
        if not indices:
            return b""
        n = len(indices)
        struct.pack_into(f"<{n}I", self._payload, end, *indices)
        self.pages_sent += n
        return self._seal(session, Kind.PAGES, memoryview(self._payload)[: end + 4 * n], n)

    def _copy(self, indices: list[int], pos: int) -> int:
        """Copy the pages into the payload buffer from ``pos`` on (one copy per run of
        consecutive pages); returns where they end.  Each is read now: a page written
        after it was found goes out with its newest content (and is found again)."""
        ram, out, start = self.vm.vcpu.ram, memoryview(self._payload), 0
        for i in range(1, len(indices) + 1):
            if i == len(indices) or indices[i] != indices[i - 1] + 1:
                size = (i - start) * PAGE
                out[pos : pos + size] = ram(indices[start] * PAGE, size)
                pos += size
                start = i
        return pos

    def _scan(self, max_pages: int) -> tuple[list[int], int]:
        """The next up to ``max_pages`` pages that are not zero, copied into the payload
        buffer: (their indices, where they end).  A chunk of zeros is skipped with one
        compare; any other is copied whole and searched for zero pages, which are then
        left out (a substring search skips dense memory fast)."""
        ram, npages = self.vm.vcpu.ram, self.vm.memory.npages
        out = memoryview(self._payload)
        indices: list[int] = []
        pos = 0
        while self.scan < npages and len(indices) < max_pages:
            first = self.scan
            count = min(max_pages - len(indices), npages - first, CHUNK_PAGES)
            self.scan = first + count
            data = ram(first * PAGE, count * PAGE)
            if _ZERO.startswith(data):  # memcmp; a memoryview's == compares item by item
                continue
            out[pos : pos + count * PAGE] = data
            zero = _zero_pages(self._payload, pos, pos + count * PAGE)
            if zero:
                keep = [first + p for p in range(count) if p not in zero]
                pos = self._copy(keep, pos)
                indices += keep
            else:
                indices += range(first, first + count)
                pos += count * PAGE
        return indices, pos

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
            self.start_round(final=True)
            self.phase = "final"
        if self.phase == "rounds":
            if not self.more():
                self.start_round()
            bundle = self._pages(session, max_pages)  # b"": the round is complete
            return bundle, int(bool(bundle) and self.more())
        if self.phase == "final":
            bundle = self._pages(session, max_pages)
            if bundle:
                return bundle, 1
            self.phase = "end"
            return self._seal(session, Kind.STATE, state_of(vm)), 1
        if self.phase == "end":
            self.phase = "done"
            session.done = True
            end = json.dumps({"bundles": session.counter + 1, "pages": self.pages_sent,
                              "rounds": self.rounds}).encode()
            return self._seal(session, Kind.END, end), 0
        raise BadState("session", "the stream has ended")

    def _seal(self, session: Session, kind: Kind, payload: bytes | memoryview, items: int = 0
              ) -> bytearray:
        bundle = session.cipher.seal(kind, session.stream, session.counter, payload, items)
        session.counter += 1
        return bundle


def _zero_pages(buf: bytearray, pos: int, end: int) -> set[int]:
    """Which pages of ``buf[pos:end]`` (numbered from ``pos``) are all zero.  A search for
    a page of zeros skips dense memory fast and lands on the first run that could hold
    one; from there, consecutive zero pages are compared one by one (a search per page
    would cost more: it prepares its 4 KiB pattern each time)."""
    zero: set[int] = set()
    at = buf.find(_ZERO_PAGE, pos, end)
    while at >= 0:
        page = pos + -(-(at - pos) // PAGE) * PAGE  # the first page boundary from ``at``
        while page + PAGE <= end and buf.startswith(_ZERO_PAGE, page):
            zero.add((page - pos) // PAGE)
            page += PAGE
        if page + PAGE > end:
            break
        at = buf.find(_ZERO_PAGE, page, end)
    return zero


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
