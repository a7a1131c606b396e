"""Measure the data-page fault channel on the T-table victims (guests/victims/ttable*.c).

The host keeps the table's four pages unmapped and records the page of every fault on
them, in one of three ways:

- ``each``: after a fault it maps the page for one instruction (quantum 1) and unmaps it
  again, so every access to the table faults once: the page of every lookup;
- ``changes``: it maps the faulting page and unmaps the other three, so a lookup faults
  when it moves to another page (no timer: the quieter attack the shim's step policy does
  not see);
- ``keep``: as ``changes``, but once the shim's TDX rule has listed pages (from the 7th
  fault at the lookup's RIP) every page that faults stays mapped, as entry requires.

The lookups' pages are the top two bits of the secret's 16 nibbles, four rounds over:
32 page-level bits.  ``ttable`` runs its lookups at one RIP, ``ttable_unrolled`` at 16.  ``python -m tools.fault_channel --doc`` measures snp and shim over
several seeds and rewrites the block ``fault_channel`` of docs/policies.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.doc_block import write_block
from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import ExitReason, Field, Level, Result
from tvmm.host.devices import Console
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.machine import DEFAULT_MEMORY, make_machine, wrap_secret
from tvmm.samples import resolve

PAGE = 4096
FILL_FAULTS = 4  # the table is written once at start, page after page
DOC = Path(__file__).resolve().parent.parent / "docs" / "policies.md"
MODES = ("each", "changes", "keep")


class TableHost(HonestHypervisor):
    """The honest host, but for the table's pages (see the module docstring)."""

    def __init__(self, *args, pages: list[int], mode: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pages, self.mode = pages, mode
        self.faults: list[tuple[int, int | None]] = []  # (page index, ACCESS if shown)
        self.kept: set[int] = set()
        self.refused = False

    def unmap_table(self) -> None:
        for page in self.pages:
            if page not in self.kept:
                self.client.unmap(self.vm, page)

    def enter(self) -> Reply:
        reply = super().enter()
        self.refused = reply.result == Result.ENTRY_REFUSED
        return reply

    def on_exit(self, rec: ExitRecord) -> bool:
        if rec.reason == ExitReason.NPF:
            gpa = rec.get(Field.GPA)
            page = gpa & ~(PAGE - 1) if gpa is not None else (rec.get(Field.GPA_PAGE) or 0) * PAGE
            if page in self.pages:
                self.faults.append((self.pages.index(page), rec.get(Field.ACCESS)))
                self.client.map(self.vm, page)
                if self.mode == "keep" and len(self.faults) >= FILL_FAULTS + 7:
                    self.kept.add(page)
                if self.mode == "each":
                    self.quantum = 1
                else:
                    for other in self.pages:
                        if other != page and other not in self.kept:
                            self.client.unmap(self.vm, other)
                return True
        if rec.reason == ExitReason.TIMER and self.mode == "each" and self.quantum:
            self.quantum = 0
            self.unmap_table()
            return True
        return super().on_exit(rec)


@dataclass
class Run:
    victim: str
    level: str
    mode: str
    seed: int
    how: str  # how the run ended: exit, refused, killed, ...
    faults: list[tuple[int, int | None]]  # every table fault: (page index, ACCESS if shown)
    lookups: list[int]  # the page of each of the 64 lookups, from the secret (the truth)

    @property
    def lookup_faults(self) -> list[int]:
        """The pages of the faults after the fill's: reads where the level shows ACCESS."""
        if self.faults and self.faults[0][1] is not None:
            return [page for page, access in self.faults if access == 1]
        return [page for page, _ in self.faults[FILL_FAULTS:]]

    @property
    def page_changes(self) -> list[int]:
        out, last = [], FILL_FAULTS - 1  # the fill ends on the last page
        for page in self.lookups:
            if page != last:
                out.append(page)
            last = page
        return out

    @property
    def bits_bound(self) -> int:
        """At most two bits of a nibble per lookup fault seen, 32 in all."""
        return min(32, 2 * len(self.lookup_faults))


def measure(level: Level, mode: str, seed: int, victim_name: str = "ttable") -> Run:
    image, victim = resolve(victim_name)
    if victim is None:  # pragma: no cover - the victim declares its secret beside it
        raise RuntimeError(f"{victim_name} declares no secret")
    table = next(addr for addr, _size, name in image.symbols if name == "table")
    secret = victim.make_secret(random.Random(seed))
    machine = make_machine(seed=seed, image=image, level=level)
    try:
        host = TableHost(machine.client, Devices(Console()), mode=mode,
                         pages=[table + i * PAGE for i in range(4)])
        host.launch(image, level, DEFAULT_MEMORY,
                    secret_blob=wrap_secret(machine, secret))
        host.unmap_table()
        result = host.run(max_exits=20_000)
    finally:
        machine.close()
    s = int.from_bytes(secret, "little")
    lookups = [((s >> (4 * j)) & 15) >> 2 for j in range(16)] * 4
    return Run(victim_name, level.value, mode, seed, result.how, host.faults, lookups)


def run(seeds: int) -> list[dict]:
    rows = []
    for victim, level, mode in (("ttable", Level.SNP, "each"), ("ttable", Level.SNP, "changes"),
                                ("ttable", Level.SHIM, "changes"), ("ttable", Level.SHIM, "keep"),
                                ("ttable_unrolled", Level.SHIM, "changes")):
        runs = [measure(level, mode, seed, victim) for seed in range(seeds)]
        seen = [len(r.lookup_faults) for r in runs]
        rows.append({"victim": victim, "level": level.value, "mode": mode, "seeds": seeds,
                     "ended": sorted({r.how for r in runs}),
                     "lookup_faults": [min(seen), statistics.mean(seen), max(seen)],
                     "page_changes": statistics.mean(len(r.page_changes) for r in runs),
                     "bits_bound": max(r.bits_bound for r in runs)})
    return rows


def doc_block(rows: list[dict]) -> str:
    lines = ["| victim | level | host | ended | lookup faults seen (min / mean / max) | of the "
             "lookups' page changes (mean) | page-level bits, at most (of 32) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, mean, hi = r["lookup_faults"]
        lines.append(f"| {r['victim']} | {r['level']} | {r['mode']} | {', '.join(r['ended'])} | "
                     f"{lo} / {mean:.1f} / {hi} | {r['page_changes']:.1f} | "
                     f"{r['bits_bound']} |")
    seeds = rows[0]["seeds"] if rows else 0
    lines.append("")
    lines.append(f"Seeds 0..{seeds - 1}, default policy; written by "
                 "`python -m tools.fault_channel --doc`.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--doc", action="store_true", help=f"rewrite the block in {DOC}")
    args = parser.parse_args(argv)
    rows = run(args.seeds)
    print(json.dumps(rows))
    if args.doc:
        write_block(DOC, "fault_channel", doc_block(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
