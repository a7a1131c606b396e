"""Learning a victim's leak from the attacker's own profiling runs, and decoding with it.

An attack that observes a trace of events (faulting pages, instruction counts, RIPs…)
learns how that trace depends on the secret the way a real attacker profiles a copy of
the public binary: it runs its OWN copies with secrets it chose and compares the traces.
Nothing here knows any guest: the structure comes from the profiles alone.

The profiling secrets (``profile_secrets``) are all zeros, all ones, and for each bit m of
a bit's index the secret whose bits j have index bit m set (and its complement).  A trace
is cut into segments at a *head* (an event seen equally often whatever the secret; or
every event a segment of its own), so that the segments line up across secrets.  A
segment that differs from the all-zeros run under the flip of the bits whose index has
bit m set, but not under the complement, depends on bits whose index has bit m set — the
flips spell out the indices of the bits each segment depends on (``deps``).  What a
segment looks like for each value of its bits is read off the profiles (a table, pooled
over segments: a loop body looks alike in every iteration), and where the table has no
entry an exact affine fit of the segment's length (or instruction count) to the value of
its bits reads loop counts.  The table reads a segment of at most two bits: where the
flips leave an index bit free the bits named may include some the segment does not
depend on, and a handful of profiles could pin those by chance.  Bits no segment depends
on stay unknown; so do bits whose segments disagree.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

Event = Hashable
Content = tuple
EVERY_EVENT = "<every event>"  # the head that makes each event a segment of its own
END = ("<end>",)  # the segment after a trace's last: the run had stopped
MAX_DEPS = 8  # a segment that depends on more bits than this is not decoded
MAX_TABLE_DEPS = 2  # beyond, the flips may name bits it does not depend on: the table
# of a few profiles could pin them by chance, so only an exact affine fit reads them
MAX_HEADS = 24


@dataclass(frozen=True)
class Key:
    """A head that matches every event (what, count) whose ``what`` is ``key``."""

    key: Hashable


def index_bits(nbits: int) -> int:
    return max(1, (nbits - 1).bit_length())


def profile_secrets(nbytes: int) -> list[tuple[str, bytes]]:
    """The attacker's chosen secrets: (label, secret), the all-zeros one first."""
    nbits = 8 * nbytes
    ones = (1 << nbits) - 1
    out = [("zeros", 0), ("ones", ones)]
    for m in range(index_bits(nbits)):
        mask = sum(1 << j for j in range(nbits) if j >> m & 1)
        out += [(f"idx{m}", mask), (f"not{m}", ones ^ mask)]
    return [(label, value.to_bytes(nbytes, "little")) for label, value in out]


def cut(trace: Sequence[Event], head: Hashable) -> list[Content]:
    """The trace cut before each occurrence of ``head`` (a prefix segment first)."""
    if head == EVERY_EVENT:
        return [(e,) for e in trace]
    segments: list[list[Event]] = [[]]
    for e in trace:
        if e == head or (isinstance(head, Key) and isinstance(e, tuple) and e[0] == head.key):
            segments.append([])
        segments[-1].append(e)
    return [tuple(s) for s in segments]


def _bit(value: int, j: int) -> int:
    return value >> j & 1


def _feature(content: Content) -> int:
    """A segment's size: the instructions it counted (events carrying a count last), or
    its number of events."""
    counts = [e[-1] for e in content if isinstance(e, tuple) and e and isinstance(e[-1], int)]
    return sum(counts) if counts else len(content)


@dataclass(frozen=True)
class Line:
    """feature = a + b·value, but for the values seen off it (feature -> value)."""

    a: Fraction
    b: Fraction
    off: dict[int, int]

    def value(self, feature: int, limit: int) -> int | None:
        v = (feature - self.a) / self.b
        on = v.denominator == 1 and 0 <= v < limit and int(v) not in self.off.values()
        if feature in self.off:
            return None if on else self.off[feature]  # both: ambiguous
        return int(v) if on else None


