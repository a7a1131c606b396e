"""What the host learned at an exit, derived from every field of the outside view.

The viewer must never understate a leak, so nothing here names the fields a level is
expected to fill in: every integer the host got (``outside.fields`` and any other number
in ``outside``, whatever its key) is laid against what the TEE knew — the fault address,
RIP, the instructions retired, the register values — and each relation found is reported.
A fact counts as hidden only when no field relates to it at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from tvmm.tui.registers import registers_of

PAGE_SHIFT = 12
SINCE_PREVIOUS = "instructions since the previous exit"
COUNTS = frozenset({SINCE_PREVIOUS, "retired"})  # facts that are counts, not addresses
_COARSE_SHIFTS = range(PAGE_SHIFT + 1, 31)  # granules above a page up to 1 GiB
_MIN_REGISTER = 0x100  # smaller register values match too much by chance to say anything


class Exposure(IntEnum):
    """How much of a value a field gives away, weakest first."""

    HIDDEN = 0
    COARSENED = 1  # a granule larger than a page
    PAGE = 2  # the page (its number or an address in it), not the offset
    EXACT = 3


@dataclass(frozen=True, slots=True)
class Finding:
    fact: str  # what the TEE knew: "fault address", "rip", "retired", "rax", …
    value: int  # its value inside
    key: str  # the outside field that reveals it, as a path ("fields.gpa_page")
    given: int  # the value the host got
    exposure: Exposure
    how: str  # "exact", "page number", "address in the page", "2 MiB granule", …


def outside_numbers(outside: dict[str, Any] | None) -> Iterator[tuple[str, int]]:
    """Every integer in the outside view with its key path; the state blob is bytes, not a
    number, and is judged separately."""

    def walk(prefix: str, value: Any) -> Iterator[tuple[str, int]]:
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            yield prefix, value
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            for n, v in enumerate(value):
                yield from walk(f"{prefix}[{n}]", v)

    for key, value in (outside or {}).items():
        if key != "state":
            yield from walk(str(key), value)


def address_exposure(address: int, given: int) -> tuple[Exposure, str]:
    """How much of ``address`` the number ``given`` reveals."""
    if given == address:
        return Exposure.EXACT, "exact"
    if given == address >> PAGE_SHIFT:
        return Exposure.PAGE, "page number"
    if given >> PAGE_SHIFT == address >> PAGE_SHIFT:
        return Exposure.PAGE, "address in the page"
    for shift in _COARSE_SHIFTS:
        granule = _granule(shift)
        if given and given == address & ~((1 << shift) - 1):
            return Exposure.COARSENED, f"{granule} granule address"
        if given > 1 and given == address >> shift:
            return Exposure.COARSENED, f"{granule} granule number"
    return Exposure.HIDDEN, "hidden"


def _granule(shift: int) -> str:
    size = 1 << shift
    for unit, bits in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << bits:
            return f"{size >> bits} {unit}"
    return f"{size} B"


def findings(
    inside: dict[str, Any] | None, outside: dict[str, Any] | None, delta: int | None = None
) -> list[Finding]:
    """Every relation between what the TEE knew and a number the host got, strongest first.

    ``delta`` is the instructions retired since the vCPU's previous exit, when known (a
    host that sees it can count instructions, the signal of a single-step attack)."""
    inside = inside or {}
    numbers = list(outside_numbers(outside))
    found: list[Finding] = []
    addresses = [("fault address", inside.get("fault_gpa")), ("rip", inside.get("rip"))]
    for fact, value in addresses:
        if not _is_int(value):
            continue
        for key, given in numbers:
            exposure, how = address_exposure(value, given)
            if exposure:
                found.append(Finding(fact, value, key, given, exposure, how))
    retired = inside.get("retired")
    for fact, value in ((SINCE_PREVIOUS, delta), ("retired", retired)):
        if _is_int(value):
            found += [
                Finding(fact, value, key, given, Exposure.EXACT, "exact")
                for key, given in numbers
                if given == value and value > 0
            ]
    for name, value in registers_of(inside).items():
        if name == "rip" or value < _MIN_REGISTER:
            continue
        found += [
            Finding(name, value, key, given, Exposure.EXACT, "exact")
            for key, given in numbers
            if given == value
        ]
    found.sort(key=lambda f: -f.exposure)
    return found


def fault_exposure(found: list[Finding]) -> Finding | None:
    """The field that gives the most of the fault address away, if any does."""
    return next((f for f in found if f.fact == "fault address"), None)


def registers_in_clear(inside: dict[str, Any] | None, state: str) -> tuple[int, int] | None:
    """How many of the exit's registers the state blob holds in plaintext, and of how many;
    None when the blob is not hex or the exit has no registers.

    The blob's layout is taken from its length against the register count of this very
    exit (the save area's 16-byte slots — value then slot tag — or packed 8-byte words);
    a blob of another length is searched for each register value at every 8-byte
    boundary, so an unknown layout is never reported as hiding the registers."""
    regs = registers_of(inside)
    if not regs:
        return None
    try:
        blob = bytes.fromhex(state)
    except ValueError:
        return None
    n = len(regs)
    stride = 16 if len(blob) == 16 * n else 8 if len(blob) == 8 * n else 0
    if stride:
        words = [int.from_bytes(blob[i * stride : i * stride + 8], "little") for i in range(n)]
        same = sum(value == words[i] for i, value in enumerate(regs.values()))
        return same, n
    present = {
        int.from_bytes(blob[i : i + 8], "little") for i in range(0, len(blob) - 7, 8)
    }
    return sum(value in present for value in regs.values()), n


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
