"""The vCPU: the only module that imports Unicorn.

It runs guest code until something stops it and says what: the instruction timer, a
hypercall (`vmcall`/`vmmcall`, which Unicorn reports as an invalid instruction with RIP
still on it), port I/O, HLT, a nested page fault (a page whose protection the host removed)
or a guest fault.  All hooks are installed before the first run and narrowed by address:
Unicorn 2 may ignore hooks added after code was translated.  Nothing runs per instruction
on the compute path; the timer is Unicorn's instruction count, armed only when asked.

Registers are read and written in one batch through libunicorn's public C call
``uc_reg_read_batch``: the Python binding's own batch read costs ~75 µs for 18 registers,
the C call ~0.5 µs, and every exit needs them.  The C functions are called without the
binding's ``argtypes``: our arguments are built once, of the right C types, and checking
them again at every call cost more than the call (1.1 µs against 0.5 µs for a batch
read).  The batch read at a stop is kept until the registers change (a run, a write, a
restore): the stop's RIP, the exit path's hand-over and a hypercall's arguments then share
one read.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

import unicorn as uc_mod
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib


def _unchecked(fn: Callable[..., int]) -> Callable[..., int]:
    """libunicorn's ``fn`` without argument conversion (see the module docstring)."""
    return ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.cast(fn, ctypes.c_void_p).value)


_READ_BATCH = _unchecked(uclib.uc_reg_read_batch)
_WRITE_BATCH = _unchecked(uclib.uc_reg_write_batch)
_READ_ONE = _unchecked(uclib.uc_reg_read)
_WRITE_ONE = _unchecked(uclib.uc_reg_write)
_EMU_START = _unchecked(uclib.uc_emu_start)

_TLB_FLUSH = uc_mod.unicorn_const.UC_CTL_TLB_FLUSH
PAGE = 0x1000
REGION = 0x200000  # Unicorn mapping granule
NO_UNTIL = 0xFFFF_FFFF_FFFF_FFFF

REG_NAMES: tuple[str, ...] = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
)
_REG_IDS = (
    X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX,
    X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_RBP, X.UC_X86_REG_RSP,
    X.UC_X86_REG_R8, X.UC_X86_REG_R9, X.UC_X86_REG_R10, X.UC_X86_REG_R11,
    X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14, X.UC_X86_REG_R15,
    X.UC_X86_REG_RIP, X.UC_X86_REG_EFLAGS,
)
NREGS = len(REG_NAMES)
_REGS = struct.Struct(f"<{NREGS}Q")
SLOT = 16  # the save area: each register's value, then a tag word its reader owns
_SLOTTED = struct.Struct("<" + "Q8x" * NREGS)
RAX, RBX, RCX, RDX, RSI, RDI, RBP, RSP = range(8)
RIP, RFLAGS = 16, 17
_RIP_SLOT = 2 * RIP  # RIP's value in the save area (c_uint64 words, two per slot)
IF_FLAG = 1 << 9

# The rest of the save area, after the general registers: the FS and GS bases, SYSCALL's
# MSRs, then the x87/SSE state as FXSAVE (64-bit form) lays it out in 512 bytes, eight
# bytes a slot.  A static Linux program keeps its thread pointer in FS and its string
# functions' data in XMM registers: a state without them does not resume such a program.
EXT_NAMES: tuple[str, ...] = ("fs_base", "gs_base", "star", "lstar", "fmask")
NEXT = len(EXT_NAMES)
FXSAVE_SIZE = 512
NFX = FXSAVE_SIZE // 8
NSLOTS = NREGS + NEXT + NFX  # every slot of the save area
FX_FIRST = NREGS + NEXT  # the first FXSAVE slot
# FXSAVE offsets (Intel SDM vol. 1, table 10-2; AMD APM vol. 5, FXSAVE): FCW 0, FSW 2,
# abridged FTW 4, FOP 6, FIP 8, FDP 16, MXCSR 24, MXCSR_MASK 28, ST0-7 at 32 + 16i,
# XMM0-15 at 160 + 16i; 416-511 reserved (zero).
FX_FCW, FX_FSW, FX_FTW, FX_FOP, FX_FIP, FX_FDP, FX_MXCSR, FX_MXCSR_MASK = 0, 2, 4, 6, 8, 16, 24, 28
FX_ST, FX_XMM = 32, 160
MXCSR_MASK = 0xFFFF  # the MXCSR bits the model supports (FXSAVE's MXCSR_MASK, as QEMU's)

_EXT_IDS = (X.UC_X86_REG_FS_BASE, X.UC_X86_REG_GS_BASE)
_FX_IDS: tuple[tuple[int, int], ...] = (  # (Unicorn register, FXSAVE offset); FSW before ST
    (X.UC_X86_REG_FPCW, FX_FCW), (X.UC_X86_REG_FPSW, FX_FSW), (X.UC_X86_REG_FOP, FX_FOP),
    (X.UC_X86_REG_FIP, FX_FIP), (X.UC_X86_REG_FDP, FX_FDP), (X.UC_X86_REG_MXCSR, FX_MXCSR),
    *((getattr(X, f"UC_X86_REG_ST{i}"), FX_ST + 16 * i) for i in range(8)),
    *((getattr(X, f"UC_X86_REG_XMM{i}"), FX_XMM + 16 * i) for i in range(16)),
)

