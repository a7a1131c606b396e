"""The secure processor's guest services: attestation reports and the guest's key release.

Served inside the TEE at every level; the host sees no exit for them (on SEV-SNP the
request would cross the host as an SNP_GUEST_REQUEST of VMPCK-encrypted bytes, so the host
would learn only that, and when, a report was asked for — see docs/attestation.md).
Every buffer is private guest memory, read once; a refusal is a negative errno in rax
and its reason goes to the inside trace only.

    HC_ATTEST(rdi = report data gpa (64 B), rsi = out gpa (0x4A0 B)) -> 0
        An SEV-SNP report of this VM, signed by the chip's VCEK key.
    HC_KEY_REQUEST(rdi = nonce gpa (32 B), rsi = out gpa (97 + 0x4A0 B)) -> 0
        A fresh P-384 key pair made and kept inside the TEE for the guest; writes the
        public key Q ‖ a report whose report_data = SHA-384(nonce ‖ Q) ‖ 0¹⁶
        (tvmm.abi.key_release.report_data_for).  A new request replaces the old key.
    HC_SECRET_KEY(rdi = wrapped secret gpa, rsi = length) -> secret length
        Opens the owner's WrappedSecret with that key, that nonce and this VM's launch
        digest, and writes the secret to the secrets page (u64 length ‖ bytes).  The key is
        discarded after one attempt, whatever its outcome: a new attempt needs a new nonce.

Every key is made here from the OS's randomness (the guest key pair by
``ec.generate_private_key``, report ids by ``os.urandom``), never from the run's seed, and
is held by the TEE's own objects: the pending guest key in this VM's VmAttestation, the
chip (tvmm.hw.root_of_trust, loaded from the TEE's state directory on first use) in the
Tee.  No module global holds a key.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec

from shim.vm import Vm
from tvmm.abi.guest import (
    GUEST_KEY_SIZE,
    NONCE_SIZE,
    PAGE_SIZE,
    REPORT_DATA_SIZE,
    REPORT_SIZE,
    SECRETS_GPA,
    GuestError,
    Hypercall,
)
from tvmm.abi.key_release import (
    MAX_SECRET_SIZE,
    TAG_SIZE,
    KeyReleaseFormatError,
    UnwrapError,
    WrappedSecret,
    encode_public_key,
    report_data_for,
    unwrap,
)
from tvmm.abi.report import SIGNING_KEY_NONE, AttestationReport, GuestPolicy, pack
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import POLICY_RESERVED_ONE

if TYPE_CHECKING:
    from shim.platform import Tee

REPORT_VERSION = 2
PLATFORM_INFO_SMT_EN = 1
FIRMWARE = (1, 52, 4)  # major, minor, build: what the Milan test machine reports
SECRET_CAPACITY = PAGE_SIZE - 8  # the secrets page: u64 length, then the bytes
MAX_WRAPPED = 118 + SECRET_CAPACITY + TAG_SIZE  # the largest WrappedSecret that can fit
assert SECRET_CAPACITY <= MAX_SECRET_SIZE

@dataclass
class VmAttestation:
    """What the secure processor keeps per VM: its report id and the pending guest key."""

    report_id: bytes
    key: ec.EllipticCurvePrivateKey | None = None
    nonce: bytes = b""
    requests: int = 0
    released: int = 0


def serve(tee: Tee, vm: Vm, nr: int, a0: int, a1: int) -> tuple[int, str]:
    """Serve HC_ATTEST, HC_KEY_REQUEST or HC_SECRET_KEY: (value for rax, inside note)."""
    if nr == Hypercall.ATTEST:
        return _attest(tee, vm, a0, a1)
    if nr == Hypercall.KEY_REQUEST:
        return _key_request(tee, vm, a0, a1)
    return _secret_key(tee, vm, a0, a1)


def build_report(tee: Tee, vm: Vm, report_data: bytes) -> bytes:
    """This VM's report with ``report_data``, signed by the chip (chip_id and reported_tcb
    are the chip's own stamp).  Deterministic ECDSA (RFC 6979): same inputs, same bytes.

    Only a guest the ownership table (SNP's RMP) guards gets a signed report: below snp
    there is no SEV-SNP guest, and on real hardware no report at all.  There the report is
    left unsigned (signing key 7, "none"; signature zero), which every verifier refuses
    (VerifyFailure.SIGNING_KEY): a plain or sev launch cannot pass for an SNP one.  The
    level is also in the measurement (SEV_FEATURES, shim.launch), so snp and shim differ."""
    chip = tee.chip
    major, minor, build = FIRMWARE
    report = AttestationReport(
        version=REPORT_VERSION,
        policy=GuestPolicy.from_u64(vm.policy | POLICY_RESERVED_ONE),
        vmpl=0,
        current_tcb=chip.tcb,
        platform_info=PLATFORM_INFO_SMT_EN,
        report_data=report_data,
        measurement=vm.launch_digest,
        host_data=bytes(32),
        report_id=_state(tee, vm).report_id,
        report_id_ma=b"\xff" * 32,  # no migration agent
        committed_tcb=chip.tcb,
        launch_tcb=chip.tcb,
        current_major=major,
        current_minor=minor,
        current_build=build,
        committed_major=major,
        committed_minor=minor,
        committed_build=build,
    )
    if not vm.features.ownership:
        return pack(replace(report, flags=SIGNING_KEY_NONE << 2, reported_tcb=chip.tcb))
    return chip.sign_report(report, deterministic=True)


def _attest(tee: Tee, vm: Vm, data_gpa: int, out_gpa: int) -> tuple[int, str]:
    if not (_private(vm, data_gpa, REPORT_DATA_SIZE) and _private(vm, out_gpa, REPORT_SIZE)):
        return GuestError.INVAL, "report buffers must be private guest memory"
    report_data = vm.memory.read(data_gpa, REPORT_DATA_SIZE)
    try:
        report = build_report(tee, vm, report_data)
    except (OSError, ValueError) as exc:
        return GuestError.IO, f"no chip key: {exc}"
    vm.memory.write(out_gpa, report)
    _trace(tee, vm, "attest", report_data=report_data.hex())
    return 0, "report signed"


def _key_request(tee: Tee, vm: Vm, nonce_gpa: int, out_gpa: int) -> tuple[int, str]:
    if not (_private(vm, nonce_gpa, NONCE_SIZE)
            and _private(vm, out_gpa, GUEST_KEY_SIZE + REPORT_SIZE)):
        return GuestError.INVAL, "key request buffers must be private guest memory"
    nonce = vm.memory.read(nonce_gpa, NONCE_SIZE)
    state = _state(tee, vm)
    key = ec.generate_private_key(ec.SECP384R1())
    public = encode_public_key(key.public_key())
    try:
        report = build_report(tee, vm, report_data_for(nonce, public))
    except (OSError, ValueError) as exc:
        return GuestError.IO, f"no chip key: {exc}"
    state.key, state.nonce = key, nonce
    state.requests += 1
    vm.memory.write(out_gpa, public + report)
    _trace(tee, vm, "key_request", nonce=nonce.hex(), guest_key=public.hex())
    return 0, "guest key pair made; report binds nonce and key"


def _secret_key(tee: Tee, vm: Vm, gpa: int, length: int) -> tuple[int, str]:
    state = _state(tee, vm)
    key, nonce = state.key, state.nonce
    state.key, state.nonce = None, b""  # one attempt per key, whatever happens
    if key is None:
        return GuestError.INVAL, "no key request is pending"
    if not 0 < length <= MAX_WRAPPED or not _private(vm, gpa, length):
        return GuestError.INVAL, "wrapped secret must be private guest memory of a legal size"
    blob = vm.memory.read(gpa, length)  # the one fetch
    try:
        secret = unwrap(WrappedSecret.from_bytes(blob), key, nonce, vm.launch_digest)
    except (KeyReleaseFormatError, UnwrapError) as exc:
        _trace(tee, vm, "unwrap_refused", why=type(exc).__name__)
        return GuestError.IO, "wrapped secret does not open"
    if len(secret) > SECRET_CAPACITY:
        return GuestError.INVAL, "secret does not fit the secrets page"
    vm.memory.write(SECRETS_GPA, struct.pack("<Q", len(secret)) + secret.ljust(SECRET_CAPACITY,
                                                                                 b"\0"))
    state.released += 1
    vm.io.installed(secret)
    _trace(tee, vm, "secret_released", length=len(secret))
    return len(secret), "secret unwrapped into the secrets page"


def _state(tee: Tee, vm: Vm) -> VmAttestation:
    state = tee.attestation.get(vm.id)
    if state is None:
        state = tee.attestation[vm.id] = VmAttestation(report_id=os.urandom(32))
    return state


def _private(vm: Vm, gpa: int, size: int) -> bool:
    memory = vm.memory
    shared = memory.shared
    return memory.contains(gpa, size) and (gpa >= shared.stop or gpa + size <= shared.start)


def _trace(tee: Tee, vm: Vm, name: str, **inside: object) -> None:
    if tee.recorder.enabled:
        tee.recorder.emit(EventKind.MGMT, name, inside={"vm": vm.id, **inside})
