"""Campaign throughput: cells per second run serially, on 2 local worker processes and on
a Dask LocalCluster of 2 worker processes, side by side on the same cells.

Each round runs the same grid once per executor, in turn, each into a fresh store (so
nothing is skipped); cells/s is the grid's cells over the wall time from the first cell
to the last stored (the LocalCluster is started before, and its workers have imported
tvmm).  Medians over the rounds; ratios are of those medians.

    python -m tvmm_tools.bench_campaign [--cells 16] [--rounds 2] [--write-docs docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from tvmm.campaign.run import grid, run_campaign
from tvmm.campaign.store import Store
from tvmm.campaign.version import code_version, git_commit
from tvmm_tools.doc_block import write_block

BLOCK = "bench-campaign"
ATTACKS = ("memory-scan", "register-snoop", "iago-length", "state-tamper")
LEVELS = ("plain", "sev", "snp", "shim")


def cells(n: int) -> list:
    """The first ``n`` cells of a grid of short attacks (a few seconds each), over as
    many seeds as it takes."""
    keys = grid(ATTACKS, None, LEVELS, seeds=range(1 + n // 8))
    return keys[:n]


def timed(keys: list, **executor: object) -> float:
    """Cells per second of ``keys`` run on ``executor`` into a fresh store."""
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.sqlite") as store:
        summary = run_campaign(keys, store, **executor)
        assert summary.ran == len(keys)
        return summary.cells_per_s


def run(n_cells: int = 16, rounds: int = 2, workers: int = 2,
        log=print) -> dict:
    from distributed import Client, LocalCluster

    keys = cells(n_cells)
    rates: dict[str, list[float]] = {"serial": [], "pool": [], "dask": []}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("tvmm.campaign.run"))
        for r in range(rounds):
            for name, executor in (("serial", {"workers": 1}),
                                   ("pool", {"workers": workers}),
                                   ("dask", {"cluster": cluster.scheduler_address})):
                rates[name].append(timed(keys, **executor))
                log(f"round {r + 1}: {name} {rates[name][-1]:.3f} cells/s")
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"cells": len(keys), "rounds": rounds, "workers": workers,
            "cells_per_s": med, "runs": rates,
            "pool_vs_serial": med["pool"] / med["serial"],
            "dask_vs_pool": med["dask"] / med["pool"],
            "seconds_per_side": {k: len(keys) / v for k, v in med.items()},
            "load": os.getloadavg()[0], "cores": os.cpu_count(),
            "code": code_version(), "commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def block(res: dict) -> str:
    """The doc block: a line on how and where, the table, and the measured figures as a
    JSON comment (from which a test regenerates the block)."""
    w = res["workers"]
    rate, per = res["cells_per_s"], res["seconds_per_side"]
    runs = {k: ", ".join(f"{x:.3f}" for x in v) for k, v in res["runs"].items()}
    return "\n".join([
        f"Written by `python -m tvmm_tools.bench_campaign --cells {res['cells']} --rounds "
        f"{res['rounds']} --write-docs` on {res['date']}, {res['cores']} CPUs, load average "
        f"{res['load']:.1f} when it ended; code version {res['code']} "
        f"(commit {res['commit'] or '?'}).  {res['cells']} cells (attacks "
        f"{', '.join(ATTACKS)} at {', '.join(LEVELS)}) per side per round.",
        "",
        "| executor | cells/s (median) | each round | s per side (median) | ratio |",
        "|---|---|---|---|---|",
        f"| serial loop (this process) | {rate['serial']:.3f} | {runs['serial']} | "
        f"{per['serial']:.1f} | 1 |",
        f"| {w} local worker processes | {rate['pool']:.3f} | {runs['pool']} | "
        f"{per['pool']:.1f} | {res['pool_vs_serial']:.2f}× the serial loop |",
        f"| Dask LocalCluster, {w} worker processes | {rate['dask']:.3f} | {runs['dask']} | "
        f"{per['dask']:.1f} | {res['dask_vs_pool']:.2f}× the process pool |",
        "",
        f"<!-- data: {json.dumps(res, sort_keys=True)} -->",
    ])


def parse_block(text: str) -> dict:
    """The figures a block was written from (its JSON comment)."""
    head, sep, rest = text.partition("<!-- data: ")
    if not sep or " -->" not in rest:
        raise ValueError("no data comment in the block")
    return json.loads(rest.split(" -->", 1)[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write-docs", nargs="?", const=Path("docs/performance.md"), type=Path)
    args = ap.parse_args(argv)
    res = run(args.cells, args.rounds, args.workers)
    if args.write_docs:
        write_block(args.write_docs, BLOCK, block(res))
    print(json.dumps(res, indent=2) if args.json else block(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
