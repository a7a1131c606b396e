"""Synthetic traces: a plausible page-fault controlled-channel run, without running a VM.

The benchmark, the tests and the documentation screenshot need traces of any size that look
like what the real producers write (see docs/traces.md for the conventions), and they must
be reproducible: everything comes from ``random.Random(seed)`` and a synthetic clock.  The
story: a guest runs square-and-multiply (``modexp_sqr`` and ``modexp_mul`` on different code
pages) with a secret exponent while the host unmaps pages and watches which one faults,
amid timer, hypercall, I/O and halt exits, interrupt injections and shim policy decisions.
The optional guest ELF is tiny but real x86-64 code, so disassembly around RIP works.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections import Counter
from pathlib import Path

from tvmm.abi.trace_events import EventKind, TraceHeader
from tvmm.trace.recorder import TraceRecorder

TEXT_BASE = 0x401000
SQR_PAGE = 0x402000
MUL_PAGE = 0x403000
DATA_PAGES = (0x404000, 0x405000, 0x7FE000)
REGISTERS = "rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags".split()
# (address, size, name) of the functions in _TEXT, as the header lists them.
SYMBOLS: list[tuple[int, int, str]] = [
    (0x401000, 0x2F, "_start"),
    (0x40102F, 0x48, "modexp"),
    (0x401077, 0x11, "console_write"),
    (0x402000, 0x13, "modexp_sqr"),
    (0x403000, 0x13, "modexp_mul"),
]
# Code (offset in .text, bytes) assembled from the listing in docs/traces.md.
_TEXT = (
    (
        0x0,
        "48c7c400f07f0048c7c701000100488b350030000048bafbffffff00000000e80b0000004889c7e84b"
        "000000f4ebd1534154415541564989fc4989d54889f341be3f000000b8010000004889c74c89eee8ab"
        "0f00004c0fa3f3730e4889c74c89e64c89eae8971f00004183ee0179db415e415d415c5bc34889feb8"
        "01000000bff80300000f01d9c3",
    ),
    (0x1000, "4889f1480fafff4889f831d248f7f14889d0c3"),
    (0x2000, "4889d1480faffe4889f831d248f7f14889d0c3"),
)
_TEXT_SIZE = 0x2400
_RIPS = {  # instruction addresses where each kind of exit plausibly happens
    "loop": (0x40104A, 0x40104D, 0x401050, 0x401055, 0x401059, 0x401069, 0x40106D),
    "sqr": (0x402000, 0x402003, 0x402007, 0x40200C),
    "mul": (0x403000, 0x403003, 0x403007, 0x40300C),
    "hypercall": (0x401084,),
    "hlt": (0x40102C,),
}
_EXIT_CODES = {
    "npf": 0x400,
    "timer": 0x60,
    "hypercall": 0x81,
    "io": 0x7B,
    "hlt": 0x78,
    "interrupt_window": 0x64,
}
_KEY_BITS = 64


class _Clock:
    """A monotonic nanosecond clock that the generator advances by chosen amounts."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns


def write_synthetic_trace(
    path: Path | str,
    n: int,
    seed: int = 0,
    *,
    level: str = "snp",
    elf_path: Path | str | None = None,
) -> Path:
    """Write a trace of exactly ``n`` events (plus the header) and its index; return its path.

    With ``elf_path`` a matching guest ELF is written there too and named in the header.
    """
    path = Path(path)
    elf_sha = None
    if elf_path is not None:
        image = guest_elf_bytes()
        Path(elf_path).write_bytes(image)
        elf_sha = hashlib.sha256(image).hexdigest()
    rng = random.Random(seed)
    truth = "".join(rng.choice("01") for _ in range(_KEY_BITS))
    header = TraceHeader(
        guest="modexp",
        level=level,
        seed=seed,
        versions={"tvmm": "0.1.0", "guest": "synthetic-1"},
        elf=str(elf_path) if elf_path is not None else None,
        elf_sha256=elf_sha,
        symbols=list(SYMBOLS),
        extra={"synthetic": True, "attack": "page_fault_channel"},
    )
    clock = _Clock()
    with TraceRecorder(path, header, clock=clock) as recorder:
        _Run(recorder, rng, clock, level, truth).play(n)
    return path


