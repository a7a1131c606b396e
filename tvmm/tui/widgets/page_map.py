"""The page-access map: which guest pages faulted, how often, and in what order.

Pages are named A, B, … in order of first fault, so the fault sequence reads as a string:
for square-and-multiply, ``A B A A B …`` is the key, which is the whole point of showing it.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from tvmm.tui.page_access import PageAccessMap

_COLOURS = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta")
_SHOWN_PAGES = 40
_SHOWN_SEQUENCE = 960


class PageMap(Static):
    """Renders ``access`` (None while the scan is running)."""

    DEFAULT_CSS = "PageMap { height: auto; padding: 0 1; }"

    access: reactive[PageAccessMap | None] = reactive(None)

    def watch_access(self, access: PageAccessMap | None) -> None:
        self.update(render_page_map(access))


def render_page_map(access: PageAccessMap | None) -> RenderableType:
    if access is None:
        return Text("scanning npf exits…", style="dim")
    if not access.faults:
        return Text("no nested page faults (npf exits) in this trace", style="dim")
    head = Text(f"{access.faults:,} nested page faults on {len(access.pages)} pages", style="bold")
    if access.unreadable:
        head.append(f"  ({access.unreadable} unreadable events skipped)", style="red")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (
        ("page", "left"),
        ("gpa", "right"),
        ("first fault in", "left"),
        ("faults", "right"),
        ("", "left"),
        ("first #", "right"),
        ("last #", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    most = max(p.count for p in access.pages)
    for n, page in enumerate(access.pages[:_SHOWN_PAGES]):
        colour = _COLOURS[n % len(_COLOURS)]
        bar = "█" * max(1, round(20 * page.count / most))
        table.add_row(
            Text(access.label(page.page), style=f"bold {colour}"),
            f"{page.page << 12:#x}",
            page.symbol or "",
            f"{page.count:,}",
            Text(bar, style=colour),
            str(page.first_event),
            str(page.last_event),
        )
    if len(access.pages) > _SHOWN_PAGES:
        table.add_row("…", f"{len(access.pages) - _SHOWN_PAGES} more pages", "", "", "", "", "")
    labels = {p.page: n for n, p in enumerate(access.pages)}
    order = Text()
    for page in access.sequence[:_SHOWN_SEQUENCE]:
        n = labels.get(page, 0)
        order.append(access.label(page), style=_COLOURS[n % len(_COLOURS)])
        order.append(" ")
    shown = min(len(access.sequence), _SHOWN_SEQUENCE)
    caption = Text(f"fault order (first {shown:,} of {access.faults:,})", style="bold")
    return Group(head, table, Text(""), caption, order)
