"""Aggregates over a cell's seeds: median and range of leaked bits, success and detection
k/N, and the 95 % Wilson score interval of the success rate."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from tvmm.judge import Verdict
from tvmm.matrix import outcome_class

WORKS = ("leak", "partial", "tampered")  # classes in which the attack achieved something
Z95 = 1.959963984540054  # the normal quantile of 0.975


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (Wilson 1927); (0, 1) for n = 0.
    Unlike the normal approximation it stays inside [0, 1] and is not empty at k = 0 or n."""
    if n == 0:
        return (0.0, 1.0)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True, slots=True)
class Aggregate:
    """One cell (attack, victim, level, policy) over its seeds, in seed order."""

    attack: str
    victim: str
    level: str
    policy: str
    kind: str
    seeds: tuple[int, ...]
    bits: tuple[float, ...]
    classes: tuple[str, ...]
    detected: int
    exits: tuple[int, ...]
    wall_s: tuple[float, ...]
    details: tuple[str, ...]
    # What an attack that relaunches or counts its faults says it spent, per seed (None
    # where it does not say): the residual per launch and per fault (results.md).
    launches: tuple[int | None, ...] = ()
    faults: tuple[int | None, ...] = ()

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def median_bits(self) -> float:
        return statistics.median(self.bits)

    @property
    def min_bits(self) -> float:
        return min(self.bits)

    @property
    def max_bits(self) -> float:
        return max(self.bits)

    @property
    def successes(self) -> int:
        return sum(1 for c in self.classes if c in WORKS)

    @property
    def success_interval(self) -> tuple[float, float]:
        return wilson(self.successes, self.n)

    @property
    def errors(self) -> int:
        return self.classes.count("error")


def aggregate(items: Iterable[tuple[int, str, Verdict]]) -> list[Aggregate]:
    """(seed, policy, verdict) triples grouped by cell, cells in first-seen order."""
    groups: dict[tuple[str, str, str, str], list[tuple[int, Verdict]]] = {}
    for seed, policy, v in items:
        groups.setdefault((v.attack, v.guest, v.level, policy), []).append((seed, v))
    out = []
    for (attack, victim, level, policy), runs in groups.items():
        runs.sort(key=lambda r: r[0])
        vs = [v for _, v in runs]
        out.append(Aggregate(
            attack=attack, victim=victim, level=level, policy=policy, kind=vs[0].kind,
            seeds=tuple(s for s, _ in runs), bits=tuple(v.leaked_bits for v in vs),
            classes=tuple(outcome_class(v) for v in vs),
            detected=sum(1 for v in vs if v.detected), exits=tuple(v.exits for v in vs),
            wall_s=tuple(v.wall_s for v in vs), details=tuple(v.detail for v in vs),
            launches=tuple(_count(v.notes.get("launches")) for v in vs),
            faults=tuple(_count(v.notes.get("faults")) for v in vs)))
    return out


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