class _Run:
    """Emits the events of one synthetic run; one method per kind of episode."""

    def __init__(
        self, rec: TraceRecorder, rng: random.Random, clock: _Clock, level: str, truth: str
    ) -> None:
        self.rec, self.rng, self.clock, self.level, self.truth = rec, rng, clock, level, truth
        self.icount = 0
        self.bit = 0
        self.exits: Counter[str] = Counter()
        self.regs = {name: 0 for name in REGISTERS}
        self.regs.update(rbx=int(truth, 2), rsp=0x7FEF00, rflags=0x202, r13=0xFFFFFFFB)
        self.limit = 0

    def play(self, n: int) -> None:
        episodes = (
            (self.modexp_bit, 40),
            (self.timer, 25),
            (self.hypercall, 12),
            (self.io, 10),
            (self.halt, 5),
            (self.policy, 4),
            (self.window, 4),
        )
        actions = [a for a, _ in episodes]
        weights = [w for _, w in episodes]
        self.limit = n - 2  # room left for the verdict and the end event
        for name in ("launch", "measure", "finalize", "attest"):
            self.emit(EventKind.MGMT, name, inside={"step": name}, outside={"ok": True})
        while self.rec.next_seq < self.limit:
            self.rng.choices(actions, weights)[0]()
        self.limit = n
        if n >= 2:
            self.verdict()
        if n >= 1:
            self.end()

    # -- episodes ----------------------------------------------------------------------

    def modexp_bit(self) -> None:
        bit = self.truth[self.bit % _KEY_BITS] == "1"
        self.regs["r14"] = _KEY_BITS - 1 - self.bit % _KEY_BITS
        self.attack("unmap_page", {"gpa": SQR_PAGE, "pages": [SQR_PAGE, MUL_PAGE]})
        self.exit("npf", "sqr", fault_gpa=SQR_PAGE + self.rng.choice((0, 3, 7)))
        self.attack("observe_fault", {"page": SQR_PAGE, "bit": self.bit % _KEY_BITS})
        if bit:
            self.exit("npf", "mul", fault_gpa=MUL_PAGE + self.rng.choice((0, 3, 7)))
            self.attack("observe_fault", {"page": MUL_PAGE, "bit": self.bit % _KEY_BITS})
        if self.rng.random() < 0.3:
            self.exit(
                "npf", "loop", fault_gpa=self.rng.choice(DATA_PAGES) + 8 * self.rng.randrange(64)
            )
        self.bit += 1

    def timer(self) -> None:
        self.exit("timer", self.rng.choice(("loop", "sqr", "mul")))
        refused = self.level == "shim" and self.rng.random() < 0.3
        why = "interrupts blocked while stepping" if refused else "timer tick"
        self.emit(
            EventKind.INJECT,
            "refused" if refused else "delivered",
            inside={"vector": 0x20, "delivered": not refused, "why": why},
            outside={"vector": 0x20},
        )
        if refused:
            self.emit(
                EventKind.POLICY,
                "irq_refused",
                inside={"policy": "irq_filter", "reason": why, "vector": 0x20},
            )

    def hypercall(self) -> None:
        self.exit("hypercall", "hypercall")
        text = f"modexp: bit {self.bit % _KEY_BITS} done\n"
        self.emit(
            EventKind.HYPERCALL,
            "console_write",
            inside={"nr": 1, "len": len(text)},
            outside={"nr": 1},
        )
        self.emit(EventKind.CONSOLE, "console", inside={"text": text})

    def io(self) -> None:
        self.exit("io", "loop")
        data = self.rng.randbytes(32)
        slot = self.rng.randrange(8)
        self.emit(
            EventKind.IO,
            "blk_read",
            inside={"device": "blk0", "op": "read", "len": 512, "data": data.hex()},
            outside={"slot": slot, "len": 512, "sector": self.rng.randrange(1 << 16)},
        )

    def halt(self) -> None:
        self.exit("hlt", "hlt")

    def window(self) -> None:
        self.exit("interrupt_window", "loop")

    def policy(self) -> None:
        name, reason = self.rng.choice(
            (
                ("step_extend", "exit after fewer than 32 instructions: stepping on"),
                ("step_detect", "three short quanta in a row"),
                ("fault_rule", "more than 6 faults at the same RIP"),
                ("fault_budget", "fault budget of the window spent"),
            )
        )
        self.emit(
            EventKind.POLICY,
            name,
            inside={"policy": name.split("_")[0], "reason": reason, "rip": self.regs["rip"]},
        )

    def verdict(self) -> None:
        wrong = 0.5 if self.level == "shim" else 0.03
        guess = "".join(b if self.rng.random() >= wrong else "10"[int(b)] for b in self.truth)
        correct = sum(a == b for a, b in zip(guess, self.truth, strict=True))
        self.emit(
            EventKind.VERDICT,
            "page_fault_channel",
            inside={
                "attack": "page_fault_channel",
                "level": self.level,
                "n": _KEY_BITS,
                "bits_correct": correct,
                "leaked_bits": float(max(0, 2 * correct - _KEY_BITS)),
                "full_recovery": correct == _KEY_BITS,
                "detected": self.level == "shim",
                "detected_after_exits": 7 if self.level == "shim" else None,
                "truth": self.truth,
                "guess": guess,
                "integrity_violated": False,
            },
        )

    def end(self) -> None:
        self.emit(
            EventKind.END,
            "shutdown",
            inside={
                "how": "shutdown",
                "status": 0,
                "instructions": self.icount,
                "exits": dict(self.exits),
                "wall_s": self.clock.now / 1e9,
            },
        )

    # -- single events -----------------------------------------------------------------

    def emit(self, kind: EventKind, name: str, **views: dict) -> None:
        if self.rec.next_seq >= self.limit:  # an episode cut short at the end of the budget
            return
        self.clock.advance(self.rng.randrange(200, 2_000))
        self.rec.emit(kind, name, icount=self.icount, **views)

    def attack(self, action: str, seen: dict) -> None:
        self.emit(EventKind.ATTACK, action, outside=seen)

    def exit(self, reason: str, where: str, fault_gpa: int | None = None) -> None:
        retired = self.rng.randrange(1, 4_000)
        self.icount += retired
        self.clock.advance(retired * 3)
        regs = self.regs
        regs["rip"] = self.rng.choice(_RIPS[where])
        regs["rax"] = self.rng.getrandbits(32)
        regs["rdi"] = regs["rax"]
        regs["rdx"] = self.rng.getrandbits(16)
        regs["rcx"] = self.rng.getrandbits(8)
        inside: dict = {
            "rip": regs["rip"],
            "symbol": _symbolize(regs["rip"]),
            "regs": dict(regs),
            "retired": retired,
        }
        fields = {"exit_code": _EXIT_CODES[reason]}
        if fault_gpa is not None:
            inside["fault_gpa"] = fault_gpa
            fields["exit_info_2"] = fault_gpa & ~0xFFF if self.level != "plain" else fault_gpa
        self.exits[reason] += 1
        self.emit(
            EventKind.EXIT,
            reason,
            inside=inside,
            outside={
                "reason": reason,
                "fields": fields,
                "state": self.host_state().hex(),
                "level": self.level,
            },
        )

    def host_state(self) -> bytes:
        """What the host gets for the register file at this protection level."""
        plain = struct.pack(f"<{len(REGISTERS)}Q", *(self.regs[r] for r in REGISTERS))
        if self.level in ("plain", "sev"):
            return plain
        if self.level == "shim":
            return self.rng.randbytes(12 + len(plain) + 16)  # nonce, AEAD ciphertext, tag
        words = struct.unpack(f"<{len(REGISTERS)}Q", plain)  # deterministic per (slot, value)
        mixed = (_mix(w ^ (i * 0x9E3779B97F4A7C15)) for i, w in enumerate(words))
        return struct.pack(f"<{len(REGISTERS)}Q", *mixed)


