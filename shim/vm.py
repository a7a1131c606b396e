"""The state the TEE keeps per VM and per vCPU; the host sees none of it directly."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from shim.levels import Features
from shim.sealing import StateSealer
from tvmm.abi.types import Device, KillReason, Level
from tvmm.hw.measurement import LaunchDigest
from tvmm.hw.memory import GuestMemory
from tvmm.hw.vcpu import Vcpu
from tvmm.hw.vmsa import DeterministicVmsaCipher
from tvmm.hw.writeback import WriteBackBuffer


class VmState(IntEnum):
    CREATED = 1  # pages may be added; nothing runs
    RUNNABLE = 2  # finalized: the launch digest is fixed
    DEAD = 3  # terminated: the guest exited, crashed, or the TEE killed it


class PendingKind(IntEnum):
    HYPERCALL = 1  # forwarded hypercall: the host's value goes to rax
    PORT_IN = 2  # the host's value goes to al/ax/eax
    PORT_OUT = 3
    DEVICE = 4  # a shim-bounced I/O request: the value is checked against the record


@dataclass(slots=True)
class BounceRecord:
    """The shim's own record of an I/O request, against which the host's answer is checked."""

    device: Device
    slot_gpa: int
    nslots: int
    length: int  # bytes the guest asked for (read) or gave (write)
    private_gpa: int  # the guest's private buffer
    sector: int = 0


@dataclass(slots=True)
class Pending:
    kind: PendingKind
    advance: int  # bytes of RIP to step over when the request completes
    size: int = 0
    record: BounceRecord | None = None


@dataclass(slots=True)
class VcpuContext:
    index: int
    rip: int = 0
    seq: int = 0  # exits so far; the next exit record gets this number
    handed_out: bytes = b""  # the state the host got at the last exit
    pending: Pending | None = None
    completion: int | None = None  # the host's answer, applied at the next entry
    irqs: deque[int] = field(default_factory=deque)  # events (and the shim's doorbells)
    virqs: deque[int] = field(default_factory=deque)  # virtual interrupts: until IF = 1
    registered: set[int] = field(default_factory=set)
    retired: int = 0  # instructions counted by the timer (timer exits only)
    entries: int = 0


@dataclass(slots=True)
class Vm:
    id: int
    level: Level
    features: Features
    vcpu: Vcpu
    memory: GuestMemory
    policy: int
    vmsa_cipher: DeterministicVmsaCipher
    sealer: StateSealer
    digest: LaunchDigest = field(default_factory=LaunchDigest)
    state: VmState = VmState.CREATED
    entry: int = 0
    added: bytearray = field(default_factory=bytearray)  # pages measured at launch
    code_ranges: list[tuple[int, bytes]] = field(default_factory=list)
    vcpus: list[VcpuContext] = field(default_factory=lambda: [VcpuContext(0)])
    exit_status: int | None = None
    kill_reason: KillReason | None = None
    end_detail: str = ""
    launch_digest: bytes = b""
    policies: object | None = None  # shim.policies.PolicySet at the shim level
    view: object = None  # shim.views.View of this level, fixed at creation
    bounce: object | None = None  # shim.bounce.BounceBuffers at the shim level
    writeback: WriteBackBuffer | None = None  # created by the first DROP_WRITES (CacheWarp)
