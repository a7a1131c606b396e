"""The detail pane: the selected event's inside and outside views side by side, the
register diff against the same vCPU's previous exit, and the code around RIP.

The screen sets ``event_index``; the pane reads that one event (and, for an exit, walks
back to the previous exit of the same vCPU) — a handful of ``pread`` calls, cheap enough
for the UI thread.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Static

from tvmm.abi.trace_events import EventKind
from tvmm.trace.reader import TraceError, TraceReader
from tvmm.tui import event_views
from tvmm.tui.exit_chain import previous_exit, retired_delta
from tvmm.tui.guest_image import GuestImage
from tvmm.tui.registers import diff, registers_of
from tvmm.tui.vms import VmSpan, span_of


class DetailPane(VerticalScroll):
    """Shows event ``event_index`` of ``reader``."""

    DEFAULT_CSS = """
    DetailPane { height: 1fr; border-top: solid $primary; }
    DetailPane #detail-title { padding: 0 1; background: $boost; }
    DetailPane Horizontal { height: auto; }
    DetailPane .side { width: 1fr; height: auto; padding: 0 1; border: round $primary-darken-2; }
    DetailPane #inside { border-title-color: $success; }
    DetailPane #outside { border-title-color: $error; }
    """

    event_index: reactive[int | None] = reactive(None, init=False)

    def __init__(self, reader: TraceReader, image: GuestImage, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.reader = reader
        self.image = image
        self._composed = False  # the panes exist only once mounted
        self.spans: list[VmSpan] = []  # the trace's VMs, once the screen has found them

    def compose(self) -> ComposeResult:
        yield Static(id="detail-title")
        with Horizontal():
            yield Static(id="inside", classes="side")
            yield Static(id="outside", classes="side")
        with Horizontal(id="lower"):
            yield Static(id="regdiff", classes="side")
            yield Static(id="disasm", classes="side")

    def on_mount(self) -> None:
        self.query_one("#inside").border_title = "inside — what the TEE saw"
        self.query_one("#outside").border_title = "outside — what the host got"
        self.query_one("#regdiff").border_title = "register diff"
        self.query_one("#disasm").border_title = "code around rip"
        self._composed = True
        self.watch_event_index(self.event_index)

    def watch_event_index(self, index: int | None) -> None:
        if not self._composed:
            return
        title, inside, outside = self._statics("#detail-title", "#inside", "#outside")
        regdiff, disasm = self._statics("#regdiff", "#disasm")
        if index is None:
            title.update(Text("no event selected", style="dim"))
            for pane in (inside, outside, regdiff, disasm):
                pane.update("")
            return
        try:
            event = self.reader.event(index)
        except TraceError as exc:
            title.update(Text(f"event {index}: {exc.message}", style="bold red"))
            for pane in (inside, outside, regdiff, disasm):
                pane.update("")
            return
        span = span_of(self.spans, index)
        previous = delta = None
        if event.kind is EventKind.EXIT:
            floor = span.first if span is not None else 0
            previous = previous_exit(self.reader, index, event.pos.vcpu, floor=floor)
            delta = retired_delta(event, previous)
        changes = None
        if previous is not None:
            changes = diff(registers_of(previous.inside), registers_of(event.inside))
        heading = event_views.title(event)
        if span is not None and len(self.spans) > 1:
            heading.append(f"   {span.title()}", style="bold magenta")
        title.update(heading)
        inside.update(event_views.inside_view(event, self.image, {c.name for c in changes or ()},
                                              delta))
        level = span.level if span is not None else self.reader.header.level
        outside.update(event_views.outside_view(event, level, delta))
        lower = self.query_one("#lower")
        lower.display = event.kind is EventKind.EXIT
        if event.kind is EventKind.EXIT:
            regdiff.update(event_views.diff_view(changes, previous))
            rip = (event.inside or {}).get("rip")
            rip = rip if isinstance(rip, int) else None
            where = self.image.symbolize(rip) if rip is not None else None
            disasm.border_title = f"code around rip {where or ''}".rstrip()
            disasm.update(event_views.disassembly_view(self.image, rip))
        self.scroll_home(animate=False)

    def _statics(self, *ids: str) -> list[Static]:
        return [self.query_one(i, Static) for i in ids]
