"""Benchmark the trace reader and the viewer on a 1,000,000-event synthetic trace and a
large real trace; print JSON lines, and with ``--write-doc`` write the figures into
docs/traces.md's marked block (tvmm_tools/doc_block.py).

Measures, in the same run: opening with the recorder's index, opening after the index was
deleted (rebuilt by scanning), reading 1,000 random events, and a naive baseline (a Python
loop over the lines keeping offsets in a list).  Every measurement runs in a fresh child
interpreter so that its peak RSS (``getrusage``) belongs to that measurement alone; the
Python heap peak comes from ``tracemalloc`` in a separate child, since tracing allocations
slows the timed code down.  Budget: open in <= 2 s and <= 500 MB.

The viewer's figures (``run_viewer``) are taken on the synthetic trace and on a real one
that ``tvmm boot counter --level snp --quantum 1 --max-exits N`` records (every exit a
timer exit with its registers and state blob, the densest real trace there is): the
operations the viewer runs in its workers, each timed on its own in one fresh child
(open, search for text that is not there — the whole file —, a name filter, the overview:
VMs, page map, exits, statistics), and the whole viewer driven headless by Textual's pilot
in another (open, search, filter, overview, waiting for each), whose peak RSS is the
whole run's.  Budget: open <= 2 s; search and overview <= 2 s or in a cancellable worker
with progress (they are); the whole run <= 500 MB.

    PYTHONPATH=. python tvmm_tools/bench_trace.py [--events N] [--seed S] [--real-exits N]
                                             [--write-doc docs/traces.md]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPEN_BUDGET_S = 2.0
RSS_BUDGET_MB = 500.0
RANDOM_READS = 1_000


def run(n: int = 1_000_000, seed: int = 0, *, keep: Path | None = None) -> dict:
    """Write an ``n``-event trace, measure it, and return the figures; with ``keep`` (a
    directory) the trace stays there as ``bench.jsonl`` for the viewer's figures."""
    from tvmm.trace.recorder import index_path
    from tvmm.trace.synthetic import write_synthetic_trace

    with tempfile.TemporaryDirectory(prefix="tvmm-bench-") as tmp:
        trace = Path(keep or tmp) / "bench.jsonl"
        t0 = time.perf_counter()
        write_synthetic_trace(trace, n, seed)
        write_s = time.perf_counter() - t0
        idx = index_path(trace)
        with_index = _child(trace, "open", seed)
        traced_index = _child(trace, "tracemalloc", seed)
        idx.unlink()
        rebuild = _child(trace, "open", seed)
        idx.unlink()
        traced_rebuild = _child(trace, "tracemalloc", seed)
        naive = _child(trace, "naive", seed)
        trace_mb = trace.stat().st_size / 2**20
    return summarise(n, trace_mb, write_s, with_index, traced_index, rebuild, traced_rebuild,
                     naive)


def summarise(n: int, trace_mb: float, write_s: float, with_index: dict, traced_index: dict,
              rebuild: dict, traced_rebuild: dict, naive: dict) -> dict:
    """The result line from the children's figures: ratios from the measured durations,
    figures rounded only for display.  A duration below the clock's resolution (0) makes
    its ratio null, never a division by zero."""
    result = {
        "bench": "trace_reader",
        "events": n,
        "trace_mb": round(trace_mb, 1),
        "write_s": round(write_s, 2),
        "open_index_s": round(with_index["open_s"], 4),
        "open_index_rss_mb": round(with_index["rss_peak_mb"], 1),
        "open_index_rss_delta_mb": round(with_index["rss_delta_mb"], 1),
        "open_index_py_peak_mb": round(traced_index["py_peak_mb"], 1),
        "open_rebuild_s": round(rebuild["open_s"], 4),
        "open_rebuild_rss_mb": round(rebuild["rss_peak_mb"], 1),
        "open_rebuild_rss_delta_mb": round(rebuild["rss_delta_mb"], 1),
        "open_rebuild_py_peak_mb": round(traced_rebuild["py_peak_mb"], 1),
        "index_written_back": rebuild["index_written"],
        "random_reads": RANDOM_READS,
        "random_reads_ms": round(with_index["reads_ms"], 1),
        "naive_scan_s": round(naive["open_s"], 4),
        "naive_scan_rss_mb": round(naive["rss_peak_mb"], 1),
        "ratio_open_index_vs_naive": _ratio(with_index["open_s"], naive["open_s"], 4),
        "ratio_rebuild_vs_naive": _ratio(rebuild["open_s"], naive["open_s"], 3),
    }
    # The open budget is the user's wait for a screen: with the index, the reader's open;
    # without it, the viewer's first screen (judged with the viewer's figures), while the
    # rebuild runs in its cancellable worker with progress.  Memory counts either way.
    result["within_budget"] = with_index["open_s"] <= OPEN_BUDGET_S and all(
        figures["rss_peak_mb"] <= RSS_BUDGET_MB for figures in (with_index, rebuild))
    return result


