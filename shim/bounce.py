"""Bounce buffers at the ``shim`` level: a SWIOTLB-style slot allocator over the shared
region, and the copy-once, check-everything rules for data crossing it.

- Data going out is copied from the guest's private buffer into slots; the host gets the
  slot and the length, never a private address.
- Data coming in is read from the slots exactly once, after the host's length was checked
  against the shim's own record of the request; what the host changes in the slots after
  that is never read.  Slots are zeroed when freed.
- No free slots is back-pressure (the guest is told to retry), never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

from shim.vm import BounceRecord
from tvmm.abi.guest import SLOT_SIZE
from tvmm.abi.types import Device
from tvmm.hw.memory import GuestMemory

MAX_IO = 4 * SLOT_SIZE


class NoSlots(Exception):
    """Every slot is in use: back-pressure."""


class BadBuffer(Exception):
    """The guest's buffer is not private guest memory of a legal size."""


@dataclass(frozen=True, slots=True)
class Completion:
    guest_value: int  # what the guest gets in rax
    accepted: bool  # False when the host's answer was refused
    why: str = ""
    data: bytes = b""


class BounceBuffers:
    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self.base = memory.shared.start
        self.nslots = len(memory.shared) // SLOT_SIZE
        self.used = bytearray(self.nslots)

    def _allocate(self, nslots: int) -> int:
        run = 0
        for i in range(self.nslots):
            run = run + 1 if not self.used[i] else 0
            if run == nslots:
                first = i - nslots + 1
                self.used[first : i + 1] = b"\x01" * nslots
                return self.base + first * SLOT_SIZE
        raise NoSlots()

    def free(self, record: BounceRecord) -> None:
        first = (record.slot_gpa - self.base) // SLOT_SIZE
        self.memory.write(record.slot_gpa, bytes(record.nslots * SLOT_SIZE))
        self.used[first : first + record.nslots] = bytes(record.nslots)

    def in_use(self) -> int:
        return sum(self.used)

    def start(self, device: Device, private_gpa: int, length: int, sector: int = 0) -> BounceRecord:
        """Open a request; for writes, copy the guest's data out now."""
        if not 0 < length <= MAX_IO:
            raise BadBuffer(f"length {length} not in 1..{MAX_IO}")
        if not self.memory.contains(private_gpa, length) or self._touches_shared(private_gpa, length):
            raise BadBuffer(f"buffer {private_gpa:#x}+{length} is not private guest memory")
        nslots = -(-length // SLOT_SIZE)
        slot = self._allocate(nslots)
        record = BounceRecord(device, slot, nslots, length, private_gpa, sector)
        if device in (Device.CONSOLE, Device.BLOCK_WRITE):
            self.memory.write(slot, self.memory.read(private_gpa, length))
        return record

    def _touches_shared(self, gpa: int, length: int) -> bool:
        shared = self.memory.shared
        return gpa < shared.stop and gpa + length > shared.start

    def complete(self, record: BounceRecord, host_value: int) -> Completion:
        """Check the host's answer against the record; copy incoming data once."""
        try:
            if host_value < 0:
                return Completion(host_value if host_value >= -4095 else -5, True, "host error")
            if host_value > record.length:
                return Completion(-5, False, f"host length {host_value} > requested {record.length}")
            if record.device == Device.CONSOLE and host_value < record.length:
                # The console takes a write whole or fails it: a short count would have the
                # guest write the tail again (glibc does), so the host could repeat any
                # suffix of the guest's output.
                return Completion(-5, False, f"host took {host_value} of {record.length} "
                                             "console bytes (whole or an error)")
            if record.device in (Device.CONSOLE, Device.BLOCK_WRITE):
                return Completion(host_value, True)
            data = self.memory.read(record.slot_gpa, host_value)  # the one fetch
            self.memory.write(record.private_gpa, data)
            return Completion(host_value, True, data=data)
        finally:
            self.free(record)
