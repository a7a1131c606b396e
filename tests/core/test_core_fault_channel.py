"""The page-fault controlled channel on data pages, through the ABI (issue 15.4).

A page the host unmaps faults at the guest's next access, however recently the guest used
it: a change of the nested page table drops the vCPU's cached translations, as a TLB flush
does on hardware.  Before, a data page's translation survived its unmap (Unicorn's TLB
entry, refilled by the translated-code invalidation of the unmapped range), and the T-table
victim's lookups went through unmapped pages without a fault: 2 of its 52 page changes
faulted at snp.  At shim the fault policy's TDX rule closes the channel after a few faults.
"""

from __future__ import annotations

import random

import pytest

from tvmm.abi.messages import ExitRecord
from tvmm.abi.types import ExitReason, Field, Level, Result
from tvmm.host.devices import Console
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.hw.vcpu import Access, StopKind, Vcpu
from tvmm.machine import DEFAULT_MEMORY, make_machine, wrap_secret
from tvmm.samples import resolve

PAGE = 4096
SEED = 7


class TableHost(HonestHypervisor):
    """Keeps the T-table's pages unmapped and records the page of every fault on them.

    ``each``: after a fault, map the page for one instruction (quantum 1), then unmap it
    again, so every access to the table faults once.  Otherwise map the faulting page and
    unmap the other three: an access faults when it moves to another page."""

    def __init__(self, *args, pages: list[int], each: bool, keep_after: int | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pages, self.each = pages, each
        self.keep_after = keep_after  # from this many faults on, faulting pages stay mapped
        self.kept: set[int] = set()
        self.faults: list[tuple[int, int | None]] = []  # (page index, ACCESS if shown)
        self.refused = False

    def start(self) -> None:
        for page in self.pages:
            self.client.unmap(self.vm, page)

    def enter(self):
        reply = super().enter()
        self.refused = reply.result == Result.ENTRY_REFUSED
        return reply

    def on_exit(self, rec: ExitRecord) -> bool:
        if rec.reason == ExitReason.NPF:
            gpa = rec.get(Field.GPA)
            page = gpa & ~(PAGE - 1) if gpa is not None else rec.get(Field.GPA_PAGE) * PAGE
            if page in self.pages:
                self.faults.append((self.pages.index(page), rec.get(Field.ACCESS)))
                self.client.map(self.vm, page)
                if self.keep_after is not None and len(self.faults) >= self.keep_after:
                    self.kept.add(page)
                if self.each:
                    self.quantum = 1
                else:
                    for other in self.pages:
                        if other != page and other not in self.kept:
                            self.client.unmap(self.vm, other)
                return True
        if rec.reason == ExitReason.TIMER and self.each and self.quantum:
            self.quantum = 0
            self.start()
            return True
        return super().on_exit(rec)


def _attack(level: Level, *, each: bool, keep_after: int | None = None
            ) -> tuple[TableHost, list[int], str]:
    image, victim = resolve("ttable")
    table = next(addr for addr, _size, name in image.symbols if name == "table")
    secret = victim.make_secret(random.Random(SEED))
    machine = make_machine(seed=SEED, image=image, level=level)
    try:
        host = TableHost(machine.client, Devices(Console()), each=each, keep_after=keep_after,
                         pages=[table + i * PAGE for i in range(4)])
        host.launch(image, level, DEFAULT_MEMORY, secret_blob=wrap_secret(machine, secret,
                                                                          SEED))
        host.start()
        result = host.run(max_exits=20_000)
    finally:
        machine.close()
    s = int.from_bytes(secret, "little")
    lookups = [((s >> (4 * j)) & 15) >> 2 for j in range(16)] * 4  # the page of each lookup
    return host, lookups, result.how


def _runs(pages: list[int], start: int) -> list[int]:
    """The pages at which a sequence of accesses changes page (from ``start``)."""
    out, last = [], start
    for page in pages:
        if page != last:
            out.append(page)
        last = page
    return out


def test_every_access_to_an_unmapped_table_page_faults_at_snp():
    host, lookups, how = _attack(Level.SNP, each=True)
    assert how == "exit"
    reads = [page for page, access in host.faults if access == Access.READ]
    writes = [page for page, access in host.faults if access == Access.WRITE]
    assert reads == lookups  # one fault per lookup: the page-level index of every nibble
    assert writes == [n // 512 for n in range(4 * 512)]  # and one per store of the fill


def test_each_page_change_faults_at_snp():
    host, lookups, how = _attack(Level.SNP, each=False)
    assert how == "exit"
    fill = [0, 1, 2, 3]
    assert [page for page, _ in host.faults] == fill + _runs(lookups, start=3)


def test_the_fault_policy_closes_the_table_channel_at_shim():
    """The lookups run at one RIP: from the 7th fault there (fault_same_rip = 6) the TDX rule
    lists each faulting page, and entry is refused while a listed page is unmapped.  So the
    host sees at most 8 of the lookups' page changes (the 8th unmaps the 7th's page), each
    2 bits of a nibble whose position it cannot tell exactly: at most 16 of the 32
    page-level bits, against all 32 at snp."""
    host, lookups, how = _attack(Level.SHIM, each=False)
    assert how == "refused" and host.refused
    seen = [page for page, _ in host.faults][4:]  # after the four faults of the fill
    assert seen == _runs(lookups, start=3)[: len(seen)]
    assert len(seen) == 6 + 2


def test_keeping_listed_pages_mapped_buys_two_faults_at_shim():
    """A host that keeps every page mapped from the rule's first listing on gets one more
    fault per table page not yet listed: with four pages, at most 10 page changes in all,
    then every table page is listed and mapped and the lookups fault no more."""
    host, lookups, how = _attack(Level.SHIM, each=False, keep_after=4 + 7)
    assert how == "exit" and not host.refused
    seen = [page for page, _ in host.faults][4:]
    assert seen[:7] == _runs(lookups, start=3)[:7]
    assert 7 < len(seen) <= 10 and len(_runs(lookups, start=3)) == 52


def test_a_cached_translation_does_not_outlive_an_unmap():
    """The vCPU alone: read page A, unmap it, read it again: the second read faults."""
    vcpu = Vcpu(0x400000, lambda leaf, sub: (0, 0, 0, 0))
    code = bytes.fromhex("488b03" "488b03" "f4")  # mov rax, [rbx]; mov rax, [rbx]; hlt
    vcpu.mem_write(0x1000, code)
    vcpu.install_code_traps([0x1000 + 6], [])
    vcpu.set_mapped(0, 0x400, True)
    regs = list(vcpu.read_regs())
    regs[1] = 0x10000  # rbx
    vcpu.write_regs(regs)
    first = vcpu.run(0x1000, 1)
    assert first.kind == StopKind.TIMER and first.rip == 0x1003
    vcpu.set_mapped(0x10000, 1, False)
    second = vcpu.run(first.rip, 0)
    assert (second.kind, second.addr, second.access) == (StopKind.NPF, 0x10000, Access.READ)


@pytest.mark.parametrize("unmapped_first", [False, True])
def test_a_page_never_touched_faults_after_its_unmap(unmapped_first):
    """Unmapping a page fills no translation for it (the code-cache invalidation of the
    range used to): the first read of a page unmapped before it was ever touched faults."""
    vcpu = Vcpu(0x400000, lambda leaf, sub: (0, 0, 0, 0))
    vcpu.mem_write(0x1000, bytes.fromhex("488b03" "f4"))
    vcpu.install_code_traps([0x1003], [])
    vcpu.set_mapped(0, 0x400, True)
    if unmapped_first:
        vcpu.set_mapped(0x10000, 1, False)
        vcpu.set_mapped(0x10000, 1, True)
    regs = list(vcpu.read_regs())
    regs[1] = 0x10000
    vcpu.write_regs(regs)
    vcpu.set_mapped(0x10000, 1, False)
    stop = vcpu.run(0x1000, 0)
    assert (stop.kind, stop.addr) == (StopKind.NPF, 0x10000)
