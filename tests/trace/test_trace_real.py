"""The viewer and the exporter on REAL traces recorded by ``tvmm boot`` and ``tvmm attack``
in this session (tests/trace/conftest.py): what is on the screen, read back from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from test_trace_tui import rows, settle, shown, sync
from textual.widgets import Input, Static

from tvmm.abi.trace_events import EventKind
from tvmm.trace.export import export_perfetto, validate_trace_event_json
from tvmm.trace.reader import TraceReader
from tvmm.tui.app import TraceViewerApp
from tvmm.tui.screens.overview import OverviewScreen
from tvmm.tui.vms import created_vms, derived_vms
from tvmm.tui.widgets.detail_pane import DetailPane
from tvmm.tui.widgets.event_list import EventList

SIZE = (140, 45)


def screen_text(app: TraceViewerApp) -> str:
    """Every character on the terminal, line by line, as the user sees it."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def exits_named(path: Path, name: str) -> list[int]:
    with TraceReader(path) as reader:
        return [int(i) for i in reader.indices({EventKind.EXIT}) if reader.event(int(i)).name == name]


async def select(app: TraceViewerApp, pilot, index: int) -> DetailPane:  # noqa: ANN001
    assert app.screen.query_one(EventList).select_event(index)
    await pilot.pause()
    return app.screen.query_one(DetailPane)


# -- 8: what the host learned, from every outside field --------------------------------------


@sync
async def test_a_page_fault_at_shim_shows_the_page_the_host_got(real_traces) -> None:
    """At shim the host gets ``gpa_page``: the fault address is not hidden, it is the page."""
    trace = real_traces["pf-shim"]
    first = exits_named(trace, "npf")[0]
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        pane = await select(app, pilot, first)
        outside = shown(pane.query_one("#outside", Static), width=70)
        assert "gpa_page" in outside
        assert "hidden" not in outside
        assert "page only" in outside and "fields.gpa_page" in outside
        assert "page only" in screen_text(app)


@sync
async def test_at_sev_the_host_learns_rip_and_the_step_and_reads_the_registers(real_traces) -> None:
    trace = real_traces["boot-sev"]
    second = exits_named(trace, "timer")[1]
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        pane = await select(app, pilot, second)
        outside = shown(pane.query_one("#outside", Static), width=70)
        assert "rip ← fields.rip" in outside and "(exact)" in outside
        assert "instructions since the previous exit ← fields.retired = 200" in outside
        regs = len((app.reader.event(second).inside or {})["regs"])
        assert f"host reads {regs} of {regs} registers in clear" in outside


# -- 9: the per-exit instruction delta -------------------------------------------------------


