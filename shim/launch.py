"""Launch: adding measured pages, filling the boot-info and secrets pages, finalizing.

The launch digest is SEV-SNP's PAGE_INFO chain (tvmm.hw.measurement), fed in the order the
host adds pages, then the initial vCPU state and the level (SEV_FEATURES, and below snp
tvmm's level word) as a VMSA page at finalize.  A launch secret opened at ADD_PAGES waits
in the TEE until FINALIZE has the digest: it goes into the secrets page only if the digest
is the one its owner bound it to (tvmm.abi.launch_secret), as SEV's LAUNCH_SECRET comes
after LAUNCH_MEASURE.  ``predict`` runs a launch plan (tvmm.launch_plan, read through the ``Plan``
protocol) at a level through the same chain without a VM: what ``tvmm measure`` prints,
and what FINALIZE returns when the host follows the plan at that level.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from shim.errors import BadOperand, Denied
from shim.levels import FEATURES
from shim.vm import Vm, VmState
from tvmm.abi.guest import BOOT_MAGIC, FEATURE_SHIM, INITIAL_FCW, INITIAL_MXCSR, INITIAL_RFLAGS
from tvmm.abi.guest import initial_registers as initial_register_values
from tvmm.abi.launch_secret import LaunchSecret, LaunchSecretError, launch_secret_identity, unwrap
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import LEVEL_CODES, Level, PageType
from tvmm.hw import measurement
from tvmm.hw.code_traps import sweep
from tvmm.hw.vcpu import (
    FX_FCW,
    FX_MXCSR,
    MXCSR_MASK,
    NEXT,
    NFX,
    PAGE,
    REG_NAMES,
)
from tvmm.hw.vmsa import VMSA_GPA, pack_plain

if TYPE_CHECKING:
    from shim.platform import Tee

_BOOT_INFO = struct.Struct("<6Q")
_SECRET_LEN = struct.Struct("<Q")
RFLAGS_RESET = INITIAL_RFLAGS
_NORMAL = measurement.PageType.NORMAL


class Plan(Protocol):
    """What ``predict`` reads of a launch plan (tvmm.launch_plan.LaunchPlan, which the TEE
    does not import: it is the host's and the owner's, not measured)."""

    entry: int
    memory_size: int

    def parts(self) -> Iterator[tuple[int, PageType, int, memoryview | None]]: ...


def check_unadded(vm: Vm, gpa: int, count: int) -> None:
    first = gpa // PAGE
    for i in range(first, first + count):
        if vm.added[i]:
            raise BadOperand("gpa", f"page {i * PAGE:#x} was already added")


def add_pages(
    tee: Tee, vm: Vm, gpa: int, page_type: PageType, count: int, data: bytes, executable: bool
) -> None:
    if page_type == PageType.SECRETS:
        opened = _open_secret(tee, data)
        vm.vcpu.mem_write(gpa, bytes(PAGE))  # empty until FINALIZE checks the digest
        if opened is None:
            vm.io.installed(b"")
        else:
            vm.pending_secrets.append((gpa, opened))
        vm.digest.add_page(gpa, measurement.PageType(page_type), None)
        vm.added[gpa // PAGE] = 1
        return
    if page_type == PageType.NORMAL:
        # One write for the run, one batched extend: LaunchDigest.extend's inlined loop
        # costs little more than hashing the pages (see docs/performance.md).
        vm.vcpu.mem_write(gpa, data)
        view = memoryview(data)
        vm.digest.extend(
            (gpa + i * PAGE, _NORMAL, view[i * PAGE : (i + 1) * PAGE]) for i in range(count)
        )
    else:
        for i in range(count):
            page_gpa = gpa + i * PAGE
            if page_type == PageType.CPUID:
                vm.vcpu.mem_write(page_gpa, _boot_info(vm))
            vm.digest.add_page(page_gpa, measurement.PageType(page_type), None)
    first = gpa // PAGE
    vm.added[first : first + count] = b"\x01" * count
    if executable:
        vm.code_ranges.append((gpa, vm.vcpu.mem_read(gpa, count * PAGE)))


def _open_secret(tee: Tee, blob: bytes) -> LaunchSecret | None:
    """Open the owner's blob (None: no blob, an empty secrets page), all checks before
    anything is written, so a refusal leaves the VM as it was.  The secret is not put in
    the guest here: FINALIZE does, once the launch digest equals the one it is bound to.

    A blob opens for one launch: the TEE keeps the identity of every blob it opened
    (its ephemeral key, bound digest and nonce, which the AEAD binds to the ciphertext) and
    refuses it again, so a host that relaunches the victim needs the owner's broker for
    each launch, and the broker's launch budget bounds them (docs/attestation.md, "Launch
    budget").  A blob whose launch FINALIZE refuses stays spent."""
    if not blob:
        return None
    try:
        opened = unwrap(blob, tee.launch_key)
    except LaunchSecretError as exc:
        raise BadOperand("data", str(exc)) from None
    if _SECRET_LEN.size + len(opened.secret) > PAGE:
        raise BadOperand("data", f"a {len(opened.secret)}-byte secret does not fit the "
                         "secrets page")
    identity = launch_secret_identity(blob)
    if identity in tee.opened_launch_secrets:
        raise BadOperand("data", "this launch secret was opened for an earlier launch")
    tee.opened_launch_secrets.add(identity)
    return opened


