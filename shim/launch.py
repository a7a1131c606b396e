"""Launch: adding measured pages, filling the boot-info and secrets pages, finalizing.

The launch digest is SEV-SNP's PAGE_INFO chain (tvmm.hw.measurement), fed in the order the
host adds pages, then the initial vCPU state as a VMSA page at finalize.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from shim.errors import BadOperand
from shim.vm import Vm, VmState
from tvmm.abi.guest import BOOT_MAGIC, FEATURE_SHIM
from tvmm.abi.types import LEVEL_CODES, PageType
from tvmm.hw import measurement
from tvmm.hw.code_traps import sweep
from tvmm.hw.vcpu import NREGS, PAGE, RIP, RSP
from tvmm.hw.vmsa import VMSA_GPA, pack_plain
from tvmm.owner.launch_secret import LaunchSecretError, unwrap

if TYPE_CHECKING:
    from shim.platform import Tee

_BOOT_INFO = struct.Struct("<6Q")
RFLAGS_RESET = 0x2


def check_unadded(vm: Vm, gpa: int, count: int) -> None:
    first = gpa // PAGE
    for i in range(first, first + count):
        if vm.added[i]:
            raise BadOperand("gpa", f"page {i * PAGE:#x} was already added")


def add_pages(
    tee: Tee, vm: Vm, gpa: int, page_type: PageType, count: int, data: bytes, executable: bool
) -> None:
    if page_type == PageType.SECRETS:
        contents = _secrets_page(tee, data)
        vm.vcpu.mem_write(gpa, contents)
        vm.digest.add_page(gpa, measurement.PageType(page_type), None)
        vm.added[gpa // PAGE] = 1
        return
    for i in range(count):
        page_gpa = gpa + i * PAGE
        if page_type == PageType.NORMAL:
            page = data[i * PAGE : (i + 1) * PAGE]
            vm.vcpu.mem_write(page_gpa, page)
            vm.digest.add_page(page_gpa, measurement.PageType.NORMAL, page)
        else:
            if page_type == PageType.CPUID:
                vm.vcpu.mem_write(page_gpa, _boot_info(vm))
            vm.digest.add_page(page_gpa, measurement.PageType(page_type), None)
        vm.added[page_gpa // PAGE] = 1
    if executable:
        vm.code_ranges.append((gpa, vm.vcpu.mem_read(gpa, count * PAGE)))


def _secrets_page(tee: Tee, blob: bytes) -> bytes:
    try:
        secret = unwrap(blob, tee.launch_key) if blob else b""
    except LaunchSecretError as exc:
        raise BadOperand("data", str(exc)) from None
    return struct.pack("<Q", len(secret)) + secret.ljust(PAGE - 8, b"\0")


def _boot_info(vm: Vm) -> bytes:
    info = _BOOT_INFO.pack(
        BOOT_MAGIC,
        FEATURE_SHIM if vm.features.shim_io else 0,
        vm.memory.size,
        vm.memory.shared.start,
        len(vm.memory.shared),
        LEVEL_CODES[vm.level],
    )
    return info.ljust(PAGE, b"\0")


def initial_registers(entry: int, memory_size: int) -> tuple[int, ...]:
    regs = [0] * NREGS
    regs[RIP] = entry
    regs[RSP] = memory_size
    regs[-1] = RFLAGS_RESET
    return tuple(regs)


def finalize(tee: Tee, vm: Vm, entry: int) -> bytes:
    regs = initial_registers(entry, vm.memory.size)
    vmsa_page = pack_plain(regs).ljust(PAGE, b"\0")
    vm.digest.add_page(VMSA_GPA, measurement.PageType.VMSA, vmsa_page)
    vm.vcpu.write_regs(regs)
    hlt, rdtsc = sweep(vm.code_ranges)
    vm.vcpu.install_code_traps(hlt, rdtsc)
    vm.entry = entry
    vm.vcpus[0].rip = entry
    vm.launch_digest = vm.digest.digest
    vm.state = VmState.RUNNABLE
    return vm.launch_digest
