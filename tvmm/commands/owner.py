"""``tvmm owner audit LEDGER``: what the owner's key broker released and refused, and why.

Reads the launch ledger (tvmm.owner.ledger) that ``tvmm attest --ledger`` and any broker
with a launch budget write; with ``--policy`` it also says how many launches are left at
``--now`` (default: the current time).  A ledger that is cut, tampered or missing is
refused (exit 1), as the broker refuses to release on it.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.table import Table

from tvmm.commands.output import console, emit_json, fail
from tvmm.owner.broker import PolicyError, load_policy
from tvmm.owner.ledger import LaunchLedger, LedgerError, budget_state


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("owner", help="the guest owner's side: its key broker's audit log")
    verbs = p.add_subparsers(dest="verb", required=True)
    a = verbs.add_parser("audit", help="print a launch ledger: every release and refusal")
    a.add_argument("ledger", type=Path, help="the ledger file (tvmm attest --ledger)")
    a.add_argument("--policy", type=Path, metavar="TOML",
                   help="the release policy, to show the launch budget left")
    a.add_argument("--now", type=float, metavar="SECONDS",
                   help="the time to count the window at (default: now)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(run=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    try:
        budget = load_policy(args.policy).budget if args.policy else None
    except (OSError, PolicyError) as exc:
        return fail(f"{args.policy}: {exc}")
    ledger = LaunchLedger(args.ledger)
    if not ledger.path.exists() and not ledger.key_path.exists():
        return fail(f"{ledger.path}: no such ledger")
    try:
        records = ledger.records()
    except LedgerError as exc:
        return fail(f"refused: {exc}", 1)
    now = args.now if args.now is not None else time.time()
    state = budget_state(records, budget, now)
    if args.json:
        emit_json({"ledger": str(ledger.path), "now": now, "budget": state.to_dict(),
                   "records": [r.__dict__ for r in records]})
        return 0
    table = Table(title=f"launch ledger {ledger.path}", box=None)
    for column in ("time (UTC)", "path", "decision", "nonce", "measurement"):
        table.add_column(column)
    for r in records:
        when = datetime.fromtimestamp(r.time, UTC).strftime("%Y-%m-%d %H:%M:%S")
        decision = "released" if r.released else f"[red]refused[/] {r.reason}"
        table.add_row(when, r.path, decision, r.nonce[:16] + ("…" if r.nonce else "-"),
                      r.measurement[:16] + ("…" if r.measurement else "-"))
    console.print(table)
    if state.launches is None:
        console.print(f"{state.used} released; no launch budget given (--policy)")
    else:
        console.print(f"launch budget: {state.left} of {state.launches} left in the "
                      f"{state.window_s} s window ending now ({state.used} used)")
    return 0
