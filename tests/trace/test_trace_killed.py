"""A run whose TEE process is killed (SIGKILL, no clean-up) leaves a trace holding every
event up to the kill: the recorder writes each line as it goes, and holds its index one
batch back until it closes, so the reader knows the recording never finished."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from test_trace_tui import settle, sync

from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import Device, Level
from tvmm.cli import main
from tvmm.harness import launcher
from tvmm.harness.boot import boot
from tvmm.trace.reader import TraceReader
from tvmm.tui.app import TraceViewerApp
from tvmm.tui.widgets.event_list import EventList


@pytest.fixture(scope="module")
def killed_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """counter at shim, its TEE process killed when the guest's first line reaches us."""
    trace = tmp_path_factory.mktemp("killed") / "killed.jsonl"
    started = launcher.start
    sessions: list[launcher.Session] = []

    def start(**kwargs: object) -> launcher.Session:
        sessions.append(started(**kwargs))
        return sessions[-1]

    def on_console(text: str) -> None:
        if sessions and sessions[0].tee.poll() is None:
            os.kill(sessions[0].tee.pid, signal.SIGKILL)
            sessions[0].tee.wait()

    mp = pytest.MonkeyPatch()
    mp.setattr(launcher, "start", start)
    try:
        with pytest.raises(launcher.HarnessError):
            boot("counter", Level.SHIM, trace=trace, on_console=on_console)
    finally:
        mp.undo()
    assert sessions[0].tee.returncode == -signal.SIGKILL
    return trace


def test_the_killed_runs_trace_holds_every_event_up_to_the_kill(killed_trace: Path) -> None:
    with TraceReader(killed_trace) as reader:
        assert reader.unfinished and not reader.index_rebuilt
        events = list(reader.iter_events())
        assert len(events) == len(reader) > 0
        kinds = [e.kind for e in events]
        assert EventKind.END not in kinds  # the kill came first
        # the guest's first console write, whose output made us kill the TEE: its exit
        # was recorded before the host saw it, so it is in the trace (a buffered recorder
        # lost it, and the events before it)
        console_exits = [e for e in events if e.kind is EventKind.EXIT
                         and (e.outside or {}).get("fields", {}).get("device") == Device.CONSOLE]
        assert console_exits, [(e.kind, e.name) for e in events]
        assert [e.pos.seq for e in events] == list(range(len(events)))
        assert reader.truncation is not None
        assert f"stops after event {len(reader) - 1:,}" in reader.truncation
        assert "killed or crashed" in reader.truncation


def test_a_cleanly_closed_trace_is_not_called_unfinished(tmp_path: Path) -> None:
    trace = tmp_path / "whole.jsonl"
    boot("hello", Level.SHIM, trace=trace)
    with TraceReader(trace) as reader:
        assert not reader.unfinished and reader.truncation is None
        assert reader.kind(len(reader) - 1) is EventKind.END


def test_trace_stats_of_the_killed_run_notes_where_it_stops(killed_trace: Path, capsys) -> None:
    assert main(["trace", "stats", str(killed_trace)]) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at the terminal width
    assert "stops after event" in err and "Traceback" not in err


@sync
async def test_the_viewer_opens_it_and_says_where_it_stops(killed_trace: Path) -> None:
    app = TraceViewerApp(killed_trace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert app.reader is not None and app.reader.unfinished
        last = len(app.reader) - 1
        assert f"cut short after event {last}" in app.screen.sub_title
        notes = [n.message for n in app._notifications]
        assert any(f"stops after event {last:,}" in m for m in notes), notes
        await pilot.press("end")
        await pilot.pause()
        assert app.screen.query_one(EventList).selected == last


def test_tvmm_trace_view_does_not_refuse_a_cut_short_trace(killed_trace: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    """The command checks the file before starting the UI: a killed run's trace, and one
    cut inside its last line, pass that check (the viewer then says where they stop)."""
    import tvmm.tui

    opened: list[str] = []
    monkeypatch.setattr(tvmm.tui, "run_viewer", lambda path: opened.append(path) or 0)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(killed_trace.read_bytes()[:-10])
    for path in (killed_trace, cut):
        assert main(["trace", "view", str(path)]) == 0
    assert opened == [str(killed_trace), str(cut)]
