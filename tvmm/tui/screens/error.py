"""Shown instead of a traceback when a trace cannot be opened: what is wrong, in words."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Center
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from tvmm.trace.reader import TraceError, TraceErrorReason

HINTS: dict[TraceErrorReason, str] = {
    TraceErrorReason.MISSING_FILE: "Check the path; traces are written where --trace pointed.",
    TraceErrorReason.UNREADABLE: "Check the file's permissions, or that it is a file.",
    TraceErrorReason.EMPTY_FILE: "The run recorded nothing; did it start?",
    TraceErrorReason.NOT_A_TRACE: "tvmm traces start with a JSON header line "
    '{"kind":"header","format":"tvmm-trace",…}.',
    TraceErrorReason.UNSUPPORTED_VERSION: "Open it with the tvmm version that recorded it.",
    TraceErrorReason.TRUNCATED: "The recording was cut short (crash or full disk). "
    "Remove the incomplete last line to view the rest.",
    TraceErrorReason.CORRUPT_LINE: "A line of the file is damaged.",
    TraceErrorReason.INDEX_MISMATCH: "Delete the .idx file beside the trace; it is rebuilt.",
}


class ErrorScreen(Screen):
    DEFAULT_CSS = """
    ErrorScreen { align: center middle; }
    ErrorScreen #error-box {
        width: 90; height: auto; padding: 1 2; border: heavy $error; border-title-color: $error;
    }
    """

    def __init__(self, path: Path, error: TraceError) -> None:
        super().__init__()
        self.path = path
        self.error = error

    def compose(self) -> ComposeResult:
        yield Header()
        with Center():
            yield Static(self._message(), id="error-box")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#error-box").border_title = "cannot open trace"

    def _message(self) -> Text:
        text = Text()
        text.append(f"{self.path}\n\n", style="bold")
        text.append(f"{self.error.message}\n\n")
        text.append("reason: ", style="dim")
        text.append(f"{self.error.reason.value}\n", style="bold red")
        hint = HINTS.get(self.error.reason)
        if hint:
            text.append(f"{hint}\n", style="italic")
        text.append("\npress q to quit", style="dim")
        return text
