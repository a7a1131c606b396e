"""Ciphertext dictionary (CipherLeaks): match deterministic register ciphertexts.

At ``sev-es`` and ``snp`` the host holds the register save area encrypted block by block,
deterministically and bound only to the slot: the same value in the same register always
gives the same 16 bytes.  The host never learns a value, but it learns when two values are
equal — enough to tell which of two values a constant-time select produced.

The host unmaps the victim's secrets page (its public GPA); the fault marks where the
secret starts to matter.  From there it single-steps and keeps every save area, cut into
per-register blocks, until the guest writes its result.  The RIP block identifies the
instruction (same RIP, same ciphertext): a RIP block seen once per bit of the declared
secret is a loop head, and cutting the trace there gives one segment per bit.  Each
(step, register) block that takes exactly two ciphertexts over the iterations proposes a
partition into two classes (the mask of a ladder's conditional swap, the flags after a
bit test, the branch target of square-and-multiply); the partition most blocks agree on
wins (tvmm_tools.attacks._decode.decode_segments), named relative to the first iteration.
Which bit each iteration is and which class is a 1 the host learns on its own copies at
``plain`` holding random secrets it chose (the same equalities hold between plaintexts):
the order (first iteration the lowest or the highest bit) and polarity that fit every
profile.  Where the first iteration's bit varies with the secret, the classes are known
only up to swapping them: two candidates, ranked.

At ``shim`` the state is sealed with AEAD under a fresh nonce: the first two exits share
no block, the dictionary can never match, and the host stops there.
"""

from __future__ import annotations

import random

from tvmm.abi.guest import SECRETS_GPA
from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import ExitReason
from tvmm.host.hypervisor import HonestHypervisor
from tvmm_tools.attacks._decode import (
    RIP_SLOT,
    decode_segments,
    fault_page,
    is_console_write,
    state_slots,
)
from tvmm_tools.attacks._profile import cached_profiles, declared_secret_bytes, own_launch
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, not_applicable

MAX_STEPS = 20_000
PROFILES = 3


class CipherDictionary(Attack):
    name = "cipher-dictionary"
    summary = ("match deterministic VMSA ciphertexts across single steps to tell which of "
               "two values a select produced (CipherLeaks)")
    victims = ("modexp-ct", "modexp")
    kind = "confidentiality"
    published = ("CipherLeaks (Li et al., USENIX Security 2021): SEV-ES/SNP save-area "
                 "ciphertext is deterministic, so the host matches a ciphertext to a value "
                 "it saw before (docs/attacks.md §3; no figure quoted there).")

    def run(self, ctx: AttackContext) -> Outcome:
        nbytes = declared_secret_bytes(ctx.guest)
        if nbytes == 0:
            return not_applicable("the victim declares no secret")
        host = ctx.host(_DictionaryHost)
        ctx.launch(host)
        host.start()
        ctx.record("unmap", gpa=SECRETS_GPA)
        result = host.run(max_exits=MAX_STEPS + 1_000)
        exits = sum(result.exits.values())
        notes: dict[str, object] = {"steps": len(host.events), "deterministic": host.repeats}
        if not host.repeats:
            notes["detail"] = ("sealed state: no ciphertext block repeats between exits, "
                               "the dictionary never matches")
            return Outcome(guess=None, hosts=[host], exits=exits, notes=notes)
        nbits = 8 * nbytes
        rng = random.Random(2)  # the attacker's own secrets, fixed so the profile is reused
        chosen = [(f"random{i}", rng.randbytes(nbytes)) for i in range(PROFILES)]
        profiles, spent = cached_profiles(ctx, "cipher-dictionary", chosen,
                                          lambda secret: _own(ctx, secret, nbits))
        labels = _labels(host.events, nbits)
        fit = _orientation(profiles, nbits)
        if labels is None or fit is None:
            why = ("no register block separates the iterations into two classes"
                   if labels is None else "no bit order fits the own profiled runs")
            notes["detail"] = f"{len(host.events)} steps: {why}"
            return Outcome(guess=None, hosts=[host], exits=exits + spent, notes=notes)
        order, shift, flip, anchored = fit
        guess, known = 0, 0
        for i, label in enumerate(labels):
            j = _bit_of(i, order, shift, nbits)
            if label is not None and 0 <= j < nbits:
                known |= 1 << j
                guess |= (label ^ flip) << j
        raw, mask = guess.to_bytes(nbytes, "little"), known.to_bytes(nbytes, "little")
        other = (guess ^ known).to_bytes(nbytes, "little")
        notes.update(known_bits=bin(known).count("1"), order=order, anchored=anchored,
                     profile="cached" if spent == 0 else f"{len(profiles)} own runs",
                     detail=f"{len(host.events)} steps; {bin(known).count('1')} of {nbits} "
                            f"bits in two classes, iteration {-shift if shift < 0 else 0} "
                            f"the {'lowest' if order == 'lsb' else 'highest'} bit"
                            + ("" if anchored else " (classes known up to a swap: two "
                               "candidates)"))
        return Outcome(guess=raw, known=mask, candidates=None if anchored else [raw, other],
                       hosts=[host], exits=exits + spent, notes=notes)


