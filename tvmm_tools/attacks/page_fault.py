"""Page-fault controlled channel (Xu, Cui, Peinado, S&P 2015) on any victim.

The host takes its targets from the victim's public image: its code pages and its data
pages.  From the first read of the secrets page (unmapped at launch, at its public GPA)
to the first console write it keeps exactly one code page mapped — at each fault it maps
the faulting page and unmaps the others, so every call or return between code pages
faults — and every data page unmapped, mapping a faulting one for a single instruction
(a one-instruction timer) and unmapping it again, so every access to it faults.  The
sequence of faulting pages is the trace.

Which pages spell which bits it learns by profiling (tvmm_tools.attacks._learn): it launches
its own copies of the public image at ``plain`` with secrets it chose and traces them the
same way.  Square-and-multiply shows ⟨sq, main, mul, main⟩ for a 1 and ⟨sq, main⟩ for a
0; a call per bit to one of two pages shows the page; a lookup or a store per bit or
nibble shows its data page — nothing of this is written here.  Bits no fault depends on
are reported unknown (``Outcome.known``).

Up to ``snp`` the exit shows the faulting GPA; at ``shim`` only its page number, which is
all this channel needs — the shim's fault policy is what answers: the TDX rule (more than
6 faults at one RIP list the faulting pages, entry refused until they are mapped) makes
the host map everything and stop; the fault budget (64 faults per window of retired
instructions) and the step policy (the one-instruction quanta) kill the VM.  The bits read
before are the residual leakage.
"""

from __future__ import annotations

import functools

from tvmm_tools.attacks._learn import decode, learn, to_guess
from tvmm_tools.attacks._profile import (
    Tracer,
    code_pages,
    data_pages,
    declared_secret_bytes,
    profiles,
    trace_victim,
)
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, not_applicable

MAX_EXITS = 30_000


class PageFault(Attack):
    name = "page-fault"
    summary = ("fault on every call between the victim's code pages and every access to its "
               "data pages: the fault sequence, learned on own copies, spells the secret")
    victims = ("modexp", "modexp-ct", "branches", "ttable", "scan", "stores",
               "gcry_modexp", "mbedtls_modexp", "spellcheck")
    kind = "confidentiality"
    published = ("Xu, Cui, Peinado (S&P 2015): page-fault sequences recovered text and image "
                 "outlines from Hunspell, FreeType and libjpeg; Van Bulck et al. (USENIX "
                 "Security 2017): accessed/dirty bits leak 485 of 512 EdDSA bits in one run "
                 "without a fault (docs/attacks.md §5).")

    def run(self, ctx: AttackContext) -> Outcome:
        nbytes = declared_secret_bytes(ctx.guest)
        if nbytes == 0:
            return not_applicable("the victim declares no secret")
        code, data = code_pages(ctx.image), data_pages(ctx.image)
        if len(code) + len(data) < 2:
            return not_applicable("the image has fewer than two pages to tell apart")
        make = functools.partial(ctx.host, Tracer, code=code, data=data)
        profs, spent = profiles(ctx, "page-fault", make, nbytes, MAX_EXITS)
        model = learn(profs, 8 * nbytes)
        if model is None:
            return not_applicable(f"no page fault depends on the secret on {len(profs)} "
                                  "own profiled runs", exits=spent)
        host = trace_victim(ctx, make, MAX_EXITS)
        how = host.run_result.how if host.run_result else "?"
        bits, segs = decode(model, host.events, complete=host.finished)
        guess, known = to_guess(bits, nbytes)
        notes: dict[str, object] = {
            "faults": len(host.events), "run": how, "refused": host.refused,
            "known_bits": len(bits), "learnable_bits": len(model.covered),
            "profile": "cached" if spent == 0 else f"{len(profs)} own runs, {spent} exits",
            "detail": f"{len(host.events)} faults ({how}); {len(bits)} of {8 * nbytes} bits "
                      f"read from {segs} segments (learnable on own copies: "
                      f"{len(model.covered)})"
                      + (f"; entry refused {host.refused}x" if host.refused else "")}
        if host.refused:
            notes["blocked"] = True
        return Outcome(guess=guess if bits else None, known=known if bits else None,
                       hosts=[host], exits=sum(host.exits.values()) + spent, notes=notes)
