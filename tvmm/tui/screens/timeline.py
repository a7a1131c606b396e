"""The main screen: the event list over the detail pane, with the filter and search bars.

It owns the workers (filtering and searching run off the UI thread) and wires the widgets:
their messages come up here, and it sets their attributes in reply.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header
from textual.worker import get_current_worker

from tvmm.abi.trace_events import EventKind
from tvmm.trace.reader import TraceReader
from tvmm.tui.filter_spec import FilterSpec, apply_filter
from tvmm.tui.guest_image import GuestImage
from tvmm.tui.text_search import find_text
from tvmm.tui.widgets.detail_pane import DetailPane
from tvmm.tui.widgets.event_list import EventList
from tvmm.tui.widgets.filter_bar import FilterBar
from tvmm.tui.widgets.search_bar import SearchBar

MARKS = frozenset({EventKind.POLICY, EventKind.ATTACK})  # what n / N jump between


class TimelineScreen(Screen):
    DEFAULT_CSS = """
    TimelineScreen EventList { height: 2fr; }
    TimelineScreen DetailPane { height: 3fr; }
    """
    BINDINGS = [
        Binding("n", "mark(1)", "next violation"),
        Binding("N", "mark(-1)", "prev violation"),
        Binding("slash", "search", "search"),
        Binding("f", "filter", "filter"),
        Binding("escape", "focus_list", "list", show=False),
    ]

    def __init__(self, reader: TraceReader, image: GuestImage) -> None:
        super().__init__()
        self.reader = reader
        self.image = image
        self.spec = FilterSpec()

    def compose(self) -> ComposeResult:
        yield Header()
        yield FilterBar(id="filter-bar")
        yield EventList(self.reader, id="events")
        yield DetailPane(self.reader, self.image, id="detail")
        yield SearchBar(id="search")
        yield Footer()

    def on_mount(self) -> None:
        header = self.reader.header
        self.sub_title = (
            f"{self.reader.path.name} — {header.guest} @ {header.level}, "
            f"{len(self.reader):,} events"
        )
        self.query_one(FilterBar).status = f"{len(self.reader):,} events"
        self.query_one(EventList).focus()
        if self.reader.index_rebuilt:
            saved = "saved beside the trace" if self.reader.index_written else "not saved"
            self.notify(f"index rebuilt ({self.reader.index_note}); {saved}")

    # -- messages up -------------------------------------------------------------------

    def on_event_list_highlighted(self, message: EventList.Highlighted) -> None:
        self.query_one(DetailPane).event_index = message.index

    def on_filter_bar_changed(self, message: FilterBar.Changed) -> None:
        self.query_one(FilterBar).status = "filtering…"
        self._filter(message.spec)

    def on_search_bar_search(self, message: SearchBar.Search) -> None:
        events = self.query_one(EventList)
        selected = events.selected
        self.query_one(FilterBar).status = f"searching for {message.query!r}…"
        self._search(message.query, -1 if selected is None else selected, events.rows)

    def on_search_bar_closed(self, message: SearchBar.Closed) -> None:
        self.query_one(EventList).focus()

    # -- workers -----------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="filter")
    def _filter(self, spec: FilterSpec) -> None:
        worker = get_current_worker()
        rows = apply_filter(self.reader, spec, lambda: worker.is_cancelled)
        if not worker.is_cancelled:
            self.app.call_from_thread(self._filtered, spec, rows)

    def _filtered(self, spec: FilterSpec, rows: array) -> None:
        self.spec = spec
        events = self.query_one(EventList)
        events.set_rows(rows)
        self.query_one(
            FilterBar
        ).status = f"{len(rows):,} of {len(self.reader):,} events · {spec.describe()}"
        events.focus()

    @work(thread=True, exclusive=True, group="search")
    def _search(self, query: str, after: int, rows: array) -> None:
        worker = get_current_worker()
        found = find_text(self.reader, query, after, rows, cancelled=lambda: worker.is_cancelled)
        if not worker.is_cancelled:
            self.app.call_from_thread(self._searched, query, found)

    def _searched(self, query: str, found: int | None) -> None:
        bar = self.query_one(FilterBar)
        if found is None or not self.query_one(EventList).select_event(found):
            bar.status = f"no match for {query!r}"
            self.notify(f"no match for {query!r}", severity="warning")
        else:
            bar.status = f"{query!r} found at event {found}"

    # -- actions -----------------------------------------------------------------------

    def action_mark(self, direction: int) -> None:
        """Jump to the next (or previous) shown policy event or attack action."""
        events = self.query_one(EventList)
        marks = self.reader.indices(MARKS)
        current = events.selected
        if current is None:
            return
        pos = bisect_right(marks, current) if direction > 0 else bisect_left(marks, current) - 1
        while 0 <= pos < len(marks):
            if events.select_event(marks[pos]):
                return
            pos += direction
        where = "after" if direction > 0 else "before"
        self.notify(f"no policy event or attack action shown {where} this one")

    def action_search(self) -> None:
        self.query_one(SearchBar).open()

    def action_filter(self) -> None:
        self.query_one(FilterBar).focus_input()

    def action_focus_list(self) -> None:
        self.query_one(EventList).focus()
