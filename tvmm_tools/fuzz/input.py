"""A reader of fuzz input as a stream of choices: the same bytes always make the same
choices, and an exhausted input reads as zeros (so every prefix is a valid program)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Choices:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "little")

    def u8(self) -> int:
        return self.uint(1)

    def below(self, n: int) -> int:
        """A number in [0, n)."""
        if n <= 1:
            return 0
        return self.uint(1 if n <= 256 else 2 if n <= 65536 else 8) % n

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def chance(self, num: int, den: int) -> bool:
        return self.below(den) < num

    def blob(self, max_len: int) -> bytes:
        return self.take(self.below(max_len + 1))

    def int64(self) -> int:
        """An interesting i64 (what the ABI codec can carry): a boundary, small, or raw."""
        kind = self.below(3)
        if kind == 0:
            return self.pick(INTERESTING)
        if kind == 1:
            return self.uint(2)
        value = self.uint(8)
        return value - (1 << 64) if value >> 63 else value


INTERESTING = (0, 1, -1, 2, 7, 8, 0xFF, 0x100, 0xFFF, 0x1000, 0x7FFF, 0xFFFF, 0x10000,
               (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 40), (1 << 40) + 1,
               (1 << 62), (1 << 63) - 1, -(1 << 63))
