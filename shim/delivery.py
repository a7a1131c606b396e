"""Virtual interrupt delivery through the guest's IDT, as the CPU would do it.

Unicorn does not deliver interrupts itself: the TEE builds the 64-bit interrupt frame
(SS, RSP, RFLAGS, CS, RIP) on the guest's stack aligned to 16, clears IF, and jumps to the
gate's handler; the guest returns with ``iretq``.  No error code is pushed (the runtime's
stubs push their own), since only virtual interrupts and the guest's own ``int n`` arrive
this way.
"""

from __future__ import annotations

import struct

from tvmm.hw.memory import GuestMemory
from tvmm.hw.vcpu import IF_FLAG, RFLAGS, RIP, RSP, Vcpu

CODE_SELECTOR = 0x08
STACK_SELECTOR = 0x10
_FRAME = struct.Struct("<5Q")
_GATE = struct.Struct("<HHBBHII")


def handler_of(vcpu: Vcpu, memory: GuestMemory, vector: int) -> int | None:
    base, limit = vcpu.idt_base()
    if vector * 16 + 15 > limit or not memory.contains(base + vector * 16, 16):
        return None
    off0, _sel, _ist, type_attr, off1, off2, _zero = _GATE.unpack(
        memory.read(base + vector * 16, 16)
    )
    if not type_attr & 0x80:
        return None
    return off0 | (off1 << 16) | (off2 << 32)


def deliver(vcpu: Vcpu, memory: GuestMemory, vector: int, return_rip: int | None = None) -> bool:
    """Deliver ``vector`` now; False if the guest has no present gate for it."""
    handler = handler_of(vcpu, memory, vector)
    if handler is None:
        return False
    regs = list(vcpu.read_regs())
    rip = regs[RIP] if return_rip is None else return_rip
    rsp = regs[RSP] & ~0xF
    frame_at = rsp - _FRAME.size
    if not memory.contains(frame_at, _FRAME.size):
        return False
    memory.write(frame_at, _FRAME.pack(rip, CODE_SELECTOR, regs[RFLAGS], regs[RSP], STACK_SELECTOR))
    regs[RSP] = frame_at
    regs[RFLAGS] &= ~IF_FLAG
    regs[RIP] = handler
    vcpu.write_regs(regs)
    return True


def interrupts_enabled(vcpu: Vcpu) -> bool:
    return bool(vcpu.read_regs()[RFLAGS] & IF_FLAG)
