"""How long the whole attack matrix takes: ``tvmm matrix`` as a user runs it.

Every cell once (seed 0, every attack, every level, the benign suite), through the judge
with each attack in a process of its own and each cell's TEE and host forked from warm
zygotes — the same ``tvmm.matrix.run_matrix`` call as the command, one cell at a time.
Reports the wall time, the CPU time of this process and of every process the cells
started, the cells that ended in an error (a timing of a broken matrix is no figure), and
the load average before and after; ``--write-docs`` rewrites docs/performance.md's
``bench-matrix`` block.  The goal (issue 13, part 6): under 10 minutes.

    python -m tvmm_tools.bench_matrix [--write-docs [docs/performance.md]]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections import Counter
from pathlib import Path

from tvmm import matrix
from tvmm.campaign.version import git_commit
from tvmm_tools.cpu_time import cpu_seconds
from tvmm_tools.doc_block import write_block

BLOCK = "bench-matrix"
GOAL_S = 600.0


def measure(seed: int = 0) -> dict:
    load_before = os.getloadavg()[0]
    cpu0 = cpu_seconds()
    verdicts, wall = matrix.timed_matrix(seed=seed)
    cpu = cpu_seconds() - cpu0
    classes = Counter(matrix.outcome_class(v) for v in verdicts)
    return {
        "cells": len(verdicts), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "errors": classes.get("error", 0), "seed": seed,
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(), "commit": git_commit() or "unknown",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def block(r: dict) -> str:
    met = "met" if r["wall_s"] < GOAL_S and not r["errors"] else "missed"
    return (
        f"Written by `python -m tvmm_tools.bench_matrix --write-docs` on {r['date']} "
        f"(commit {r['commit']}; {r['cpus']} CPUs, load average {r['load_before']} before "
        f"and {r['load_after']} after):\n\n"
        "| what | cells | wall time | CPU time (all processes) | errors | goal |\n"
        "|---|---|---|---|---|---|\n"
        f"| `tvmm matrix` (seed {r['seed']}, every attack × level, benign suite) | "
        f"{r['cells']} | {r['wall_s']:.1f} s ({r['wall_s'] / 60:.1f} min) | "
        f"{r['cpu_s']:.1f} s | {r['errors']} | < 10 min, no error: {met} |\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tvmm_tools.bench_matrix",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-docs", nargs="?", const=Path("docs/performance.md"), type=Path)
    args = ap.parse_args(argv)
    result = measure(args.seed)
    print(json.dumps(result))
    if args.write_docs:
        if result["errors"]:
            print(f"not written: {result['errors']} cells ended in an error", file=sys.stderr)
            return 1
        write_block(args.write_docs, BLOCK, block(result))
        print(f"wrote {args.write_docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
