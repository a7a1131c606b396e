"""Guest-physical memory as the host sees it: page states, the host's nested page table,
the memory encryption engine and (at snp and above) the ownership table.

The plaintext lives only in the vCPU's memory, inside the TEE.  The host reaches memory
only through ``host_*`` methods: shared pages in plaintext, private pages as ciphertext
(or plaintext at ``plain``, or all ones under ciphertext hiding); its writes to private
pages land (decrypted under the VM's key: replayed ciphertext restores old plaintext)
unless the ownership table forbids them.  A remap is one host read and one host write:
no host call moves private plaintext.
"""

from __future__ import annotations

from enum import IntEnum

from tvmm.hw.mee import MemoryEncryptionEngine
from tvmm.hw.vcpu import PAGE, Vcpu

# What a host read of a private page returns under SEV-SNP ciphertext hiding (AMD EPYC
# 9005 "Turin"; Linux 6.18's kvm-amd.ciphertext_hiding_asids): "reads will see constant
# default values (0xff)", never the ciphertext.
HIDDEN_PAGE = b"\xff" * PAGE


class PageState(IntEnum):
    PRIVATE = 1  # guest-owned: encrypted, and owned in the ownership table at snp
    SHARED = 2  # shared with the host in plaintext (the bounce region)


class OwnershipViolation(Exception):
    """The ownership table (SNP's RMP) refused a host write or remap of a private page."""


class GuestMemory:
    def __init__(
        self,
        vcpu: Vcpu,
        shared: range,
        mee: MemoryEncryptionEngine | None,
        ownership: bool,
        hide_ciphertext: bool = False,
    ) -> None:
        self.vcpu = vcpu
        self.size = vcpu.ram_size
        self.npages = self.size // PAGE
        self.mee = mee
        self.ownership = ownership
        self.hide_ciphertext = hide_ciphertext
        self.state = bytearray([PageState.PRIVATE]) * self.npages
        for gpa in range(shared.start, shared.stop, PAGE):
            self.state[gpa // PAGE] = PageState.SHARED
        self.mapped = bytearray(self.npages)
        self.shared = shared
        self._unmapped_private: int | None = None  # counted on demand, dropped by set_mapped

    # -- checks ----------------------------------------------------------------------
    def contains(self, gpa: int, size: int = 1) -> bool:
        return 0 <= gpa and size >= 0 and gpa + size <= self.size

    def is_shared_range(self, gpa: int, size: int) -> bool:
        return self.shared.start <= gpa and gpa + size <= self.shared.stop

    def is_private(self, gpa: int) -> bool:
        return self.state[gpa // PAGE] == PageState.PRIVATE

    # -- the host's view ---------------------------------------------------------------
    def host_read(self, gpa: int) -> bytes:
        if self.hide_ciphertext and self.is_private(gpa):
            return HIDDEN_PAGE  # not even ciphertext: no dictionary of pages over time
        data = self.vcpu.mem_read(gpa, PAGE)
        if self.mee is None or not self.is_private(gpa):
            return data
        return self.mee.encrypt_page(gpa, data)

    def host_write(self, gpa: int, data: bytes) -> None:
        if self.is_private(gpa):
            if self.ownership:
                raise OwnershipViolation(f"page {gpa:#x} is guest-owned")
            if self.mee is not None:
                data = self.mee.decrypt_page(gpa, data)
            self.vcpu.flush_code(gpa, PAGE)
        self.vcpu.mem_write(gpa, data)

    def host_remap(self, gpa: int, source: int) -> None:
        """The host points ``gpa`` at the frame behind ``source``.  The host moves memory
        as it sees it, so this is its read of ``source`` followed by its write of ``gpa``:
        from ``sev`` up a private source moves as ciphertext (a shared destination then
        shows the host ciphertext, never plaintext) and what lands in a private page
        decrypts under the destination's tweak — garbage, as on hardware, where the XTS
        tweak is the physical address.  At ``plain`` plaintext moves."""
        if self.ownership and (self.is_private(gpa) or self.is_private(source)):
            raise OwnershipViolation(f"page {gpa:#x} is assigned to one GPA only")
        self.host_write(gpa, self.host_read(source))
        self.vcpu.flush_code(gpa, PAGE)

    def set_mapped(self, gpa: int, count: int, mapped: bool) -> None:
        first = gpa // PAGE
        self.mapped[first : first + count] = bytes([1 if mapped else 0]) * count
        self._unmapped_private = None
        self.vcpu.set_mapped(gpa, count, mapped)

    def unmapped_pages(self, pages: list[int]) -> list[int]:
        return [p for p in pages if not self.mapped[p // PAGE]]

    def unmapped_private(self) -> int:
        """How many private pages the host's table leaves unmapped: two scans of a byte a
        page around the one shared range, kept until the host's table changes (pinning
        asks at every entry: the scans cost ~8,000 instructions a 4 MiB guest, 16 times
        that at 64 MiB, where a MAP or UNMAP is rare)."""
        count = self._unmapped_private
        if count is None:
            first, stop = self.shared.start // PAGE, -(-self.shared.stop // PAGE)
            count = self._unmapped_private = (self.mapped.count(0, 0, first)
                                              + self.mapped.count(0, stop))
        return count

    # -- the TEE's own access ------------------------------------------------------------
    def read(self, gpa: int, size: int) -> bytes:
        return self.vcpu.mem_read(gpa, size)

    def write(self, gpa: int, data: bytes) -> None:
        self.vcpu.mem_write(gpa, data)