@sync
async def test_single_steps_show_one_instruction_per_exit(real_traces) -> None:
    """sev-es single-stepping: the host saw 1 instruction per timer exit, and the list says
    +1 — not the running total (+10 at the 10th step, +999985 near the end)."""
    trace = real_traces["ss-sev-es"]
    timers = exits_named(trace, "timer")
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        events = app.screen.query_one(EventList)
        for at in (timers[10], timers[len(timers) // 2], timers[-1]):
            assert events.select_event(at)
            await pilot.pause()
            row = next(r for r in rows(events) if r.strip().startswith(f"{at} "))
            assert "+1 insn" in row and "insns" not in row, row
            inside = shown(app.screen.query_one("#inside", Static), width=70)
            assert "since prev exit 1 instruction" in inside


# -- 10: the verdict, the page map and the registers read the real fields --------------------


@sync
async def test_verdict_and_page_map_of_a_real_attack(real_traces) -> None:
    trace = real_traces["pf-snp"]
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        verdict = int(app.reader.indices({EventKind.VERDICT})[0])
        events = app.screen.query_one(EventList)
        assert events.select_event(verdict)
        await pilot.pause()
        row = next(r for r in rows(events) if "verdict" in r)
        # modexp forces its top bit, so a retargeted attack claims 63 of 64 (or all 64)
        assert re.search(r"\b6[34]/64 bits", row) and "?" not in row, row
        await pilot.press("o")
        await settle(app, pilot)
        assert isinstance(app.screen, OverviewScreen)
        page_map = shown(app.screen.query_one("#page-map", Static), width=120)
        assert "modexp_square" in page_map and "modexp_multiply" in page_map
        panel = shown(app.screen.query_one("#verdict", Static))
        assert re.search(r"bits correct\s+6[34] of 64", panel), panel


# -- 11: the bars show what is typed ---------------------------------------------------------


@sync
async def test_typed_filter_and_search_text_is_on_the_screen(real_traces) -> None:
    app = TraceViewerApp(real_traces["boot-shim"])
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("f", *"hypercall")
        await pilot.pause()
        assert "filter  hypercall" in screen_text(app)
        await pilot.press("escape", "slash", *"console_write")
        await pilot.pause()
        text = screen_text(app)
        assert "console_write" in text and "▔▔▔" not in text
        assert app.screen.query_one("#search", Input).region.height == 1


# -- 12: two VMs in one trace ----------------------------------------------------------------


@sync
async def test_two_vms_are_marked_titled_and_overviewed_apart(real_traces) -> None:
    """dropped-writes at shim calibrates on a VM of its own at plain, then attacks the
    victim at shim: one trace, two VMs, each shown and counted on its own."""
    trace = real_traces["two-vms"]
    with TraceReader(trace) as reader:
        creates = [int(i) for i in reader.indices({EventKind.MGMT})
                   if reader.event(int(i)).name == "create_vm"]
        levels = [reader.event(i).inside["level"] for i in creates]
        exits: list[dict[str, int]] = [{}, {}]
        for i in reader.indices({EventKind.EXIT}):
            counts = exits[int(i) > creates[1]]
            name = reader.event(int(i)).name
            counts[name] = counts.get(name, 0) + 1
    assert levels == ["plain", "shim"]
    app = TraceViewerApp(trace)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert "2 VMs (1: plain, 2: shim)" in app.screen.sub_title
        events = app.screen.query_one(EventList)
        assert events.select_event(creates[1])
        await pilot.pause()
        assert any("VM 2 created at shim" in r for r in rows(events))
        assert "showing VM 2 @ shim" in app.screen.sub_title
        await pilot.press("down")
        await pilot.pause()
        title = shown(app.screen.query_one("#detail-title", Static), width=140)
        assert "VM 2 @ shim" in title
        await pilot.press("o")
        await settle(app, pilot)
        for n, level in ((1, "plain"), (2, "shim")):
            vm = shown(app.screen.query_one("#vm", Static), width=120)
            assert f"VM {n} (id {n}) @ {level}" in vm and f"{n} of 2 VMs" in vm
            for name, count in exits[n - 1].items():
                assert f"{name} {count:,}" in vm, (n, name, count, vm)
            await pilot.press("v")
            await settle(app, pilot)


# -- 13: a cut-short trace opens; numbers are never cut silently -----------------------------


@sync
async def test_a_trace_cut_mid_line_opens_and_says_where_it_stops(real_traces, tmp_path) -> None:
    data = real_traces["pf-snp"].read_bytes()
    cut = tmp_path / "cut.jsonl"
    lines = data.splitlines(keepends=True)
    whole = b"".join(lines[:50])
    cut.write_bytes(whole + lines[50][: len(lines[50]) // 2])
    app = TraceViewerApp(cut)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert app.reader is not None and len(app.reader) == 49
        assert "cut short after event 48" in app.screen.sub_title
        await pilot.press("end")
        await pilot.pause()
        assert app.screen.query_one(EventList).selected == 48


@sync
async def test_at_80_by_24_no_register_value_is_cut(real_traces) -> None:
    trace = real_traces["boot-sev"]
    app = TraceViewerApp(trace)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        pane = await select(app, pilot, exits_named(trace, "timer")[3])
        regs = (app.reader.event(exits_named(trace, "timer")[3]).inside or {})["regs"]
        inside = shown(pane.query_one("#inside", Static), width=pane.query_one("#inside").content_region.width)
        for name, value in regs.items():
            assert re.search(rf"\b{name}\s+{value:#x}(?![0-9a-f])", inside), (name, hex(value))
        for line in screen_text(app).splitlines():  # any hex number at an edge ends in …
            for m in re.finditer(r"0x[0-9a-f]+(?=[│ ]*$)", line):
                assert m.group(0) in inside or m.group(0) in {f"{v:#x}" for v in regs.values()}


# -- 14: the exported slices carry what the host saw -----------------------------------------


def test_perfetto_exit_slices_carry_the_outside_view(real_traces, tmp_path) -> None:
    trace = real_traces["pf-shim"]
    out = tmp_path / "pf.json"
    with TraceReader(trace) as reader:
        export_perfetto(reader, out)
        by_seq = {e.pos.seq: e for e in reader.iter_events()}
    data = json.loads(out.read_text())
    assert validate_trace_event_json(data) == []
    slices = [e for e in data["traceEvents"] if e.get("ph") == "X"]
    assert slices
    for s in slices:
        outside = by_seq[s["args"]["seq"]].outside
        assert s["args"]["outside"] == outside
    npf = next(s for s in slices if s["name"] == "npf")
    assert "gpa_page" in npf["args"]["outside"]["fields"]


def test_vms_of_a_trace_without_create_vm_events_are_derived(real_traces, tmp_path) -> None:
    """A trace from before the TEE wrote create_vm: the VMs are found from the exits'
    levels and their instruction counts starting again."""
    lines = real_traces["two-vms"].read_bytes().splitlines(keepends=True)
    old = tmp_path / "old.jsonl"
    old.write_bytes(b"".join(line for line in lines if b'"name":"create_vm"' not in line))
    with TraceReader(old) as reader:
        assert created_vms(reader) is None
        reader.block_bytes = 2048  # and across many blocks
        spans = derived_vms(reader)
        assert [(s.number, s.level) for s in spans] == [(1, "plain"), (2, "shim")]
        assert spans[0].first == 0 and spans[0].stop == spans[1].first
        assert (reader.event(spans[1].first).outside or {}).get("level") == "shim"
        assert all((reader.event(i).outside or {}).get("level") in (None, "plain")
                   for i in range(spans[0].stop))


@sync
async def test_esc_cancels_a_search_under_way(real_traces, monkeypatch) -> None:
    """A search shows how far it is and Esc stops it (the UI never waits for it)."""
    import threading

    from tvmm.tui.screens import timeline

    started, seen_cancel = threading.Event(), threading.Event()

    def slow_find(reader, query, after, rows, *, cancelled, progress):  # noqa: ANN001
        progress(0.42)
        started.set()
        for _ in range(2000):  # at most 10 s; Esc ends it at once
            if cancelled():
                seen_cancel.set()
                return None
            threading.Event().wait(0.005)
        return None

    monkeypatch.setattr(timeline, "find_text", slow_find)
    app = TraceViewerApp(real_traces["boot-shim"])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("slash", *"anything", "enter")
        assert started.wait(5)
        await pilot.pause()
        assert "42% (Esc cancels)" in screen_text(app)
        await pilot.press("escape")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert seen_cancel.is_set()
        assert "cancelled" in str(app.screen.query_one("#filter-status", Static).content)


def test_page_map_of_a_trace_without_page_faults_reads_no_event(real_traces, monkeypatch) -> None:
    """A real run without npf exits (a timer-stepped boot): the scan finds every exit line
    and parses none (before, it parsed every exit: 16 s for 250,000)."""
    from tvmm.tui.page_access import scan_page_faults

    with TraceReader(real_traces["boot-sev"]) as reader:
        calls = []
        real_event = reader.event
        monkeypatch.setattr(reader, "event", lambda i: calls.append(i) or real_event(i))
        assert scan_page_faults(reader).faults == 0
        assert calls == []
