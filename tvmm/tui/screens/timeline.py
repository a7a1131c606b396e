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
from tvmm.tui.from_worker import deliver
from tvmm.tui.guest_image import GuestImage
from tvmm.tui.screens.loading import indexing
from tvmm.tui.text_search import find_text
from tvmm.tui.vms import VmSpan, created_vms, derived_vms, span_of
from tvmm.tui.widgets.detail_pane import DetailPane
from tvmm.tui.widgets.event_list import EventList
from tvmm.tui.widgets.filter_bar import FilterBar
from tvmm.tui.widgets.search_bar import SearchBar

MARKS = frozenset({EventKind.POLICY, EventKind.ATTACK})  # what n / N jump between


class TimelineScreen(Screen):
    # The list takes the keys from the first moment: by default Textual focuses the first
    # focusable widget, the filter's input, and a q pressed as the screen came up was typed
    # into the filter instead of quitting.
    AUTO_FOCUS = "#events"
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

    def __init__(self, reader: TraceReader, image: GuestImage, *, select: int | None = None) -> None:
        """``reader.previewing``: the trace's first lines only, shown while its index is
        rebuilt (search and filter wait for the whole); ``select``: the event to start on."""
        super().__init__()
        self.reader = reader
        self.image = image
        self._select = select
        self._indexed = (0, 1)  # a preview: how far the rebuild behind it has got
        self.spec = FilterSpec()
        self.spans: list[VmSpan] = [VmSpan(1, reader.header.level, 0, len(reader))]
        self._searching: str | None = None  # the query of the search under way

    def compose(self) -> ComposeResult:
        yield Header()
        yield FilterBar(id="filter-bar")
        yield EventList(self.reader, id="events")
        yield DetailPane(self.reader, self.image, id="detail")
        yield SearchBar(id="search")
        yield Footer()

    def on_mount(self) -> None:
        self._title()
        self.query_one(FilterBar).status = f"{len(self.reader):,} events"
        events = self.query_one(EventList)
        events.focus()
        if self._select is not None:
            events.select_event(min(self._select, len(self.reader) - 1))
        if self.reader.previewing:
            self._show_indexed()
        if self.reader.index_rebuilt:
            saved = "saved beside the trace" if self.reader.index_written else "not saved"
            self.notify(f"index rebuilt ({self.reader.index_note}); {saved}")
        if self.reader.truncation is not None:
            self.notify(self.reader.truncation, severity="warning", timeout=30)
        self._find_vms()

    def _title(self, selected: int | None = None) -> None:
        """The file, the guest, and the VM(s): with several, each VM's level in order and
        the one the selected event belongs to."""
        header = self.reader.header
        stops = f"; cut short after event {len(self.reader) - 1}" if self.reader.truncation else ""
        if self.reader.previewing:
            stops = " so far: the first lines, while the index is rebuilt"
        if len(self.spans) == 1:
            self.sub_title = (
                f"{self.reader.path.name} — {header.guest} @ {self.spans[0].level}, "
                f"{len(self.reader):,} events{stops}"
            )
            return
        span = span_of(self.spans, selected) if selected is not None else None
        vms = ", ".join(f"{s.number}: {s.level}" for s in self.spans)
        here = f" — showing {span.title()}" if span is not None else ""
        self.sub_title = (
            f"{self.reader.path.name} — {header.guest}, {len(self.spans)} VMs ({vms}), "
            f"{len(self.reader):,} events{stops}{here}"
        )

    @work(thread=True, exclusive=True, group="vms")
    def _find_vms(self) -> None:
        worker = get_current_worker()
        spans = created_vms(self.reader)
        if spans is None:
            spans = derived_vms(self.reader, cancelled=lambda: worker.is_cancelled)
        deliver(self.app, worker, self._vms_found, spans)

    def _vms_found(self, spans: list[VmSpan]) -> None:
        self.spans = spans
        events = self.query_one(EventList)
        events.vm_starts = [s.first for s in spans if s.created or s.number > 1]
        pane = self.query_one(DetailPane)
        pane.spans = spans
        self._title(events.selected)
        if len(spans) > 1:
            pane.watch_event_index(pane.event_index)

    def progress(self, done: int, total: int) -> None:
        """A preview: the index rebuild behind it has scanned ``done`` of ``total`` bytes
        (told from the moment the screen is pushed, shown once it is mounted)."""
        self._indexed = (done, total)
        if self.is_mounted:
            self._show_indexed()

    def _show_indexed(self) -> None:
        self.query_one(FilterBar).status = (
            f"first {len(self.reader):,} events · {indexing(*self._indexed)}")

    def _waits_for_index(self, what: str) -> bool:
        if self.reader.previewing:
            self.notify(f"{what} starts once the index is rebuilt (see its progress above)",
                        severity="warning")
        return self.reader.previewing

    # -- messages up -------------------------------------------------------------------

    def on_event_list_highlighted(self, message: EventList.Highlighted) -> None:
        self.query_one(DetailPane).event_index = message.index
        if len(self.spans) > 1:
            self._title(message.index)

    def on_filter_bar_changed(self, message: FilterBar.Changed) -> None:
        self.query_one(FilterBar).status = "filtering… (Esc cancels)"
        self._filter(message.spec)

    def on_search_bar_search(self, message: SearchBar.Search) -> None:
        events = self.query_one(EventList)
        selected = events.selected
        self._searching = message.query
        self.query_one(FilterBar).status = f"searching for {message.query!r}… (Esc cancels)"
        self._search(message.query, -1 if selected is None else selected, events.rows)

    def on_search_bar_closed(self, message: SearchBar.Closed) -> None:
        self._cancel()
        self.query_one(EventList).focus()

    def _cancel(self) -> None:
        """Esc: stop a search or filter under way and say so."""
        running = [w for w in self.workers if w.group in ("search", "filter") and w.is_running]
        if not running:
            return
        for worker in running:
            worker.cancel()
        self._searching = None
        self.query_one(FilterBar).status = "cancelled"

    # -- workers -----------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="filter")
    def _filter(self, spec: FilterSpec) -> None:
        worker = get_current_worker()
        rows = apply_filter(self.reader, spec, lambda: worker.is_cancelled,
                            self._progress(worker, "filtering"))
        deliver(self.app, worker, self._filtered, spec, rows)

    def _progress(self, worker, what: str):  # noqa: ANN001, ANN202 - a Worker, a callback
        """A callback for a worker's scan: the status bar shows how far it is."""
        last = [-1]

        def report(fraction: float) -> None:
            percent = int(fraction * 100)
            if percent != last[0] and not worker.is_cancelled:
                last[0] = percent
                deliver(self.app, worker, self._status, worker,
                        f"{what}… {percent}% (Esc cancels)")

        return report

    def _status(self, worker, text: str) -> None:  # noqa: ANN001 - a Worker
        if not worker.is_cancelled:
            self.query_one(FilterBar).status = text

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
        found = find_text(self.reader, query, after, rows, cancelled=lambda: worker.is_cancelled,
                          progress=self._progress(worker, f"searching for {query!r}"))
        deliver(self.app, worker, self._searched, query, found)

    def _searched(self, query: str, found: int | None) -> None:
        self._searching = None
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
        if not self._waits_for_index("search"):
            self.query_one(SearchBar).open()

    def action_filter(self) -> None:
        if not self._waits_for_index("filtering"):
            self.query_one(FilterBar).focus_input()

    def action_focus_list(self) -> None:
        self._cancel()
        self.query_one(EventList).focus()
