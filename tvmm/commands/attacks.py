"""tvmm attacks | attack | matrix: the attack scenarios, one run, and the whole matrix."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from tvmm.abi.types import Level
from tvmm.commands.boot import add_policy_options, load_policy
from tvmm.commands.output import console, emit_json, fail, writable_file
from tvmm.owner.ledger import SCORED_RUN_LAUNCHES


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attacks", help="list the attack scenarios")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=run_list)
    a = sub.add_parser("attack", help="run one attack against a victim at a level")
    a.add_argument("name", nargs="?", help="scenario name (see `tvmm attacks`)")
    a.add_argument("--file", type=Path, help="run the attack defined in this Python file")
    a.add_argument("--guest", required=True, help="victim: a sample name, .c file or ELF")
    a.add_argument("--level", choices=[lv.value for lv in Level], default="snp")
    a.add_argument("--seed", type=int, default=0,
                   help="seed of the attack's public random stream (the secret is not made "
                        "from it: the judge draws it from the OS each run)")
    a.add_argument("--secret", metavar="HEX",
                   help="a fixed victim secret, for debugging (default: drawn from the OS)")
    a.add_argument("--trace", type=writable_file)
    a.add_argument("--launches", type=_launches, default=SCORED_RUN_LAUNCHES, metavar="N",
                   help=f"the owner releases the victim's secret at most N times an hour "
                        f"(default {SCORED_RUN_LAUNCHES}; 0: no bound)")
    a.add_argument("--owner", choices=["digest", "ledger"],
                   help="how the victim's owner releases its secret: to the one predicted "
                        "launch digest, or to any build registered in a transparency ledger "
                        "(the host presents the receipt); default: the attack's own")
    add_policy_options(a)
    a.add_argument("--json", action="store_true")
    a.set_defaults(run=run_one)
    m = sub.add_parser("matrix", help="every attack against every level")
    m.add_argument("--seed", type=int, default=0)
    # checked before the run (minutes): a missing directory is one line now, not a
    # traceback once every cell has run
    m.add_argument("--json", type=writable_file, dest="json_out", metavar="FILE")
    m.add_argument("--markdown", type=writable_file, metavar="FILE")
    m.add_argument("--attack", action="append", help="only these attacks (repeatable)")
    m.add_argument("--level", action="append", choices=[lv.value for lv in Level])
    add_policy_options(m)
    m.set_defaults(run=run_matrix)


def run_list(args: argparse.Namespace) -> int:
    from tvmm_tools.attacks import registry

    rows = [{"name": c.name, "kind": c.kind, "victims": list(c.victims), "summary": c.summary}
            for c in registry().values()]
    if args.json:
        emit_json(rows)
        return 0
    table = Table(title="attack scenarios")
    table.add_column("name", no_wrap=True)  # a name is what the user types: never cut
    table.add_column("kind", no_wrap=True)
    table.add_column("victims")
    table.add_column("summary", ratio=1)
    for r in rows:
        table.add_row(r["name"], r["kind"], ", ".join(r["victims"]), escape(r["summary"]))
    console.print(table)
    return 0


def run_one(args: argparse.Namespace) -> int:
    from tvmm.harness.judge import run_attack
    from tvmm.judge import check_secret
    from tvmm.samples import resolve
    from tvmm_tools.attacks import registry

    secret = None
    if args.secret is not None:
        try:
            secret = bytes.fromhex(args.secret)
            check_secret(resolve(args.guest)[1], secret)
        except ValueError as exc:
            return fail(f"--secret: {exc}")

    if args.file:
        if not Path(args.file).is_file():
            return fail(f"cannot load {args.file}: no such file")
        verdict = run_attack(args.name, "?", args.guest, Level(args.level), seed=args.seed,
                             trace=args.trace, policy_config=load_policy(args),
                             file=args.file, secret=secret, launches=args.launches,
                             owner_policy=args.owner or "digest")
    else:
        attacks = registry()
        if args.name is None:
            return fail(f"name an attack (tvmm attack NAME) or give --file FILE; "
                        f"the attacks: {', '.join(attacks)}")
        if args.name not in attacks:
            return fail(f"no attack {args.name!r}; try one of: {', '.join(attacks)}")
        verdict = run_attack(args.name, attacks[args.name].kind, args.guest,
                             Level(args.level), seed=args.seed, trace=args.trace,
                             policy_config=load_policy(args), secret=secret,
                             launches=args.launches,
                             owner_policy=args.owner or attacks[args.name].owner_policy)
    if verdict.notes.get("error"):
        return fail(f"the attack failed: {verdict.detail}")
    if args.json:
        emit_json(verdict.to_dict())
        return 0
    table = Table(title=f"{verdict.attack} against {verdict.guest} at {verdict.level}",
                  show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for name, value in verdict_rows(verdict):
        table.add_row(name, escape(value))
    console.print(table)
    if (note := UNSEPARATED.get(str(verdict.notes.get("host_separation")))) is not None:
        console.print(f"[dim]note: {escape(note)} (docs/threat-model.md)[/dim]")
    return 0


UNSEPARATED = {
    "none": "the attack's process ran unseparated, as this user with its privileges (as "
            "root, tvmm separates it unless TVMM_HOST_SEPARATION=off)",
    "caps": "the attack's process ran without capabilities but saw this machine's files "
            "(no CAP_SYS_ADMIN for a mount namespace)",
}


def verdict_rows(verdict) -> list[tuple[str, str]]:
    """The verdict as the table shows it: words, not Python's None, True and False
    (--json keeps the values)."""
    rows = []
    for key in ("cell", "n_bits", "bits_correct", "leaked_bits", "log2_rank", "full_recovery",
                "detected", "detected_after_exits", "integrity_violated", "blocked", "exits",
                "wall_s", "stepping", "detail"):
        value = verdict.cell if key == "cell" else getattr(verdict, key)
        if key == "wall_s":
            shown = f"{value:.2f} s"
        elif value is None:
            shown = "-"
        elif isinstance(value, bool):
            shown = "yes" if value else "no"
        elif isinstance(value, dict):
            shown = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        else:
            shown = str(value)
        rows.append((key.replace("_", " "), shown))
    return rows


def run_matrix(args: argparse.Namespace) -> int:
    from tvmm import matrix

    levels = [Level(lv) for lv in args.level] if args.level else None
    with console.status("running the attack matrix…") as status:
        def progress(done: int, total: int, label: str) -> None:
            status.update(f"[{done}/{total}] {label}")

        verdicts = matrix.run_matrix(seed=args.seed, attacks=args.attack, levels=levels,
                                     policy_config=load_policy(args), progress=progress)
    console.print(matrix.render_table(verdicts))
    written = []
    if args.json_out:
        args.json_out.write_text(json.dumps(matrix.to_json(verdicts), indent=2, default=str))
        written.append(str(args.json_out))
    if args.markdown:
        args.markdown.write_text(matrix.to_markdown(verdicts))
        written.append(str(args.markdown))
    if written:
        console.print(f"wrote {' and '.join(written)}")
    return 0


def _launches(text: str) -> int | None:
    """--launches N: a positive bound, or 0 for none."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of launches") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a launch budget cannot be negative")
    return value or None