_W_MSRS = slice(2 * (NREGS + 2), 2 * FX_FIRST, 2)  # the value words of STAR, LSTAR, FMASK
_FTW_CLEAR = ~(0xFFFF << (8 * FX_FTW)) & 0xFFFF_FFFF_FFFF_FFFF  # FTW and its reserved byte
_ABRIDGED: dict[int, int] = {}  # x87 tag word -> FXSAVE word 0's tag byte, shifted in place

_VMCALL = (b"\x0f\x01\xc1", b"\x0f\x01\xd9")  # vmcall, vmmcall

# SYSCALL's model-specific registers (AMD64 APM vol. 2, 6.1.1).
MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_FMASK = 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000084
MSR_FS_BASE, MSR_GS_BASE = 0xC0000100, 0xC0000101
_EXT_MSRS = (MSR_STAR, MSR_LSTAR, MSR_FMASK)  # EXT_NAMES after the two bases
# The extended buffer: the FXSAVE image, the MSRs (uc_x86_msr, 16 bytes each), the full tag word.
_EXT_FTW = FXSAVE_SIZE + 16 * len(_EXT_MSRS)
_EXT_RAW = _EXT_FTW + 8
EFER_SCE = 1
# Prefixes that may precede an instruction's opcode: legacy ones and REX (0x40-0x4f).
_PREFIXES = frozenset(b"\x26\x2e\x36\x3e\x64\x65\x66\x67\xf0\xf2\xf3") | frozenset(range(0x40, 0x50))


class _Msr(ctypes.Structure):
    """libunicorn's uc_x86_msr: the MSR's index, then its value."""

    _fields_ = (("rid", ctypes.c_uint32), ("value", ctypes.c_uint64))


class StopKind(IntEnum):
    TIMER = 1
    HYPERCALL = 2
    PORT_OUT = 3
    PORT_IN = 4
    HLT = 5
    NPF = 6
    SOFT_INT = 7  # the guest's own `int n`: delivered through its IDT by the TEE
    EXCEPTION = 8  # an exception raised by guest code (#DE, #UD, int3, ...)
    FAULT = 9  # access outside guest memory or an unexecutable instruction


_TIMER = StopKind.TIMER  # bound once: an Enum class attribute costs ~160 ns on Python 3.11


class Access(IntEnum):
    READ = 1
    WRITE = 2
    FETCH = 4


@dataclass(slots=True)
class Stop:
    kind: StopKind
    rip: int
    addr: int = 0
    access: Access = Access.READ
    port: int = 0
    size: int = 0
    value: int = 0
    vector: int = 0
    detail: str = ""


CpuidServer = Callable[[int, int], tuple[int, int, int, int]]

# A model-specific CPUID leaf: "code was written at [RBX, RBX + RCX)" — the loader's
# notice, as an instruction-cache flush is on other architectures, so that the RDTSCs of
# code loaded after launch (a Linux program the personality copies into place) are
# trapped like the measured code's.  EAX answers how many new traps, or CODE_LOADED_REFUSED.
CODE_LOADED_LEAF = 0x4000_0F00
CODE_LOADED_REFUSED = 0xFFFF_FFFF
MAX_LOADED_TRAPS = 4096  # a guest cannot make the vCPU hook without bound
_RDTSC = b"\x0f\x31"


