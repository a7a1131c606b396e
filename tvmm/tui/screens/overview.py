"""The overview (``o``): the judge's verdict, then per VM the page-access map of its npf
exits and its exits by reason, and the whole run's statistics.  A trace can hold several
VMs (an attack's profiling VM and its victim): ``v`` steps through them, and the map and
counts are of the VM shown.  The map and the statistics read the whole trace, so a
cancellable worker computes them (Esc stops it and goes back) and says how far it is."""

from __future__ import annotations

import re
from collections import Counter

from rich.text import Text
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
from tvmm.tui.from_worker import deliver
from tvmm.tui.guest_image import GuestImage
from tvmm.tui.page_access import PageAccessMap, scan_page_faults
from tvmm.tui.vms import VmSpan, created_vms, derived_vms
from tvmm.tui.widgets.page_map import PageMap
from tvmm.tui.widgets.verdict_panel import VerdictPanel

_EXIT_NAME = re.compile(
    rb'\n\{"seq":-?\d{1,20},"icount":(?:-?\d{1,20}|null),"vcpu":-?\d{1,20},'
    rb'"kind":"exit","name":"([^"\\\n]{0,256})"'
)


class OverviewScreen(Screen):
    DEFAULT_CSS = """
    OverviewScreen .section { padding: 1 1 0 1; text-style: bold; color: $accent; }
    OverviewScreen #stats { padding: 0 1; height: auto; }
    OverviewScreen #vm { padding: 0 1; height: auto; }
    OverviewScreen #progress { padding: 0 1; color: $warning; height: auto; }
    """
    BINDINGS = [
        Binding("escape", "back", "back to timeline"),
        Binding("v", "next_vm(1)", "next VM"),
        Binding("V", "next_vm(-1)", "previous VM", show=False),
    ]

    def __init__(self, reader: TraceReader, image: GuestImage | None = None) -> None:
        super().__init__()
        self.reader = reader
        self.image = image
        self.spans: list[VmSpan] = []
        self.shown = 0  # which of spans the map and counts are of
        self._maps: dict[int, tuple[PageAccessMap, dict[str, int]]] = {}
        self._stats: TraceStats | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="progress")
        with VerticalScroll():
            yield VerdictPanel(id="verdict")
            yield Static("", id="vm")
            yield Static("page-access map (npf exits)", classes="section")
            yield PageMap(id="page-map")
            yield Static("statistics (the whole trace, every VM)", classes="section")
            yield Static("counting…", id="stats")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"overview of {self.reader.path.name}"
        self.query_one(VerdictPanel).verdicts = self._verdicts()
        self._scan()

    def on_screen_resume(self) -> None:
        if self._stats is None and not any(w.is_running for w in self.workers):
            self._scan()  # an earlier scan was cancelled with Esc

    def _verdicts(self) -> tuple[Verdict, ...]:
        found = []
        for i in self.reader.indices({EventKind.VERDICT}):
            try:
                found.append(Verdict.from_event(self.reader.event(int(i))))
            except TraceError:
                continue
        return tuple(found)

    @work(thread=True, exclusive=True, group="overview")
    def _scan(self) -> None:
        worker = get_current_worker()
        cancelled = lambda: worker.is_cancelled  # noqa: E731
        say = self._say(worker)
        spans = self.spans or created_vms(self.reader)
        if spans is None:
            spans = derived_vms(self.reader, cancelled=cancelled,
                                progress=lambda f: say(f"finding the VMs… {f:.0%}"))
        if cancelled():
            return
        deliver(self.app, worker, self._vms_found, spans)
        order = [self.shown] + [n for n in range(len(spans)) if n != self.shown]
        for n in order:
            if n in self._maps:
                continue
            span = spans[n]
            what = f"scanning {span.title()}" if len(spans) > 1 else "scanning npf exits"
            access = scan_page_faults(
                self.reader, start=span.first, stop=span.stop, cancelled=cancelled,
                progress=lambda f, what=what: say(f"{what}… {f:.0%} (Esc cancels)"),
                symbolize=self.image.symbolize if self.image is not None else lambda _: None,
            )
            if cancelled():
                return
            exits = _exit_counts(self.reader, span, cancelled) if len(spans) > 1 else {}
            if cancelled():
                return
            deliver(self.app, worker, self._scanned, n, access, exits)
        say("counting the whole trace… (Esc cancels)")
        stats = trace_stats(self.reader)
        deliver(self.app, worker, self._counted, stats)

    def _say(self, worker):  # noqa: ANN001, ANN202 - a Worker, a callback
        last = [""]

        def say(text: str) -> None:
            if text != last[0] and not worker.is_cancelled:
                last[0] = text
                deliver(self.app, worker, self._progress, text)

        return say

    def _progress(self, text: str) -> None:
        self.query_one("#progress", Static).update(text)

    def _vms_found(self, spans: list[VmSpan]) -> None:
        self.spans = spans
        self._show()

    def _scanned(self, n: int, access: PageAccessMap, exits: dict[str, int]) -> None:
        self._maps[n] = (access, exits)
        if n == self.shown:
            self._show()

    def _counted(self, stats: TraceStats) -> None:
        self._stats = stats
        self.query_one("#stats", Static).update(stats_table(stats))
        self.query_one("#progress", Static).update("")

    def _show(self) -> None:
        """The VM line and the map of the VM shown (or "scanning" until it is ready)."""
        if not self.spans:
            return
        span = self.spans[self.shown]
        line = Text()
        if len(self.spans) > 1:
            line.append(f"{span.title(with_id=True)}", style="bold magenta")
            line.append(f"  ({self.shown + 1} of {len(self.spans)} VMs in this trace; "
                        "v: next VM)", style="dim")
        else:
            line.append(f"{span.title(with_id=True)}", style="bold")
        line.append(f"\nevents {span.first:,}–{span.stop - 1:,} ({span.events:,})")
        ready = self._maps.get(self.shown)
        if ready is not None and ready[1]:
            line.append("\nexits: " + ", ".join(f"{k} {v:,}" for k, v in ready[1].items()))
        self.query_one("#vm", Static).update(line)
        self.query_one(PageMap).access = ready[0] if ready is not None else None

    def action_next_vm(self, step: int) -> None:
        if len(self.spans) > 1:
            self.shown = (self.shown + step) % len(self.spans)
            self._show()

    def action_back(self) -> None:
        for worker in self.workers:
            worker.cancel()
        self.query_one("#progress", Static).update("")
        self.app.switch_mode("timeline")


def _exit_counts(reader: TraceReader, span: VmSpan, cancelled) -> dict[str, int]:  # noqa: ANN001
    """Exits by reason among the VM's events (one regex pass, a block at a time)."""
    found: Counter[bytes] = Counter()
    for lo, hi in reader.blocks(span.first, span.stop):
        if cancelled():
            break
        found.update(_EXIT_NAME.findall(reader.buffer, lo, hi))
    return {k.decode(errors="replace"): v for k, v in found.most_common()}
