"""The generic attacks against unmodified library code: measure, and write docs/real-code.md.

The victims (guests/victims/gcry_modexp.c, mbedtls_modexp.c: Debian's static libgcrypt and
mbedTLS behind a small driver; spellcheck.c: glibc's bsearch over a public word list; all
run as Linux programs) are cells of the attack matrix; this
runs just their cells — each attack against each victim at every level, through the judge's
scored path (tvmm.matrix.run_cell: a secret drawn from the OS, the attack in a process of
its own) — and writes the table with the published figures beside it:

    python -m tvmm_tools.real_code --write-docs        # the block real-code of docs/real-code.md

Each (attack, victim) chain runs its levels in order, so the attacker's profiles of the
public image, made at the first level, are reused (as an attacker profiles a binary once).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tvmm.abi.types import Level
from tvmm.judge import Verdict
from tvmm.judge import run_attack as in_process
from tvmm.matrix import LEVELS, Cell, cell_text, outcome_class, run_cell
from tvmm.samples import resolve
from tvmm_tools.attacks._profile import (
    Tracer,
    code_pages,
    data_pages,
    declared_secret_bytes,
    own_trace,
)
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome
from tvmm_tools.doc_block import write_block

VICTIMS = ("gcry_modexp", "mbedtls_modexp", "spellcheck")
ATTACKS = ("page-fault", "single-step")
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "real-code.md"
BLOCK = "real-code"

# What the literature reports for controlled channels on these libraries (public sources;
# docs/real-code.md cites them).
PUBLISHED = {
    "gcry_modexp": "page faults: Shinde et al., *Preventing Page Faults from Telling Your "
                   "Secrets* (AsiaCCS 2016) read 27% of the key bits on average, up to 100%, "
                   "from OpenSSL's and Libgcrypt's routines through the page-fault channel; "
                   "the square/multiply sequence of libgcrypt's left-to-right sliding window "
                   "(read through Flush+Reload): full RSA-1024 keys, Bernstein et al., "
                   "*Sliding right into disaster* (CHES 2017)",
    "mbedtls_modexp": "Schwarz et al., *Malware Guard Extension* (DIMVA 2017): Prime+Probe "
                      "from a co-located SGX enclave on mbedTLS's RSA (a constant-time "
                      "multiplication primitive, sliding-window exponentiation): 96% of an "
                      "RSA-4096 private key from one trace, the full key from 11",
    "spellcheck": "Xu, Cui, Peinado, *Controlled-Channel Attacks* (S&P 2015): complete text "
                  "documents from Hunspell's dictionary lookups, and outlines of JPEG images "
                  "from libjpeg, through page faults",
}


@dataclass(frozen=True)
class Variety:
    """How the victim's page trace (page-fault's tracer, on the attacker's own copies at
    plain) varies over random secrets: whatever a decoder reads, it reads from this."""

    victim: str
    secrets: int
    distinct: int
    lengths: tuple[int, ...]


class _Variety(Attack):
    """Traces own copies holding random secrets (from the attack's seeded stream)."""

    name, kind, summary, victims = "trace-variety", "confidentiality", "", ()
    runs = 6

    def run(self, ctx: AttackContext) -> Outcome:
        make = functools.partial(ctx.host, Tracer, code=code_pages(ctx.image),
                                 data=data_pages(ctx.image))
        nbytes = declared_secret_bytes(ctx.guest)
        traces = [tuple(own_trace(ctx, make, ctx.rng.randbytes(nbytes), 60_000)[0])
                  for _ in range(self.runs)]
        self.found = traces
        return Outcome(guess=None)


def trace_variety(victim: str, seed: int = 0) -> Variety:
    probe = _Variety()
    in_process(probe, victim, Level.PLAIN, seed=seed)
    traces = probe.found
    return Variety(victim, len(traces), len(set(traces)), tuple(len(t) for t in traces))


def chains() -> list[list[Cell]]:
    return [[Cell(a, v, lv) for lv in LEVELS] for v in VICTIMS for a in ATTACKS]


def run(jobs: int = 2, seed: int = 0) -> tuple[list[Verdict], float]:
    """Every chain's cells; (verdicts in chain order, wall seconds)."""
    start = time.perf_counter()
    for victim in VICTIMS:
        resolve(victim)  # built once, before the threads share the build cache

    def chain(cells: list[Cell]) -> list[Verdict]:
        out = []
        for cell in cells:
            out.append(run_cell(cell, seed=seed))
            print(f"{cell.attack} on {cell.victim} at {cell.level.value}: "
                  f"{cell_text(out[-1])} ({out[-1].wall_s:.0f} s)", file=sys.stderr, flush=True)
        return out

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(chain, chains()))
    return [v for r in results for v in r], time.perf_counter() - start


def to_markdown(verdicts: list[Verdict], elapsed: float, varieties: list[Variety]) -> str:
    by = {(v.attack, v.guest, v.level): v for v in verdicts}
    out = [f"Generated by `python -m tvmm_tools.real_code --write-docs` from one real run "
           f"({len(verdicts)} cells in {elapsed:.0f} s, secrets drawn from the OS); nothing "
           "here is typed by hand.  Bits leaked per level (key rank):", "",
           "| attack | victim | " + " | ".join(lv.value for lv in LEVELS) + " |",
           "|" + "---|" * (2 + len(LEVELS))]
    for victim in VICTIMS:
        for attack in ATTACKS:
            cells = [by.get((attack, victim, lv.value)) for lv in LEVELS]
            out.append(f"| {attack} | {victim} | " + " | ".join(
                "—" if v is None else (f"**{cell_text(v)}**" if outcome_class(v) in
                                       ("leak", "partial") else cell_text(v))
                for v in cells) + " |")
    out += ["", "What the page trace itself carries: the page-fault tracer's trace of the "
            "attacker's own copies at plain, each holding a random secret (events: code-page "
            "changes and data-page accesses from the secret's read to the result):", "",
            "| victim | own runs | distinct traces | trace lengths (events) |", "|---|---|---|---|"]
    out += [f"| {v.victim} | {v.secrets} | {v.distinct} | {', '.join(map(str, v.lengths))} |"
            for v in varieties]
    out += ["", "| victim | published |", "|---|---|"]
    out += [f"| {v} | {PUBLISHED[v]} |" for v in VICTIMS]
    out += ["", "<details><summary>detail of each run</summary>", "",
            "| attack | victim | level | cell | exits | wall s | detail |",
            "|---|---|---|---|---|---|---|"]
    for v in verdicts:
        detail = (v.detail or "").replace("|", "\\|")
        out.append(f"| {v.attack} | {v.guest} | {v.level} | {cell_text(v)} | {v.exits} | "
                   f"{v.wall_s:.1f} | {detail} |")
    out += ["", "</details>"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvmm_tools.real_code", description=__doc__)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-docs", action="store_true", help=f"rewrite {RESULTS}'s block")
    args = p.parse_args(argv)
    varieties = [trace_variety(v, args.seed) for v in VICTIMS]
    verdicts, elapsed = run(args.jobs, args.seed)
    text = to_markdown(verdicts, elapsed, varieties)
    if args.write_docs:
        write_block(RESULTS, BLOCK, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
