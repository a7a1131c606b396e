"""The guest-facing ABI, mirrored from guests/include/tvmm.h (checked by a test)."""

from __future__ import annotations

from enum import IntEnum

PAGE_SIZE = 0x1000
BOOT_INFO_GPA = 0x1000
SECRETS_GPA = 0x2000
SHARED_BASE = 0x100000
SHARED_SIZE = 0x40000
SLOT_SIZE = 0x800
IMAGE_BASE = 0x200000
BOOT_MAGIC = 0x31544F4F424D5654
FEATURE_SHIM = 1
SECTOR_SIZE = 512


class Hypercall(IntEnum):
    EXIT = 0
    CONSOLE_WRITE = 1
    BLOCK_READ = 2
    BLOCK_WRITE = 3
    INPUT_READ = 4
    IRQ_REGISTER = 5
    ATTEST = 6
    SECRET_KEY = 7
    KEY_REQUEST = 8  # the TEE makes the guest's key pair and a report binding it (key release)
    OWNER_EXCHANGE = 9  # a message to the guest owner and its answer, relayed by the host


def exit_status(field: int) -> int:
    """The guest's exit status (a C int) from the STATUS exit field, which carries its 32
    bits unsigned: exit fields are u64 on the wire (tvmm.abi.codec)."""
    field &= 0xFFFFFFFF
    return field - (1 << 32) if field & 0x80000000 else field


class GuestError(IntEnum):
    """Negative results returned to the guest in rax."""

    AGAIN = -11
    INVAL = -22
    NOSYS = -38
    IO = -5
    ACCES = -13  # the guest owner refused (key release)


# Attestation and key release (docs/attestation.md), mirrored in guests/include/tvmm.h.
REPORT_SIZE = 0x4A0  # an SEV-SNP ATTESTATION_REPORT
REPORT_DATA_SIZE = 64
NONCE_SIZE = 32  # the key broker's challenge
GUEST_KEY_SIZE = 97  # the guest's P-384 public key, SEC1 uncompressed
KEY_EVIDENCE_SIZE = GUEST_KEY_SIZE + REPORT_SIZE  # what HC_KEY_REQUEST writes: key ‖ report
# Messages on the owner channel (Device.OWNER / HC_OWNER_EXCHANGE), guest → owner:
OWNER_CHALLENGE = b"TVKC"  # answer: the nonce (NONCE_SIZE bytes)
OWNER_EVIDENCE = b"TVKE"  # ‖ nonce ‖ key ‖ report; answer: a wrapped secret ("TVKR...")
# (host → owner) after an evidence message: the statement and receipt of the build the
# report measures, for a broker that releases by transparency policy (tvmm.owner.by_receipt)
OWNER_RECEIPT = b"TVKT"
OWNER_REFUSED = b"TVKX"  # an answer: the owner refused; ASCII reason follows
# host → owner, before a launch: a launch secret for one launch (answer "TVLS..." or TVKX)
OWNER_LAUNCH_SECRET = b"TVKL"
OWNER_BUFFER = 4352  # the runtime's exchange buffer: the largest wrapped secret fits


# The launch ABI's initial vCPU, set and measured at FINALIZE (the TEE, shim.launch) and
# planned by the host and the owner (tvmm.launch_plan).
INITIAL_RFLAGS = 0x2  # only the always-one bit: interrupts off, as at reset


# The x87 control word and MXCSR at launch: Linux's for a new process (every exception
# masked, round to nearest, 64-bit x87 precision); a static program assumes them.
INITIAL_FCW = 0x37F
INITIAL_MXCSR = 0x1F80


def initial_registers(entry: int, memory_size: int) -> dict[str, int]:
    """RIP at the entry, the stack at the top of memory; every register not named is 0."""
    return {"rip": entry, "rsp": memory_size, "rflags": INITIAL_RFLAGS}
