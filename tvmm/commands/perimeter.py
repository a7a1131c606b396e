"""tvmm perimeter up|down|status and tvmm vm launch|suspend|resume|migrate|list.

`perimeter up` starts a coordinator and N nodes as separate processes (TCP on loopback by
default; --bind/--advertise for other machines) and records them in the state directory;
`vm ...` commands talk to the coordinator (its address from that record, or
--coordinator host:port when it runs elsewhere).
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tvmm.abi.state_dir import default_state_dir
from tvmm.abi.types import Level
from tvmm.commands.output import console, emit_json, errors, fail
from tvmm.operator import launcher
from tvmm.operator.client import OperatorClient, PerimeterError

T = TypeVar("T")


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perimeter", help="the trusted perimeter: coordinator and nodes")
    psub = p.add_subparsers(dest="perimeter_cmd", required=True)
    up = psub.add_parser("up", help="start a coordinator and N nodes as local processes")
    up.add_argument("--nodes", type=_count, default=3)
    up.add_argument("--rogue", action="append", default=[], metavar="NAME",
                    help="also start a node running modified trusted code (refused)")
    _common(up)
    up.set_defaults(run=run_up)
    down = psub.add_parser("down", help="stop the perimeter's processes")
    down.add_argument("--reset", action="store_true",
                      help="then clear the perimeter's state (its VMs, checkpoints, audit "
                           "log, node storage, logs) for a fresh start")
    _common(down)
    down.set_defaults(run=run_down)
    status = psub.add_parser("status", help="nodes of the perimeter and the audit log")
    status.add_argument("--audit", type=int, default=10, help="last N audit records")
    _common(status)
    status.set_defaults(run=run_status)

    v = sub.add_parser("vm", help="launch, suspend, resume, migrate VMs in the perimeter")
    vsub = v.add_subparsers(dest="vm_cmd", required=True)
    la = vsub.add_parser("launch", help="launch a guest on a perimeter node")
    la.add_argument("guest")
    la.add_argument("--node", required=True)
    la.add_argument("--level", default="shim", choices=[lv.value for lv in Level])
    la.add_argument("--memory", type=lambda s: int(s, 0), default=4 << 20)
    la.add_argument("--count", type=int, default=100000,
                    help="counter guest: count to this (its secret)")
    _common(la)
    la.set_defaults(run=run_launch)
    su = vsub.add_parser("suspend", help="suspend a VM to a sealed checkpoint file")
    su.add_argument("vm")
    su.add_argument("--out", type=Path, required=True)
    _common(su)
    su.set_defaults(run=run_suspend)
    re = vsub.add_parser("resume", help="resume a checkpoint on a perimeter node")
    re.add_argument("checkpoint", type=Path)
    re.add_argument("--node", required=True)
    _common(re)
    re.set_defaults(run=run_resume)
    mi = vsub.add_parser("migrate", help="migrate a VM to another perimeter node")
    mi.add_argument("vm")
    mi.add_argument("--to", required=True)
    mi.add_argument("--live", action="store_true", help="pre-copy live migration")
    mi.add_argument("--relay", default="", help=argparse.SUPPRESS)
    _common(mi)
    mi.set_defaults(run=run_migrate)
    ls = vsub.add_parser("list", help="VMs, where they run, their versions, how they ended")
    _common(ls)
    ls.set_defaults(run=run_list)
    co = vsub.add_parser("console", help="the console log of a running VM (its node's host "
                                         "keeps it)")
    co.add_argument("vm")
    _common(co)
    co.set_defaults(run=run_console)


def _count(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is below 0")
    return n


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=None)
    p.add_argument("--coordinator", default=None, help="host:port (default: from `up`)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _state(args: argparse.Namespace) -> Path:
    return args.state_dir or default_state_dir()


def _client(args: argparse.Namespace) -> OperatorClient:
    if args.coordinator:
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise launcher.LaunchError(f"--coordinator {args.coordinator!r} is not host:port")
        return OperatorClient((host, int(port)), _state(args))
    info = launcher.saved(_state(args))["coordinator"]
    return OperatorClient((info["host"], info["port"]), _state(args))


def _guarded(fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except PerimeterError as exc:
            if args.json:
                emit_json({"ok": False, "reason": exc.reason, "error": str(exc)})
                return 1
            return fail(f"refused ({exc.reason}): {exc}", 1)
        except (launcher.LaunchError, OSError, KeyError) as exc:
            return fail(str(exc))
    return run


@_guarded
def run_up(args: argparse.Namespace) -> int:
    state = _state(args)
    if up := launcher.running(state):
        # Refused rather than taken down: what runs may hold VMs the operator still wants
        # (and a second coordinator on the same database would orphan the first).
        return fail(f"a perimeter is already up on {state} ({', '.join(up)}); "
                    "`tvmm perimeter down` first")
    state.mkdir(parents=True, exist_ok=True)
    per = launcher.Perimeter(state, die_with_parent=False)
    try:
        with console.status("starting the coordinator (first run: creating the manufacturer)"):
            per.start_coordinator()
        per.start_nodes([f"n{i}" for i in range(1, args.nodes + 1)])
        if args.rogue:
            per.start_nodes(args.rogue, rogue=True)
    except BaseException:
        per.stop()  # nothing is recorded yet: leave nothing running
        raise
    path = per.save()
    rows = [{"name": "coordinator", "pid": per.coordinator.popen.pid,
             "address": f"{per.address[0]}:{per.address[1]}", "registered": "-"}]
    for name, proc in per.nodes.items():
        rows.append({"name": name, "pid": proc.popen.pid,
                     "address": f"{proc.info['host']}:{proc.info['port']}",
                     "registered": "yes" if proc.info.get("registered")
                     else f"refused: {proc.info.get('error', '?')[:60]}"})
    earlier = _earlier_vms(args)
    if args.json:
        emit_json({"processes": rows, "record": str(path), "earlier_vms": earlier})
    else:
        table = Table(title="perimeter up")
        for col in ("name", "pid", "address", "registered"):
            table.add_column(col)
        for r in rows:
            table.add_row(*(str(r[c]) for c in ("name", "pid", "address", "registered")))
        console.print(table)
        if earlier:
            console.print(f"the perimeter's state holds {len(earlier)} VM(s) from before "
                          f"({', '.join(earlier[:4])}{', …' if len(earlier) > 4 else ''}): "
                          "new VMs are numbered after them; `tvmm perimeter down --reset` "
                          "starts afresh")
    return 0


def _earlier_vms(args: argparse.Namespace) -> list[str]:
    """The VMs a fresh coordinator found in its state (an earlier run's), "name (state)"."""
    try:
        return [f"{v['name']} ({v['state']})" for v in _client(args).vms()]
    except (PerimeterError, OSError, KeyError, launcher.LaunchError):
        return []


@_guarded
def run_down(args: argparse.Namespace) -> int:
    state = _state(args)
    stopped = launcher.stop_saved(state)
    removed = launcher.reset(state) if args.reset else []
    if args.json:
        emit_json({"stopped": stopped, "reset": removed})
        return 0
    console.print(f"stopped {', '.join(stopped)}" if stopped else "nothing is up")
    if args.reset:
        console.print(f"reset: the perimeter's state in {state} is cleared "
                      f"({', '.join(removed) or 'it was empty'})")
    return 0


@_guarded
def run_status(args: argparse.Namespace) -> int:
    c = _client(args)
    nodes, audit = c.nodes(), c.audit(args.audit)
    if args.json:
        emit_json({"nodes": nodes, **audit})
        return 0
    t = Table(title="perimeter nodes")
    for col in ("name", "address", "chip", "measurement"):
        t.add_column(col)
    for n in nodes:
        t.add_row(n["name"], f"{n['host']}:{n['port']}", n["chip_id"][:16],
                  n["measurement"][:16] + "…")
    console.print(t)
    a = Table(title="audit log (hash-chained)")
    for col in ("seq", "event", "detail"):
        a.add_column(col)
    for r in audit["records"]:
        a.add_row(str(r["seq"]), r["event"], ", ".join(f"{k}={v}" for k, v in
                                                       r["detail"].items())[:100])
    console.print(a)
    console.print("chain and invariants: " + ("ok" if not audit["problems"]
                                              else "; ".join(audit["problems"])))
    return 0


@_guarded
def run_launch(args: argparse.Namespace) -> int:
    from tvmm.guestbuild import GuestBuildError
    from tvmm.guestimage import GuestImageError
    from tvmm.samples import resolve

    try:
        image, sample = resolve(args.guest)
    except (GuestImageError, GuestBuildError) as exc:
        return fail(str(exc))
    secret = args.count.to_bytes(8, "little") if args.guest == "counter" else (
        sample.make_secret(__import__("random").Random(0)) if sample else b"")
    vm = _client(args).launch(image.path.read_bytes(), image.name if sample is None else
                              sample.name, args.node, args.level, args.memory, secret)
    if args.json:
        emit_json({"vm": vm, "node": args.node})
    else:
        console.print(f"launched [bold]{vm}[/] on {args.node} at {args.level}")
    return 0


def _with_progress(label: str, work: Callable[[], T], quiet: bool) -> T:
    """Run ``work`` on a thread; meanwhile a progress bar with the elapsed time (the
    operator sees only the coordinator's final answer, so the bar cannot count bytes)."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
            error.append(exc)

    t = threading.Thread(target=run)
    t.start()
    if quiet or not console.is_terminal:  # piped: rich would leave an empty line behind
        t.join()
    else:
        with Progress(TextColumn(label), BarColumn(), TimeElapsedColumn(), console=console,
                      transient=True) as progress:
            task = progress.add_task(label, total=None)
            while t.is_alive():
                t.join(0.1)
                progress.advance(task)
    if error:
        raise error[0]
    return result[0]


def _refuse_if_ended(client: OperatorClient, vm: str, what: str) -> None:
    """A refusal about a VM whose guest has ended (its node's host says so) becomes one
    line that says that, instead of the TEE's BAD_STATE through three layers."""
    try:
        ended = next((v["ended"] for v in client.vms() if v["name"] == vm), None)
    except (PerimeterError, OSError):
        return
    if ended:
        raise PerimeterError("ended", f"{vm} has ended ({ended}): there is nothing to {what}; "
                             f"`tvmm vm console {vm}` shows its output")


@_guarded
def run_suspend(args: argparse.Namespace) -> int:
    if not args.out.parent.is_dir():  # checked first: a suspended VM's only copy is this file
        return fail(f"--out {args.out}: no directory {args.out.parent}")
    client = _client(args)
    try:
        data = _with_progress(f"suspending {args.vm}", lambda: client.suspend(args.vm),
                              args.json)
    except PerimeterError:
        _refuse_if_ended(client, args.vm, "suspend")
        raise
    args.out.write_bytes(data)
    if args.json:
        emit_json({"vm": args.vm, "checkpoint": str(args.out), "bytes": len(data)})
    else:
        console.print(f"suspended {args.vm}: sealed checkpoint {args.out} ({len(data):,} bytes)")
    return 0


@_guarded
def run_resume(args: argparse.Namespace) -> int:
    client, checkpoint = _client(args), args.checkpoint.read_bytes()
    out = _with_progress(f"resuming on {args.node}", lambda: client.resume(checkpoint, args.node),
                         args.json)
    if args.json:
        emit_json(out)
    else:
        console.print(f"resumed {out['vm']} version {out['version']} on {out['node']}")
    return 0


@_guarded
def run_migrate(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        result = _with_progress(f"migrating {args.vm} → {args.to}",
                                lambda: client.migrate(args.vm, args.to, args.live,
                                                       args.relay), args.json)
    except PerimeterError:
        _refuse_if_ended(client, args.vm, "migrate")
        raise
    if args.json:
        emit_json(result)
        return 0
    mib = result.get("bytes", 0) / (1 << 20)
    secs = result.get("seconds", 0) or 1e-9
    console.print(f"migrated {args.vm} to {result['node']} (version {result['version']}): "
                  f"{result.get('pages', 0):,} pages, {mib:.1f} MiB in {secs * 1000:.0f} ms "
                  f"({mib / secs:.1f} MiB/s), {result.get('rounds', 0)} rounds, "
                  f"downtime {result.get('downtime_ms', 0):.1f} ms (destination prepared in "
                  f"{result.get('prepare_ms', 0):.0f} ms)")
    return 0


@_guarded
def run_list(args: argparse.Namespace) -> int:
    vms = _client(args).vms()
    if args.json:
        emit_json({"vms": vms})
        return 0
    t = Table(title="VMs in the perimeter")
    for col in ("vm", "guest", "level", "node", "state", "version"):
        t.add_column(col)
    for v in vms:
        state = f"ended: {v['ended']}" if v.get("ended") else v["state"]
        t.add_row(v["name"], v["guest"], v["level"], v["node"] or "—", state,
                  str(v["version"]))
    console.print(t)
    return 0


@_guarded
def run_console(args: argparse.Namespace) -> int:
    out = _client(args).console(args.vm)
    if args.json:
        emit_json(out)
        return 0
    console.print(out["console"], end="", markup=False, highlight=False)
    if out.get("ended"):
        errors.print(f"({out['vm']} on {out['node']} ended: {out['ended']})")
    return 0
