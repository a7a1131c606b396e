"""The honest hypervisor: launches a guest image and serves its exits, through the ABI only.

It does what a well-behaved host does: maps every page up front (and on demand after a
fault), serves console, block and input requests through the shared region, relays the
guest's key-release messages to and from the guest owner (``Devices.owner``, its network
link to the owner's key broker), optionally arms a timer quantum and delivers timer
ticks, and hands back the register state exactly as it got it.  Attacks subclass it and
misbehave in one place.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tvmm.abi.guest import (
    OWNER_EVIDENCE,
    OWNER_RECEIPT,
    PAGE_SIZE,
    SHARED_BASE,
    SHARED_SIZE,
    Hypercall,
    exit_status,
)
from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import (
    DEFAULT_POLICY,
    Device,
    ExitReason,
    Field,
    InjectMode,
    KillReason,
    Level,
    Result,
)
from tvmm.guestimage import GuestImage
from tvmm.host.client import HostCallError, PlatformClient
from tvmm.host.devices import BlockDevice, Console, InputDevice
from tvmm.launch_plan import plan_launch

IO_REPLY = struct.Struct("<II")  # the naive runtime driver's reply header: len, status
DEBUG_PORT = 0xE9
E_NOSYS = -38
E_INVAL = -22
E_IO = -5
# Bound once: on Python 3.11 an Enum class attribute costs ~160 ns and ``.name`` more, and
# the run loop asks for them at every exit.
_REASON_NAMES = {r: r.name.lower() for r in ExitReason}
_TIMER, _NPF, _HYPERCALL, _IO_PORT, _HLT = (
    ExitReason.TIMER, ExitReason.NPF, ExitReason.HYPERCALL, ExitReason.IO_PORT, ExitReason.HLT)
_SHUTDOWN, _FAULT, _KILLED = ExitReason.SHUTDOWN, ExitReason.FAULT, ExitReason.KILLED
_RETIRED = Field.RETIRED


def kill_reason_text(code: int | None) -> str:
    """A KILLED exit's reason in words ("step policy (reason 2)"): what a user reads."""
    try:
        return f"{KillReason(code).name.lower().replace('_', ' ')} (reason {code})"
    except ValueError:
        return f"unknown reason {code}"


@dataclass
class Devices:
    console: Console = field(default_factory=Console)
    block: BlockDevice = field(default_factory=lambda: BlockDevice(None))
    input: InputDevice = field(default_factory=InputDevice)
    # The host's link to the guest owner's key broker: message in, answer out (bytes the
    # host may read and change: the protocol is safe against it).  None: no link.
    owner: Callable[[bytes], bytes] | None = None
    # What the host presents with the guest's evidence for a broker that releases by
    # transparency policy: a statement and its receipt (tvmm.transparency.bundle).
    receipt: bytes | None = None


@dataclass
class RunResult:
    how: str  # "exit", "fault", "killed", "halted", "limit", "refused"
    status: int | None
    exits: Counter
    wall_s: float
    retired: int  # instructions counted by timer exits
    entries: int
    detail: str = ""
    last: ExitRecord | None = None


