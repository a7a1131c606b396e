"""The register file of an exit, and what changed since the vCPU's previous exit.

The diff is what makes a single-stepping or counting attack visible by eye: between two
exits one instruction apart only one or two registers move.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

ORDER = "rax rbx rcx rdx rsi rdi rbp rsp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags".split()


@dataclass(frozen=True, slots=True)
class Change:
    name: str
    old: int | None
    new: int | None


def registers_of(inside: dict[str, Any] | None) -> dict[str, int]:
    """The integer registers in an exit's inside view (missing or odd values dropped)."""
    regs = (inside or {}).get("regs")
    if not isinstance(regs, dict):
        return {}
    return {k: v for k, v in regs.items() if isinstance(v, int) and not isinstance(v, bool)}


def diff(old: dict[str, int], new: dict[str, int]) -> list[Change]:
    """Registers whose value differs, in architectural order, then any others by name."""
    names = [n for n in ORDER if n in old or n in new]
    names += sorted((set(old) | set(new)) - set(ORDER))
    return [Change(n, old.get(n), new.get(n)) for n in names if old.get(n) != new.get(n)]


def register_table(
    regs: dict[str, int], changed: set[str] | frozenset[str] = frozenset(), pairs: int = 2
) -> Table:
    """Registers in ``pairs`` name/value column pairs; changed ones highlighted."""
    table = Table.grid(padding=(0, 1))
    for _ in range(pairs):
        table.add_column(style="dim")
        table.add_column(min_width=18)
    names = [n for n in ORDER if n in regs] + sorted(set(regs) - set(ORDER))
    cells: list[Text] = []
    for name in names:
        style = "bold yellow" if name in changed else ""
        value = Text(f"{regs[name]:#x}", style=style, no_wrap=True, overflow="ellipsis")
        cells += [Text(name), value]
    for i in range(0, len(cells), 2 * pairs):
        row = cells[i : i + 2 * pairs]
        table.add_row(*row, *[Text("")] * (2 * pairs - len(row)))
    return table


class RegisterTable:
    """``register_table`` with as many name/value pairs a row as fit the width it is given
    (two, else one): a value is never cut at the pane's edge; in a pane too narrow for
    one whole value it ends in an ellipsis."""

    def __init__(self, regs: dict[str, int], changed: set[str] | frozenset[str] = frozenset()):
        self.regs, self.changed = regs, changed

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        pairs = 2 if options.max_width >= 2 * (_NAME + 1 + _VALUE) + 1 else 1
        yield register_table(self.regs, self.changed, pairs)


_NAME, _VALUE = 6, 18  # "rflags", "0x" and 16 hex digits


def diff_table(changes: list[Change]) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold")
    table.add_column(style="dim")
    table.add_column()
    table.add_column(style="yellow")
    for c in changes:
        table.add_row(c.name, _hex(c.old), "→", _hex(c.new))
    return table


def _hex(value: int | None) -> str:
    return "—" if value is None else f"{value:#x}"
