"""Register snoop: read the register file the host holds at every exit.

At ``plain`` and ``sev`` the exit record's state is the plaintext save area, so the host
reads the registers whenever the guest stops; the timer makes it stop often.

- modexp, modexp-ct: a timer of 37 instructions (not short for any step policy) stops the
  guest all through the computation; every register value with the top bit set is a
  candidate exponent, and the one that reproduces the printed result is it.
- password: the host feeds the inputs.  It single-steps the early-exit compare of each
  attempt (located in the public binary: ``check_password``), reads the password length
  from the 4th argument register at its entry and, after each byte load, the byte of the
  password just loaded.  Each attempt reveals one more byte: known prefix + filler.

From ``sev-es`` up the state is ciphertext (deterministic, then sealed): the first exit
shows it does not parse, the host stops snooping and makes no guess.
"""

from __future__ import annotations

from collections.abc import Iterator

import capstone
from capstone import x86_const

from tools.attacks._decode import (
    EXPONENT_BITS,
    exponent_checks,
    is_console_write,
    is_input_read,
    plain_registers,
    printed_result,
)
from tools.attacks.base import Attack, AttackContext, Outcome
from tvmm.abi.messages import ExitRecord, Reply
from tvmm.guestimage import GuestImage
from tvmm.host.devices import InputDevice
from tvmm.host.hypervisor import HonestHypervisor

SNOOP_QUANTUM = 37  # stops the guest every 37 instructions; ≥ any step policy's minimum


class RegisterSnoop(Attack):
    name = "register-snoop"
    summary = "read the registers at every exit (timer-driven), decode the secret from them"
    victims = ("modexp", "modexp-ct", "password")
    kind = "confidentiality"
    published = ("No published figure: the baseline of docs/attacks.md §2 — leaks at plain and "
                 "sev, where the save area is plaintext (docs/threat-model.md).")

    def run(self, ctx: AttackContext) -> Outcome:
        if ctx.guest == "password":
            return _password(ctx)
        return _exponent(ctx)


class _SnoopHost(HonestHypervisor):
    """Reads the plaintext registers at every exit; stops trying once they are ciphertext."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.readable: bool | None = None
        self.values: set[int] = set()

    def on_exit(self, rec: ExitRecord) -> bool:
        regs = plain_registers(rec.state)
        if self.readable is None:
            self.readable = regs is not None
            if not self.readable:
                self.quantum = 0  # nothing to read: let the guest run undisturbed
        if regs is not None:
            self.values.update(regs.values())
        return super().on_exit(rec)


def _exponent(ctx: AttackContext) -> Outcome:
    host = ctx.host(_SnoopHost, quantum=SNOOP_QUANTUM)
    ctx.launch(host)
    result = host.run(max_exits=20_000)
    printed = printed_result(host.devices.console.text)
    found = [v for v in host.values if v >> (EXPONENT_BITS - 1) and exponent_checks(v, printed)]
    ctx.record("snoop", exits=sum(result.exits.values()), readable=bool(host.readable))
    guess = found[0].to_bytes(EXPONENT_BITS // 8, "little") if found else None
    if not host.readable:
        detail = "the save area is ciphertext at every exit: no register readable"
    elif guess is None:
        detail = f"{len(host.values)} register values read, none reproduces the result"
    else:
        detail = (f"{len(host.values)} distinct register values read at "
                  f"{sum(result.exits.values())} exits; one reproduces the printed result")
    return Outcome(guess=guess, hosts=[host], exits=sum(result.exits.values()),
                   notes={"detail": detail, "readable": bool(host.readable)})


# -- password ----------------------------------------------------------------------------------
def _byte_load(image: GuestImage, symbol: str) -> tuple[int, int, str]:
    """(address, length, 64-bit destination register) of the compare's byte load: the
    first ``movzx reg, byte [mem]`` of ``symbol`` in the public binary."""
    start = image.symbol(symbol)
    size = next(s for a, s, n in image.symbols if n == symbol)
    page = next(p for p in image.pages if p.gpa <= start < p.gpa + len(p.data))
    code = page.data[start - page.gpa : start - page.gpa + size]
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    for insn in md.disasm(code, start):
        if insn.mnemonic == "movzx" and insn.operands[1].type == x86_const.X86_OP_MEM:
            dest = insn.reg_name(insn.operands[0].reg)
            return insn.address, insn.size, _wide(dest)
    raise LookupError(f"no byte load in {symbol}")


def _wide(reg: str) -> str:
    if reg.startswith("e"):
        return "r" + reg[1:]
    if reg.startswith("r") and reg[-1] == "d":
        return reg[:-1]
    return reg


class _PasswordSnoop(HonestHypervisor):
    def __init__(self, *args, entry: int, load: tuple[int, int, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.entry = entry
        self.load_next = load[0] + load[1]
        self.load_reg = load[2]
        self.stepping = False
        self.readable: bool | None = None
        self.pwlen: int | None = None
        self.known = b""
        self.loads: list[int] = []
        self.attempts = 0
        self.devices.input = InputDevice(self.guesses())

    def guesses(self) -> Iterator[bytes]:
        yield b"a"  # any length: the compare's entry shows the real one
        while self.readable and self.pwlen is not None and len(self.known) < self.pwlen:
            yield self.known + b"a" * (self.pwlen - len(self.known))

    def enter(self) -> Reply:
        self.quantum = 1 if self.stepping else 0
        return super().enter()

    def on_exit(self, rec: ExitRecord) -> bool:
        regs = plain_registers(rec.state)
        if self.readable is None:
            self.readable = regs is not None
        if self.stepping and regs is not None:
            if regs["rip"] == self.entry and self.pwlen is None:
                self.pwlen = regs["rcx"]  # the 4th argument: pwlen
            elif regs["rip"] == self.load_next:
                self.loads.append(regs[self.load_reg] & 0xFF)
        if is_console_write(rec) and self.stepping:
            self.stepping = False
            self.attempts += 1
            if len(self.loads) > len(self.known):
                self.known = bytes(self.loads)
            self.loads = []
        alive = super().on_exit(rec)
        if is_input_read(rec) and self.readable:
            self.stepping = True  # step from the completion to the answer
        return alive


def _password(ctx: AttackContext) -> Outcome:
    load = _byte_load(ctx.image, "check_password")
    host = ctx.host(_PasswordSnoop, entry=ctx.image.symbol("check_password"), load=load)
    ctx.launch(host)
    result = host.run(max_exits=200_000)
    exits = sum(result.exits.values())
    ctx.record("snoop", attempts=host.attempts, known=len(host.known))
    if not host.readable:
        return Outcome(guess=None, hosts=[host], exits=exits, notes={
            "detail": "the save area is ciphertext: no register readable", "readable": False})
    guess = host.known if host.known else None
    return Outcome(guess=guess, hosts=[host], exits=exits, notes={
        "detail": f"length {host.pwlen} from the compare's argument, {len(host.known)} "
                  f"bytes read from the byte load in {host.attempts} attempts",
        "readable": True, "attempts": host.attempts})