class HonestHypervisor:
    def __init__(self, client: PlatformClient, devices: Devices | None = None, *,
                 quantum: int = 0, tick_vector: int | None = None, tick_every: int = 1) -> None:
        self.client = client
        self.devices = devices or Devices()
        self.quantum = quantum
        self.tick_vector = tick_vector
        self.tick_every = max(1, tick_every)
        self.registered: set[int] = set()
        self.state = b""
        self.vm = 0
        self.exits: Counter = Counter()
        self.retired = 0
        self.entries = 0
        self.run_result: RunResult | None = None

    # -- launch ----------------------------------------------------------------------------
    def launch(self, image: GuestImage, level: Level, memory_size: int, *,
               secret_blob: bytes = b"", policy: int = DEFAULT_POLICY) -> bytes:
        """Create, add pages (boot info, secrets, image: tvmm.launch_plan), finalize, map;
        the launch digest.  An empty ``secret_blob`` leaves the secrets page empty, and the
        guest asks its owner for the secret (attested key release) when it needs it."""
        c = self.client
        plan = plan_launch(image, memory_size, secret_blob=secret_blob)
        self.vm = c.create_vm(level, memory_size, SHARED_BASE, SHARED_SIZE, policy)
        for step in plan.steps:
            c.add_pages(self.vm, step.gpa, step.page_type, step.count, step.data,
                        step.executable)
        digest = c.finalize(self.vm, plan.entry)
        c.map(self.vm, 0, memory_size // PAGE_SIZE)
        return digest

    # -- running ---------------------------------------------------------------------------
    def run(self, max_exits: int | None = None) -> RunResult:
        start = time.perf_counter()
        how, status, detail, last = "limit", None, "", None
        exits = self.exits
        count = sum(exits.values())
        while max_exits is None or count < max_exits:
            reply = self.enter()
            if reply.exit is None:
                how, detail = "refused", f"{reply.result.name} ({reply.operand})"
                break
            rec = last = reply.exit
            reason = rec.reason
            exits[_REASON_NAMES[reason]] += 1
            count += 1
            self.state = rec.state
            if reason == _SHUTDOWN:
                how, status = "exit", exit_status(rec.get(Field.STATUS, 0))
                break
            if reason == _FAULT:
                rip = rec.get(Field.RIP)  # below shim: where the guest faulted
                how, detail = "fault", f"vector {rec.get(Field.VECTOR)}" + (
                    f" at {rip:#x}" if rip is not None else "")
                break
            if reason == _KILLED:
                how, detail = "killed", kill_reason_text(rec.get(Field.KILL_REASON))
                break
            if not self.on_exit(rec):
                how = "halted"
                break
        self.run_result = RunResult(how, status, self.exits, time.perf_counter() - start,
                                    self.retired, self.entries, detail, last)
        return self.run_result

    def enter(self) -> Reply:
        self.entries += 1
        return self.client.enter(self.vm, self.quantum, self.state)

    def on_exit(self, rec: ExitRecord) -> bool:
        """Serve one exit; False when there is nothing more to run."""
        reason = rec.reason
        if reason == _TIMER:
            # At shim the count is not shown: the quantum asked for is a lower bound.
            self.retired += rec.get(_RETIRED, self.quantum) or 0
            if self.tick_vector is not None and self.exits["timer"] % self.tick_every == 0:
                self.tick()
            return True
        if reason == _NPF:
            gpa = rec.get(Field.GPA)
            page = (gpa & ~0xFFF) if gpa is not None else (rec.get(Field.GPA_PAGE, 0) << 12)
            self.client.map(self.vm, page)
            return True
        if reason == _HYPERCALL:
            self.client.complete_io(self.vm, self.serve_hypercall(rec))
            return True
        if reason == _IO_PORT:
            if rec.get(Field.PORT) == DEBUG_PORT and rec.get(Field.VALUE) is not None:
                self.devices.console.write(bytes([rec.get(Field.VALUE) & 0xFF]))
            self.client.complete_io(self.vm, 0xFFFFFFFF)
            return True
        if reason == _HLT:
            if self.tick_vector is not None and self.tick_vector in self.registered:
                self.tick()
                return True
            return False
        return True

    def tick(self) -> None:
        """Post a timer tick as an honest hypervisor does: a virtual interrupt, which the
        CPU delivers once the guest has interrupts enabled (never into its handler).
        Event injection would deliver it at the next entry whatever the guest's state: a
        tick per short quantum then nests handlers until the stack runs into the image."""
        assert self.tick_vector is not None
        self.client.inject(self.vm, self.tick_vector, mode=InjectMode.VIRTUAL)

    # -- devices ---------------------------------------------------------------------------
    def serve_hypercall(self, rec: ExitRecord) -> int:
        device = rec.get(Field.DEVICE)
        if device is not None:
            return self.serve_device(Device(device), rec.get(Field.SLOT, 0),
                                     rec.get(Field.LENGTH, 0), rec.get(Field.ARG0, 0))
        nr = rec.get(Field.NR)
        a0, a1, a2 = (rec.get(Field.ARG0, 0), rec.get(Field.ARG1, 0), rec.get(Field.ARG2, 0))
        return self.serve_guest_call(nr, a0, a1, a2)

    def serve_device(self, device: Device, slot: int, length: int, sector: int) -> int:
        """A shim-bounced request: data sits at ``slot``; the answer is a length."""
        c, vm = self.client, self.vm
        if device == Device.CONSOLE:
            self.devices.console.write(c.read_shared(vm, slot, length))
            return length
        if device == Device.BLOCK_WRITE:
            return self.devices.block.write(sector, c.read_shared(vm, slot, length))
        if device == Device.OWNER:  # ``sector`` carries the message length
            answer = self.relay_owner(c.read_shared(vm, slot, min(sector, length)))
            if answer is None:
                return E_IO
            answer = answer[:length]
            if answer:
                c.write_shared(vm, slot, answer)
            return len(answer)
        if device == Device.BLOCK_READ:
            data = self.devices.block.read(sector, length)
        else:
            data = self.devices.input.read_line(length)
        if data:
            c.write_shared(vm, slot, data)
        return len(data)

    def serve_guest_call(self, nr: int | None, a0: int, a1: int, a2: int) -> int:
        """A hypercall below the shim: arguments are the guest's registers."""
        c, vm = self.client, self.vm
        if nr == Hypercall.CONSOLE_WRITE:
            if not self._in_shared(a0, a1):
                return E_INVAL
            self.devices.console.write(c.read_shared(vm, a0, a1))
            return a1
        if nr in (Hypercall.INPUT_READ, Hypercall.BLOCK_READ):
            capacity = a2
            if not self._in_shared(a1, IO_REPLY.size + capacity):
                return E_INVAL
            if nr == Hypercall.INPUT_READ:
                data = self.devices.input.read_line(capacity)
            else:
                data = self.devices.block.read(a0, capacity)
            c.write_shared(vm, a1, IO_REPLY.pack(len(data), 0) + data)
            return len(data)
        if nr == Hypercall.BLOCK_WRITE:
            if not self._in_shared(a1, a2):
                return E_INVAL
            return self.devices.block.write(a0, c.read_shared(vm, a1, a2))
        if nr == Hypercall.IRQ_REGISTER:
            self.registered.add(a0)
            return 0
        if nr == Hypercall.OWNER_EXCHANGE:  # a0 = slot, a1 = message length, a2 = capacity
            if a1 > a2 or not self._in_shared(a0, IO_REPLY.size + a2):
                return E_INVAL
            answer = self.relay_owner(c.read_shared(vm, a0, a1))
            if answer is None:
                return E_IO
            answer = answer[:a2]
            c.write_shared(vm, a0, IO_REPLY.pack(len(answer), 0) + answer)
            return len(answer)
        return E_NOSYS

    def relay_owner(self, message: bytes) -> bytes | None:
        """Carry a guest's message to its owner and bring back the answer (None: no link).
        Everything here is public or sealed to the guest: the nonce, the guest's public
        key, the signed report, the wrapped secret."""
        if self.devices.owner is None:
            return None
        if self.devices.receipt is not None and message.startswith(OWNER_EVIDENCE):
            message = message + OWNER_RECEIPT + self.devices.receipt
        return self.devices.owner(message)

    @staticmethod
    def _in_shared(gpa: int, size: int) -> bool:
        return SHARED_BASE <= gpa and gpa + size <= SHARED_BASE + SHARED_SIZE

    def destroy(self) -> None:
        try:
            self.client.destroy(self.vm)
        except HostCallError as exc:
            if exc.result != Result.NO_VM:
                raise
