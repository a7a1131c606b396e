"""Campaign throughput: cells per second run serially, on 2 local worker processes and on
a Dask LocalCluster of 2 worker processes, side by side on the same cells.

Each round runs the same grid once per executor, in turn, each into a fresh store (so
nothing is skipped); cells/s is the grid's cells over the wall time from the first cell
to the last stored (the LocalCluster is started before, and its workers have imported
tvmm; the pool's workers and every executor's warm zygotes start inside that time).
Medians over the rounds; ratios are of those medians.

Beside each rate, the CPU time the side's processes spent (this process, and every
process of the cells: RUSAGE_CHILDREN once the pool's workers and their zygotes have
ended; for Dask, each worker's own and its children's, its zygotes ended first), per cell
and over the wall time — the cores the side kept busy.  That is what the ratio rests on:
a side can at most use the machine's cores, and a serial cell already overlaps some work.

Without ``--cells``, a serial warm-up of 12 cells (not counted) sets the grid so that
every side runs at least ``--min-seconds`` even at 2.2× the serial rate; with
``--write-docs`` the figures are not written if a side ran shorter.

    python -m tvmm_tools.bench_campaign [--cells N] [--min-seconds 60] [--rounds 2]
                                        [--write-docs docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tvmm.campaign.run import grid, run_campaign
from tvmm.campaign.store import Store
from tvmm.campaign.version import code_version, git_commit
from tvmm.harness import launcher
from tvmm_tools.cpu_time import cpu_seconds
from tvmm_tools.doc_block import write_block

BLOCK = "bench-campaign"
ATTACKS = ("memory-scan", "register-snoop", "iago-length", "state-tamper")
LEVELS = ("plain", "sev", "snp", "shim")
SIDES = ("serial", "pool", "dask")
WARMUP_CELLS = 12
HEADROOM = 2.2  # the fastest side's rate over the serial one the grid is sized for


def cells(n: int) -> list:
    """The first ``n`` cells of a grid of short attacks (well under a second each, warm),
    over as many seeds as it takes."""
    per_seed = len(grid(ATTACKS, None, LEVELS, seeds=[0]))
    keys = grid(ATTACKS, None, LEVELS, seeds=range(math.ceil(n / per_seed)))
    return keys[:n]


def _worker_cpu() -> float:
    """On a Dask worker: end its zygotes (so their runs count in its children), then its
    CPU seconds and its ended children's."""
    launcher.cool()
    return cpu_seconds()


def timed(keys: list, client: object | None = None, **executor: object) -> dict:
    """One side: ``keys`` run on ``executor`` into a fresh store; its cells/s, wall time,
    CPU time and cores used."""
    cpu0 = cpu_seconds()
    remote0 = sum(client.run(_worker_cpu).values()) if client is not None else 0.0
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.sqlite") as store:
        summary = run_campaign(keys, store, **executor)
        assert summary.ran == len(keys)
    remote = sum(client.run(_worker_cpu).values()) - remote0 if client is not None else 0.0
    cpu = cpu_seconds() - cpu0 + remote
    return {"cells_per_s": summary.cells_per_s, "wall_s": summary.wall_s, "cpu_s": cpu,
            "cores": cpu / summary.wall_s}


def calibrate(min_seconds: float, log=print) -> int:
    """Cells for which every side runs ``min_seconds`` at ``HEADROOM`` × the serial rate of
    a warm-up (which also builds the guests)."""
    rate = timed(cells(WARMUP_CELLS), workers=1)["cells_per_s"]
    n = max(WARMUP_CELLS, math.ceil(min_seconds * HEADROOM * rate))
    log(f"warm-up: {rate:.2f} cells/s serially: {n} cells per side")
    return n