def _labels(trace: list, nbits: int) -> list[int | None] | None:
    """One class per iteration, 1 for the first iteration's (decode_segments)."""
    decoded = decode_segments(trace, RIP_SLOT, nbits=nbits) if trace else None
    return decoded.bits if decoded is not None else None


def _bit_of(i: int, order: str, shift: int, nbits: int) -> int:
    """The secret bit iteration ``i`` shows under a fit (may fall outside the secret)."""
    return i + shift if order == "lsb" else nbits - 1 - i - shift


def _orientation(profiles: list[tuple[bytes, list]], nbits: int
                 ) -> tuple[str, int, int, bool] | None:
    """(order, shift, polarity, anchored) that maps every profile's classes onto its
    secret: iteration i shows bit ``_bit_of(i)`` (a loop head cut mid-iteration shifts
    them by one), class 1 is bit value 1 ^ polarity.  Anchored when one polarity fits
    every profile (the first iteration's bit does not vary: the guest forces it), else
    the polarity is relative to the first iteration's bit.  Anchored fits first."""
    fits = []
    for order in ("msb", "lsb"):
        for shift in (0, 1, -1):
            polarities, ok = set(), True
            for secret, labels in profiles:
                value = int.from_bytes(secret, "little")
                flips = {lab ^ (value >> j & 1) for i, lab in enumerate(labels)
                         if i > 0 and lab is not None  # iteration 0: class 1 by construction
                         and 0 <= (j := _bit_of(i, order, shift, nbits)) < nbits}
                if len(flips) != 1:
                    ok = False
                    break
                polarities.add(flips.pop())
            if ok and all(labels for _s, labels in profiles):
                anchored = len(polarities) == 1
                fits.append((not anchored, order, shift,
                             polarities.pop() if anchored else 0, anchored))
    return min(fits)[1:] if fits else None


def _own(ctx: AttackContext, secret: bytes, nbits: int) -> tuple[list, int]:
    """The classes of the iterations of the attacker's own copy holding ``secret``."""
    host = ctx.host(_DictionaryHost)
    own_launch(ctx, host, secret)
    host.start()
    host.run(max_exits=MAX_STEPS + 1_000)
    host.destroy()  # the attacker's own VM: not for the judge
    return _labels(host.events, nbits) or [], sum(host.exits.values())


class _DictionaryHost(HonestHypervisor):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stepping = False
        self.started = False
        self.finished = False
        self.events: list[tuple[bytes, ...]] = []
        self.repeats: bool | None = None
        self.last: tuple[bytes, ...] | None = None

    def start(self) -> None:
        self.client.unmap(self.vm, SECRETS_GPA)

    def enter(self) -> Reply:
        self.quantum = 1 if self.stepping else 0
        return super().enter()

    def on_exit(self, rec: ExitRecord) -> bool:
        if (rec.reason == ExitReason.NPF and fault_page(rec) == SECRETS_GPA
                and not self.started):
            self.client.map(self.vm, SECRETS_GPA)
            self.stepping = self.started = True
            self.last = state_slots(rec.state)
            return True
        if self.stepping and rec.reason == ExitReason.TIMER:
            slots = state_slots(rec.state)
            if self.repeats is None:
                self.repeats = any(a == b for a, b in zip(slots, self.last or (), strict=False))
                if not self.repeats:
                    self.stepping = False  # fresh-nonce AEAD: nothing will ever match
                    return super().on_exit(rec)
            self.events.append(slots)
            if len(self.events) >= MAX_STEPS:
                self.stepping = False
        if self.stepping and is_console_write(rec):
            self.stepping = False  # the result is out: the computation is over
            self.finished = True
        return super().on_exit(rec)
