"""Register snoop: read the register file the host holds at every exit.

At ``plain`` and ``sev`` the exit record's state is the plaintext save area, so the host
reads the registers whenever the guest stops; the timer makes it stop often.

- A victim that computes on its secret: a timer of 37 instructions (not short for any
  step policy) stops the guest from launch on, and the host keeps every register at every
  exit.  Where the secret sits it learns on its own copies (launched at ``plain`` with
  secrets it chose: all zeros, all ones and two of its random stream): the guest loads
  each 8-byte word of its secret into a register before the secret can change its path,
  so that register at that exit — the first at which some register's bits follow the
  chosen secret's — is the same whatever the secret.  It reads the victim's register
  there; the bits that followed the secret in every profile are known, the others (a bit
  the guest forces, say) unknown.
- A victim that reads input lines and has a compare routine in its public symbols
  (``check_password``): the host feeds the inputs.  It single-steps the early-exit compare
  of each attempt, reads the password length from the 4th argument register at its entry
  and, after each byte load (the first ``movzx`` of the routine), the byte just loaded.
  Each attempt reveals one more byte: known prefix + filler.

From ``sev-es`` up the state is ciphertext (deterministic, then sealed): the first exit
shows it does not parse, the host stops snooping and makes no guess.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import capstone
from capstone import x86_const

from tvmm.abi.messages import ExitRecord, Reply
from tvmm.guestimage import GuestImage
from tvmm.host.devices import InputDevice
from tvmm.host.hypervisor import HonestHypervisor
from tvmm_tools.attacks._decode import (
    REG_NAMES,
    is_console_write,
    is_input_read,
    plain_registers,
)
from tvmm_tools.attacks._profile import (
    asks_for_input,
    cached_profiles,
    declared_secret_bytes,
    own_launch,
)
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, not_applicable

SNOOP_QUANTUM = 37  # stops the guest every 37 instructions; ≥ any step policy's minimum
MAX_EXITS = 20_000
MIN_TRACKING = 16  # bits of a word that must follow the secret to call a register its home
COMPARE = "check_password"


class RegisterSnoop(Attack):
    name = "register-snoop"
    summary = "read the registers at every exit (timer-driven), decode the secret from them"
    victims = ("modexp", "modexp-ct", "password")
    kind = "confidentiality"
    published = ("No published figure: the baseline of docs/attacks.md §2 — leaks at plain and "
                 "sev, where the save area is plaintext (docs/threat-model.md).")

    def run(self, ctx: AttackContext) -> Outcome:
        if declared_secret_bytes(ctx.guest) == 0:
            return not_applicable("the victim declares no secret")
        if asks_for_input(ctx):
            if not any(name == COMPARE for _a, _s, name in ctx.image.symbols):
                return not_applicable(f"an input-driven victim without a {COMPARE} routine "
                                      "in its symbols")
            return _password(ctx)
        return _words(ctx)


class _SnoopHost(HonestHypervisor):
    """Reads the plaintext registers at every exit; stops trying once they are ciphertext."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.readable: bool | None = None
        self.trace: list[list[int]] = []

    def on_exit(self, rec: ExitRecord) -> bool:
        regs = plain_registers(rec.state)
        if self.readable is None:
            self.readable = regs is not None
            if not self.readable:
                self.quantum = 0  # nothing to read: let the guest run undisturbed
        if regs is not None:
            self.trace.append([regs[name] for name in REG_NAMES])
        return super().on_exit(rec)


def _own_snoop(ctx: AttackContext, secret: bytes) -> tuple[list, int]:
    host = ctx.host(_SnoopHost, quantum=SNOOP_QUANTUM)
    own_launch(ctx, host, secret)
    host.run(max_exits=MAX_EXITS)
    host.destroy()  # the attacker's own VM: not for the judge
    return host.trace, sum(host.exits.values())


def _word(secret: bytes, w: int) -> int:
    return int.from_bytes(secret[8 * w : 8 * w + 8].ljust(8, b"\0"), "little")


def _homes(profiles: list[tuple[bytes, list]], nbytes: int
           ) -> dict[int, tuple[int, int, int]]:
    """For each word of the secret, (exit, register, mask of the bits that follow it): the
    earliest place where the most bits (at least MIN_TRACKING) follow the secret in every
    profile."""
    homes: dict[int, tuple[int, int, int]] = {}
    length = min(len(t) for _s, t in profiles)
    for w in range((nbytes + 7) // 8):
        width = min(64, 8 * (nbytes - 8 * w))
        full = (1 << width) - 1
        words = [_word(secret, w) for secret, _t in profiles]
        best = (MIN_TRACKING - 1, -1, -1, 0)
        for k in range(length):
            for r in range(len(REG_NAMES)):
                mask = full
                for word, (_secret, trace) in zip(words, profiles, strict=True):
                    mask &= ~(trace[k][r] ^ word)
                n = bin(mask).count("1")
                if n > best[0]:
                    best = (n, k, r, mask)
        if best[1] >= 0:
            homes[w] = best[1:]
    return homes


def _words(ctx: AttackContext) -> Outcome:
    nbytes = declared_secret_bytes(ctx.guest)
    host = ctx.host(_SnoopHost, quantum=SNOOP_QUANTUM)
    ctx.launch(host)
    result = host.run(max_exits=MAX_EXITS)
    exits = sum(result.exits.values())
    ctx.record("snoop", exits=exits, readable=bool(host.readable))
    if not host.readable:
        return Outcome(hosts=[host], exits=exits, notes={
            "detail": "the save area is ciphertext at every exit: no register readable",
            "readable": False})
    rng = random.Random(1)  # the attacker's own choice of secrets, fixed to reuse the profile
    chosen = [("zeros", bytes(nbytes)), ("ones", b"\xff" * nbytes),
              *((f"random{i}", rng.randbytes(nbytes)) for i in range(2))]
    profiles, spent = cached_profiles(ctx, "register-snoop", chosen,
                                      lambda secret: _own_snoop(ctx, secret))
    homes = _homes(profiles, nbytes)
    guess, known = 0, 0
    for w, (k, r, mask) in homes.items():
        if k < len(host.trace):
            guess |= (host.trace[k][r] & mask) << (64 * w)
            known |= mask << (64 * w)
    nknown = bin(known).count("1")
    where = ", ".join(f"word {w}: {REG_NAMES[r]} at exit {k}" for w, (k, r, _m) in homes.items())
    notes = {"readable": True, "known_bits": nknown,
             "profile": "cached" if spent == 0 else f"{len(profiles)} own runs, {spent} exits",
             "detail": f"{len(host.trace)} exits with plaintext registers; "
                       + (f"{nknown} of {8 * nbytes} bits read ({where})" if homes else
                          "no register follows the secret on own profiled runs")}
    return Outcome(guess=guess.to_bytes(nbytes, "little") if nknown else None,
                   known=known.to_bytes(nbytes, "little") if nknown else None,
                   hosts=[host], exits=exits + spent, notes=notes)


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
    try:
        load = _byte_load(ctx.image, COMPARE)
    except LookupError as exc:
        return not_applicable(str(exc))
    host = ctx.host(_PasswordSnoop, entry=ctx.image.symbol(COMPARE), load=load)
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
