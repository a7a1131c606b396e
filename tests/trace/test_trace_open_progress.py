"""Opening a trace without its index: the viewer rebuilds it in its opening worker, shows
how far it has got, and stops when the worker is cancelled (the user quits)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_trace_tui import settle, sync
from textual.widgets import Static
from textual.worker import WorkerCancelled

from tvmm.trace import reader as reader_module
from tvmm.trace.recorder import index_path
from tvmm.trace.synthetic import write_synthetic_trace
from tvmm.tui.app import TraceViewerApp
from tvmm.tui.screens.loading import LoadingScreen
from tvmm.tui.screens.timeline import TimelineScreen


@pytest.fixture
def unindexed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    trace = write_synthetic_trace(tmp_path / "s.jsonl", 3000, seed=7)
    index_path(trace).unlink()
    monkeypatch.setattr(reader_module, "_CHUNK", 64 << 10)  # many chunks, many reports
    return trace


@sync
async def test_a_rebuild_shows_its_progress_then_the_timeline(unindexed, monkeypatch) -> None:
    shown: list[str] = []
    original = LoadingScreen.progress

    def progress(screen: LoadingScreen, done: int, total: int) -> None:
        original(screen, done, total)
        shown.append(str(screen.query_one("#loading-message", Static).content))

    monkeypatch.setattr(LoadingScreen, "progress", progress)
    app = TraceViewerApp(unindexed)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert isinstance(app.screen, TimelineScreen)
        assert app.reader is not None and app.reader.index_rebuilt
        assert len(shown) > 3, shown
        percents = [int(s.split("indexing ")[1].split("%")[0]) for s in shown]
        assert percents == sorted(percents) and percents[-1] == 100
        assert "(q stops)" in shown[0]


@sync
async def test_cancelling_the_opening_worker_stops_the_rebuild(unindexed, monkeypatch) -> None:
    calls: list[int] = []

    def progress(screen: LoadingScreen, done: int, total: int) -> None:
        calls.append(done)
        screen.app.workers.cancel_all()  # as quitting does

    monkeypatch.setattr(LoadingScreen, "progress", progress)
    app = TraceViewerApp(unindexed)
    async with app.run_test(size=(120, 40)) as pilot:
        try:  # waiting on a cancelled worker raises, or not, by when the cancel lands
            await app.workers.wait_for_complete()
        except WorkerCancelled:
            pass
        await pilot.pause()
        assert len(calls) == 1  # the next chunk's report found the worker cancelled
        assert calls[0] < unindexed.stat().st_size
        assert app.reader is None and isinstance(app.screen, LoadingScreen)
    assert not index_path(unindexed).exists()  # nothing half-built was saved
