"""Decoder helpers shared by the confidentiality attacks: public layouts, exponent
bit handling, a two-class segment decoder, and the stepping histogram.

UNTRUSTED like every module here: it knows only what the host knows — the public image,
the documented save-area layout, the public modexp constants — never tvmm.hw or shim.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from tvmm.abi.guest import PAGE_SIZE
from tvmm.abi.messages import ExitRecord
from tvmm.abi.types import Device, ExitReason, Field
from tvmm.guestimage import GuestImage

# -- public layouts ------------------------------------------------------------------------
# The register save area as the host holds it (documented in docs and the VMSA docstring,
# public like AMD's VMSA layout): one 16-byte slot per register, value u64 LE then the
# slot's own address u64 LE, in this order, based at VMSA_GPA + vcpu * size.
REG_NAMES: tuple[str, ...] = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
)
SLOT_SIZE = 16
# After the general registers: FS and GS base, STAR, LSTAR, FMASK, then the 512-byte
# FXSAVE image, eight bytes a slot (docs/exits.md).
EXTENDED_SLOTS = 5 + 512 // 8
STATE_SIZE = SLOT_SIZE * (len(REG_NAMES) + EXTENDED_SLOTS)
RIP_SLOT = REG_NAMES.index("rip")
VMSA_GPA = 0xFFFF_FFFF_F000
_SLOT = struct.Struct("<QQ")

# The modexp victims' public constants (guests/samples/modexp_common.h): the attacker
# sees the printed result, so a candidate exponent can be checked against it.
MODEXP_MODULUS = 0xFFFFFFFFFFFFFFC5
MODEXP_BASE = 0x5DEECE66D
EXPONENT_BITS = 64
_RESULT = re.compile(r"result=0x([0-9a-f]{16})")


def plain_registers(state: bytes, vcpu: int = 0) -> dict[str, int] | None:
    """The register file if ``state`` is a plaintext save area (plain, sev); None when it is
    ciphertext (the slot addresses do not check out) or a sealed blob (wrong size)."""
    if len(state) != STATE_SIZE:
        return None
    base = VMSA_GPA + vcpu * STATE_SIZE
    regs: dict[str, int] = {}
    for i, name in enumerate(REG_NAMES):
        value, addr = _SLOT.unpack_from(state, i * SLOT_SIZE)
        if addr != base + i * SLOT_SIZE:
            return None
        regs[name] = value
    return regs


def state_slots(state: bytes) -> tuple[bytes, ...]:
    """The state cut into 16-byte blocks (one per register at sev-es/snp)."""
    return tuple(state[i : i + SLOT_SIZE] for i in range(0, len(state), SLOT_SIZE))


def page_of(image: GuestImage, symbol: str) -> int:
    return image.symbol(symbol) & ~(PAGE_SIZE - 1)


def fault_page(rec: ExitRecord) -> int | None:
    """The faulting page of an NPF exit: from the full GPA (up to snp) or GPA_PAGE (shim)."""
    gpa = rec.get(Field.GPA)
    if gpa is not None:
        return gpa & ~(PAGE_SIZE - 1)
    page = rec.get(Field.GPA_PAGE)
    return None if page is None else page * PAGE_SIZE


def is_console_write(rec: ExitRecord) -> bool:
    """A console write: hypercall 1 below the shim, a CONSOLE device request at shim."""
    if rec.reason != ExitReason.HYPERCALL:
        return False
    return rec.get(Field.NR) == 1 or rec.get(Field.DEVICE) == Device.CONSOLE


def is_input_read(rec: ExitRecord) -> bool:
    if rec.reason != ExitReason.HYPERCALL:
        return False
    return rec.get(Field.NR) == 4 or rec.get(Field.DEVICE) == Device.INPUT


# -- exponents -------------------------------------------------------------------------------
def bits_to_guess(bits: Sequence[int | None]) -> bytes:
    """Bits most significant first (bits[0] is bit 63); unknown bits guessed as 0."""
    value = 0
    for bit in bits:
        value = (value << 1) | (1 if bit else 0)
    return value.to_bytes(len(bits) // 8, "little")


def bits_to_known(bits: Sequence[int | None]) -> bytes:
    """The Outcome's ``known`` mask for ``bits_to_guess(bits)``: a set bit where the bit was
    read, clear where it is unknown (the judge's key rank counts those as unknown, not as
    guessed 0)."""
    return bits_to_guess([None if b is None else 1 for b in bits])


def printed_result(console: str) -> int | None:
    match = _RESULT.search(console)
    return int(match.group(1), 16) if match else None


def exponent_checks(exponent: int, result: int | None) -> bool:
    return result is not None and pow(MODEXP_BASE, exponent, MODEXP_MODULUS) == result


def complete_bits(bits: list[int | None], result: int | None,
                  max_unknown: int = 12) -> tuple[list[int | None], bool]:
    """Fill up to ``max_unknown`` unknown bits by trying every value against the printed
    result (the attacker knows base, modulus and output).  (bits, verified)."""
    unknown = [i for i, b in enumerate(bits) if b is None]
    if result is None or len(unknown) > max_unknown:
        return bits, False
    fixed = 0
    for bit in bits:
        fixed = (fixed << 1) | (bit or 0)
    n = len(bits)
    for trial in range(1 << len(unknown)):
        value = fixed
        for j, pos in enumerate(unknown):
            if trial >> j & 1:
                value |= 1 << (n - 1 - pos)
        if exponent_checks(value, result):
            return [(value >> (n - 1 - i)) & 1 for i in range(n)], True
    return bits, False


# -- two-class segment decoder -----------------------------------------------------------------
@dataclass
class SegmentDecode:
    bits: list[int | None]
    head: Hashable
    votes: int  # (position, field) pairs that agree with the chosen partition
    candidates: int  # (position, field) pairs that took exactly two values
    fields: set[int] = field(default_factory=set)  # the fields of the agreeing pairs


def decode_segments(trace: Sequence[tuple[Hashable, ...]], key: int,
                    nbits: int = EXPONENT_BITS, max_heads: int = 64) -> SegmentDecode | None:
    """Recover one bit per loop iteration from a stepped trace.

    ``trace`` holds one observation tuple per step (RIPs, register values or ciphertext
    blocks); ``key`` is the field that identifies the instruction (RIP or its ciphertext).
    A loop head is a key value seen exactly ``nbits`` times; the trace is cut at each head
    into segments, one per iteration.  Every (position, field) that takes exactly two
    values over the iterations proposes a partition; the partition most of them agree on
    wins, and the anchor (the exponent's top bit is 1) names its classes.  The last
    segment carries the loop's exit and is classified by the winning pairs only.  When no
    pair separates the iterations (a constant-time loop seen through its control flow)
    the answer is None: no guess is better than a coin toss."""
    counts = Counter(obs[key] for obs in trace)
    heads = [k for k, c in counts.items() if c == nbits]
    order = {}
    for i, obs in enumerate(trace):
        order.setdefault(obs[key], i)
    heads.sort(key=order.__getitem__)
    best: SegmentDecode | None = None
    for head in heads[:max_heads]:
        found = _decode_at(trace, key, head, nbits)
        if found is not None and (best is None or found.votes > best.votes):
            best = found
    return best


def _decode_at(trace: Sequence[tuple[Hashable, ...]], key: int, head: Hashable,
               nbits: int) -> SegmentDecode | None:
    starts = [i for i, obs in enumerate(trace) if obs[key] == head]
    segments = [trace[a:b] for a, b in zip(starts, starts[1:] + [len(trace)], strict=True)]
    body = segments[:-1]
    width = min(len(s) for s in body)
    nfields = len(trace[0])
    votes: Counter = Counter()
    pairs: dict[tuple[int, ...], list[tuple[int, int, Hashable, Hashable]]] = {}
    for pos in range(width):
        for f in range(nfields):
            values = [s[pos][f] for s in body]
            distinct = set(values)
            if len(distinct) != 2:
                continue
            one = values[0]  # the anchor: iteration 0 is the exponent's top bit, a 1
            zero = next(v for v in distinct if v != one)
            labels = tuple(1 if v == one else 0 for v in values)
            votes[labels] += 1
            pairs.setdefault(labels, []).append((pos, f, one, zero))
    if not votes:
        return None
    labels, nvotes = votes.most_common(1)[0]
    last = segments[-1]
    tally = Counter()
    for pos, f, one, zero in pairs[labels]:
        if pos < len(last):
            value = last[pos][f]
            if value == one:
                tally[1] += 1
            elif value == zero:
                tally[0] += 1
    last_bit: int | None = None
    if tally and tally[1] != tally[0]:
        last_bit = 1 if tally[1] > tally[0] else 0
    return SegmentDecode(list(labels) + [last_bit], head, nvotes, sum(votes.values()),
                         {f for _pos, f, _one, _zero in pairs[labels]})


# -- stepping histogram ------------------------------------------------------------------------
@dataclass
class Stepping:
    """Zero / single / multi steps of the entries the attacker armed as single steps.

    An entry counts when it ended at the timer: the TIMER exit carries RETIRED (up to snp),
    the instructions that really retired — 0 is a zero step, 1 a single step, more a multi
    step.  At shim a timer exit shows no count: such an entry is ``uncounted`` (the host
    cannot tell a single step from the shim's extension of it).  An entry that ended
    earlier, by a fault or a hypercall, retired fewer instructions than armed but the host
    is not told how many below plain/sev, so it is counted apart as ``cut``."""

    zero: int = 0
    single: int = 0
    multi: int = 0
    uncounted: int = 0
    cut: int = 0
    retired: list[int] = field(default_factory=list)

    def note(self, armed: int, rec: ExitRecord) -> None:
        if armed != 1:
            return
        if rec.reason != ExitReason.TIMER:
            self.cut += 1
            return
        retired = rec.get(Field.RETIRED)
        if retired is None:
            self.uncounted += 1
            return
        self.retired.append(retired)
        if retired == 0:
            self.zero += 1
        elif retired == 1:
            self.single += 1
        else:
            self.multi += 1

    def histogram(self) -> dict[str, int]:
        return {"zero": self.zero, "single": self.single, "multi": self.multi,
                "uncounted": self.uncounted}
