"""The tvmm command line: each subcommand lives in tvmm/commands/."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

SUBCOMMANDS = ("boot", "run", "guests", "bench", "attacks", "campaign", "trace", "attest",
               "perimeter", "owner", "transparency")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tvmm",
        description="Real x86-64 guests under a hostile hypervisor, a shim between them, "
        "and numbers on what leaks.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"tvmm.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"tvmm.commands.{name}":
                raise
            continue
        module.add(sub)
    return p


def _stop(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # ends the run as Ctrl-C does: its processes are stopped too


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # `timeout`, `kill` or a closed terminal: without this the launcher died at once and left
    # the run's TEE and host processes (a process group of their own) running, a TEE in a
    # guest with no timer at full speed for ever
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("tvmm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`tvmm ... --json | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
