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


class GuestError(IntEnum):
    """Negative results returned to the guest in rax."""

    AGAIN = -11
    INVAL = -22
    NOSYS = -38
    IO = -5
