"""The guest's hypercalls, as the TEE sees them.

Below ``shim`` nothing in the TEE serves a hypercall: it leaves as a HYPERCALL exit with
the guest's number and arguments (the registers it exposes), and the host answers.  At
``shim`` the shim serves what it can itself and turns I/O into device requests on bounce
slots, so that the host never sees a private address or hands the guest unchecked data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shim.bounce import BadBuffer, BounceBuffers, NoSlots
from shim.vm import BounceRecord, Vm
from tvmm.abi.guest import GuestError, Hypercall
from tvmm.abi.types import Device, Field

_DEVICES = {
    Hypercall.CONSOLE_WRITE: Device.CONSOLE,
    Hypercall.BLOCK_READ: Device.BLOCK_READ,
    Hypercall.BLOCK_WRITE: Device.BLOCK_WRITE,
    Hypercall.INPUT_READ: Device.INPUT,
}


@dataclass(frozen=True, slots=True)
class Served:
    """Answered inside the TEE: the guest gets ``value`` in rax and runs on."""

    value: int
    note: str = ""


@dataclass(frozen=True, slots=True)
class Forward:
    """Needs the host: exit with these candidate fields (the view filters them)."""

    fields: dict[Field, int] = field(default_factory=dict)
    record: BounceRecord | None = None


@dataclass(frozen=True, slots=True)
class Shutdown:
    status: int


Outcome = Served | Forward | Shutdown


def handle(vm: Vm, bounce: BounceBuffers | None, nr: int, a0: int, a1: int, a2: int) -> Outcome:
    if nr == Hypercall.EXIT:
        return Shutdown(_signed32(a0))
    guest_fields = {Field.NR: nr, Field.ARG0: a0, Field.ARG1: a1, Field.ARG2: a2}
    if not vm.features.shim_io:
        return Forward(guest_fields)
    if nr == Hypercall.IRQ_REGISTER:
        if not 32 <= a0 <= 255:
            return Served(GuestError.INVAL, "vector 0-31 cannot be registered")
        vm.vcpus[0].registered.add(a0)
        return Served(0, f"vector {a0:#x} registered")
    device = _DEVICES.get(nr) if nr in Hypercall._value2member_map_ else None
    if device is None or bounce is None:
        return Served(GuestError.NOSYS, f"hypercall {nr} not served")
    private_gpa, length, sector = (a1, a2, a0) if device in (Device.BLOCK_READ,
                                                              Device.BLOCK_WRITE) else (a0, a1, 0)
    try:
        record = bounce.start(device, private_gpa, length, sector)
    except NoSlots:
        return Served(GuestError.AGAIN, "no free bounce slot: retry")
    except BadBuffer as exc:
        return Served(GuestError.INVAL, str(exc))
    return Forward(
        {Field.DEVICE: device, Field.SLOT: record.slot_gpa, Field.LENGTH: length,
         Field.ARG0: sector},
        record,
    )


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
