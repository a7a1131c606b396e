"""Shown while the trace is opened in a worker, until its first screen is ready: the
timeline comes as soon as the index is read, or, when it must be rebuilt, as soon as the
trace's first lines are scanned (the rebuild goes on behind it, saying how far it has
got; q stops it: the worker is cancelled between chunks)."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, LoadingIndicator, Static


class LoadingScreen(Screen):
    DEFAULT_CSS = "LoadingScreen Static { padding: 1 2; }"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"Opening {self.path} …", id="loading-message")
        yield LoadingIndicator()
        yield Footer()

    def progress(self, done: int, total: int) -> None:
        """The index rebuild has scanned ``done`` of ``total`` bytes."""
        self.query_one("#loading-message", Static).update(
            f"Opening {self.path} … no index beside it: {indexing(done, total)}")


def indexing(done: int, total: int) -> str:
    """How far an index rebuild has got, as the loading and timeline screens say it."""
    return f"indexing {done * 100 // max(total, 1)}% of {total / 2**20:,.0f} MB (q stops)"
