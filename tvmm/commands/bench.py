"""tvmm bench: the core benchmarks (tvmm_tools/bench_core.py), ratios measured side by side."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rich.table import Table

from tvmm.commands.output import console, emit_json


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="tvmm against bare Unicorn on the same guest")
    p.add_argument("--quick", action="store_true", help="fewer rounds and exits")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="print JSON (or write it to FILE)")
    p.add_argument("--write-docs", nargs="?", const=DOC, type=Path, metavar="FILE",
                   help=f"rewrite the measured block of {DOC} with this run's figures")
    p.set_defaults(run=run)


DOC = Path("docs/performance.md")
BLOCK = "bench-core"  # <!-- bench-core:begin --> … <!-- bench-core:end -->


def run(args: argparse.Namespace) -> int:
    from tvmm_tools import bench_core

    results = bench_core.run(rounds=1 if args.quick else 3, quick=args.quick,
                             progress=tell_progress)
    if args.write_docs:
        write_docs(args.write_docs, results)
    if args.json == "-":
        emit_json(results)
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    show(results)
    return 0


def tell_progress(name: str, i: int, n: int) -> None:
    """One line on stderr per figure: a full run takes minutes before its table."""
    note = " (minutes in all: the table comes at the end)" if i == 1 else ""
    print(f"measuring {i} of {n}: {name}{note}", file=sys.stderr, flush=True)


def show(results: dict) -> None:
    """The console table: every ratio in one wording (LEGEND), under the table."""
    table = Table(title="tvmm bench (ratios from one run, side by side)", caption=LEGEND)
    names = [k for k, v in results.items() if isinstance(v, dict)]
    # whole names, never cut or folded at 80 columns: the figures' columns wrap instead
    table.add_column("measure", no_wrap=True, min_width=max(map(len, names), default=7))
    table.add_column("tvmm")
    table.add_column("baseline")
    table.add_column("ratio", justify="right")
    for key, value in results.items():
        if not isinstance(value, dict) or time_ratio(value) is None:
            continue
        if "speed_vs_bare" in value:
            tvmm, base = f"{value['tvmm_s']:.3f} s", f"bare Unicorn {value['bare_s']:.3f} s"
        elif "cost_vs_bare_plus_transport" in value:
            tvmm = f"{value['across_us']:.1f} µs ({value['exits_per_s']:,} exits/s)"
            base = (f"bare {value['bare_us']:.1f} + {value['link']} "
                    f"{value['transport_us']:.1f} µs")
        elif "cost_vs_bare" in value:
            tvmm, base = f"{value['tvmm_us']:.1f} µs", f"bare {value['bare_us']:.1f} µs"
        else:
            tvmm, base = (f"{value['exits_per_s']:,} steps/s",
                          f"bare {value['bare_steps_per_s']:,} steps/s")
        table.add_row(key, tvmm, base, f"{time_ratio(value):.2f}×")
    console.print(table)


# One wording for every row: how many times the baseline's time tvmm takes for the same work.
LEGEND = ("ratio: tvmm's time ÷ the baseline's for the same work, both measured side by "
          "side in this run (1.00× as fast, 2.00× twice as long; lower is better)")


def time_ratio(value: dict) -> float | None:
    """tvmm's time over the baseline's for a result row of tvmm_tools/bench_core, whichever way
    the row measured it (a speed, a cost per exit, a rate); None for a row of neither."""
    if value.get("speed_vs_bare"):
        return 1 / value["speed_vs_bare"]
    if "cost_vs_bare_plus_transport" in value:
        return value["cost_vs_bare_plus_transport"]
    if "cost_vs_bare" in value:
        return value["cost_vs_bare"]
    if value.get("exits_per_s") and value.get("bare_steps_per_s"):
        return value["bare_steps_per_s"] / value["exits_per_s"]
    return None


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def doc_block(results: dict) -> str:
    """The measured block of docs/performance.md: this run's figures, side by side."""
    rows = ["| measure | tvmm | baseline (same run) | ratio |", "|---|---|---|---|"]
    for key, value in results.items():
        if not isinstance(value, dict):
            continue
        if "speed_vs_bare" in value:
            rows.append(f"| {key} | {value['tvmm_s']:.3f} s | bare Unicorn {value['bare_s']:.3f} s"
                        f" | {time_ratio(value):.2f}× |")
        elif "cost_vs_bare_plus_transport" in value:
            rows.append(
                f"| {key} (quantum {value['quantum']}, {value['link']}) | "
                f"{value['across_us']:.1f} µs ({value['exits_per_s']:,} exits/s; CPU per "
                f"exit: host {value.get('host_cpu_us', 0):.1f} µs, TEE "
                f"{value.get('tee_cpu_us', 0):.1f} µs) | "
                f"bare stop/resume {value['bare_us']:.1f} µs + bare {value['link']} round "
                f"trip {value['transport_us']:.1f} µs | "
                f"{time_ratio(value):.2f}× |")
        elif "cost_vs_bare" in value:
            how = ("in one process, through the ABI codec" if key.endswith("_codec")
                   else "in one process")
            rows.append(f"| {key} ({how}) | {value['tvmm_us']:.1f} µs | bare "
                        f"{value['bare_us']:.1f} µs | {time_ratio(value):.2f}× |")
        elif "exits_per_s" in value:
            rows.append(f"| {key} (in one process) | {value['exits_per_s']:,}/s | bare "
                        f"{value['bare_steps_per_s']:,}/s | "
                        f"{time_ratio(value):.2f}× |")
    head = (f"Written by `tvmm bench --write-docs` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
            f", {os.cpu_count()} CPUs, load average {_load()} when it ended.")
    if "seconds_per_side" in results:
        head += (f"  Compute rows: each side run again and again for "
                 f"{results['seconds_per_side']:g} s a round, {results['rounds']} rounds "
                 "taking turns, medians (the time shown is one run's).")
    return "\n".join([head, "", *rows, "", LEGEND[0].upper() + LEGEND[1:] + "."])


def write_docs(path: Path, results: dict) -> None:
    from tvmm_tools.doc_block import write_block

    write_block(path, BLOCK, doc_block(results))
