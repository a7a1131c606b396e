"""The page-fault controlled channel on data pages, through the ABI (issue 15.4).

A page the host unmaps faults at the guest's next access, however recently the guest used
it: a change of the nested page table drops the vCPU's cached translations, as a TLB flush
does on hardware.  Before, a data page's translation survived its unmap (Unicorn's TLB
entry, refilled by the translated-code invalidation of the unmapped range), and the T-table
victim's lookups went through unmapped pages without a fault: 2 of its 52 page changes
faulted at snp.  At shim the fault policy's TDX rule closes the channel after a few faults
when the lookups run at one RIP; unrolled, they run under its radar and under the default
fault budget, and the page changes leak as at snp.  The hosts are tvmm_tools/fault_channel.py's.
"""

from __future__ import annotations

import pytest

from tvmm.abi.types import Level
from tvmm.hw.vcpu import Access, StopKind, Vcpu
from tvmm_tools.fault_channel import FILL_FAULTS, NO_DATA_BUDGET, NO_PINNING, fill_length, measure

SEED = 7


def test_every_access_to_an_unmapped_table_page_faults_at_snp():
    run = measure(Level.SNP, "each", SEED)
    assert run.how == "exit"
    reads = [page for page, access in run.faults if access == Access.READ]
    writes = [page for page, access in run.faults if access == Access.WRITE]
    assert reads == run.lookups  # one fault per lookup: the page-level index of every nibble
    assert writes == [n // 512 for n in range(4 * 512)]  # and one per store of the fill
    assert run.bits_bound == 32


def test_each_page_change_faults_at_snp():
    run = measure(Level.SNP, "changes", SEED)
    assert run.how == "exit"
    assert [page for page, _ in run.faults] == list(range(FILL_FAULTS)) + run.page_changes


def test_the_fault_policy_closes_the_table_channel_at_shim():
    """The lookups run at one RIP: from the 7th fault there (fault_same_rip = 6) the TDX rule
    lists each faulting page, and entry is refused while a listed page is unmapped.  So the
    host sees 8 of the lookups' page changes (the 8th unmaps the 7th's page), each 2 bits of
    a nibble whose position it cannot tell exactly: at most 16 of the 32 page-level bits,
    against all 32 at snp."""
    run = measure(Level.SHIM, "changes", SEED, policy=NO_DATA_BUDGET)
    assert run.how == "refused"
    assert run.lookup_faults == run.page_changes[:8] and run.bits_bound == 16


def test_keeping_listed_pages_mapped_buys_two_faults_at_shim():
    """A host that keeps every page mapped from the rule's first listing on gets one more
    fault per table page not yet listed: 10 lookup faults in all, then every table page is
    listed and mapped and the lookups fault no more."""
    run = measure(Level.SHIM, "keep", SEED, policy=NO_DATA_BUDGET)
    assert run.how == "exit"
    assert run.lookup_faults[:7] == run.page_changes[:7]
    assert len(run.lookup_faults) == 10 < len(run.page_changes)


def test_unrolled_lookups_pass_a_limit_counted_per_rip():
    """The gap the data-fault budget closes, measured with it switched off: with the 16
    lookups of a round at 16 RIPs (4 faults each) the TDX rule never trips, and the
    victim's 4 + 52 faults stay under the window budget of 64: every page change leaks."""
    run = measure(Level.SHIM, "changes", SEED, "ttable_unrolled", policy=NO_DATA_BUDGET)
    assert run.how == "exit"
    assert run.lookup_faults == run.page_changes and len(run.page_changes) == 52


def test_the_data_fault_budget_leaves_one_lookup_fault_per_launch():
    """Without pinning, the data-fault budget (0) ends the VM at its first data fault.  A
    host that spends none on the fill (it unmaps the table once the fill is over) sees one
    lookup's page — 2 bits — and the VM is killed; one that unmaps at launch sees none."""
    run = measure(Level.SHIM, "changes", SEED, "ttable_unrolled", policy=NO_PINNING)
    assert run.lookup_faults == []
    late = measure(Level.SHIM, "late", SEED, "ttable_unrolled",
                   wait=fill_length("ttable_unrolled"), policy=NO_PINNING)
    assert late.how == "killed" and len(late.lookup_faults) == 1 and late.bits_bound == 2


@pytest.mark.parametrize("victim", ["ttable", "ttable_unrolled"])
@pytest.mark.parametrize("host", ["changes", "late"])
def test_pinning_leaves_no_lookup_fault(victim, host):
    """Default policy (pinning): an entry with a table page unmapped is refused, so neither
    a host that unmaps the table at launch nor the late host, which unmaps it after the
    fill, sees a fault at all — on the lookups at one RIP (ttable) or at many (unrolled):
    the page-level index bits that leak at snp (test_every_access_...) do not at shim."""
    run = measure(Level.SHIM, host, SEED, victim,
                  wait=fill_length(victim) if host == "late" else 0)
    assert run.how == "refused" and run.faults == [] and run.bits_bound == 0


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


def test_the_data_fault_budget_counts_the_whole_launch():
    """``data_fault_budget`` data faults are allowed; one more is over, whatever the window."""
    from shim.policies.config import PolicyConfig
    from shim.policies.faults import FaultPolicy

    policy = FaultPolicy(PolicyConfig(data_fault_budget=2, fault_window=10))
    over = []
    for retired in (0, 100, 200):  # each in a window of its own: the data count is not reset
        policy.record(0x1000, 0x2000, retired)
        over.append(policy.record_data())
    assert over == [False, False, True]