@dataclass
class Model:
    head: Hashable
    nbits: int
    nsegs: int
    deps: dict[int, tuple[int, ...]]  # segment index -> the bits it depends on
    table: dict[tuple[int, Content], set[tuple[int, ...]]]  # (len(deps), content) -> values
    linear: dict[int, Line] = field(default_factory=dict)  # segment -> its affine fit

    @property
    def covered(self) -> set[int]:
        return {j for d in self.deps.values() for j in d}

    def read(self, seg: int, content: Content) -> dict[int, int]:
        """The bits segment ``seg`` showing ``content`` determines."""
        deps = self.deps[seg]
        values = self.table.get((len(deps), content)) if len(deps) <= MAX_TABLE_DEPS else None
        if not values and seg in self.linear:
            v = self.linear[seg].value(_feature(content), 1 << len(deps))
            if v is not None:
                values = {tuple(v >> k & 1 for k in range(len(deps)))}
        if not values:
            return {}
        return {j: next(iter(seen)) for k, j in enumerate(deps)
                if len(seen := {v[k] for v in values}) == 1}


def learn(profiles: Sequence[tuple[bytes, Sequence[Event]]], nbits: int) -> Model | None:
    """The model that reads the most bits from these profiles (secret, trace), the first
    profile the all-zeros one and the rest as ``profile_secrets`` orders them; None when
    no segment of any cut depends on the secret."""
    secrets = [int.from_bytes(s, "little") for s, _ in profiles]
    traces = [t for _, t in profiles]
    best: tuple[int, int, Model] | None = None
    for head in _heads(traces):
        model = _learn_at(secrets, traces, nbits, head)
        if model is None:
            continue
        score = (_self_check(model, secrets, traces), len(model.covered))
        if best is None or score > best[:2]:
            best = (*score, model)
    return best[2] if best is not None and best[0] > 0 else None


def _heads(traces: Sequence[Sequence[Event]]) -> list[Hashable]:
    """EVERY_EVENT, then events seen equally often (≥ 2) in every trace, earliest first."""
    counts = [Counter(t) + Counter(Key(e[0]) for e in t if isinstance(e, tuple) and e)
              for t in traces]
    first: dict[Hashable, int] = {}
    for i, e in enumerate(traces[0]):
        first.setdefault(e, i)
        if isinstance(e, tuple) and e:
            first.setdefault(Key(e[0]), i)
    same = [e for e, n in counts[0].items() if n >= 2 and all(c[e] == n for c in counts[1:])]
    same.sort(key=first.__getitem__)
    return [EVERY_EVENT, *same[:MAX_HEADS]]


def _learn_at(secrets: list[int], traces: Sequence[Sequence[Event]], nbits: int,
              head: Hashable) -> Model | None:
    cuts = [cut(t, head) for t in traces]
    nsegs = max(len(c) for c in cuts)
    if any(len(c) != nsegs for c in cuts):
        if head != EVERY_EVENT:
            return None  # the segments do not line up across secrets
        cuts = [c + [END] * (nsegs - len(c)) for c in cuts]  # a run that stopped early
    ones = (1 << nbits) - 1
    index = {s: i for i, s in enumerate(secrets)}
    deps: dict[int, tuple[int, ...]] = {}
    for i in range(nsegs):
        if all(c[i] == cuts[0][i] for c in cuts):
            continue
        for base in (0, ones):  # flips from all zeros (one bit shows), from all ones (all must)
            bits = _depends(i, cuts, index, base, nbits)
            if bits is not None:
                deps[i] = bits
                break
    if not deps:
        return None
    table: dict[tuple[int, Content], set[tuple[int, ...]]] = defaultdict(set)
    points: dict[int, set[tuple[int, int]]] = defaultdict(set)
    for secret, segs in zip(secrets, cuts, strict=True):
        for i, d in deps.items():
            value = tuple(_bit(secret, j) for j in d)
            table[(len(d), segs[i])].add(value)
            if len(d) > 1:
                points[i].add((sum(v << k for k, v in enumerate(value)), _feature(segs[i])))
    return Model(head, nbits, nsegs, deps, dict(table), _fit(points))