def run(n_cells: int | None = None, rounds: int = 2, workers: int = 2,
        min_seconds: float = 60.0, log=print) -> dict:
    from distributed import Client, LocalCluster

    n = n_cells if n_cells is not None else calibrate(min_seconds, log)
    keys = cells(n)
    sides: dict[str, list[dict]] = {k: [] for k in SIDES}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("tvmm.campaign.run"))
        for r in range(rounds):
            for name, executor in (("serial", {"workers": 1}),
                                   ("pool", {"workers": workers}),
                                   ("dask", {"cluster": cluster.scheduler_address,
                                             "client": client})):
                got = timed(keys, **executor)
                sides[name].append(got)
                log(f"round {r + 1}: {name} {got['cells_per_s']:.3f} cells/s, "
                    f"{got['wall_s']:.1f} s, {got['cores']:.2f} cores")
    rates = {k: [x["cells_per_s"] for x in v] for k, v in sides.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"cells": len(keys), "rounds": rounds, "workers": workers,
            "min_seconds": min_seconds,
            "cells_per_s": med, "runs": rates,
            "pool_vs_serial": med["pool"] / med["serial"],
            "dask_vs_pool": med["dask"] / med["pool"],
            "seconds_per_side": {k: len(keys) / v for k, v in med.items()},
            "cpu_s_per_cell": {k: statistics.median(x["cpu_s"] for x in v) / len(keys)
                               for k, v in sides.items()},
            "cores_used": {k: statistics.median(x["cores"] for x in v)
                           for k, v in sides.items()},
            "load": os.getloadavg()[0], "cores": os.cpu_count(),
            "code": code_version(), "commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def block(res: dict) -> str:
    """The doc block: a line on how and where, the table, and the measured figures as a
    JSON comment (from which a test regenerates the block).  Figures measured before the
    CPU time was (no ``cores_used``) keep the table they were written with."""
    if "cores_used" not in res:
        return _block_without_cpu(res)
    w = res["workers"]
    rate, per = res["cells_per_s"], res["seconds_per_side"]
    cpu, used = res["cpu_s_per_cell"], res["cores_used"]
    runs = {k: ", ".join(f"{x:.3f}" for x in v) for k, v in res["runs"].items()}
    rows = (("serial", "serial loop (this process)", "1"),
            ("pool", f"{w} local worker processes",
             f"{res['pool_vs_serial']:.2f}× the serial loop"),
            ("dask", f"Dask LocalCluster, {w} worker processes",
             f"{res['dask_vs_pool']:.2f}× the process pool"))
    return "\n".join([
        f"Written by `python -m tvmm_tools.bench_campaign --min-seconds "
        f"{res['min_seconds']:g} --rounds {res['rounds']} --write-docs` on {res['date']}, "
        f"{res['cores']} CPUs, load average {res['load']:.1f} when it ended; code version "
        f"{res['code']} (commit {res['commit'] or '?'}).  {res['cells']} cells (attacks "
        f"{', '.join(ATTACKS)} at {', '.join(LEVELS)}, seed after seed) per side per "
        "round.  CPU: every process of the side, per cell; cores used: that CPU time over "
        "the side's wall time.",
        "",
        "| executor | cells/s (median) | each round | s per side (median) | CPU s per cell "
        "| cores used | ratio |",
        "|---|---|---|---|---|---|---|",
        *(f"| {label} | {rate[k]:.3f} | {runs[k]} | {per[k]:.1f} | {cpu[k]:.3f} | "
          f"{used[k]:.2f} | {ratio} |" for k, label, ratio in rows),
        "",
        f"<!-- data: {json.dumps(res, sort_keys=True)} -->",
    ])


def _block_without_cpu(res: dict) -> str:
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
    ap.add_argument("--cells", type=int, default=None,
                    help="cells per side (default: sized by a warm-up for --min-seconds)")
    ap.add_argument("--min-seconds", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write-docs", nargs="?", const=Path("docs/performance.md"), type=Path)
    args = ap.parse_args(argv)
    res = run(args.cells, args.rounds, args.workers, args.min_seconds)
    print(json.dumps(res, indent=2) if args.json else block(res))
    if args.write_docs:
        short = {k: v for k, v in res["seconds_per_side"].items() if v < args.min_seconds}
        if short:
            print(f"not written: {', '.join(f'{k} {v:.0f} s' for k, v in short.items())} "
                  f"per side, under --min-seconds {args.min_seconds:g}: raise --cells",
                  file=sys.stderr)
            return 2
        write_block(args.write_docs, BLOCK, block(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