def _ratio(numerator: float, denominator: float, digits: int) -> float | None:
    """numerator / denominator, rounded after dividing; None when the denominator was too
    short to measure (0: the two cannot be compared, which is not a ratio of 0 or of ∞)."""
    return round(numerator / denominator, digits) if denominator > 0 else None


def _child(trace: Path, mode: str, seed: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", mode, str(trace), str(seed)],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def _measure(mode: str, trace: str, seed: int) -> dict:
    """One measurement, in this (fresh) process."""
    import random
    import tracemalloc

    from tvmm.trace.reader import TraceReader

    figures: dict = {}
    if mode == "viewer-ops":
        return _measure_viewer_ops(trace)
    if mode == "viewer-app":
        return _measure_viewer_app(trace)
    if mode == "viewer-first":
        return _measure_viewer_first(trace)
    if mode == "tracemalloc":
        tracemalloc.start()
        reader = TraceReader(trace)
        figures["py_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        return figures
    before = _rss_now_mb()
    t0 = time.perf_counter()
    if mode == "naive":
        offsets, pos = [], 0
        with open(trace, "rb") as f:
            for line in f:
                offsets.append(pos)
                pos += len(line)
    else:
        reader = TraceReader(trace)
        figures["index_written"] = reader.index_written
    figures["open_s"] = time.perf_counter() - t0  # rounded only for display, after dividing
    if mode == "open":
        rng = random.Random(seed)
        picks = [rng.randrange(len(reader)) for _ in range(RANDOM_READS)]
        t1 = time.perf_counter()
        for i in picks:
            reader.event(i)
        figures["reads_ms"] = (time.perf_counter() - t1) * 1000
    peak = _rss_peak_mb()
    figures["rss_peak_mb"] = peak
    figures["rss_delta_mb"] = peak - before
    return figures


def _rss_peak_mb() -> float:
    """This process's own peak RSS (VmHWM: its address space's, from exec on).  Not
    ``ru_maxrss``: Linux keeps that across fork and exec, so a child would report its
    parent's peak (a test process holding guest memory, say) as its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the viewer ------------------------------------------------------------------------------

SEARCH_MISS = "no such text in any trace"  # a search that reads the whole file
FILTER = "name=npf"
DOC_BLOCK = "trace-bench"


def run_viewer(n: int = 1_000_000, seed: int = 0, real_exits: int = 250_000,
               synthetic: Path | None = None) -> dict:
    """The viewer's figures on an ``n``-event synthetic trace (``synthetic`` if given,
    written otherwise) and on a real trace of ``real_exits`` exits, each measured in fresh
    children."""
    from tvmm.trace.recorder import index_path
    from tvmm.trace.synthetic import write_synthetic_trace

    with tempfile.TemporaryDirectory(prefix="tvmm-bench-viewer-") as tmp:
        if synthetic is None:
            synthetic = write_synthetic_trace(Path(tmp) / "synthetic.jsonl", n, seed)
        real = record_real_trace(Path(tmp) / "real.jsonl", real_exits)
        traces = {}
        for name, trace in (("synthetic", synthetic), ("real", real)):
            index_path(trace).unlink(missing_ok=True)  # the viewer rebuilds (and saves) it
            first = _child(trace, "viewer-first", seed)
            ops = _child(trace, "viewer-ops", seed)
            app = _child(trace, "viewer-app", seed)
            traces[name] = _viewer_figures(trace, first, ops, app)
    return {"bench": "trace_viewer", "traces": traces,
            "within_budget": all(t["within_budget"] for t in traces.values())}


def record_real_trace(path: Path, exits: int) -> Path:
    """A real trace: the kvstore guest at snp stepped by a one-instruction timer (it runs
    on past any limit, unlike counter; the run stops at ``exits``, which tvmm boot reports
    with a status of its own, not an error)."""
    done = subprocess.run(
        [sys.executable, "-m", "tvmm", "boot", "kvstore", "--level", "snp", "--quantum", "1",
         "--max-exits", str(exits), "--time-limit", "0", "--trace", str(path), "--json"],
        env=_env(), capture_output=True, text=True,
    )
    if not path.exists() or "Traceback" in done.stderr:
        raise RuntimeError(f"tvmm boot recorded no trace: {done.stderr[-2000:]}")
    return path


def _viewer_figures(trace: Path, first: dict, ops: dict, app: dict) -> dict:
    events = ops["events"]
    figures = {
        "events": events,
        "trace_mb": round(trace.stat().st_size / 2**20, 1),
        "unindexed_first_screen_s": round(first["first_s"], 2),
        "unindexed_first_events": first["first_events"],
        "unindexed_whole_s": round(first["whole_s"], 2),
        "unindexed_rss_mb": round(first["rss_peak_mb"], 1),
        "open_s": round(ops["open_s"], 3),
        "search_s": round(ops["search_s"], 2),
        "filter_s": round(ops["filter_s"], 2),
        "overview_s": round(ops["overview_s"], 2),
        "ops_rss_mb": round(ops["rss_peak_mb"], 1),
        "app_open_s": round(app["open_s"], 2),
        "app_search_s": round(app["search_s"], 2),
        "app_filter_s": round(app["filter_s"], 2),
        "app_overview_s": round(app["overview_s"], 2),
        "app_rss_mb": round(app["rss_peak_mb"], 1),
    }
    figures["completed"] = all(app[f"{step}_done"] for step in ("search", "filter", "overview"))
    figures["within_budget"] = (
        figures["completed"]
        and ops["open_s"] <= OPEN_BUDGET_S
        and app["open_s"] <= OPEN_BUDGET_S
        and first["first_s"] <= OPEN_BUDGET_S
        and max(ops["rss_peak_mb"], app["rss_peak_mb"], first["rss_peak_mb"]) <= RSS_BUDGET_MB
    )
    return figures


def _measure_viewer_ops(trace: str) -> dict:
    """Each operation the viewer runs in a worker, timed alone, in this fresh process."""
    from tvmm.trace.reader import TraceReader
    from tvmm.trace.stats import trace_stats
    from tvmm.tui.filter_spec import apply_filter, parse_filter
    from tvmm.tui.page_access import scan_page_faults
    from tvmm.tui.screens.overview import _exit_counts
    from tvmm.tui.text_search import find_text
    from tvmm.tui.vms import created_vms, derived_vms

    figures: dict = {}
    t0 = time.perf_counter()
    reader = TraceReader(trace, allow_truncated=True)
    figures["open_s"] = time.perf_counter() - t0
    figures["events"] = len(reader)
    t0 = time.perf_counter()
    assert find_text(reader, SEARCH_MISS, -1, reader.indices()) is None
    figures["search_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    apply_filter(reader, parse_filter(FILTER))
    figures["filter_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    spans = created_vms(reader) or derived_vms(reader)
    for span in spans:
        scan_page_faults(reader, start=span.first, stop=span.stop)
        if len(spans) > 1:  # as the overview: one VM's exits are the statistics' own
            _exit_counts(reader, span, lambda: False)
    trace_stats(reader)
    figures["overview_s"] = time.perf_counter() - t0
    figures["rss_peak_mb"] = _rss_peak_mb()
    return figures


def _measure_viewer_app(trace: str) -> dict:
    """The whole viewer, headless, driven as a user would: open, search, filter, overview;
    each timed from the key that starts it until its workers are done."""
    import asyncio

    from tvmm.tui.app import TraceViewerApp
    from tvmm.tui.screens.error import ErrorScreen
    from tvmm.tui.screens.timeline import TimelineScreen

    figures: dict = {}

    def status() -> str:
        return str(app.screen.query_one("#filter-status").content)

    def overview_done() -> bool:
        return getattr(app.screen, "_stats", None) is not None

    async def until(done, pilot) -> None:  # noqa: ANN001 - a predicate, textual's Pilot
        deadline = time.perf_counter() + 600
        while not done() and time.perf_counter() < deadline:
            await pilot.pause(0.02)

    app = TraceViewerApp(trace)

    async def drive() -> None:
        t0 = time.perf_counter()
        async with app.run_test(size=(120, 40)) as pilot:
            await until(lambda: isinstance(app.screen, TimelineScreen | ErrorScreen), pilot)
            figures["open_s"] = time.perf_counter() - t0  # the timeline is on the screen
            await app.workers.wait_for_complete()
            await pilot.pause()
            for step, opener, typed, key, done in (
                ("search", ["slash"], SEARCH_MISS, "enter",
                 lambda: status().startswith("no match")),
                ("filter", ["escape", "f"], FILTER, "enter",
                 lambda: status().endswith(f"name={FILTER[5:]}")),
                ("overview", [], "", "o", overview_done),
            ):
                await pilot.press(*opener)
                await pilot.pause()  # the bar has the focus before the first letter
                await pilot.press(*typed)  # typing is the user's time, not the viewer's
                t0 = time.perf_counter()
                await pilot.press(key)
                await until(done, pilot)  # the worker's result is on the screen
                figures[f"{step}_s"] = time.perf_counter() - t0
                figures[f"{step}_done"] = done()

    asyncio.run(drive())
    figures["rss_peak_mb"] = _rss_peak_mb()
    return figures


def _measure_viewer_first(trace: str) -> dict:
    """The viewer on a trace without its index: the time until the first screen (the
    preview of the trace's first lines) and until the rebuilt index's whole timeline."""
    import asyncio

    from tvmm.tui.app import TraceViewerApp
    from tvmm.tui.screens.error import ErrorScreen
    from tvmm.tui.screens.timeline import TimelineScreen

    figures: dict = {}
    app = TraceViewerApp(trace)

    async def drive() -> None:
        t0 = time.perf_counter()
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = t0 + 600
            while not isinstance(app.screen, TimelineScreen | ErrorScreen):
                await pilot.pause(0.01)
            figures["first_s"] = time.perf_counter() - t0  # the first timeline is shown
            figures["first_events"] = len(app.screen.reader)
            while app.reader is None and app.error is None and time.perf_counter() < deadline:
                await pilot.pause(0.02)
            figures["whole_s"] = time.perf_counter() - t0  # the whole index is ready
            figures["rebuilt"] = app.reader is not None and app.reader.index_rebuilt
            await app.workers.wait_for_complete()
            await pilot.pause(0.1)  # the last screen's mounting ends before the app does

    asyncio.run(drive())
    figures["rss_peak_mb"] = _rss_peak_mb()
    return figures


def markdown(reader: dict, viewer: dict) -> str:
    """The doc block: the command's own figures, as tables."""
    lines = [
        f"Measured by `python tvmm_tools/bench_trace.py --write-doc docs/traces.md` "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs when it ran).",
        "",
        f"The reader, {reader['events']:,} synthetic events ({reader['trace_mb']} MB):",
        "",
        "| | time | peak RSS |",
        "|---|---|---|",
        f"| open with the index | {reader['open_index_s']} s | {reader['open_index_rss_mb']} MB |",
        f"| open, rebuilding the index | {reader['open_rebuild_s']} s "
        f"| {reader['open_rebuild_rss_mb']} MB |",
        f"| {reader['random_reads']:,} random `event(i)` | {reader['random_reads_ms']} ms | |",
        f"| baseline: a Python loop keeping line offsets | {reader['naive_scan_s']} s "
        f"| {reader['naive_scan_rss_mb']} MB |",
        "",
        "The viewer (search: text that is in no line, so the whole file; filter: "
        f"`{FILTER}`; overview: VMs, page map and exits per VM, statistics):",
        "",
        "| trace | events | MB | open | search | filter | overview | whole run: open / search "
        "/ filter / overview | whole run peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, t in viewer["traces"].items():
        lines.append(
            f"| {name} | {t['events']:,} | {t['trace_mb']} | {t['open_s']} s | {t['search_s']} s "
            f"| {t['filter_s']} s | {t['overview_s']} s | {t['app_open_s']} / "
            f"{t['app_search_s']} / {t['app_filter_s']} / {t['app_overview_s']} s "
            f"| {t['app_rss_mb']} MB |"
        )
    lines += [
        "",
        "The viewer on the same traces without their index (deleted first: it is rebuilt, "
        "and saved for the next open): the first screen shows the trace's first lines while "
        "the rebuild goes on behind it.",
        "",
        "| trace | first screen | events on it | whole index ready | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for name, t in viewer["traces"].items():
        lines.append(
            f"| {name} | {t['unindexed_first_screen_s']} s | {t['unindexed_first_events']:,} "
            f"| {t['unindexed_whole_s']} s | {t['unindexed_rss_mb']} MB |"
        )
    traces = viewer["traces"].values()
    peaks = [max(t["app_rss_mb"], t["unindexed_rss_mb"]) for t in traces]

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    lines += [
        "",
        f"Within budget: open with the index <= {OPEN_BUDGET_S:g} s: "
        f"{yes(reader['open_index_s'] <= OPEN_BUDGET_S)}; open rebuilding the index (the "
        f"fallback when the .idx is missing) <= {OPEN_BUDGET_S:g} s: "
        f"{yes(reader['open_rebuild_s'] <= OPEN_BUDGET_S)}"
        + ("" if reader['open_rebuild_s'] <= OPEN_BUDGET_S else
           ", so the viewer rebuilds it in its cancellable opening worker, which shows "
           "the percentage scanned (q stops it), and saves it beside the trace for the "
           "next open") + "; the viewer's first screen without the index <= "
        f"{OPEN_BUDGET_S:g} s on both traces: "
        f"{yes(all(t['unindexed_first_screen_s'] <= OPEN_BUDGET_S for t in traces))}; "
        f"the viewer open <= {OPEN_BUDGET_S:g} s on both traces: "
        f"{yes(all(t['app_open_s'] <= OPEN_BUDGET_S for t in traces))}; every whole run <= "
        f"{RSS_BUDGET_MB:g} MB: {yes(all(peak <= RSS_BUDGET_MB for peak in peaks))}; "
        "search, filter and overview run in cancellable workers with progress, and each "
        f"finished in the whole run: {yes(all(t['completed'] for t in traces))}.",
    ]
    return "\n".join(lines)


def _env() -> dict:
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-exits", type=int, default=250_000)
    parser.add_argument("--write-doc", type=Path, metavar="DOC",
                        help="write the figures into DOC's trace-bench block")
    parser.add_argument(
        "--measure", nargs=3, metavar=("MODE", "TRACE", "SEED"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.measure:
        mode, trace, seed = args.measure
        print(json.dumps(_measure(mode, trace, int(seed))))
        return 0
    with tempfile.TemporaryDirectory(prefix="tvmm-bench-main-") as tmp:
        result = run(args.events, args.seed, keep=Path(tmp))  # one synthetic trace for both
        print(json.dumps(result))
        viewer = run_viewer(args.events, args.seed, args.real_exits,
                            synthetic=Path(tmp) / "bench.jsonl")
        print(json.dumps(viewer))
    if args.write_doc:
        from tvmm_tools.doc_block import write_block

        write_block(args.write_doc, DOC_BLOCK, markdown(result, viewer))
    return 0 if result["within_budget"] and viewer["within_budget"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout
    sys.exit(main())
