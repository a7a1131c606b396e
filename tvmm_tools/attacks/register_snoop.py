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
- A victim that reads input lines: the host feeds the inputs and single-steps each attempt
  from the read to the answer.  Where the secret's bytes pass through a register it learns
  on its own copies (at ``plain``, secrets it chose, each fed attempts with its first 0, 1
  and 2 bytes right, then filler): the (RIP, register) whose low byte, at the i-th step
  ending at that RIP, is the secret's byte i for every byte matched and the first one
  that was not — a byte the victim loads to compare, not the attacker's input.  On the
  victim each attempt then shows one more byte (known prefix + filler), up to the
  declared size.  No symbol or routine name is used.

From ``sev-es`` up the state is ciphertext (deterministic, then sealed): the first exit
shows it does not parse, the host stops snooping and makes no guess.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from tvmm.abi.messages import ExitRecord, Reply
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
FILLER = b"\x01"  # what the attacker types where it knows nothing yet
PROFILE_PREFIXES = 3  # own attempts per profiled secret: 0, 1, 2 bytes right, then FILLER


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
            return _lines(ctx)
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


# -- input-driven victims -------------------------------------------------------------------
def _lines_profile(nbytes: int) -> list[tuple[str, bytes]]:
    """The attacker's chosen secrets for profiling an input-driven victim: printable bytes,
    none equal to FILLER, from a fixed stream (the profile is kept and reused)."""
    rng = random.Random(2)
    return [(f"chosen{i}", bytes(rng.randrange(0x21, 0x7F) for _ in range(nbytes)))
            for i in range(2)]


class _LineSnoop(HonestHypervisor):
    """Feeds input lines (``lines(host)``: read lazily, so it may look at what the host
    has learned), single-steps each attempt from the read to the answer and keeps, at
    every step, RIP and the low byte of every register."""

    def __init__(self, *args, lines: Callable[[_LineSnoop], Iterator[bytes]],
                 after: Callable[[_LineSnoop], None] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stepping = False
        self.readable: bool | None = None
        self.attempts: list[list[tuple[int, tuple[int, ...]]]] = []
        self.after = after
        self.devices.input = InputDevice(lines(self))

    def enter(self) -> Reply:
        self.quantum = 1 if self.stepping else 0
        return super().enter()

    def on_exit(self, rec: ExitRecord) -> bool:
        regs = plain_registers(rec.state)
        if self.readable is None:
            self.readable = regs is not None
        if self.stepping and regs is not None:
            self.attempts[-1].append((regs["rip"], tuple(regs[n] & 0xFF for n in REG_NAMES)))
        if is_console_write(rec) and self.stepping:
            self.stepping = False
            if self.after is not None:
                self.after(self)
        alive = super().on_exit(rec)
        if is_input_read(rec) and self.readable:
            self.stepping = True  # step from the completion to the answer
            self.attempts.append([])
        return alive


def _at(attempt: list, rip: int, reg: int) -> list[int]:
    """The low byte of register ``reg`` at each step of ``attempt`` that ended at ``rip``."""
    return [values[reg] for r, values in attempt if r == rip]


def _own_lines(ctx: AttackContext, secret: bytes) -> tuple[list, int]:
    """An own copy holding ``secret``, fed its first j bytes then FILLER, for j = 0, 1, 2:
    each attempt's steps (the profile's events)."""
    n = len(secret)
    tries = [secret[:j] + FILLER * (n - j) for j in range(min(PROFILE_PREFIXES, n))]
    host = ctx.host(_LineSnoop, lines=lambda _h: iter(tries))
    own_launch(ctx, host, secret)
    host.run(max_exits=MAX_EXITS)
    host.destroy()  # the attacker's own VM: not for the judge
    return host.attempts[: len(tries)], sum(host.exits.values())  # not the end of input


def _byte_home(profiles: list[tuple[bytes, list]]) -> tuple[int, int] | None:
    """(RIP, register) where, on every own run, the register's low byte at the i-th step
    ending at that RIP is the secret's byte i for every byte the attempt's input matched
    and the first it did not (so it is the secret's byte, not the input's); None if no
    such place.  The earliest such step of the first profile."""
    _secret, attempts0 = profiles[0]
    if not attempts0:
        return None
    for rip, _values in attempts0[-1]:
        for reg in range(len(REG_NAMES)):
            if all(len(seen := _at(attempt, rip, reg)) > j
                   and seen[: j + 1] == list(secret[: j + 1])
                   for secret, attempts in profiles
                   for j, attempt in enumerate(attempts)):
                return rip, reg
    return None


def _lines(ctx: AttackContext) -> Outcome:
    nbytes = declared_secret_bytes(ctx.guest)
    profiles, spent = cached_profiles(ctx, "register-snoop-lines", _lines_profile(nbytes),
                                      lambda secret: _own_lines(ctx, secret))
    home = _byte_home(profiles)
    if home is None:
        return not_applicable("no register carries the secret's bytes on own profiled runs",
                              exits=spent)
    rip, reg = home
    known = bytearray()

    def guesses(host: _LineSnoop) -> Iterator[bytes]:
        yield FILLER * nbytes
        while host.readable and len(known) < nbytes:
            before = len(known)
            yield bytes(known) + FILLER * (nbytes - len(known))
            if len(known) == before:
                return  # no progress: the place read is not the secret's here

    def read(host: _LineSnoop) -> None:
        loads = _at(host.attempts[-1], rip, reg)[:nbytes]
        if len(loads) > len(known):
            known[:] = bytes(loads)

    host = ctx.host(_LineSnoop, lines=guesses, after=read)
    ctx.launch(host)
    result = host.run(max_exits=200_000)
    exits = sum(result.exits.values()) + spent
    ctx.record("snoop", attempts=len(host.attempts), known=len(known))
    if not host.readable:
        return Outcome(guess=None, hosts=[host], exits=exits, notes={
            "detail": "the save area is ciphertext: no register readable", "readable": False})
    guess = bytes(known).ljust(nbytes, b"\0") if known else None
    mask = (b"\xff" * len(known)).ljust(nbytes, b"\0") if known else None
    return Outcome(guess=guess, known=mask, hosts=[host], exits=exits, notes={
        "detail": f"{len(known)} of {nbytes} bytes read from {REG_NAMES[reg]} at RIP "
                  f"{rip:#x} (found on own profiled runs) in {len(host.attempts)} attempts",
        "readable": True, "attempts": len(host.attempts)})