def _mix(x: int) -> int:
    """A 64-bit bijective mixer (splitmix64 finaliser) standing in for the XEX cipher."""
    x &= 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _symbolize(addr: int) -> str | None:
    for start, size, name in SYMBOLS:
        if start <= addr < start + size:
            return f"{name}+{addr - start:#x}" if addr != start else name
    return None


def guest_elf_bytes() -> bytes:
    """A minimal ELF64 x86-64 executable: .text with the code above, .symtab, .strtab."""
    text = bytearray(b"\xcc" * _TEXT_SIZE)
    for offset, code in _TEXT:
        blob = bytes.fromhex(code)
        text[offset : offset + len(blob)] = blob
    strtab = bytearray(b"\0")
    symtab = bytearray(24)
    for addr, size, name in SYMBOLS:
        symtab += struct.pack("<IBBHQQ", len(strtab), 0x12, 0, 1, addr, size)  # GLOBAL FUNC
        strtab += name.encode() + b"\0"
    shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    text_off = 0x1000
    sym_off = text_off + len(text)
    str_off = sym_off + len(symtab)
    shs_off = str_off + len(strtab)
    sh_off = (shs_off + len(shstrtab) + 7) & ~7
    ehdr = struct.pack(
        "<4sBBBBB7xHHIQQQIHHHHHH",
        b"\x7fELF",
        2,
        1,
        1,
        0,
        0,
        2,
        62,
        1,
        TEXT_BASE,
        64,
        sh_off,
        0,
        64,
        56,
        1,
        64,
        5,
        4,
    )
    phdr = struct.pack(
        "<IIQQQQQQ", 1, 5, text_off, TEXT_BASE, TEXT_BASE, len(text), len(text), 0x1000
    )
    sections = [
        bytes(64),
        struct.pack("<IIQQQQIIQQ", 1, 1, 6, TEXT_BASE, text_off, len(text), 0, 0, 16, 0),
        struct.pack("<IIQQQQIIQQ", 7, 2, 0, 0, sym_off, len(symtab), 3, 1, 8, 24),
        struct.pack("<IIQQQQIIQQ", 15, 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0),
        struct.pack("<IIQQQQIIQQ", 23, 3, 0, 0, shs_off, len(shstrtab), 0, 0, 1, 0),
    ]
    image = bytearray(ehdr + phdr)
    image += bytes(text_off - len(image))
    image += text + symtab + strtab + shstrtab
    image += bytes(sh_off - len(image))
    for section in sections:
        image += section
    return bytes(image)
