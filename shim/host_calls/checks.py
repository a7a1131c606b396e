"""Checks of host operands, applied once to the frozen request, in a fixed order:
type, range, alignment, ownership.  Each refusal names the operand."""

from __future__ import annotations

from enum import Enum

from shim.errors import BadOperand, Malformed
from tvmm.hw.vcpu import PAGE

U63 = (1 << 63) - 1


def integer(name: str, value: object, lo: int = 0, hi: int = U63) -> int:
    if type(value) is int and lo <= value <= hi:
        return value
    if not isinstance(value, int) or isinstance(value, bool):
        raise Malformed(name, f"expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise BadOperand(name, f"{value} is outside [{lo}, {hi}]")
    return value


def enum(name: str, value: object, kind: type[Enum]) -> Enum:
    if not isinstance(value, kind):
        try:
            return kind(value)
        except (ValueError, TypeError):
            raise Malformed(name, f"not a {kind.__name__}: {value!r}") from None
    return value


def raw(name: str, value: object, max_len: int) -> bytes:
    if not isinstance(value, bytes):
        raise Malformed(name, f"expected bytes, got {type(value).__name__}")
    if len(value) > max_len:
        raise BadOperand(name, f"{len(value)} bytes exceed {max_len}")
    return value


def flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise Malformed(name, f"expected a boolean, got {type(value).__name__}")
    return value


def page_aligned(name: str, gpa: int) -> int:
    if gpa % PAGE:
        raise BadOperand(name, f"{gpa:#x} is not 4 KiB aligned")
    return gpa


def page_range(name: str, gpa: int, count: int, memory_size: int) -> None:
    page_aligned(name, gpa)
    if count < 1 or gpa + count * PAGE > memory_size:
        raise BadOperand(name, f"{count} pages at {gpa:#x} leave guest memory")
