"""Ciphertext dictionary (CipherLeaks): match deterministic register ciphertexts.

At ``sev-es`` and ``snp`` the host holds the register save area encrypted block by block,
deterministically and bound only to the slot: the same value in the same register always
gives the same 16 bytes.  The host never learns a value, but it learns when two values are
equal — enough to tell which of two values a constant-time select produced.

The host unmaps the page of the victim's exponent loop (``ladder`` for modexp-ct,
``modexp_square`` for modexp); the fault marks the start of the computation.  From there it
single-steps and keeps every save area, cut into per-register blocks, until the guest
writes its result.  The RIP block identifies the instruction (same RIP, same ciphertext):
a RIP ciphertext seen exactly 64 times is a loop head, and cutting the trace there gives
one segment per exponent bit.  Each (step, register) block that takes exactly two
ciphertexts over the iterations proposes a partition into 1-bits and 0-bits (the mask of
the ladder's conditional swap, the flags after ``bt``, the branch target of
square-and-multiply); the partition most blocks agree on wins, and the exponent's top bit
(always 1) says which ciphertext means 1.  The printed result settles the last bit.

At ``shim`` the state is sealed with AEAD under a fresh nonce: the first two exits share
no block, the dictionary can never match, and the host stops there.
"""

from __future__ import annotations

from tools.attacks._decode import (
    REG_NAMES,
    RIP_SLOT,
    bits_to_guess,
    bits_to_known,
    complete_bits,
    decode_segments,
    fault_page,
    is_console_write,
    page_of,
    printed_result,
    state_slots,
)
from tools.attacks.base import Attack, AttackContext, Outcome
from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import ExitReason
from tvmm.host.hypervisor import HonestHypervisor

LOOP_SYMBOL = {"modexp-ct": "ladder", "modexp": "modexp_square"}
MAX_STEPS = 20_000


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
        target = page_of(ctx.image, LOOP_SYMBOL[ctx.guest])
        host = ctx.host(_DictionaryHost, target=target)
        ctx.launch(host)
        ctx.client.unmap(host.vm, target)
        ctx.record("unmap", gpa=target)
        result = host.run(max_exits=MAX_STEPS + 1_000)
        exits = sum(result.exits.values())
        printed = printed_result(host.devices.console.text)
        notes: dict[str, object] = {"steps": len(host.trace), "deterministic": host.repeats}
        if not host.repeats:
            notes["detail"] = ("sealed state: no ciphertext block repeats between exits, "
                               "the dictionary never matches")
            return Outcome(guess=None, hosts=[host], exits=exits, notes=notes)
        decoded = decode_segments(host.trace, RIP_SLOT)
        if decoded is None:
            notes["detail"] = (f"{len(host.trace)} steps: no register block separates the "
                               "iterations into two classes")
            return Outcome(guess=None, hosts=[host], exits=exits, notes=notes)
        bits, verified = complete_bits(decoded.bits, printed)
        names = ", ".join(sorted({_slot_name(f) for f in decoded.fields}))
        notes.update(verified=verified, votes=decoded.votes, blocks=names,
                     detail=f"{len(host.trace)} steps; {decoded.votes} (step, register) "
                            f"blocks agree on the partition ({names}); "
                            f"{'verified against the printed result' if verified else 'unverified'}")
        return Outcome(guess=bits_to_guess(bits), known=bits_to_known(bits), hosts=[host],
                       exits=exits, notes=notes)


def _slot_name(index: int) -> str:
    return REG_NAMES[index] if index < len(REG_NAMES) else f"slot{index}"


class _DictionaryHost(HonestHypervisor):
    def __init__(self, *args, target: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.target = target
        self.stepping = False
        self.trace: list[tuple[bytes, ...]] = []
        self.repeats: bool | None = None
        self.last: tuple[bytes, ...] | None = None

    def enter(self) -> Reply:
        self.quantum = 1 if self.stepping else 0
        return super().enter()

    def on_exit(self, rec: ExitRecord) -> bool:
        if rec.reason == ExitReason.NPF and fault_page(rec) == self.target and not self.trace:
            self.client.map(self.vm, self.target)
            self.stepping = True
            self.last = state_slots(rec.state)
            return True
        if self.stepping and rec.reason == ExitReason.TIMER:
            slots = state_slots(rec.state)
            if self.repeats is None:
                self.repeats = any(a == b for a, b in zip(slots, self.last or (), strict=False))
                if not self.repeats:
                    self.stepping = False  # fresh-nonce AEAD: nothing will ever match
                    return super().on_exit(rec)
            self.trace.append(slots)
            if len(self.trace) >= MAX_STEPS:
                self.stepping = False
        if is_console_write(rec):
            self.stepping = False  # the result is out: the computation is over
        return super().on_exit(rec)
