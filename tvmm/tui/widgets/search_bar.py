"""The search bar, shown on ``/``: Enter searches forward from the selected event, Escape
closes it.  The search itself runs in the screen's worker."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input


class SearchBar(Input):
    """Posts ``SearchBar.Search`` on Enter and ``SearchBar.Closed`` on Escape."""

    DEFAULT_CSS = """
    SearchBar, SearchBar:focus { height: 1; border: none; padding: 0 1; }
    SearchBar { display: none; }
    SearchBar.-open { display: block; }
    """
    BINDINGS = [Binding("escape", "close", "close search")]

    class Search(Message):
        def __init__(self, search_bar: SearchBar, query: str) -> None:
            super().__init__()
            self.search_bar = search_bar
            self.query = query

        @property
        def control(self) -> SearchBar:
            return self.search_bar

    class Closed(Message):
        pass

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(placeholder="search (text, name, 0x address) — Enter: next match", id=id)

    def open(self) -> None:
        self.add_class("-open")
        self.focus()

    def action_close(self) -> None:
        self.remove_class("-open")
        self.post_message(self.Closed())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value:
            self.post_message(self.Search(self, event.value))