def _secrets_page(secret: bytes) -> bytes:
    """The one page measured as SECRETS: ``u64 length ‖ secret``, zero-padded."""
    return (_SECRET_LEN.pack(len(secret)) + secret).ljust(PAGE, b"\0")


def _release_secrets(tee: Tee, vm: Vm, digest: bytes) -> None:
    """At FINALIZE, before anything changes: every launch secret waiting for this VM must
    be bound to ``digest``, the launch digest just computed; else FINALIZE is refused
    (DENIED, ``launch_secret``: on the VM's record of refusals) and the secrets are
    discarded — their blobs stay spent.  On a match each goes into its secrets page."""
    pending, vm.pending_secrets = vm.pending_secrets, []
    wrong = [opened.launch_digest for _gpa, opened in pending if opened.launch_digest != digest]
    if wrong:
        if tee.recorder.enabled:
            tee.recorder.emit(EventKind.MGMT, "launch_secret_refused", inside={
                "vm": vm.id, "bound": wrong[0].hex(), "measured": digest.hex()})
        raise Denied("launch_secret", f"the launch secret is bound to launch digest "
                     f"{wrong[0][:8].hex()}…, this launch measured {digest[:8].hex()}… "
                     "(another image or level): not released, discarded")
    for gpa, opened in pending:
        vm.vcpu.mem_write(gpa, _secrets_page(opened.secret))
        vm.io.installed(opened.secret)


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
    """The launch ABI's initial vCPU (tvmm.launch_plan) as a whole register state: the
    general registers, zero bases and MSRs (the guest sets them), and the x87/SSE state a
    Linux process starts with (FCW 0x37F, MXCSR 0x1F80: every exception masked; all x87
    registers empty)."""
    values = initial_register_values(entry, memory_size)
    fx = [0] * NFX
    fx[FX_FCW // 8] = INITIAL_FCW << (8 * FX_FCW)
    fx[FX_MXCSR // 8] = INITIAL_MXCSR | MXCSR_MASK << 32
    return (*(values.get(name, 0) for name in REG_NAMES), *[0] * NEXT, *fx)


# SEV_FEATURES, a u64 at this offset of SEV-SNP's VMSA, is part of the measured VMSA page:
# the launch digest tells how the guest runs, not only what it runs.  tvmm sets the bits of
# the features a level has (shim.levels): SNPActive where the ownership table (the RMP)
# guards the guest, RestrictedInjection where the shim filters what the host injects.
SEV_FEATURES_OFFSET = 0x3B0
SNP_ACTIVE = 1 << 0
RESTRICTED_INJECTION = 1 << 3


def sev_features(level: Level) -> int:
    """The SEV_FEATURES word measured for a launch at ``level``: 0 below snp, SNPActive at
    snp, SNPActive | RestrictedInjection at shim."""
    features = FEATURES[level]
    return (SNP_ACTIVE if features.ownership else 0) | (
        RESTRICTED_INJECTION if features.irq_filter else 0)


# Below snp SEV_FEATURES is 0 at every level, yet the level must be measured there too: a
# launch secret bound to a sev launch must not open in a plain one.  Real SEV and SEV-ES
# get this from LAUNCH_MEASURE, which covers the guest policy (its ES bit); tvmm puts a
# level word in bytes SEV-SNP's VMSA reserves (0x3F0): the level's code + 1 at plain, sev
# and sev-es, 0 at snp and shim (whose SEV_FEATURES differ), so every level has its own
# digest and the snp and shim digests are SEV-SNP's.
LEVEL_WORD_OFFSET = 0x3F0


def level_word(level: Level) -> int:
    """The level word measured at LEVEL_WORD_OFFSET: 1 plain, 2 sev, 3 sev-es, 0 from snp."""
    return 0 if FEATURES[level].ownership else LEVEL_CODES[level] + 1


# The initial register state (tvmm.hw.vmsa's save area) sits in the VMSA page from here,
# past SEV_FEATURES, as SEV-SNP's VMSA keeps its general and x87/SSE registers above the
# segment and control state.
STATE_OFFSET = 0x400


def vmsa_page(entry: int, memory_size: int, level: Level) -> bytes:
    """The VMSA page FINALIZE measures: the level's SEV_FEATURES at its SEV-SNP offset, the
    level word below snp, and the whole initial register state at STATE_OFFSET; zeros
    elsewhere."""
    page = bytearray(PAGE)
    regs = pack_plain(initial_registers(entry, memory_size))
    page[STATE_OFFSET : STATE_OFFSET + len(regs)] = regs
    page[SEV_FEATURES_OFFSET : SEV_FEATURES_OFFSET + 8] = sev_features(level).to_bytes(8, "little")
    page[LEVEL_WORD_OFFSET : LEVEL_WORD_OFFSET + 8] = level_word(level).to_bytes(8, "little")
    return bytes(page)


def predict(plan: Plan, level: Level) -> measurement.LaunchDigest:
    """The launch digest FINALIZE will return for ``plan`` launched at ``level``, computed
    without a VM (the chain's ``digest``; its ``pages`` are the exact list hashed): the
    plan's pages as the TEE adds them, read in place, then the level's VMSA page."""
    chain = measurement.LaunchDigest()
    for gpa, page_type, count, data in plan.parts():
        if data is not None:
            chain.add_run(gpa, data)
        else:
            for i in range(count):
                chain.add_page(gpa + i * PAGE, page_type, None)
    chain.add_page(VMSA_GPA, measurement.PageType.VMSA,
                   vmsa_page(plan.entry, plan.memory_size, level))
    return chain


def finalize(tee: Tee, vm: Vm, entry: int) -> bytes:
    """Measure the VMSA page, release the waiting launch secrets if the digest is theirs
    (else refuse, changing nothing but discarding them), and make the VM runnable."""
    vmsa = vmsa_page(entry, vm.memory.size, vm.level)
    if vm.pending_secrets:
        chain = measurement.LaunchDigest(vm.digest.digest)
        chain.add_page(VMSA_GPA, measurement.PageType.VMSA, vmsa)
        _release_secrets(tee, vm, chain.digest)
    regs = initial_registers(entry, vm.memory.size)
    vm.digest.add_page(VMSA_GPA, measurement.PageType.VMSA, vmsa)
    vm.vcpu.write_state(regs)
    hlt, rdtsc = sweep(vm.code_ranges)
    vm.vcpu.install_code_traps(hlt, rdtsc)
    vm.entry = entry
    vm.vcpus[0].rip = entry
    vm.launch_digest = vm.digest.digest
    vm.state = VmState.RUNNABLE
    return vm.launch_digest
