"""tvmm boot: boot a guest under the honest host and show what happened."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from rich.table import Table

from shim.policies import config as policy_config
from tvmm.abi.types import Level
from tvmm.commands.output import console, emit_json, fail, writable_file
from tvmm.guestbuild import GuestBuildError
from tvmm.guestimage import GuestImageError
from tvmm.harness.boot import boot
from tvmm.harness.launcher import DEFAULT_LINK, LINKS, HarnessError
from tvmm.machine import DEFAULT_MEMORY, SECRET_PATHS

DEFAULT_TIME_LIMIT = 60.0  # seconds: a guest in `for (;;)` ends by itself; samples take < 10


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("boot", help="boot a guest (sample name, .c file or ELF)")
    p.add_argument("guest")
    add_run_options(p)
    p.add_argument("--input", action="append", default=[], metavar="LINE",
                   help="a line for the guest's input device (repeatable)")
    p.add_argument("--disk", type=Path, help="file backing the block device")
    p.add_argument("--tick", type=lambda s: int(s, 0), metavar="VECTOR",
                   help="inject this vector at every timer exit (if the guest registered it)")
    p.add_argument("--max-exits", type=int, help="stop after this many exits")
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                   help=f"stop a guest still running after this long (default "
                   f"{DEFAULT_TIME_LIMIT:g}; 0: no limit)")
    p.add_argument("--link", choices=LINKS, default=DEFAULT_LINK,
                   help="how the host's process reaches the TEE's: a shared-memory mailbox "
                   "(default) or a socket")
    p.add_argument("--secret-path", choices=SECRET_PATHS,
                   help="attested: the owner's key broker releases the secret after "
                   "verifying a report (the default at snp and shim); launch: the SEV-style "
                   "launch secret, unverified (the default below snp, where no report is "
                   "signed)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--level", choices=[lv.value for lv in Level], default="plain")
    p.add_argument("--trace", type=writable_file, help="write a trace (JSON Lines) here")
    p.add_argument("--quantum", type=int, default=0,
                   help="arm the host's instruction timer (0: no timer)")
    p.add_argument("--memory", type=lambda s: int(s, 0), default=DEFAULT_MEMORY,
                   help="guest memory in bytes")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for the public choices (the sample's secret); keys come from the OS")
    add_policy_options(p)


def add_policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", type=Path, help="TOML file of shim policy settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="policy_set",
                   help="one shim policy setting, over the file (repeatable), "
                   "e.g. --set fault_budget=16 --set step_mode=detect")


def load_policy(args: argparse.Namespace) -> policy_config.PolicyConfig | None:
    config = policy_config.load(args.policy) if getattr(args, "policy", None) else None
    overrides = getattr(args, "policy_set", None) or []
    if not overrides:
        return config
    values: dict[str, object] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise policy_config.PolicyConfigError(f"--set {item!r}: expected KEY=VALUE")
        values[key.strip()] = _value(raw.strip())
    return policy_config.from_mapping(values, config)


def _value(raw: str) -> object:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return int(raw, 0)
    except ValueError:
        return raw


def run(args: argparse.Namespace) -> int:
    live = None if args.json else (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    try:
        report = boot(
            args.guest, Level(args.level), seed=args.seed, trace=args.trace,
            quantum=args.quantum, memory=args.memory, policy_config=load_policy(args),
            input_lines=args.input, disk=args.disk, on_console=live, link=args.link,
            tick_vector=args.tick, max_exits=args.max_exits, secret_path=args.secret_path,
            time_limit=args.time_limit or None,
        )
    except KeyError as exc:
        return fail(str(exc.args[0]))
    except (GuestBuildError, GuestImageError, policy_config.PolicyConfigError, OSError,
            HarnessError) as exc:
        return fail(str(exc))
    if args.json:
        emit_json({**asdict(report), "mips": report.mips})
    else:
        show(report, args)
    if report.how != "exit":
        return 3
    return 0 if report.status == report.expected_status or report.expected_status is None \
        else 1


MIPS_MIN_RETIRED = 10_000_000


def show(report, args: argparse.Namespace) -> None:
    table = Table(title=f"{report.guest} at {report.level}", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    ended = {"exit": f"exited with status {report.status}",
             "time_limit": "time limit"}.get(report.how, report.how)
    table.add_row("ended", ended + (f" ({report.detail})" if report.detail else ""))
    if report.retired:
        how = ("at least: the quanta asked for; a shim timer exit shows no count"
               if report.level == "shim" else "counted by the timer")
        table.add_row("instructions retired", f"{report.retired:,} ({how})")
        if report.retired >= MIPS_MIN_RETIRED:  # below, launch time is most of the wall
            table.add_row("guest MIPS", f"{report.mips:.1f} (over the whole run)")
    else:
        table.add_row("instructions retired", "not counted (no timer armed: use --quantum N)")
    if report.how == "time_limit":  # the TEE was stopped inside the guest: nothing counted
        table.add_row("wall time", f"{report.wall_s:.1f} s")
        if args.trace:
            table.add_row("trace", f"{args.trace} (every event up to the stop)")
        console.print()
        console.print(table)
        return
    exits = ", ".join(f"{k} {v:,}" for k, v in sorted(report.exits.items()))
    table.add_row("exits", f"{sum(report.exits.values()):,} ({exits})")
    table.add_row("entries", f"{report.entries:,}")
    table.add_row("wall time", f"{report.wall_s * 1000:.1f} ms")
    table.add_row("launch digest", report.launch_digest[:32] + "…")
    release = report.key_release
    if release is not None and release["attempts"]:
        table.add_row("secret", "released by the owner's key broker after verifying the "
                      "report" if release["released"] else f"refused: {release['refusal']}")
    elif report.secret_path == "launch":
        table.add_row("secret", "launch secret (no report; bound to the predicted digest)")
    if report.violations:
        table.add_row("policy violations", str(len(report.violations)))
    if args.trace:
        table.add_row("trace", str(args.trace))
    console.print()
    console.print(table)
