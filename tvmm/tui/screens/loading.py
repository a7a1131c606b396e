"""Shown while the trace is opened (and its index rebuilt, if needed) in a worker."""

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
