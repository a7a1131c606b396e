"""The overview (``o``): the judge's verdict, the page-access map of npf exits, and the
run's statistics.  The map and the statistics read the whole trace, so a worker computes
them while the screen shows what it already has."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static
from textual.worker import get_current_worker

from tvmm.abi.trace_events import EventKind
from tvmm.trace.reader import TraceError, TraceReader
from tvmm.trace.stats import TraceStats, Verdict, stats_table, trace_stats
from tvmm.tui.page_access import PageAccessMap, scan_page_faults
from tvmm.tui.widgets.page_map import PageMap
from tvmm.tui.widgets.verdict_panel import VerdictPanel


class OverviewScreen(Screen):
    DEFAULT_CSS = """
    OverviewScreen .section { padding: 1 1 0 1; text-style: bold; color: $accent; }
    OverviewScreen #stats { padding: 0 1; height: auto; }
    """
    BINDINGS = [Binding("escape", "back", "back to timeline")]

    def __init__(self, reader: TraceReader) -> None:
        super().__init__()
        self.reader = reader

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll():
            yield VerdictPanel(id="verdict")
            yield Static("page-access map (npf exits)", classes="section")
            yield PageMap(id="page-map")
            yield Static("statistics", classes="section")
            yield Static("counting…", id="stats")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"overview of {self.reader.path.name}"
        self.query_one(VerdictPanel).verdicts = self._verdicts()
        self._scan()

    def _verdicts(self) -> tuple[Verdict, ...]:
        found = []
        for i in self.reader.indices({EventKind.VERDICT}):
            try:
                found.append(Verdict.from_event(self.reader.event(int(i))))
            except TraceError:
                continue
        return tuple(found)

    @work(thread=True, exclusive=True)
    def _scan(self) -> None:
        worker = get_current_worker()
        access = scan_page_faults(self.reader, cancelled=lambda: worker.is_cancelled)
        if worker.is_cancelled:
            return
        self.app.call_from_thread(self._scanned, access, None)
        stats = trace_stats(self.reader)
        if not worker.is_cancelled:
            self.app.call_from_thread(self._scanned, access, stats)

    def _scanned(self, access: PageAccessMap, stats: TraceStats | None) -> None:
        self.query_one(PageMap).access = access
        if stats is not None:
            self.query_one("#stats", Static).update(stats_table(stats))

    def action_back(self) -> None:
        self.app.switch_mode("timeline")
