"""tvmm campaign: a grid of scored cells over seeds and policy settings, stored as each
cell finishes so a rerun resumes; aggregates over the seeds; docs/results.md from them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tvmm.abi.types import Level
from tvmm.commands.output import console, emit_json, fail

DEFAULT_STORE = Path("campaign.sqlite")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("campaign", help="attacks × victims × levels × policy settings × seeds, "
                       "resumable, on local workers or a Dask cluster")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE,
                   help=f"SQLite file of finished cells (default {DEFAULT_STORE}); a rerun "
                   "skips the cells stored in it")
    p.add_argument("--attack", action="append", help="only these attacks (repeatable)")
    p.add_argument("--victim", action="append", help="only these victims (repeatable)")
    p.add_argument("--level", action="append", choices=[lv.value for lv in Level])
    p.add_argument("--setting", action="append", metavar="FIELD=VALUE,...",
                   help="a shim policy setting to run every cell under (repeatable; "
                   "\"default\" is the default policy, e.g. --setting default "
                   "--setting fault_budget=16,step_mode=detect)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per cell (default 5)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="local worker processes (default: the cores, here %(default)s)")
    p.add_argument("--cluster", metavar="tcp://HOST:PORT",
                   help="run the cells on this Dask scheduler's workers instead")
    p.add_argument("--markdown", type=Path, metavar="FILE",
                   help="write the results doc (and FILE's .jsonl of the runs)")
    p.add_argument("--json", action="store_true", help="print the aggregates as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tvmm.campaign import report
    from tvmm.campaign.keys import CampaignError, policy_from_key, policy_key
    from tvmm.campaign.run import grid, run_campaign, verdicts
    from tvmm.campaign.store import Store
    from tvmm.campaign.version import code_version, git_commit

    if args.seeds < 1 or args.first_seed < 0 or args.workers < 1:
        return fail("--seeds and --workers must be ≥ 1, --first-seed ≥ 0")
    if args.markdown and not args.markdown.parent.is_dir():
        return fail(f"--markdown {args.markdown}: no directory {args.markdown.parent}")
    try:
        settings = [policy_key(policy_from_key(s)) for s in (args.setting or ["default"])]
        keys = grid(args.attack, args.victim, args.level, settings,
                    range(args.first_seed, args.first_seed + args.seeds))
        with Store(args.store) as store:
            with _progress(args.json) as progress:
                summary = run_campaign(keys, store, workers=args.workers,
                                       cluster=args.cluster, progress=progress)
            rows = verdicts(store, keys)
    except (CampaignError, KeyError) as exc:
        return fail(str(exc.args[0]) if exc.args else str(exc))
    where = f"Dask cluster {args.cluster}" if args.cluster else (
        f"{args.workers} local worker process{'es' if args.workers > 1 else ''}")
    if args.markdown:
        meta = report.Meta.now(_command(args), code_version(), git_commit(), len(rows),
                               summary.wall_s if summary.skipped == 0 else 0.0, where)
        try:
            data = report.write_results(args.markdown, meta, rows)
        except OSError as exc:
            return fail(f"cannot write {args.markdown}: {exc.strerror or exc} (the cells are "
                        f"stored in {args.store}: rerun to write it)")
        if not args.json:
            console.print(f"wrote {args.markdown} and {data}")
    if args.json:
        emit_json({"summary": {"cells": summary.total, "stored_before": summary.skipped,
                               "ran": summary.ran, "wall_s": summary.wall_s,
                               "cells_per_s": summary.cells_per_s, "where": where},
                   "cells": report.aggregates_json(rows)})
        return 0
    console.print(report.table(rows))
    if not summary.ran:
        console.print(f"nothing to run: all {summary.skipped} cells were stored before, in "
                      f"{args.store}")
        return 0
    console.print(f"{summary.ran} cells run in {summary.wall_s:.1f} s on {where} "
                  f"({summary.cells_per_s:.2f} cells/s); {summary.skipped} were stored "
                  f"before, in {args.store}")
    return 0


def _command(args: argparse.Namespace) -> str:
    parts = ["tvmm campaign", f"--seeds {args.seeds}"]
    if args.first_seed:
        parts.append(f"--first-seed {args.first_seed}")
    for flag, values in (("--attack", args.attack), ("--victim", args.victim),
                         ("--level", args.level), ("--setting", args.setting)):
        parts += [f"{flag} {v}" for v in values or []]
    parts.append(f"--markdown {args.markdown}")
    return " ".join(parts)


class _progress:
    """A rich progress bar on a terminal; elsewhere one line per stored cell (which a
    script or a test can follow)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task = None

    def __enter__(self):
        if self.quiet:
            return None
        if console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                                transient=True)
            self.bar.start()
            self.task = self.bar.add_task("campaign", total=None)
        return self.update

    def update(self, done: int, total: int, label: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total, description=label)
        else:
            print(f"[{done}/{total}] {label}", flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
