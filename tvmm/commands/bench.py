"""tvmm bench: the core benchmarks (tools/bench_core.py), ratios measured side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from tvmm.commands.output import console, emit_json


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="tvmm against bare Unicorn on the same guest")
    p.add_argument("--quick", action="store_true", help="fewer rounds and exits")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="print JSON (or write it to FILE)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tools import bench_core

    results = bench_core.run(rounds=1 if args.quick else 3, quick=args.quick)
    if args.json == "-":
        emit_json(results)
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    table = Table(title="tvmm bench (ratios from one run, side by side)")
    table.add_column("measure")
    table.add_column("tvmm")
    table.add_column("bare Unicorn")
    table.add_column("ratio")
    for key, value in results.items():
        if not isinstance(value, dict):
            continue
        if "speed_vs_bare" in value:
            table.add_row(key, f"{value['tvmm_s']:.3f} s", f"{value['bare_s']:.3f} s",
                          f"{value['speed_vs_bare']:.2f}× speed")
        elif "cost_vs_bare" in value:
            table.add_row(key, f"{value['tvmm_us']:.1f} µs", f"{value['bare_us']:.1f} µs",
                          f"{value['cost_vs_bare']:.2f}× cost")
        elif "exits_per_s" in value:
            table.add_row(key, f"{value['exits_per_s']:,}/s", f"{value['bare_steps_per_s']:,}/s",
                          f"{value['exits_per_s'] / value['bare_steps_per_s']:.2f}")
    console.print(table)
    return 0
