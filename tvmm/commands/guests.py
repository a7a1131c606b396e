"""tvmm guests / tvmm guest build: the sample guests, and building your own."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from tvmm import guestbuild
from tvmm.commands.output import console, emit_json, fail
from tvmm.guestimage import GuestImageError, load_elf
from tvmm.samples import SAMPLES, VICTIMS


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("guests", help="list the sample and victim guests")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_list)
    g = sub.add_parser("guest", help="build your own guest")
    gsub = g.add_subparsers(dest="guest_cmd", required=True)
    b = gsub.add_parser("build", help="build C/assembly sources against guests/include")
    b.add_argument("sources", nargs="+", type=Path)
    b.add_argument("-o", "--output", type=Path, required=True)
    b.add_argument("--json", action="store_true")
    b.set_defaults(run=run_build)


def run_list(args: argparse.Namespace) -> int:
    rows = [{"name": s.name, "kind": kind, "summary": s.summary, "secret": s.secret_doc,
             "source": str(guestbuild.GUESTS_DIR / "samples" / s.source)}
            for kind, guests in (("sample", SAMPLES), ("victim", VICTIMS))
            for s in guests.values()]
    if args.json:
        emit_json(rows)
        return 0
    table = Table(title="sample and victim guests")
    for col in ("name", "kind", "what it does", "secret"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["kind"], escape(r["summary"]), escape(r["secret"]))
    console.print(table)
    return 0


def run_build(args: argparse.Namespace) -> int:
    try:
        out = guestbuild.build(args.sources, args.output)
        image = load_elf(out)
    except (guestbuild.GuestBuildError, GuestImageError) as exc:
        return fail(str(exc))
    info = {"output": str(out), "entry": hex(image.entry), "pages": image.page_count,
            "symbols": len(image.symbols), "sha256": image.sha256}
    if args.json:
        emit_json(info)
    else:
        console.print(f"built [bold]{out}[/]: entry {info['entry']}, {info['pages']} pages, "
                      f"{info['symbols']} symbols")
    return 0
