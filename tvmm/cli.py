"""The tvmm command line: each subcommand lives in tvmm/commands/."""

from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS = ("boot", "guests", "bench", "attacks", "trace", "attest", "perimeter")


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


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)
