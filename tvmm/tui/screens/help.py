"""The key reference, over whatever screen is showing (``?``)."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, str], ...] = (
    ("↑ ↓  j k", "previous / next event"),
    ("PgUp PgDn", "a page up / down"),
    ("Home End  g G", "first / last event"),
    ("n", "next policy event or attack action"),
    ("N", "previous policy event or attack action"),
    ("/", "search the trace text (Enter: next match, Esc: close)"),
    ("f", "filter: kinds (exit policy -attack), name=GLOB, level=X"),
    ("Tab", "move between the list, the detail pane and the bars"),
    ("o", "overview: verdict, per VM page-access map and exits, statistics (o: back)"),
    ("v  V", "overview: next / previous VM of the trace"),
    ("Esc", "stop a search, filter or overview under way"),
    ("?", "this help"),
    ("q", "quit"),
)


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen #help { width: 80; height: auto; padding: 1 2; border: round $primary; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "close", "close help")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Static(self._keys(), id="help-keys")
            yield Static(
                "\n[dim]inside = what the TEE saw; outside = exactly what the host "
                "got. Esc closes.[/]"
            )

    def on_mount(self) -> None:
        self.query_one("#help").border_title = "keys"

    def _keys(self) -> Table:
        table = Table.grid(padding=(0, 3))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        return table

    def action_close(self) -> None:
        self.dismiss(None)