def _depends(i: int, cuts: list[list[Content]], index: dict[int, int], base: int,
             nbits: int) -> tuple[int, ...] | None:
    """The bits segment ``i`` depends on, read from which flips of ``base`` change it: a
    flip of the bits whose index has bit m set (and not of the others) fixes bit m of
    theirs.  None when neither flip changes it, or it would name more than MAX_DEPS."""
    ones = (1 << nbits) - 1
    if base not in index:
        return None
    ref = cuts[index[base]][i]
    pattern: list[int | None] = []
    for m in range(index_bits(nbits)):
        mask = sum(1 << j for j in range(nbits) if j >> m & 1)
        a = base ^ mask in index and cuts[index[base ^ mask]][i] != ref
        b = base ^ ones ^ mask in index and cuts[index[base ^ ones ^ mask]][i] != ref
        if not a and not b:
            return None
        pattern.append(1 if a and not b else 0 if b and not a else None)
    bits = tuple(j for j in range(nbits)
                 if all(p is None or (j >> m & 1) == p for m, p in enumerate(pattern)))
    return bits if 0 < len(bits) <= MAX_DEPS else None


def _fit(points: dict[int, set[tuple[int, int]]]) -> dict[int, Line]:
    """Per segment of several bits: feature = a + b·value through the two largest values,
    where it holds exactly for ≥ 3 values of its bits and misses at most one (a loop that
    leaves at once runs a shorter path): that one is kept as seen."""
    out = {}
    for seg, pts in points.items():
        ordered = sorted(pts)
        if len({x for x, _ in ordered}) != len(ordered) or len(ordered) < 4:
            continue
        (x0, y0), (x1, y1) = ordered[-2], ordered[-1]
        b = Fraction(y1 - y0, x1 - x0)
        a = y0 - b * x0
        off = {y: x for x, y in ordered if a + b * x != y}
        if b != 0 and len(off) <= 1 and len(ordered) - len(off) >= 3:
            out[seg] = Line(a, b, off)
    return out


def _self_check(model: Model, secrets: list[int], traces: Sequence[Sequence[Event]]) -> int:
    """Bits the model reads correctly from its own profiles, minus those it reads wrong."""
    score = 0
    for secret, trace in zip(secrets, traces, strict=True):
        bits, _known = decode(model, trace)
        for j, v in bits.items():
            score += 1 if v == _bit(secret, j) else -4
    return score


def decode(model: Model, trace: Sequence[Event], complete: bool = True
           ) -> tuple[dict[int, int], int]:
    """(bit index -> value for each bit the trace determines, segments read).  A trace
    cut short (``complete`` False, or fewer segments than the model's) loses its last,
    partial segment."""
    segs = cut(trace, model.head)
    if model.head == EVERY_EVENT and complete and len(segs) <= model.nsegs:
        segs += [END] * (model.nsegs - len(segs))  # it stopped early, as profiles did
    usable = len(segs) if complete and len(segs) == model.nsegs else max(0, min(
        len(segs), model.nsegs) - 1)
    votes: dict[int, set[int]] = defaultdict(set)
    for i in range(usable):
        if i in model.deps:
            for j, v in model.read(i, segs[i]).items():
                votes[j].add(v)
    return {j: next(iter(v)) for j, v in votes.items() if len(v) == 1}, usable


def to_guess(bits: dict[int, int], nbytes: int) -> tuple[bytes, bytes]:
    """(guess, known mask) of a secret of ``nbytes`` bytes: bit j is bit j % 8 of byte
    j // 8 (the judge's bit order); unknown bits are 0 in both."""
    guess, known = 0, 0
    for j, v in bits.items():
        if j < 8 * nbytes:
            known |= 1 << j
            guess |= v << j
    return guess.to_bytes(nbytes, "little"), known.to_bytes(nbytes, "little")
