"""The event list: a ScrollView over millions of events that renders only the viewport.

The list holds event numbers (an ``array('Q')`` from the reader's kind column or a
filter), never events.  ``render_line`` turns one visible row into a strip, reading and
parsing that one event through a small LRU cache; nothing else is parsed.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tvmm.abi.trace_events import EventKind, TraceEvent
from tvmm.trace.reader import TraceError, TraceReader
from tvmm.tui.event_text import error_row_text, row_text
from tvmm.tui.exit_chain import previous_exit, retired_delta

_HEADER = Text(
    f"{'seq':>8} {'t (ms)':>11} {'vc':>2} {'kind':<9} {'name':<18} summary",
    style="bold reverse",
    no_wrap=True,
)


class EventList(ScrollView, can_focus=True):
    """Rows of events; posts ``EventList.Highlighted`` when the cursor moves."""

    DEFAULT_CSS = """
    EventList { height: 1fr; scrollbar-gutter: stable; overflow-x: hidden; }
    EventList:focus { border: none; }
    """
    BINDINGS = [
        Binding("up,k", "move(-1)", "up", show=False),
        Binding("down,j", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home,g", "jump(0)", "first", show=False),
        Binding("end,G", "jump(-1)", "last", show=False),
    ]

    cursor: reactive[int] = reactive(0, always_update=True, init=False)

    class Highlighted(Message):
        """The cursor is on event ``index`` (None when the list is empty)."""

        def __init__(self, event_list: EventList, index: int | None) -> None:
            super().__init__()
            self.event_list = event_list
            self.index = index

        @property
        def control(self) -> EventList:
            return self.event_list

    def __init__(self, reader: TraceReader, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.reader = reader
        self._rows: array = reader.indices()
        self._lines: LRUCache[tuple[int, int], Strip] = LRUCache(512)
        self._events: LRUCache[int, TraceEvent] = LRUCache(1024)
        self._vm_starts: list[int] = [0]

    @property
    def vm_starts(self) -> list[int]:
        return self._vm_starts

    @vm_starts.setter
    def vm_starts(self, starts: list[int]) -> None:
        """The first event of each VM: a VM's first event is drawn as a marker row, and an
        exit's instruction count never reaches back into another VM."""
        self._vm_starts = sorted(starts) or [0]
        self._lines.clear()
        self.refresh()

    # -- data in -----------------------------------------------------------------------

    @property
    def rows(self) -> array:
        return self._rows

    @property
    def selected(self) -> int | None:
        """The event under the cursor."""
        return self._rows[self.cursor] if len(self._rows) else None

    def set_rows(self, rows: array) -> None:
        """Show these events; keep the selected one if it is still shown, else the nearest."""
        keep = self.selected
        self._rows = rows
        self._update_virtual_size()
        self.cursor = 0 if keep is None else min(bisect_left(rows, keep), max(0, len(rows) - 1))
        self.refresh()

    def select_event(self, index: int) -> bool:
        """Move the cursor to event ``index``; False if the current rows do not show it."""
        row = bisect_left(self._rows, index)
        if row >= len(self._rows) or self._rows[row] != index:
            return False
        self.cursor = row
        return True

    # -- rendering ---------------------------------------------------------------------

    def on_mount(self) -> None:
        self._update_virtual_size()
        self.post_message(self.Highlighted(self, self.selected))

    def on_resize(self) -> None:
        self._lines.clear()
        self._update_virtual_size()

    def _update_virtual_size(self) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, len(self._rows) + 1)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if y == 0:
            return self._strip(_HEADER, width)  # the column header stays put
        row = round(self.scroll_offset.y) + y - 1
        if row >= len(self._rows):
            return Strip.blank(width, self.rich_style)
        index = self._rows[row]
        strip = self._lines.get((index, width))
        if strip is None:
            strip = self._strip(self._row_text(index), width)
            self._lines[(index, width)] = strip
        if row == self.cursor:
            highlight = "reverse" if self.has_focus else "underline"
            strip = strip.apply_style(Style.parse(highlight))
        return strip

    def _event(self, index: int) -> TraceEvent:
        event = self._events.get(index)
        if event is None:
            event = self._events[index] = self.reader.event(index)
        return event

    def _row_text(self, index: int) -> Text:
        try:
            event = self._event(index)
            delta = None
            if event.kind is EventKind.EXIT:
                floor = self._vm_starts[max(0, bisect_right(self._vm_starts, index) - 1)]
                previous = previous_exit(self.reader, index, event.pos.vcpu, floor=floor,
                                         read=self._event)
                delta = retired_delta(event, previous)
            text = row_text(event, delta)
            if index in self._vm_starts[1:] or (
                event.kind is EventKind.MGMT and event.name == "create_vm"
            ):
                text.stylize("bold reverse")  # a new VM begins here
            return text
        except TraceError as exc:
            return error_row_text(exc.line if exc.line is not None else index + 1, exc.message)

    def _strip(self, text: Text, width: int) -> Strip:
        """The row cut to ``width`` by Rich (an ellipsis where it is cut), never by the
        strip: a number must not end silently at the edge."""
        console = self.app.console
        lines = console.render_lines(text, console.options.update_width(max(1, width)),
                                     pad=False)
        strip = Strip(lines[0] if lines else []).apply_style(self.rich_style)
        return strip.crop_extend(0, width, self.rich_style)

    # -- moving ------------------------------------------------------------------------

    @property
    def _page(self) -> int:
        return max(1, self.scrollable_content_region.height - 2)

    def watch_cursor(self, old: int, new: int) -> None:
        top = round(self.scroll_offset.y)
        visible = max(1, self.scrollable_content_region.height - 1)
        if new < top:
            self.scroll_to(y=new, animate=False, immediate=True)
        elif new >= top + visible:
            self.scroll_to(y=new - visible + 1, animate=False, immediate=True)
        self.refresh()
        self.post_message(self.Highlighted(self, self.selected))

    def action_move(self, delta: int) -> None:
        if len(self._rows):
            self.cursor = max(0, min(len(self._rows) - 1, self.cursor + delta))

    def action_page(self, direction: int) -> None:
        self.action_move(direction * self._page)

    def action_jump(self, row: int) -> None:
        if len(self._rows):
            self.cursor = row % len(self._rows)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y == 0:
            return
        row = round(self.scroll_offset.y) + offset.y - 1
        if 0 <= row < len(self._rows):
            self.cursor = row

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()
