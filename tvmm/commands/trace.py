"""tvmm trace view|stats|export: inspect a recorded trace."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tvmm.commands.output import console, emit_json, errors, fail
from tvmm.trace.reader import TraceError, TraceReader


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="view, summarise or export a trace")
    tsub = p.add_subparsers(dest="trace_cmd", required=True)
    v = tsub.add_parser("view", help="interactive terminal viewer")
    v.add_argument("trace", type=Path)
    v.set_defaults(run=run_view)
    s = tsub.add_parser("stats", help="summary: exits by kind, policy events, leakage")
    s.add_argument("trace", type=Path)
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=run_stats)
    e = tsub.add_parser("export", help="export to Chrome/Perfetto trace-event JSON")
    e.add_argument("trace", type=Path)
    e.add_argument("--perfetto", type=Path, required=True, metavar="OUT")
    e.add_argument("--json", action="store_true")
    e.set_defaults(run=run_export)


def run_view(args: argparse.Namespace) -> int:
    try:
        # a clear message before the UI starts; a cut-short trace opens (the viewer says so)
        TraceReader(args.trace, allow_truncated=True).close()
    except TraceError as exc:
        return fail(f"{args.trace}: {exc.message}")
    from tvmm.tui import run_viewer

    return run_viewer(str(args.trace))


def run_stats(args: argparse.Namespace) -> int:
    from tvmm.trace.stats import stats_table, trace_stats

    try:
        with TraceReader(args.trace, allow_truncated=True) as reader:
            stats = trace_stats(reader)
            _say_where_it_stops(reader)
    except TraceError as exc:
        return fail(f"{args.trace}: {exc.message}")
    if args.json:
        emit_json(dataclasses.asdict(stats))
    else:
        console.print(stats_table(stats))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from tvmm.trace.export import export_perfetto

    try:
        with TraceReader(args.trace, allow_truncated=True) as reader:
            n = export_perfetto(reader, args.perfetto)
            _say_where_it_stops(reader)
    except TraceError as exc:
        return fail(f"{args.trace}: {exc.message}")
    if args.json:
        emit_json({"output": str(args.perfetto), "events": n})
    else:
        console.print(f"wrote {n:,} trace events to [bold]{args.perfetto}[/] "
                      "(open it in ui.perfetto.dev or chrome://tracing)")
    return 0


def _say_where_it_stops(reader: TraceReader) -> None:
    """One line on stderr for a recording cut short (a killed or crashed run)."""
    if reader.truncation is not None:
        errors.print(f"[yellow]note:[/] {reader.path}: {reader.truncation}")
