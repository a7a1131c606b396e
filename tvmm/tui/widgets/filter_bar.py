"""The filter bar: what to show, typed as words (see ``filter_spec``), applied on Enter.

It only parses; the screen runs the filter in a worker and reports back through
``status``, so the bar never touches the trace.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Input, Label

from tvmm.tui.filter_spec import FilterSpec, parse_filter

PLACEHOLDER = "kinds (exit policy -attack …), name=GLOB, level=X, or a name — Enter applies"


class FilterBar(Horizontal):
    """Posts ``FilterBar.Changed`` with a parsed spec when the user presses Enter."""

    DEFAULT_CSS = """
    FilterBar { height: 1; }
    FilterBar Label { padding: 0 1; }
    FilterBar #filter-label { background: $primary; color: $text; }
    FilterBar Input, FilterBar Input:focus {
        width: 1fr; height: 1; border: none; padding: 0 1;
    }
    FilterBar #filter-status { color: $text-muted; }
    FilterBar #filter-status.-error { color: $error; }
    """

    status: reactive[str] = reactive("")

    class Changed(Message):
        def __init__(self, filter_bar: FilterBar, spec: FilterSpec) -> None:
            super().__init__()
            self.filter_bar = filter_bar
            self.spec = spec

        @property
        def control(self) -> FilterBar:
            return self.filter_bar

    def compose(self) -> ComposeResult:
        yield Label("filter", id="filter-label")
        yield Input(placeholder=PLACEHOLDER, id="filter-input")
        yield Label("", id="filter-status")

    def watch_status(self, status: str) -> None:
        label = self.query_one("#filter-status", Label)
        label.update(status)
        label.remove_class("-error")

    def focus_input(self) -> None:
        self.query_one("#filter-input", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            spec = parse_filter(event.value)
        except ValueError as exc:
            label = self.query_one("#filter-status", Label)
            label.update(str(exc))
            label.add_class("-error")
            return
        self.post_message(self.Changed(self, spec))
