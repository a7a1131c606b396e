"""The state the TEE keeps per VM and per vCPU; the host sees none of it directly."""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from shim.levels import Features
from shim.sealing import StateSealer
from tvmm.abi.launch_secret import LaunchSecret
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
    call: tuple[int, int, int, int] | None = None  # a forwarded hypercall: nr, a0, a1, a2


CONSOLE_LIMIT = 64 << 10  # console bytes the TEE keeps per VM for the judge (then a prefix)
INPUT_LIMIT = 4096  # input reads it keeps


@dataclass(slots=True)
class GuestIo:
    """What the TEE itself saw of the guest's I/O, for the judge: the bytes the guest wrote
    to its console, the input it received, and the host's requests the TEE refused."""

    console: bytearray = field(default_factory=bytearray)
    console_cut: bool = False  # more than CONSOLE_LIMIT bytes were written
    inputs: list[bytes] = field(default_factory=list)
    refusals: list[dict] = field(default_factory=list)
    secret_sha256: str = ""  # of the secret the TEE put in the secrets page (whose VM it is)

    def installed(self, secret: bytes) -> None:
        self.secret_sha256 = hashlib.sha256(secret).hexdigest()

    def wrote(self, data: bytes) -> None:
        room = CONSOLE_LIMIT - len(self.console)
        self.console += data[:room]
        self.console_cut = self.console_cut or len(data) > room

    def received(self, data: bytes) -> None:
        if len(self.inputs) < INPUT_LIMIT:
            self.inputs.append(bytes(data))


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
    io: GuestIo = field(default_factory=GuestIo)
    # Launch secrets opened at ADD_PAGES, (secrets page GPA, secret and bound digest): held
    # here, never in guest memory, until FINALIZE finds the launch digest they are bound to
    pending_secrets: list[tuple[int, LaunchSecret]] = field(default_factory=list)
