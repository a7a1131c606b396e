"""The viewer App: opens the trace in a worker, then offers two modes — the timeline and
the overview — plus help on top.  Everything else lives in the screens and widgets.

A trace whose index must be rebuilt (missing or stale: a rebuild reads the whole file, many
seconds for a million events on a loaded machine) shows its first ``PREVIEW_BYTES`` first,
in a timeline of their own, while the worker rebuilds the rest."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from rich.console import RenderableType
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import get_current_worker

from tvmm.trace.reader import TraceError, TraceErrorReason, TraceReader
from tvmm.tui.from_worker import deliver
from tvmm.tui.guest_image import GuestImage
from tvmm.tui.screens.error import ErrorScreen
from tvmm.tui.screens.help import HelpScreen
from tvmm.tui.screens.loading import LoadingScreen
from tvmm.tui.screens.overview import OverviewScreen
from tvmm.tui.screens.timeline import TimelineScreen
from tvmm.tui.widgets.event_list import EventList

PREVIEW_BYTES = 4 << 20  # what a preview scans: ~10,000 events, milliseconds to index


class _Cancelled(Exception):
    """Raised in the opening worker's progress callback when the worker was cancelled."""


class TraceViewerApp(App[None]):
    """``TraceViewerApp(path).run()``; the return code is 1 if the trace could not be read."""

    TITLE = "tvmm trace"
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
        Binding("o", "overview", "overview"),
    ]

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.reader: TraceReader | None = None
        self.preview: TraceReader | None = None  # the first lines, while the index is rebuilt
        self.error: TraceError | None = None

    def get_default_screen(self) -> Screen:
        return LoadingScreen(self.path)

    def on_mount(self) -> None:
        self._open()

    @work(thread=True, exclusive=True)
    def _open(self) -> None:
        """Open the trace and load the guest image.  Without a usable index, show a preview
        of its first lines, then rebuild the index (with progress on the screen; cancelled
        between chunks when the user quits) and show the whole.  Each result reaches the
        app through ``deliver``: none lands once the user has quit (tvmm.tui.from_worker)."""
        worker = get_current_worker()

        def progress(done: int, total: int) -> None:
            if not deliver(self, worker, self._progress, done, total):
                raise _Cancelled

        try:
            try:
                reader = TraceReader(self.path, allow_truncated=True, rebuild_index=False)
            except TraceError as exc:
                if exc.reason is not TraceErrorReason.INDEX_MISMATCH:
                    raise
                if self.path.stat().st_size > PREVIEW_BYTES:  # else the rebuild is quick
                    preview = TraceReader(self.path, allow_truncated=True,
                                          preview=PREVIEW_BYTES)
                    image = GuestImage.load(preview.header, self.path.parent)
                    if not deliver(self, worker, self._previewed, preview, image):
                        preview.close()  # the user has quit
                        return
                reader = TraceReader(self.path, allow_truncated=True, progress=progress)
            image = GuestImage.load(reader.header, self.path.parent)
        except _Cancelled:
            return
        except TraceError as exc:
            deliver(self, worker, self._failed, exc)
        except Exception as exc:  # noqa: BLE001 - the user gets a message, not a traceback
            error = TraceError(TraceErrorReason.UNREADABLE, f"{type(exc).__name__}: {exc}")
            deliver(self, worker, self._failed, error)
        else:
            if not deliver(self, worker, self._opened, reader, image):  # the user has quit
                reader.close()

    def _progress(self, done: int, total: int) -> None:
        if isinstance(self.screen, LoadingScreen | TimelineScreen):
            self.screen.progress(done, total)

    def _previewed(self, preview: TraceReader, image: GuestImage) -> None:
        self.preview = preview
        self.push_screen(TimelineScreen(preview, image))

    def _opened(self, reader: TraceReader, image: GuestImage) -> None:
        self.reader = reader
        select = None
        if isinstance(self.screen, TimelineScreen):  # the preview: start where the user is
            select = self.screen.query_one(EventList).selected  # (it stays, hidden, in the
            # default mode: popping a screen still mounting its header ends the app)
        self.add_mode("timeline", lambda: TimelineScreen(reader, image, select=select))
        self.add_mode("overview", lambda: OverviewScreen(reader, image))
        self.switch_mode("timeline")

    def _failed(self, error: TraceError) -> None:
        self.error = error
        self.push_screen(ErrorScreen(self.path, error))

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_overview(self) -> None:
        if self.reader is not None:
            self.switch_mode("timeline" if self.current_mode == "overview" else "overview")
        elif self.preview is not None:
            self.notify("the overview opens once the index is rebuilt", severity="warning")

    async def action_quit(self) -> None:
        self.exit(return_code=1 if self.error is not None else 0)

    def exit(self, result: None = None, return_code: int = 0,
             message: RenderableType | None = None) -> None:
        """Quitting cancels every worker at once, on this thread: no result of theirs lands
        while the app closes (tvmm.tui.from_worker), and a rebuild stops at its next chunk."""
        self.workers.cancel_all()
        super().exit(result, return_code, message)

    def on_unmount(self) -> None:
        for reader in (self.reader, self.preview):
            if reader is not None:
                with suppress(BufferError):  # a worker still scanning keeps the map
                    reader.close()
