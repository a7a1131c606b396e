"""Measure the data-page fault channel on the T-table victims (guests/victims/ttable*.c).

The host keeps the table's four pages unmapped and records the page of every fault on
them, in one of three ways:

- ``each``: after a fault it maps the page for one instruction (quantum 1) and unmaps it
  again, so every access to the table faults once: the page of every lookup;
- ``changes``: it maps the faulting page and unmaps the other three, so a lookup faults
  when it moves to another page (no timer: the quieter attack the shim's step policy does
  not see);
- ``keep``: as ``changes``, but once the shim's TDX rule has listed pages (from the 7th
  fault at the lookup's RIP) every page that faults stays mapped, as entry requires;
- ``late``: as ``changes``, but the table is unmapped only once the fill is over (a timer
  of the fill's length, found on the attacker's own copy at plain), so that no fault is
  spent on the fill: what an attacker does against a data-fault budget.

The lookups' pages are the top two bits of the secret's 16 nibbles, four rounds over:
32 page-level bits.  ``ttable`` runs its lookups at one RIP, ``ttable_unrolled`` at 16.  ``python -m tvmm_tools.fault_channel --doc`` measures snp and shim over
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

from shim.policies.config import PolicyConfig
from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import ExitReason, Field, Level, Result
from tvmm.host.devices import Console
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.machine import DEFAULT_MEMORY, make_machine, wrap_secret
from tvmm.samples import resolve
from tvmm_tools.doc_block import write_block

PAGE = 4096
FILL_FAULTS = 4  # the table is written once at start, page after page
DOC = Path(__file__).resolve().parent.parent / "docs" / "policies.md"
MODES = ("each", "changes", "keep", "late")
FILL_STEP = 8  # the own copy's timer step when it looks for the end of the fill


class TableHost(HonestHypervisor):
    """The honest host, but for the table's pages (see the module docstring)."""

    def __init__(self, *args, pages: list[int], mode: str, wait: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pages, self.mode = pages, mode
        self.quantum = wait  # late: the first entry runs the fill, then the table goes
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
        if rec.reason == ExitReason.TIMER and self.mode in ("each", "late") and self.quantum:
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
        if self.mode == "late":
            return [page for page, _ in self.faults]
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


class _FillWatch(HonestHypervisor):
    """Runs in steps of FILL_STEP instructions and reads the table's last word (plaintext at
    plain) after each: the fill is over once it is written."""

    def __init__(self, *args, last: int, **kwargs) -> None:
        super().__init__(*args, quantum=FILL_STEP, **kwargs)
        self.last, self.count, self.done = last, 0, 0

    def on_exit(self, rec: ExitRecord) -> bool:
        if rec.reason == ExitReason.TIMER and not self.done:
            self.count += rec.get(Field.RETIRED, self.quantum) or 0
            page = self.client.read_page(self.vm, self.last & ~(PAGE - 1))
            if any(page[self.last % PAGE:]):
                self.done, self.quantum = self.count, 0
        return super().on_exit(rec)


def fill_length(victim_name: str) -> int:
    """Instructions from the first entry to the end of the table's fill (within
    FILL_STEP), on the attacker's own copy at plain, with no secret."""
    image, _victim = resolve(victim_name)
    table, size = next((addr, size) for addr, size, name in image.symbols if name == "table")
    machine = make_machine(seed=0, image=image, level=Level.PLAIN)
    try:
        host = _FillWatch(machine.client, Devices(Console()), last=table + size - 8)
        host.launch(image, Level.PLAIN, DEFAULT_MEMORY)
        host.run(max_exits=100_000)
    finally:
        machine.close()
    return host.done


def measure(level: Level, mode: str, seed: int, victim_name: str = "ttable",
            wait: int = 0, policy: PolicyConfig | None = None) -> Run:
    image, victim = resolve(victim_name)
    if victim is None:  # pragma: no cover - the victim declares its secret beside it
        raise RuntimeError(f"{victim_name} declares no secret")
    table = next(addr for addr, _size, name in image.symbols if name == "table")
    secret = victim.make_secret(random.Random(seed))
    machine = make_machine(seed=seed, image=image, level=level, policy_config=policy)
    try:
        host = TableHost(machine.client, Devices(Console()), mode=mode,
                         pages=[table + i * PAGE for i in range(4)], wait=wait)
        host.launch(image, level, DEFAULT_MEMORY,
                    secret_blob=wrap_secret(machine, secret, image, level))
        if mode != "late":
            host.unmap_table()
        result = host.run(max_exits=20_000)
    finally:
        machine.close()
    s = int.from_bytes(secret, "little")
    lookups = [((s >> (4 * j)) & 15) >> 2 for j in range(16)] * 4
    return Run(victim_name, level.value, mode, seed, result.how, host.faults, lookups)


# The fault policy as it stood before each of its later parts, to show the gap each
# closes: the TDX rule and the window budget alone (no data-fault budget, no pinning), then
# with the data-fault budget (no pinning); None is the default (pinning on).
NO_DATA_BUDGET = PolicyConfig(data_fault_budget=1_000_000, pin_working_set=False)
NO_PINNING = PolicyConfig(pin_working_set=False)
POLICY_NAMES = {NO_DATA_BUDGET: "TDX rule + window budget",
                NO_PINNING: "+ data-fault budget", None: "default (pinning)"}
ROWS = (("ttable", Level.SNP, "each", None), ("ttable", Level.SNP, "changes", None),
        ("ttable", Level.SHIM, "changes", NO_DATA_BUDGET),
        ("ttable", Level.SHIM, "keep", NO_DATA_BUDGET),
        ("ttable_unrolled", Level.SHIM, "changes", NO_DATA_BUDGET),
        ("ttable", Level.SHIM, "late", NO_PINNING),
        ("ttable_unrolled", Level.SHIM, "changes", NO_PINNING),
        ("ttable_unrolled", Level.SHIM, "late", NO_PINNING),
        ("ttable", Level.SHIM, "late", None),
        ("ttable_unrolled", Level.SHIM, "changes", None),
        ("ttable_unrolled", Level.SHIM, "late", None))


def run(seeds: int) -> list[dict]:
    rows = []
    fills: dict[str, int] = {}
    for victim, level, mode, policy in ROWS:
        wait = fills.setdefault(victim, fill_length(victim)) if mode == "late" else 0
        runs = [measure(level, mode, seed, victim, wait, policy) for seed in range(seeds)]
        seen = [len(r.lookup_faults) for r in runs]
        rows.append({"victim": victim, "level": level.value, "mode": mode, "seeds": seeds,
                     "policy": "—" if level != Level.SHIM else POLICY_NAMES[policy],
                     "ended": sorted({r.how for r in runs}),
                     "lookup_faults": [min(seen), statistics.mean(seen), max(seen)],
                     "page_changes": statistics.mean(len(r.page_changes) for r in runs),
                     "bits_bound": max(r.bits_bound for r in runs)})
    return rows


def doc_block(rows: list[dict]) -> str:
    lines = ["| victim | level | fault policy | host | ended | lookup faults seen (min / mean / "
             "max) | of the lookups' page changes (mean) | page-level bits, at most (of 32) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, mean, hi = r["lookup_faults"]
        lines.append(f"| {r['victim']} | {r['level']} | {r['policy']} | {r['mode']} | "
                     f"{', '.join(r['ended'])} | "
                     f"{lo} / {mean:.1f} / {hi} | {r['page_changes']:.1f} | "
                     f"{r['bits_bound']} |")
    seeds = rows[0]["seeds"] if rows else 0
    lines.append("")
    lines.append(f"Seeds 0..{seeds - 1}; \"TDX rule + window budget\": data_fault_budget "
                 "out of reach and pin_working_set off; \"+ data-fault budget\": "
                 "pin_working_set off; \"default (pinning)\": every default on. Written by "
                 "`python -m tvmm_tools.fault_channel --doc`.")
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
