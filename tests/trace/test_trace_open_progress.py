"""Opening a trace without its index: the viewer shows the trace's first lines at once,
rebuilds the index behind them in its opening worker, shows how far it has got, and stops
when the worker is cancelled (the user quits)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from test_trace_tui import rows, settle, sync
from textual.worker import WorkerCancelled

from tvmm.trace import reader as reader_module
from tvmm.trace.reader import TraceReader
from tvmm.trace.recorder import index_path
from tvmm.trace.synthetic import write_synthetic_trace
from tvmm.tui import app as app_module
from tvmm.tui.app import TraceViewerApp
from tvmm.tui.screens.loading import LoadingScreen
from tvmm.tui.screens.timeline import TimelineScreen
from tvmm.tui.widgets.event_list import EventList
from tvmm.tui.widgets.filter_bar import FilterBar


@pytest.fixture
def unindexed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    trace = write_synthetic_trace(tmp_path / "s.jsonl", 3000, seed=7)
    index_path(trace).unlink()
    monkeypatch.setattr(reader_module, "_CHUNK", 64 << 10)  # many chunks, many reports
    monkeypatch.setattr(app_module, "PREVIEW_BYTES", 32 << 10)  # a preview of some lines
    return trace


@sync
async def test_a_rebuild_shows_its_progress_then_the_timeline(unindexed, monkeypatch) -> None:
    shown: list[str] = []
    original = TimelineScreen.progress

    def progress(screen: TimelineScreen, done: int, total: int) -> None:
        original(screen, done, total)
        assert screen.reader.previewing  # reported on the preview, over the first lines
        if screen.is_mounted:
            shown.append(screen.query_one(FilterBar).status)

    monkeypatch.setattr(TimelineScreen, "progress", progress)
    app = TraceViewerApp(unindexed)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert isinstance(app.screen, TimelineScreen)
        assert app.reader is not None and app.reader.index_rebuilt
        assert app.screen.reader is app.reader and len(app.reader) == 3000
        assert app.preview is not None and 0 < len(app.preview) < 3000
        assert len(shown) > 3, shown
        assert shown[0].startswith(f"first {len(app.preview):,} events · indexing")
        percents = [int(s.split("indexing ")[1].split("%")[0]) for s in shown]
        assert percents == sorted(percents) and percents[-1] == 100
        assert "(q stops)" in shown[0]


@sync
async def test_cancelling_the_opening_worker_stops_the_rebuild(unindexed, monkeypatch) -> None:
    calls: list[int] = []

    def progress(screen: TimelineScreen, done: int, total: int) -> None:
        if done:  # not the preview's own first report
            calls.append(done)
            screen.app.workers.cancel_all()  # as quitting does

    monkeypatch.setattr(TimelineScreen, "progress", progress)
    app = TraceViewerApp(unindexed)
    async with app.run_test(size=(120, 40)) as pilot:
        try:  # waiting on a cancelled worker raises, or not, by when the cancel lands
            await app.workers.wait_for_complete()
        except WorkerCancelled:
            pass
        await pilot.pause()
        assert len(calls) == 1  # the next chunk's report found the worker cancelled
        assert calls[0] < unindexed.stat().st_size
        assert app.reader is None and isinstance(app.screen, TimelineScreen)
        assert app.screen.reader.previewing
    assert not index_path(unindexed).exists()  # nothing half-built was saved


@sync
async def test_the_first_screen_comes_before_the_rebuild_ends(real_traces, tmp_path,
                                                               monkeypatch) -> None:
    """On a real trace (the page-fault attack at snp) without its index: the rebuild is
    held at its first report until the test has seen the first screen, so the screen
    cannot have waited for it."""
    trace = tmp_path / "pf-snp.jsonl"
    trace.write_bytes(real_traces["pf-snp"].read_bytes())  # no index beside this copy
    with TraceReader(real_traces["pf-snp"]) as whole:
        events = len(whole)
        first = [(e.kind.value, e.name) for e in whole.iter_events(0, 20)]
    monkeypatch.setattr(reader_module, "_CHUNK", 16 << 10)
    monkeypatch.setattr(app_module, "PREVIEW_BYTES", 24 << 10)  # its header is ~8 KB
    assert trace.stat().st_size > 4 * (16 << 10)  # a rebuild of several chunks
    held, seen = threading.Event(), threading.Event()
    rebuild = reader_module.TraceReader._rebuild

    def held_rebuild(reader: TraceReader, pos: int = 0):  # noqa: ANN202 - as TraceReader's
        if not reader.previewing:
            held.set()
            assert seen.wait(60), "the first screen never came"
        return rebuild(reader, pos)

    monkeypatch.setattr(reader_module.TraceReader, "_rebuild", held_rebuild)
    app = TraceViewerApp(trace)
    async with app.run_test(size=(140, 45)) as pilot:
        try:
            await first_screen(app, pilot)
            screen = app.screen
            assert isinstance(screen, TimelineScreen) and screen.reader.previewing
            assert app.reader is None and not index_path(trace).exists()  # nor has it ended
            assert 5 <= len(screen.reader) < events
            lines = rows(screen.query_one(EventList))
            for i, (kind, name) in enumerate(first[: min(len(lines) - 1, len(screen.reader))]):
                assert f"{kind:<9} {name}" in lines[i + 1]
            assert screen.query_one(FilterBar).status.startswith(
                f"first {len(screen.reader):,} events · indexing")
            assert "so far" in screen.sub_title
            await pilot.press("down", "down")
            assert held.wait(60)  # the rebuild had begun, and waited for the screen
        finally:
            seen.set()
        await settle(app, pilot)
        assert app.reader is not None and len(app.reader) == events
        assert app.screen.reader is app.reader and index_path(trace).exists()
        assert app.screen.query_one(EventList).selected == 2  # where the user was


async def first_screen(app: TraceViewerApp, pilot) -> None:  # noqa: ANN001 - a Pilot
    """Let the app run until a timeline is on the screen and laid out."""
    for _ in range(2000):
        screen = app.screen
        if isinstance(screen, TimelineScreen) and screen.is_mounted:
            if screen.query_one(EventList).scrollable_content_region.height > 0:
                await pilot.pause()
                return
        await pilot.pause()


@sync
async def test_quitting_while_the_opening_worker_delivers_is_clean(unindexed,
                                                                   monkeypatch) -> None:
    """The opening worker finishes just as the user quits: its result must not land while
    Textual closes the screens.  It once did — the trace's modes were added mid-close and
    Textual's ``_close_all`` raised "dictionary changed size during iteration".  Here the
    worker is held after its rebuild until q is pressed and the loading screen is being
    closed, and that closing waits for the worker to have handed in its result."""
    monkeypatch.setattr(app_module, "PREVIEW_BYTES", 1 << 30)  # no preview: loading → whole
    holding, release, handed = threading.Event(), threading.Event(), threading.Event()
    load = app_module.GuestImage.load.__func__

    def held_load(cls, header, where):  # noqa: ANN001, ANN202 - as GuestImage.load
        holding.set()  # the worker has rebuilt the index: hold it here
        assert release.wait(60)
        return load(cls, header, where)

    deliver = app_module.deliver

    def deliver_then_say(*args):  # noqa: ANN002, ANN202 - as deliver
        try:
            return deliver(*args)
        finally:
            if release.is_set():
                handed.set()

    async def closing(screen) -> None:  # noqa: ANN001 - the LoadingScreen, being unmounted
        release.set()  # the worker goes on, and hands in the whole trace now
        assert await asyncio.to_thread(handed.wait, 60)

    monkeypatch.setattr(app_module.GuestImage, "load", classmethod(held_load))
    monkeypatch.setattr(app_module, "deliver", deliver_then_say)
    monkeypatch.setattr(LoadingScreen, "on_unmount", closing, raising=False)
    app = TraceViewerApp(unindexed)
    async with app.run_test(size=(120, 40)) as pilot:
        assert await asyncio.to_thread(holding.wait, 60)
        assert isinstance(app.screen, LoadingScreen)
        await pilot.press("q")
    assert release.is_set() and handed.is_set()  # the close did wait for the worker
    assert app.reader is None and app.return_code == 0  # its result was dropped


@pytest.mark.parametrize("indexed", [False, True], ids=["rebuilt", "indexed"])
@sync
async def test_q_at_startup_quits_cleanly(unindexed, indexed) -> None:
    """q as the very first key, and a little later: before the preview, during the
    rebuild, as the timeline arrives — a quit at startup ends cleanly.  (It once did
    nothing: the timeline's first focus went to the filter's input, which took the q.)"""
    if indexed:
        TraceReader(unindexed).close()  # builds and saves the index
    for pauses in (0, 1, 4) if not indexed else (0, 1):
        if not indexed:
            index_path(unindexed).unlink(missing_ok=True)
        app = TraceViewerApp(unindexed)
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(pauses):
                await pilot.pause()
            await pilot.press("q")
        assert app.return_code == 0, pauses
