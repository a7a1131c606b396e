"""The guest's hypercalls, as the TEE sees them.

Below ``shim`` nothing in the TEE serves a hypercall: it leaves as a HYPERCALL exit with
the guest's number and arguments (the registers it exposes), and the host answers.  At
``shim`` the shim serves what it can itself and turns I/O into device requests on bounce
slots, so that the host never sees a private address or hands the guest unchecked data.

Attestation (HC_ATTEST, HC_KEY_REQUEST, HC_SECRET_KEY) is the secure processor's business
and is served inside at every level (shim.attestation); HC_OWNER_EXCHANGE, the guest's
message to its owner, is I/O like any other (docs/attestation.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shim import attestation
from shim.bounce import BadBuffer, BounceBuffers, NoSlots
from shim.vm import BounceRecord, Vm
from tvmm.abi.guest import GuestError, Hypercall
from tvmm.abi.types import Device, Field

if TYPE_CHECKING:
    from shim.platform import Tee

_SECURE_PROCESSOR = frozenset({Hypercall.ATTEST, Hypercall.KEY_REQUEST, Hypercall.SECRET_KEY})
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
    yield_to_host: bool = False  # back-pressure: let the host run before the guest retries


@dataclass(frozen=True, slots=True)
class Forward:
    """Needs the host: exit with these candidate fields (the view filters them)."""

    fields: dict[Field, int] = field(default_factory=dict)
    record: BounceRecord | None = None


@dataclass(frozen=True, slots=True)
class Shutdown:
    status: int  # the guest's 32-bit exit status, unsigned (tvmm.abi.guest.exit_status)


Outcome = Served | Forward | Shutdown


def handle(vm: Vm, bounce: BounceBuffers | None, nr: int, a0: int, a1: int, a2: int,
           tee: Tee | None = None) -> Outcome:
    if nr == Hypercall.EXIT:
        return Shutdown(a0 & 0xFFFFFFFF)
    if nr in _SECURE_PROCESSOR and tee is not None:
        return Served(*attestation.serve(tee, vm, nr, a0, a1))
    guest_fields = {Field.NR: nr, Field.ARG0: a0, Field.ARG1: a1, Field.ARG2: a2}
    if not vm.features.shim_io:
        return Forward(guest_fields)
    if nr == Hypercall.OWNER_EXCHANGE and bounce is not None:
        return _owner_exchange(vm, bounce, a0, a1, a2)
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
        return Served(GuestError.AGAIN, "no free bounce slot: retry", yield_to_host=True)
    except BadBuffer as exc:
        return Served(GuestError.INVAL, str(exc))
    return Forward(
        {Field.DEVICE: device, Field.SLOT: record.slot_gpa, Field.LENGTH: length,
         Field.ARG0: sector},
        record,
    )


def _owner_exchange(vm: Vm, bounce: BounceBuffers, gpa: int, length: int,
                    capacity: int) -> Outcome:
    """rdi = private buffer, rsi = message length, rdx = its capacity: the message goes out
    on bounce slots (the host gets slot, capacity and, as ARG0, the message length); the
    owner's answer comes back, checked and copied once, like any device read."""
    if not 0 <= length <= capacity:
        return Served(GuestError.INVAL, "message longer than its buffer")
    try:
        record = bounce.start(Device.OWNER, gpa, capacity)
    except NoSlots:
        return Served(GuestError.AGAIN, "no free bounce slot: retry", yield_to_host=True)
    except BadBuffer as exc:
        return Served(GuestError.INVAL, str(exc))
    vm.memory.write(record.slot_gpa, vm.memory.read(gpa, length))
    return Forward({Field.DEVICE: Device.OWNER, Field.SLOT: record.slot_gpa,
                    Field.LENGTH: capacity, Field.ARG0: length}, record)

