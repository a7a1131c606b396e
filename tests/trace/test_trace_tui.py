"""The viewer driven by Textual's pilot: what is on screen after each key."""

from __future__ import annotations

import asyncio
import functools
import io
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import Static

from tvmm.abi.trace_events import EventKind
from tvmm.trace.reader import TraceReader
from tvmm.trace.synthetic import write_synthetic_trace
from tvmm.tui.app import TraceViewerApp
from tvmm.tui.screens.error import ErrorScreen
from tvmm.tui.screens.help import HelpScreen
from tvmm.tui.screens.overview import OverviewScreen
from tvmm.tui.screens.timeline import TimelineScreen
from tvmm.tui.widgets.detail_pane import DetailPane
from tvmm.tui.widgets.event_list import EventList
from tvmm.tui.widgets.filter_bar import FilterBar

SIZE = (140, 45)


def sync(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async pilot test without an async pytest plugin."""

    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tui")
    return write_synthetic_trace(tmp / "s.jsonl", 3000, seed=31, elf_path=tmp / "guest.elf")


def shown(widget: Static, width: int = 100) -> str:
    """The text a Static displays."""
    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(widget.content)
    return console.export_text()


def rows(events: EventList) -> list[str]:
    return [events.render_line(y).text for y in range(events.scrollable_content_region.height)]


async def settle(app: TraceViewerApp, pilot) -> None:  # noqa: ANN001 - textual's Pilot
    await app.workers.wait_for_complete()
    await pilot.pause()


def kind_of(app: TraceViewerApp, events: EventList) -> EventKind:
    return app.reader.event(events.selected).kind


@sync
async def test_timeline_shows_events_and_details(trace: Path) -> None:
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert isinstance(app.screen, TimelineScreen)
        events = app.screen.query_one(EventList)
        lines = rows(events)
        assert lines[0].split()[:4] == ["seq", "t", "(ms)", "vc"]
        for i, event in enumerate(app.reader.iter_events(0, 10)):
            assert f"{event.kind.value:<9} {event.name}" in lines[i + 1]
        await pilot.press(*["down"] * 3, "up")
        assert events.selected == 2
        exits = [int(i) for i in app.reader.indices({EventKind.EXIT})]
        at = next(n for n, i in enumerate(exits) if app.reader.event(i).name == "npf")
        first = exits[at]
        await pilot.press(*["down"] * (first - 2))
        await pilot.pause()
        assert events.selected == first
        pane = app.screen.query_one(DetailPane)
        assert pane.event_index == first
        assert f"#{first} exit npf" in shown(pane.query_one("#detail-title", Static))
        inside = shown(pane.query_one("#inside", Static))
        assert "modexp_sqr" in inside and "fault gpa" in inside and "rbx" in inside
        outside = shown(pane.query_one("#outside", Static))
        assert "fault address: TEE" in outside and "deterministic ciphertext" in outside
        disasm = shown(pane.query_one("#disasm", Static))
        assert "→" in disasm and "div" in disasm
        regdiff = shown(pane.query_one("#regdiff", Static))
        if at == 0:
            assert "first exit of this vCPU" in regdiff
        else:
            assert f"since #{exits[at - 1]} " in regdiff
        assert events.select_event(exits[at + 1])
        await pilot.pause()
        assert f"since #{first} (npf)" in shown(pane.query_one("#regdiff", Static))


@sync
async def test_n_and_shift_n_jump_between_violations(trace: Path) -> None:
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        events = app.screen.query_one(EventList)
        marks = list(app.reader.indices({EventKind.POLICY, EventKind.ATTACK}))
        await pilot.press("n")
        assert events.selected == marks[0]
        await pilot.press("n", "n")
        assert events.selected == marks[2]
        await pilot.press("N")
        assert events.selected == marks[1]
        await pilot.press("end")
        await pilot.press("N")
        assert events.selected == marks[-1]
        assert kind_of(app, events) in (EventKind.POLICY, EventKind.ATTACK)


@sync
async def test_filter_by_kind_and_name(trace: Path) -> None:
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        events = app.screen.query_one(EventList)
        await pilot.press("f", *"policy", "enter")
        await settle(app, pilot)
        expected = app.reader.indices({EventKind.POLICY})
        assert list(events.rows) == list(expected)
        assert all("policy" in line for line in rows(events)[1 : 1 + len(expected)])
        status = app.screen.query_one("#filter-status", Static)
        assert f"{len(expected):,} of 3,000 events" in str(status.content)
        await pilot.press("f", "ctrl+u", *"exit name=npf", "enter")
        await settle(app, pilot)
        assert len(events.rows) > 0
        assert all(app.reader.event(i).name == "npf" for i in events.rows[:50])
        await pilot.press("f", "ctrl+u", *"colour=red", "enter")
        await settle(app, pilot)
        assert "unknown filter" in str(status.content)


@sync
async def test_search_runs_in_a_worker_and_selects_the_match(trace: Path) -> None:
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        events = app.screen.query_one(EventList)
        await pilot.press("slash", *"modexp_mul", "enter")
        await settle(app, pilot)
        first = events.selected
        assert first is not None and b"modexp_mul" in app.reader.raw(first)
        await pilot.press("enter")
        await settle(app, pilot)
        assert events.selected > first
        await pilot.press("escape")
        assert events.has_focus


@sync
async def test_help_screen(trace: Path) -> None:
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        keys = shown(app.screen.query_one("#help-keys", Static))
        assert "next policy event or attack action" in keys and "overview" in keys
        await pilot.press("escape")
        assert isinstance(app.screen, TimelineScreen)


@sync
async def test_overview_shows_page_map_and_verdict(trace: Path) -> None:
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("o")
        await settle(app, pilot)
        assert isinstance(app.screen, OverviewScreen)
        page_map = shown(app.screen.query_one("#page-map", Static), width=120)
        assert "nested page faults on" in page_map
        assert "0x402000" in page_map and "modexp_mul" in page_map
        assert "fault order" in page_map and "A A B" in page_map.replace("\n", " ")
        verdict = shown(app.screen.query_one("#verdict", Static))
        assert "page_fault_channel @ snp" in verdict and "truth" in verdict and "guess" in verdict
        assert "exits by reason" in shown(app.screen.query_one("#stats", Static))
        await pilot.press("o")
        assert isinstance(app.screen, TimelineScreen)


@sync
async def test_a_corrupted_file_shows_the_error_screen(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"this is not a trace\n")
    app = TraceViewerApp(bad)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert isinstance(app.screen, ErrorScreen)
        text = shown(app.screen.query_one("#error-box", Static))
        assert "not a tvmm trace header" in text and "not_a_trace" in text
        assert "Traceback" not in text
        await pilot.press("q")
    assert app.return_code == 1


@sync
async def test_a_damaged_line_is_shown_not_raised(trace: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.jsonl"
    lines = trace.read_bytes().splitlines(keepends=True)
    lines[3] = b"{" + b"!" * (len(lines[3]) - 2) + b"\n"
    damaged.write_bytes(b"".join(lines))
    app = TraceViewerApp(damaged)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        events = app.screen.query_one(EventList)
        assert "unreadable line 3" in rows(events)[3]
        await pilot.press("down", "down")
        await pilot.pause()
        title = shown(app.screen.query_one("#detail-title", Static))
        assert "line 3" in title


@sync
async def test_trace_without_elf_says_why_there_is_no_code(tmp_path: Path) -> None:
    trace = write_synthetic_trace(tmp_path / "plain.jsonl", 200, seed=2, level="plain")
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        events = app.screen.query_one(EventList)
        events.select_event(int(TraceReader(trace).indices({EventKind.EXIT})[1]))
        await pilot.pause()
        pane = app.screen.query_one(DetailPane)
        assert "names no guest ELF" in shown(pane.query_one("#disasm", Static))
        assert "host reads 18 of 18 registers in clear" in shown(pane.query_one("#outside", Static))


@sync
async def test_filter_bar_keeps_keys_to_itself(trace: Path) -> None:
    """Typing q or n into the filter does not quit or jump."""
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("f", "q", "n")
        assert app.is_running
        assert app.screen.query_one("#filter-input").value == "qn"
        assert isinstance(app.screen.query_one(FilterBar), FilterBar)


@sync
async def test_a_trace_with_no_events(tmp_path: Path) -> None:
    empty = write_synthetic_trace(tmp_path / "empty.jsonl", 0, seed=1)
    app = TraceViewerApp(empty)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert app.screen.query_one(EventList).selected is None
        assert "no event selected" in shown(app.screen.query_one("#detail-title", Static))
        await pilot.press("n", "down", "end", "slash", *"x", "enter", "escape", "o")
        await settle(app, pilot)
        assert isinstance(app.screen, OverviewScreen)
        assert "no nested page faults" in shown(app.screen.query_one("#page-map", Static))
