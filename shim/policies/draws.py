"""The policies' random draws, from the OS: a host must not be able to predict a jitter.

A generator seeded from the run's seed (public) would let the host compute every
extension; a Mersenne Twister seeded from the OS is still predictable from 624 observed
outputs.  So each draw is 53 bits of the OS's CSPRNG, fetched 4 KiB at a time: a
getrandom call per entry costs ~1.2 µs, a pop from the pool ~0.1 µs.  Tests that need
exact draws pass their own object with a ``random()`` method (a ``random.Random``).
"""

from __future__ import annotations

import os
from array import array
from typing import Protocol

_POOL = 512  # draws per refill (4 KiB of OS randomness)
_SCALE = 2.0 ** -53


class Draws(Protocol):
    def random(self) -> float:
        """A float in [0, 1)."""
        ...


class OsDraws:
    """``random()`` from os.urandom, buffered."""

    __slots__ = ("_pool",)

    def __init__(self) -> None:
        self._pool: list[float] = []

    def random(self) -> float:
        pool = self._pool
        if not pool:
            pool.extend((word >> 11) * _SCALE for word in array("Q", os.urandom(8 * _POOL)))
        return pool.pop()
