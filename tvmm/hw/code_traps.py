"""Find the HLT and RDTSC instructions of a guest's executable pages.

Unicorn can hook neither, so the vCPU traps them by address.  A linear sweep with capstone
is exact for compiler output (no data in .text); a byte 0xF4 inside another instruction is
not an instruction start, so it is never mistaken for HLT.
"""

from __future__ import annotations

from collections.abc import Iterable

import capstone

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_md.skipdata = True


def sweep(ranges: Iterable[tuple[int, bytes]]) -> tuple[list[int], list[int]]:
    """(hlt addresses, rdtsc addresses) in the given (address, code) ranges."""
    hlt: list[int] = []
    rdtsc: list[int] = []
    for base, code in ranges:
        for addr, _size, mnemonic, _ops in _md.disasm_lite(code, base):
            if mnemonic == "hlt":
                hlt.append(addr)
            elif mnemonic == "rdtsc":
                rdtsc.append(addr)
    return hlt, rdtsc
