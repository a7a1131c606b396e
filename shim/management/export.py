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
up to 256 pages, never copied: zero pages are found in place in guest RAM (``Vcpu.ram``,
a view) and each run of consecutive pages is encrypted from there straight into the
bundle (``StreamCipher.seal_parts``).
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
from shim.management.stream import Kind
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
        the rest of its scan, if any, found only zeros).  The pages are encrypted from
        guest RAM straight into the bundle, a run of consecutive pages at a time."""
        if self.pending:
            pending = self.pending
            indices = [pending.popleft() for _ in range(min(max_pages, len(pending)))]
        else:
            indices = self._scan(max_pages)
        if not indices:
            return b""
        n = len(indices)
        parts: list[bytes | memoryview] = self._runs(indices)
        parts.append(struct.pack(f"<{n}I", *indices))
        self.pages_sent += n
        return self._seal(session, Kind.PAGES, parts, n)

    def _runs(self, indices: list[int]) -> list[bytes | memoryview]:
        """Views of guest RAM, one per run of consecutive pages (``indices`` increase, as a
        scan and a round's sorted dirty pages do).  Each is read when it is
        sealed: a page written after it was found goes out with its newest content (and
        is found again in the next round)."""
        ram, runs, start, n = self.vm.vcpu.ram, [], 0, len(indices)
        if indices[-1] - indices[0] == n - 1:  # increasing: one run (dense memory)
            return [ram(indices[0] * PAGE, n * PAGE)]
        for i in range(1, n + 1):
            if i == n or indices[i] != indices[i - 1] + 1:
                runs.append(ram(indices[start] * PAGE, (i - start) * PAGE))
                start = i
        return runs

    def _scan(self, max_pages: int) -> list[int]:
        """The next up to ``max_pages`` pages that are not zero.  A chunk of zeros is
        skipped with one compare; in any other, zero pages are found in place and left
        out."""
        vcpu, npages = self.vm.vcpu, self.vm.memory.npages
        indices: list[int] = []
        while self.scan < npages and len(indices) < max_pages:
            first = self.scan
            count = min(max_pages - len(indices), npages - first, CHUNK_PAGES)
            self.scan = first + count
            chunk = vcpu.ram(first * PAGE, count * PAGE)
            if _ZERO.startswith(chunk):  # memcmp; a memoryview's == compares item by item
                continue
            zero = _zero_pages(chunk)
            pages = range(first, first + count)
            indices += [p for p in pages if p - first not in zero] if zero else pages
        return indices

    # -- one call of EXPORT_VM --------------------------------------------------------------
    def next(self, tee: Tee, session: Session, final: bool, max_pages: int) -> tuple[bytes, int]:
        """(bundle or b"", more): ``more`` 0 means the round (or, when final, the stream)
        is complete."""
        vm = self.vm
        if self.phase == "head":
            self.phase = "rounds"
            return self._seal(session, Kind.HEAD, [json.dumps(head_of(vm, session)).encode()]), 1
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
            return self._seal(session, Kind.STATE, [state_of(vm)]), 1
        if self.phase == "end":
            self.phase = "done"
            session.done = True
            end = json.dumps({"bundles": session.counter + 1, "pages": self.pages_sent,
                              "rounds": self.rounds}).encode()
            return self._seal(session, Kind.END, [end]), 0
        raise BadState("session", "the stream has ended")

    def _seal(self, session: Session, kind: Kind, parts: list[bytes | memoryview],
              items: int = 0) -> bytearray:
        bundle = session.cipher.seal_parts(kind, session.stream, session.counter, parts, items)
        session.counter += 1
        return bundle


def _zero_pages(chunk: memoryview) -> set[int]:
    """Which pages of ``chunk`` (whole pages, numbered from 0) are all zero.  A page whose
    first byte is not zero is not: one strided read of the chunk's first bytes rules those
    out, and each other page is compared whole (a memcmp that stops at its first non-zero
    byte).  Dense memory costs a cache line per page."""
    firsts = chunk[::PAGE].tobytes()
    zero: set[int] = set()
    k = firsts.find(0)
    while k >= 0:
        if _ZERO_PAGE.startswith(chunk[k * PAGE : (k + 1) * PAGE]):
            zero.add(k)
        k = firsts.find(0, k + 1)
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
        "rdtsc": list(vm.vcpu.loaded_rdtsc),
    }


def state_of(vm: Vm) -> bytes:
    ctx = vm.vcpus[0]
    meta = {
        "rip": ctx.rip, "seq": ctx.seq, "retired": ctx.retired, "entries": ctx.entries,
        "registered": sorted(ctx.registered), "irqs": list(ctx.irqs),
        "virqs": list(ctx.virqs), "tsc": vm.vcpu.tsc,
        "added": bytes(vm.added).hex(),
        "bounce": bytes(vm.bounce.used).hex() if vm.bounce is not None else "",
        "pending": _pending(ctx.pending), "completion": ctx.completion,
        # The architectural register state (the save area's values: general registers,
        # FS/GS base, SYSCALL's MSRs, FXSAVE), loaded over the context on import: what
        # the guest's program depends on does not rest on the emulator's context layout.
        "regs": [f"{v:x}" for v in vm.vcpu.read_state()],
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