class Vcpu:
    """One x86-64 vCPU over guest-physical memory [0, ram_size), identity mapped."""

    def __init__(self, ram_size: int, cpuid: CpuidServer) -> None:
        if ram_size % PAGE or ram_size <= 0:
            raise ValueError("ram_size must be a positive multiple of 4 KiB")
        self.ram_size = ram_size
        # Guest RAM is a buffer the TEE owns, lent to Unicorn (mem_map_ptr): bulk reads and
        # writes (migration's page streams) are plain memory copies, not Unicorn's per-page
        # walk.  It is backed as it is first touched: backing all of it up front costs
        # 0.5 ms per MiB (33 ms of a 66 MiB Linux program's 80 ms start-up) for pages a
        # short run never touches, and an incoming stream skips zero pages anyway.
        self._ram = mmap.mmap(-1, ram_size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        ram_base = ctypes.addressof(ctypes.c_char.from_buffer(self._ram))
        self._uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_64)
        for base in range(0, ram_size, REGION):
            # Separate regions keep a protection change (set_mapped, dirty tracking) local.
            self._uc.mem_map_ptr(base, min(REGION, ram_size - base), uc_mod.UC_PROT_NONE,
                                 ram_base + base)
        self._cpuid = cpuid
        self._stop: Stop | None = None
        self._hook_error: BaseException | None = None
        self._pending_in: Stop | None = None
        self._traps_installed = False
        self._hlt: frozenset[int] = frozenset()
        self.loaded_rdtsc: list[int] = []  # traps set by CODE_LOADED_LEAF (they migrate)
        self._rdtsc_at: set[int] = set()  # every trapped RDTSC: the launch sweep's and loaded
        self._timed = False  # whether the last run had the instruction timer armed
        self.tsc = 0  # virtual TSC: advanced by the platform, never by host time
        self._ids = (ctypes.c_int * NREGS)(*_REG_IDS)
        self._vals = (ctypes.c_uint64 * NREGS)()  # what write_regs hands libunicorn
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * NREGS)(*[base + 8 * i for i in range(NREGS)])
        # Reads land in the save area's slots, so that handing the state over is one copy.
        self._area = (ctypes.c_uint64 * (2 * NSLOTS))()
        base = ctypes.addressof(self._area)
        self._area_ptrs = (ctypes.c_void_p * NREGS)(*[base + SLOT * i for i in range(NREGS)])
        # The extended state (EXT_NAMES, then FXSAVE) in one batch of either direction:
        # the bases, SYSCALL's MSRs (uc_x86_msr, index preset), the full tag word (FXSAVE
        # keeps an abridged one) and the FXSAVE image, each register at its offset.
        # The bases land in their slots; the rest is moved there by _read_full (a memoryview
        # per buffer: item and strided copies cost a fraction of ctypes' own).
        self._words = memoryview(self._area).cast("B").cast("Q")
        self._area_bytes = memoryview(self._area).cast("B")  # tobytes(): half bytes()'s cost
        # The FXSAVE image, SYSCALL's MSRs and the full tag word in one buffer, so that
        # telling whether they changed since the last read is one copy and one compare.
        assert ctypes.sizeof(_Msr) == 16 and _Msr.value.offset == 8  # noqa: S101
        self._ext_raw = (ctypes.c_char * _EXT_RAW)()
        self._fx = (ctypes.c_uint64 * NFX).from_buffer(self._ext_raw, 0)
        self._msrs = (_Msr * len(_EXT_MSRS)).from_buffer(self._ext_raw, FXSAVE_SIZE)
        for msr, index in zip(self._msrs, _EXT_MSRS, strict=True):
            msr.rid = index
        self._msr_values = memoryview(self._msrs).cast("B").cast("Q")[1::2]
        self._ftw = ctypes.c_uint16.from_buffer(self._ext_raw, _EXT_FTW)
        self._fx[FX_MXCSR // 8] = MXCSR_MASK << 32  # never read: set once, kept
        self._fxw = memoryview(self._fx).cast("B").cast("Q")
        fx = ctypes.addressof(self._fx)
        ext_ids = [*_EXT_IDS, *[X.UC_X86_REG_MSR] * len(_EXT_MSRS), X.UC_X86_REG_FPTAG,
                   *[reg for reg, _off in _FX_IDS]]
        ext_ptrs = [base + SLOT * NREGS, base + SLOT * (NREGS + 1),
                    *[ctypes.addressof(m) for m in self._msrs],
                    ctypes.addressof(self._ftw), *[fx + off for _reg, off in _FX_IDS]]
        self._snap = b""  # the extended buffers as last moved into the slots
        self._ext_valid = False  # the extended slots hold the engine's state as it is now
        self._ext_n = len(ext_ids)
        self._ext_ids = (ctypes.c_int * self._ext_n)(*ext_ids)
        self._ext_ptrs = (ctypes.c_void_p * self._ext_n)(*ext_ptrs)
        # The same with the general registers first: a stop reads the whole state in one
        # call (the extended part costs ~1,000 instructions more in libunicorn; a second
        # ctypes call for it at the hand-over cost ~5,000).
        self._all_n = NREGS + self._ext_n
        self._all_ids = (ctypes.c_int * self._all_n)(*_REG_IDS, *ext_ids)
        self._all_ptrs = (ctypes.c_void_p * self._all_n)(*self._area_ptrs, *ext_ptrs)
        self._tags: tuple[int, ...] | None = None
        handle = getattr(self._uc, "_uch", None)
        # The unchecked C calls take the engine as a C pointer object; anything else (a
        # binding that keeps a plain int) would be cut to 32 bits: use the binding's calls.
        self._handle = handle if isinstance(handle, ctypes.c_void_p) else None
        # emu_start's arguments, of the right C types, and the call itself (an attribute:
        # a counted run stands the guest still by swapping it for a no-op of the same
        # signature).  The binding's emu_start converts its five arguments at every call:
        # ~10,000 instructions, against ~6,000 this way.
        self._begin, self._count = ctypes.c_uint64(), ctypes.c_size_t()
        self._until, self._timeout = ctypes.c_uint64(NO_UNTIL), ctypes.c_uint64(0)
        self._emu_start = _EMU_START if self._handle is not None and hasattr(
            self._uc, "_hook_exception") else None
        self._one = ctypes.c_uint64()  # one register, for read_reg / write_reg
        self._one_ptr = ctypes.cast(ctypes.byref(self._one), ctypes.c_void_p)
        self._fresh = False  # whether the save area holds the registers as they are now
        self._regs: tuple[int, ...] | None = None  # its unpacked tuple, made when asked for
        self._dirty: set[int] | None = None  # pages written while migration tracks them
        self._wp: set[int] = set()  # pages write-protected by that tracking only
        # SYSCALL's writes (RCX, R11, RFLAGS, RIP) as one batch, and an MSR read buffer.
        self._sys_ids = (ctypes.c_int * 4)(X.UC_X86_REG_RCX, X.UC_X86_REG_R11,
                                           X.UC_X86_REG_EFLAGS, X.UC_X86_REG_RIP)
        self._sys_vals = (ctypes.c_uint64 * 4)()
        base = ctypes.addressof(self._sys_vals)
        self._sys_ptrs = (ctypes.c_void_p * 4)(*[base + 8 * i for i in range(4)])
        self._msr_buf = _Msr()
        self._msr_ptr = ctypes.cast(ctypes.byref(self._msr_buf), ctypes.c_void_p)
        self._install_hooks()

    # -- hooks -----------------------------------------------------------------------
    def _install_hooks(self) -> None:
        u = self._uc
        u.hook_add(uc_mod.UC_HOOK_INSN, self._on_in, None, 1, 0, X.UC_X86_INS_IN)
        u.hook_add(uc_mod.UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        u.hook_add(uc_mod.UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        u.hook_add(uc_mod.UC_HOOK_INSN, self._on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        u.hook_add(uc_mod.UC_HOOK_INTR, self._on_intr)
        u.hook_add(
            uc_mod.UC_HOOK_MEM_READ_PROT | uc_mod.UC_HOOK_MEM_WRITE_PROT
            | uc_mod.UC_HOOK_MEM_FETCH_PROT,
            self._on_prot,
        )
        u.hook_add(uc_mod.UC_HOOK_MEM_UNMAPPED, self._on_unmapped)

    def install_code_traps(self, hlt: Iterable[int], rdtsc: Iterable[int],
                           loaded: Iterable[int] = ()) -> None:
        """Know the HLTs and trap the RDTSCs that a sweep of the executable pages found.

        Unicorn can hook neither.  HLT stops emulation by itself; a stop with no other
        cause whose previous byte is a swept HLT is that HLT (linear-swept code has no
        overlapping instructions), which tells it from the timer without a code hook: any
        UC_HOOK_CODE makes every instruction pay in count mode.  RDTSC would leak host time
        into a deterministic run, so it is trapped by address.  Called once, before the
        first run; ``loaded``: the traps an earlier run set for code it loaded (an
        incoming migration's)."""
        if self._traps_installed:
            raise RuntimeError("code traps are installed once, before the first run")
        self._hlt = frozenset(hlt)
        for addr in rdtsc:
            self._trap_rdtsc(addr)
        for addr in loaded:
            self._trap_loaded(addr)
        self._traps_installed = True

    def trap_loaded_code(self, start: int, length: int) -> int:
        """Trap the RDTSCs of code written at run time in [start, start + length): the
        new traps' count, or CODE_LOADED_REFUSED for a range outside guest RAM or past
        MAX_LOADED_TRAPS.  Every 0F 31 in the range gets a trap, instruction start or
        not: a code hook fires only where an instruction starts, and there 0F 31 is
        RDTSC, so a trap inside another instruction never fires (and ``_on_rdtsc``
        checks the bytes).  HLT is left to the launch sweep: a stray F4 byte would turn a
        timer stop into a HLT."""
        if not (0 < length <= self.ram_size and 0 <= start <= self.ram_size - length):
            return CODE_LOADED_REFUSED
        code = self._ram[start:start + length]
        found, at = [], code.find(_RDTSC)
        while at >= 0:
            found.append(start + at)
            at = code.find(_RDTSC, at + 1)
        new = sorted(set(found) - self._rdtsc_at)  # one trap an address, whoever set it
        if len(self.loaded_rdtsc) + len(new) > MAX_LOADED_TRAPS:
            return CODE_LOADED_REFUSED
        for addr in new:
            self._trap_loaded(addr)
        return len(new)

    def _trap_rdtsc(self, addr: int) -> bool:
        """Trap the RDTSC at ``addr``; False if it is trapped already."""
        if addr in self._rdtsc_at:
            return False
        self._uc.hook_add(uc_mod.UC_HOOK_CODE, self._on_rdtsc, None, addr, addr)
        self._rdtsc_at.add(addr)
        return True

    def _trap_loaded(self, addr: int) -> None:
        if self._trap_rdtsc(addr):
            self.loaded_rdtsc.append(addr)

    def _halt(self, stop: Stop) -> None:
        self._stop = stop
        self._uc.emu_stop()

    def _on_in(self, uc, port: int, size: int, _data) -> int:
        self._halt(Stop(StopKind.PORT_IN, uc.reg_read(X.UC_X86_REG_RIP), port=port, size=size))
        return 0

    def _on_out(self, uc, port: int, size: int, value: int, _data) -> None:
        self._halt(
            Stop(StopKind.PORT_OUT, uc.reg_read(X.UC_X86_REG_RIP), port=port, size=size,
                 value=value)
        )

    def _on_cpuid(self, uc, _data) -> int:
        try:
            leaf = uc.reg_read(X.UC_X86_REG_EAX)
            if leaf == CODE_LOADED_LEAF:
                found = self.trap_loaded_code(uc.reg_read(X.UC_X86_REG_RBX),
                                              uc.reg_read(X.UC_X86_REG_RCX))
                a, b, c, d = found, 0, 0, 0
            else:
                a, b, c, d = self._cpuid(leaf, uc.reg_read(X.UC_X86_REG_ECX))
            uc.reg_write(X.UC_X86_REG_RAX, a)
            uc.reg_write(X.UC_X86_REG_RBX, b)
            uc.reg_write(X.UC_X86_REG_RCX, c)
            uc.reg_write(X.UC_X86_REG_RDX, d)
        except BaseException as exc:  # re-raised after emu_start
            self._hook_error = exc
            uc.emu_stop()
        return 1  # skip Unicorn's own CPUID

    def _on_syscall(self, uc, _data) -> None:
        """SYSCALL as hardware does it in long mode: #UD unless EFER.SCE; RCX = the next
        instruction, R11 = RFLAGS, RFLAGS &= ~FMASK, RIP = LSTAR.  No exit: the guest's
        own handler (a Linux personality) runs next.

        Unicorn 2 only calls this hook (qemu/target/i386/seg_helper.c, helper_syscall)
        and then adds the instruction's length to RIP itself: RIP is written that much
        short.  The privilege level does not change: guests run in ring 0 (there is no
        paging to separate rings), so the handler returns by a jump, not SYSRET, whose
        CS (STAR) and CPL 3 the model would otherwise load.  Registers and MSRs go through
        libunicorn's C calls (as everywhere here): a program makes thousands of calls."""
        try:
            if self._handle is None:  # pragma: no cover - a binding without the handle
                raise RuntimeError("SYSCALL needs libunicorn's engine handle")
            handle, one, ptr = self._handle, self._one, self._one_ptr
            _READ_ONE(handle, X.UC_X86_REG_RIP, ptr)
            rip = one.value
            length = _syscall_length(self._ram[rip : min(rip + 15, self.ram_size)])
            if not self._msr(MSR_EFER) & EFER_SCE:
                self._halt(Stop(StopKind.EXCEPTION, rip, vector=6, detail="invalid opcode"))
                self.write_reg(RIP, rip - length)  # Unicorn adds the length: the stop is here
                return
            _READ_ONE(handle, X.UC_X86_REG_EFLAGS, ptr)
            flags = one.value
            vals = self._sys_vals
            vals[0], vals[1] = rip + length, flags
            vals[2] = flags & ~self._msr(MSR_FMASK) & 0xFFFF_FFFF | 2
            vals[3] = (self._msr(MSR_LSTAR) - length) & 0xFFFF_FFFF_FFFF_FFFF
            status = _WRITE_BATCH(handle, self._sys_ids, self._sys_ptrs, 4)
            if status != 0:  # pragma: no cover
                raise uc_mod.UcError(status)
        except BaseException as exc:  # re-raised after emu_start
            self._hook_error = exc
            uc.emu_stop()

    def _msr(self, index: int) -> int:
        self._msr_buf.rid = index
        status = _READ_ONE(self._handle, X.UC_X86_REG_MSR, self._msr_ptr)
        if status != 0:  # pragma: no cover
            raise uc_mod.UcError(status)
        return self._msr_buf.value

    def _on_intr(self, uc, intno: int, _data) -> None:
        rip = uc.reg_read(X.UC_X86_REG_RIP)
        kind = StopKind.SOFT_INT if intno >= 32 else StopKind.EXCEPTION
        self._halt(Stop(kind, rip, vector=intno))

    def _on_prot(self, uc, access: int, address: int, size: int, value: int, _data) -> bool:
        kind = {
            uc_mod.UC_MEM_WRITE_PROT: Access.WRITE,
            uc_mod.UC_MEM_FETCH_PROT: Access.FETCH,
        }.get(access, Access.READ)
        self._stop = Stop(StopKind.NPF, 0, addr=address, access=kind, size=size)
        return False

    def _on_unmapped(self, uc, access: int, address: int, size: int, value: int, _d) -> bool:
        self._stop = Stop(StopKind.FAULT, 0, addr=address, detail="access outside guest memory")
        return False

    def _on_rdtsc(self, uc, address: int, size: int, _data) -> None:
        if self._ram[address:address + 2] != _RDTSC:  # code rewritten since it was trapped
            return
        self.tsc += 1
        uc.reg_write(X.UC_X86_REG_RAX, self.tsc & 0xFFFFFFFF)
        uc.reg_write(X.UC_X86_REG_RDX, self.tsc >> 32)
        uc.reg_write(X.UC_X86_REG_RIP, address + 2)

    # -- running ---------------------------------------------------------------------
    def run(self, rip: int, quantum: int) -> Stop:
        """Run from ``rip`` until a stop; ``quantum`` > 0 arms the instruction timer."""
        self._stop = None
        self._hook_error = None
        self._regs, self._fresh, self._ext_valid = None, False, False
        error: uc_mod.UcError | None = None
        if quantum and not self._timed:
            # Unicorn counts instructions with a code hook it adds when a timed run starts;
            # blocks translated by untimed runs lack it and would run past the quantum
            # (unicorn #2200): drop them once, when the timer is armed again.
            self._uc.ctl_flush_tb()
        self._timed = quantum > 0
        start = self._emu_start
        if start is None:  # pragma: no cover - a binding without the handle
            try:
                self._uc.emu_start(rip, NO_UNTIL, 0, quantum)
            except uc_mod.UcError as exc:
                error = exc
        else:  # what the binding's emu_start does, without converting its arguments
            uc = self._uc
            uc._hook_exception = None
            self._begin.value = rip
            self._count.value = quantum
            status = start(self._handle, self._begin, self._until, self._timeout, self._count)
            if status != 0:
                error = uc_mod.UcError(status)
            elif uc._hook_exception is not None:
                raise uc._hook_exception
        if self._hook_error is not None:
            raise self._hook_error
        stop = self._stop
        if stop is not None and stop.kind in (StopKind.NPF, StopKind.FAULT):
            stop.rip = self.read_rip()
            return stop
        if error is not None:
            return self._classify_error(error)
        if stop is not None:
            return stop
        self._read_area()
        rip = self._area[_RIP_SLOT]  # a timer stop needs only RIP: no tuple of all of them
        if rip - 1 in self._hlt or not quantum:
            return Stop(StopKind.HLT, rip - 1)
        return Stop(_TIMER, rip)

    def _classify_error(self, error: uc_mod.UcError) -> Stop:
        rip = self.read_rip()
        if error.errno == uc_mod.UC_ERR_INSN_INVALID:
            try:
                insn = bytes(self._uc.mem_read(rip, 3))
            except uc_mod.UcError:
                insn = b""
            if insn in _VMCALL:
                return Stop(StopKind.HYPERCALL, rip)
            return Stop(StopKind.EXCEPTION, rip, vector=6, detail="invalid opcode")
        return Stop(StopKind.FAULT, rip, detail=str(error))

    # -- registers -------------------------------------------------------------------
    def _read_area(self) -> None:
        """Every register of REG_NAMES into the save area's slots, in one call (none while
        the last read still holds)."""
        if self._fresh:
            return
        if self._handle is None:  # pragma: no cover - a binding without the handle
            self._area[0 : 2 * NREGS : 2] = [self._uc.reg_read(r) for r in _REG_IDS]
        else:  # the extended registers in the same call, into their buffers (_read_full)
            status = _READ_BATCH(self._handle, self._all_ids, self._all_ptrs, self._all_n)
            if status != 0:  # pragma: no cover
                raise uc_mod.UcError(status)
        self._fresh = True

    def read_regs(self) -> tuple[int, ...]:
        """All of REG_NAMES (one batch read per stop, unpacked once when asked for)."""
        if self._regs is None:
            self._read_area()
            self._regs = _SLOTTED.unpack_from(self._area)
        return self._regs

    def _read_full(self) -> None:
        """The whole save area: the general registers and, in the same call, EXT_NAMES
        and the FXSAVE image (unless the last read still holds: _read_area reads both);
        the bases land in their slots, the MSRs and the FXSAVE image are moved into theirs
        with the abridged tag word (one bit a register: not empty) made from the full one
        Unicorn keeps (two bits a register, 3 = empty) — only when they changed since the
        last move (a guest that used no FPU/SSE and set no MSR in between: one copy and
        one compare, where the strided copies cost more)."""
        if self._handle is None:  # pragma: no cover - a binding without the handle
            raise RuntimeError("the extended state needs libunicorn's engine handle")
        if not self._fresh:
            self._read_area()
        self._ext_valid = True
        if self._ext_raw.raw == self._snap:
            return
        fx, tags = self._fxw, self._ftw.value
        abridged = _ABRIDGED.get(tags)
        if abridged is None:
            abridged = _ABRIDGED[tags] = _abridged_tags(tags) << (8 * FX_FTW)
        fx[0] = fx[0] & _FTW_CLEAR | abridged
        words = self._words
        words[_W_MSRS] = self._msr_values
        words[2 * FX_FIRST :: 2] = fx
        self._snap = self._ext_raw.raw

    def save_area(self, tags: tuple[int, ...]) -> bytes:
        """The whole register state as NSLOTS 16-byte slots (general registers, EXT_NAMES,
        the FXSAVE image 8 bytes a slot): value, then ``tags[i]`` (tvmm.hw.vmsa passes the
        VMSA's slot addresses, so this is the save area's plaintext)."""
        self._read_full()
        if tags is not self._tags:
            self._area[1::2] = tags
            self._tags = tags
        return self._area_bytes.tobytes()

    def read_state(self) -> tuple[int, ...]:
        """Every slot's value (what save_area carries), for the TEE's own checks."""
        self._read_full()
        return tuple(self._words[0::2])

    def write_state(self, values: tuple[int, ...] | list[int]) -> None:
        """Load a whole register state (NSLOTS values, save_area's order).  What FXRSTOR
        would refuse is cut to what it accepts: MXCSR to MXCSR_MASK; the reserved bytes
        and MXCSR_MASK itself are not loaded (the model has nowhere to keep them)."""
        if len(values) != NSLOTS:
            raise ValueError(f"expected {NSLOTS} state values")
        if self._handle is None:  # pragma: no cover - a binding without the handle
            raise RuntimeError("the extended state needs libunicorn's engine handle")
        self.write_regs(values[:NREGS])  # also marks the save area stale
        if self._ext_valid and tuple(self._words[2 * NREGS :: 2]) == tuple(values[NREGS:]):
            return  # handed back as read, and the guest has not run since: nothing to load
        self._ext_valid = False
        wide = 0xFFFF_FFFF_FFFF_FFFF
        words = self._words
        words[2 * NREGS], words[2 * NREGS + 2] = values[NREGS] & wide, values[NREGS + 1] & wide
        for msr, value in zip(self._msrs, values[NREGS + 2 : FX_FIRST], strict=True):
            msr.value = value & wide
        fx = self._fx
        fx[:] = [v & wide for v in values[FX_FIRST:]]
        self._ftw.value = _full_tags((fx[0] >> (8 * FX_FTW)) & 0xFF)
        fx[FX_MXCSR // 8] &= MXCSR_MASK
        status = _WRITE_BATCH(self._handle, self._ext_ids, self._ext_ptrs, self._ext_n)
        self._snap = b""
        ctypes.memset(self._fx, 0, FXSAVE_SIZE)  # reads fill only the registers' bytes
        fx[FX_MXCSR // 8] = MXCSR_MASK << 32
        if status != 0:  # pragma: no cover
            raise uc_mod.UcError(status)

    def write_regs(self, values: Iterable[int]) -> None:
        vals = values if isinstance(values, tuple | list) else list(values)
        if len(vals) != NREGS:
            raise ValueError(f"expected {NREGS} register values")
        self._regs, self._fresh = None, False
        if self._handle is None:  # pragma: no cover
            for reg, val in zip(_REG_IDS, vals, strict=True):
                self._uc.reg_write(reg, val)
            return
        try:
            _REGS.pack_into(self._vals, 0, *vals)
        except struct.error:  # negative or wide values: keep the low 64 bits, as hardware
            _REGS.pack_into(self._vals, 0, *[v & 0xFFFF_FFFF_FFFF_FFFF for v in vals])
        status = _WRITE_BATCH(self._handle, self._ids, self._ptrs, NREGS)
        if status != 0:  # pragma: no cover
            raise uc_mod.UcError(status)

    def read_rip(self) -> int:
        return self.read_reg(RIP)

    def write_reg(self, index: int, value: int) -> None:
        """One register through libunicorn's C call: the binding's costs ~4 µs, and the
        exit path writes rax and rip at every hypercall."""
        self._regs, self._fresh = None, False
        if self._handle is None:  # pragma: no cover
            self._uc.reg_write(_REG_IDS[index], value & 0xFFFF_FFFF_FFFF_FFFF)
            return
        self._one.value = value & 0xFFFF_FFFF_FFFF_FFFF
        status = _WRITE_ONE(self._handle, _REG_IDS[index], self._one_ptr)
        if status != 0:  # pragma: no cover
            raise uc_mod.UcError(status)

    def read_reg(self, index: int) -> int:
        if self._fresh:
            return self._area[2 * index]
        if self._handle is None:  # pragma: no cover
            return self._uc.reg_read(_REG_IDS[index])
        _READ_ONE(self._handle, _REG_IDS[index], self._one_ptr)
        return self._one.value

    def idt_base(self) -> tuple[int, int]:
        """(base, limit) of the guest's IDT."""
        _sel, base, limit, _flags = self._uc.reg_read(X.UC_X86_REG_IDTR)
        return base, limit

    def save(self) -> bytes:
        """The whole vCPU (registers, descriptor tables, flags) as bytes."""
        return bytes(self._uc.context_save())

    def restore(self, blob: bytes) -> None:
        ctx = self._uc.context_save()
        if len(blob) != ctx.size:
            raise ValueError("context blob has the wrong size")
        ctypes.memmove(ctx.context, blob, len(blob))
        self._uc.context_restore(ctx)
        self._regs, self._fresh, self._ext_valid = None, False, False

    # -- memory ----------------------------------------------------------------------
    def _check_range(self, gpa: int, size: int, error: int) -> None:
        if gpa < 0 or size < 0 or gpa + size > self.ram_size:
            raise uc_mod.UcError(error)  # what Unicorn says for memory it does not map

    def mem_read(self, gpa: int, size: int) -> bytes:
        """A copy of guest memory (regardless of the host's mappings, as the TEE sees it)."""
        self._check_range(gpa, size, uc_mod.UC_ERR_READ_UNMAPPED)
        return self._ram[gpa : gpa + size]

    def ram(self, gpa: int, size: int) -> memoryview:
        """Guest memory itself, read-only and without a copy: for bulk readers inside the
        TEE (migration's exporter), never for anything handed to the host."""
        self._check_range(gpa, size, uc_mod.UC_ERR_READ_UNMAPPED)
        return memoryview(self._ram)[gpa : gpa + size].toreadonly()

    def mem_write(self, gpa: int, data: bytes | memoryview) -> None:
        """Write guest memory (regardless of the host's mappings) and drop any code
        Unicorn translated from the range, which would otherwise run stale."""
        size = len(data)
        self._check_range(gpa, size, uc_mod.UC_ERR_WRITE_UNMAPPED)
        if not size:
            return
        if self._dirty is not None:
            self._dirty.update(range(gpa // PAGE, (gpa + size - 1) // PAGE + 1))
        self._ram[gpa : gpa + size] = data
        self._uc.ctl_remove_cache(gpa, gpa + size)

    def set_mapped(self, gpa: int, count: int, mapped: bool) -> None:
        if self._dirty is not None:  # the host's mapping wins over dirty tracking
            pages = range(gpa // PAGE, gpa // PAGE + count)
            self._wp.difference_update(pages)
            if mapped:
                self._dirty.update(pages)
        if not mapped:
            # Translated blocks of the range would still run without a fetch check: an
            # unmapped code page must fault on its next execution (the controlled channel).
            self._uc.ctl_remove_cache(gpa, gpa + count * PAGE)
        self._protect(gpa, count * PAGE, uc_mod.UC_PROT_ALL if mapped else uc_mod.UC_PROT_NONE)

    def _protect(self, gpa: int, size: int, prot: int) -> None:
        """Change the protection of a range and drop every cached translation, as a TLB
        flush after a change of the nested page table does on hardware.

        Unicorn checks a region's protection when a guest access misses its software TLB.
        ``ctl_remove_cache`` of an unmapped range (set_mapped) translates the range through
        that TLB and leaves entries behind that let loads and stores through with no check:
        an unmapped data page did not fault (found with the T-table victim at snp: 2 of 52
        page changes faulted).  Flushing after every change leaves no entry made before or
        during it, whatever fills one."""
        self._uc.mem_protect(gpa, size, prot)
        self._uc.ctl(_TLB_FLUSH, uc_mod.UC_CTL_IO_WRITE)

    # -- dirty-page tracking for live migration (inside the TEE; the host never sees it) --
    def track_dirty(self, mapped: bytes) -> set[int]:
        """Pages written since the last call (empty at the first), then write-protect every
        page mapped in ``mapped`` (one byte a page) again: the guest's next store to one
        faults and ``serve_dirty_fault`` marks it; writes through ``mem_write`` (TEE and
        host) and pages the host maps meanwhile count as written too."""
        written, self._dirty, self._wp = self._dirty or set(), set(), set()
        for first, stop in _runs(mapped):
            self._wp.update(range(first, stop))
            self._protect(first * PAGE, (stop - first) * PAGE,
                          uc_mod.UC_PROT_READ | uc_mod.UC_PROT_EXEC)
        return written

    def stop_dirty(self, mapped: bytes) -> set[int]:
        """End tracking: the pages written since the last ``track_dirty``; every page
        mapped in ``mapped`` is writable again, as the host mapped it."""
        if self._dirty is None:
            return set()
        written, self._dirty, self._wp = self._dirty, None, set()
        for first, stop in _runs(mapped):
            self._protect(first * PAGE, (stop - first) * PAGE, uc_mod.UC_PROT_ALL)
        return written

    def serve_dirty_fault(self, gpa: int, size: int) -> bool:
        """A guest write fault on pages that only dirty tracking protected: mark them dirty
        and writable, and tell the exit path to run the guest again (no host exit).
        (Unicorn drops the store if a protection hook lets it continue: so a stop.)"""
        pages = self._wp.intersection(range(gpa // PAGE, (gpa + max(size, 1) - 1) // PAGE + 1))
        for page in pages:
            self._wp.discard(page)
            self._dirty.add(page)  # type: ignore[union-attr]
            self._protect(page * PAGE, PAGE, uc_mod.UC_PROT_ALL)
        return bool(pages)

    def flush_code(self, gpa: int, size: int) -> None:
        """Drop translated code for a range the TEE or the host rewrote (unicorn #1148)."""
        self._uc.ctl_remove_cache(gpa, gpa + size)

    def watch_stores(self, callback: Callable[[int, int], None]) -> None:
        """From now on call ``callback(gpa, size)`` before every guest store.

        Only the write-back buffer model (tvmm.hw.writeback) asks for this, and only once
        a host has called DROP_WRITES: never on the normal path.  Added after the first
        run, so translated code, compiled without the hook, is dropped (unicorn #2200)."""

        def on_write(uc, access: int, address: int, size: int, value: int, _data) -> None:
            try:
                callback(address, size)
            except BaseException as exc:  # re-raised after emu_start
                self._hook_error = exc
                uc.emu_stop()

        self._uc.hook_add(uc_mod.UC_HOOK_MEM_WRITE, on_write)
        self._uc.ctl_flush_tb()


def _abridged_tags(full: int) -> int:
    """FXSAVE's tag byte from the x87 tag word: bit i set unless register i is empty (its
    two bits 11)."""
    empty = full & (full >> 1) & 0x5555  # bit 2i: register i is empty
    empty = (empty | (empty >> 1)) & 0x3333
    empty = (empty | (empty >> 2)) & 0x0F0F
    empty = (empty | (empty >> 4)) & 0x00FF
    return ~empty & 0xFF


def _full_tags(abridged: int) -> int:
    """The x87 tag word FXRSTOR makes of the tag byte: empty (11) where the bit is clear,
    valid (00) elsewhere (the model, like QEMU's FXRSTOR, keeps only empty or not)."""
    empty = ~abridged & 0xFF
    empty = (empty | (empty << 4)) & 0x0F0F
    empty = (empty | (empty << 2)) & 0x3333
    empty = (empty | (empty << 1)) & 0x5555
    return empty | (empty << 1)


def _syscall_length(code: bytes) -> int:
    """The length of the SYSCALL instruction at the start of ``code`` (0f 05 after any
    prefixes)."""
    i = 0
    while i < len(code) and code[i] in _PREFIXES:
        i += 1
    return i + 2


def _runs(mapped: bytes) -> list[tuple[int, int]]:
    """[first, stop) runs of the pages whose byte in ``mapped`` is not zero."""
    out, i, n = [], 0, len(mapped)
    while (i := mapped.find(1, i)) >= 0:  # set_mapped stores 1
        end = mapped.find(0, i)
        end = n if end < 0 else end
        out.append((i, end))
        i = end
    return out
