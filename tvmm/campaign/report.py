"""What a campaign publishes: the results doc (docs/results.md) from its stored cells, the
cells themselves as JSON Lines beside it (so the doc can be regenerated and checked), and
the aggregates as JSON.

A cell of the table is the aggregate over its seeds and never hides a seed that leaked:
the median bits, and the range whenever the seeds differ ("0 b (0–6)": the median run
leaked nothing, one run leaked 6 bits).  Bold: the attack achieved something in at least
one seed.  The detail table gives success k/N with its 95 % Wilson interval, detections
k/N and each seed's outcome class.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich import box
from rich.markup import escape
from rich.table import Table

from tvmm.abi.types import Level
from tvmm.campaign.keys import CampaignError, CellKey, decode_verdict, encode_verdict
from tvmm.campaign.stats import WORKS, Aggregate, aggregate
from tvmm.judge import Verdict
from tvmm.matrix import LEVELS, attack_class

COMMAND = "tvmm campaign --seeds 5 --markdown docs/results.md"


@dataclass(frozen=True, slots=True)
class Meta:
    """Where and how the cells were measured, stated at the top of every doc."""

    command: str
    date: str  # UTC, when the doc was written
    code: str  # tvmm.campaign.version.code_version
    commit: str
    cores: int
    load: float  # 1-minute load average when the doc was written
    cells: int
    wall_s: float  # wall time of the run that finished the grid (0: all stored before)
    workers: str

    @staticmethod
    def now(command: str, code: str, commit: str, cells: int, wall_s: float,
            workers: str) -> Meta:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return Meta(command, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), code,
                    commit, os.cpu_count() or 1, round(load, 1), cells, round(wall_s, 1),
                    workers)


# -- the cells as JSON Lines ---------------------------------------------------------------
def dump_cells(meta: Meta, rows: list[tuple[CellKey, Verdict]]) -> str:
    lines = [json.dumps({"meta": asdict(meta)}, sort_keys=True)]
    lines += [json.dumps({"key": asdict(k), "verdict": json.loads(encode_verdict(v))},
                         sort_keys=True, ensure_ascii=False) for k, v in rows]
    return "\n".join(lines) + "\n"


def load_cells(text: str) -> tuple[Meta, list[tuple[CellKey, Verdict]]]:
    try:
        head, *body = [json.loads(line) for line in text.splitlines() if line.strip()]
        meta = Meta(**head["meta"])
        rows = [(CellKey(**d["key"]), decode_verdict(json.dumps(d["verdict"]))) for d in body]
    except (ValueError, KeyError, TypeError) as exc:
        raise CampaignError(f"not a campaign's cells file: {exc}") from None
    return meta, rows


def aggregates(rows: list[tuple[CellKey, Verdict]]) -> list[Aggregate]:
    return aggregate((k.seed, k.policy, v) for k, v in rows)


# -- a cell's text ----------------------------------------------------------------------------
def cell_text(a: Aggregate) -> str:
    """The aggregate as a table cell: bits (median, range when seeds differ), detections,
    refusals, errors — each with k/N when not every seed agrees."""
    n = a.n
    parts = []
    if a.kind == "confidentiality":
        if a.detected:
            parts.append(_share("detected", a.detected, n))
        if a.max_bits >= 1:
            bits = f"{a.median_bits:.0f} b"
            if f"{a.min_bits:.0f}" != f"{a.max_bits:.0f}":
                bits += f" ({a.min_bits:.0f}–{a.max_bits:.0f})"
            parts.append(bits)
    else:
        names = {"tampered": "tampered", "detected": "detected", "blocked": "blocked",
                 "none": "ok" if a.kind == "benign" else "✗"}
        if a.kind == "benign":
            names["detected"] = "false positive"
        for cls in ("tampered", "detected", "blocked", "none"):
            if k := a.classes.count(cls):
                parts.append(_share(names[cls], k, n))
    if a.kind == "confidentiality" and not parts:
        blocked = a.classes.count("blocked")
        parts.append(_share("blocked", blocked, n) if blocked else "✗")
    if a.errors:
        parts.append(_share("error", a.errors, n))
    return " · ".join(parts)


def _share(name: str, k: int, n: int) -> str:
    return name if k == n else f"{name} {k}/{n}"


def _md(a: Aggregate | None) -> str:
    if a is None:
        return "—"
    text = cell_text(a).replace("|", "\\|")
    return f"**{text}**" if any(c in WORKS for c in a.classes) else text


def _seeds(aggs: list[Aggregate]) -> str:
    counts = sorted({a.n for a in aggs})
    seeds = sorted({s for a in aggs for s in a.seeds})
    span = f"seeds {seeds[0]}–{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) \
        else "seeds " + ", ".join(map(str, seeds))
    per = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"{per} seeds per cell ({span})"


def meta_line(meta: Meta, aggs: list[Aggregate], data: str = "results.jsonl") -> str:
    code = f"code version {meta.code}" + (f" (commit {meta.commit})" if meta.commit else "")
    run = (f"{meta.cells} runs, finished in {meta.wall_s:.0f} s on {meta.workers}"
           if meta.wall_s else f"{meta.cells} runs")
    return (f"Generated by `{meta.command}` (tvmm.campaign.report) on {meta.date}: "
            f"{_seeds(aggs)}, {run}; machine: {meta.cores} cores, load average "
            f"{meta.load} when written; {code}.  Nothing here is typed by hand; the runs "
            f"themselves are in [{data}]({data}).")


# -- docs/results.md -----------------------------------------------------------------------------
def results_markdown(meta: Meta, rows: list[tuple[CellKey, Verdict]],
                     data: str = "results.jsonl") -> str:
    """docs/results.md: per policy setting the matrix, the benign suite, what works where
    (with the published figure), the residual leakage at ``shim`` and every cell's
    aggregate; ``data`` names the cells file beside it."""
    aggs = aggregates(rows)
    if not aggs:
        raise CampaignError("no stored cells to write")
    policies = list(dict.fromkeys(a.policy for a in aggs))
    out = ["# Attack matrix — measured results", "", meta_line(meta, aggs, data), ""]
    out += ["Each cell aggregates its seeds (the victim's secret and the random streams "
            "differ per seed).  Confidentiality attacks show the bits leaked — the median "
            "run, and the range `(min–max)` whenever the seeds differ, so a cell never "
            "reads 0 where one seed leaked; integrity attacks `tampered` (the victim's "
            "result changed and nobody noticed), `detected` (the shim recorded a "
            "violation or killed the VM), `blocked` (the platform refused or neutralised "
            "the key action) or `✗` (no effect); `k/N` where only k of the N seeds agree.  "
            "**Bold**: the attack works in at least one seed.", ""]
    for policy in policies:
        mine = [a for a in aggs if a.policy == policy]
        if len(policies) > 1:
            out += [f"## Policy setting `{policy}`", ""]
        out += _tables(mine)
    return "\n".join(out)


def _tables(aggs: list[Aggregate]) -> list[str]:
    by_cell = {(a.attack, a.victim, a.level): a for a in aggs}
    pairs = list(dict.fromkeys((a.attack, a.victim) for a in aggs))
    attacks = [p for p in pairs if by_cell.get((*p, Level.SHIM.value)) is None
               or by_cell[(*p, Level.SHIM.value)].kind != "benign"]
    benign = [p for p in pairs if p not in attacks]
    out = ["| attack | victim | " + " | ".join(lv.value for lv in LEVELS) + " |",
           "|" + "---|" * (2 + len(LEVELS))]
    for a, g in attacks:
        out.append(f"| {a} | {g} | "
                   + " | ".join(_md(by_cell.get((a, g, lv.value))) for lv in LEVELS) + " |")
    if benign:
        out += ["", "### Benign suite at `shim` (false positives)", "",
                "Honest hosts with many legitimate exits.  Any detection here is a false "
                "positive.", "", "| workload | guest | result | exits (median) | what it does |",
                "|---|---|---|---|---|"]
        fp = 0
        for a, g in benign:
            agg = by_cell[(a, g, Level.SHIM.value)]
            fp += agg.detected
            out.append(f"| {a} | {g} | {cell_text(agg)} | {statistics.median(agg.exits):.0f} "
                       f"| {_summary(a)} |")
        runs = sum(by_cell[(a, g, Level.SHIM.value)].n for a, g in benign)
        out += ["", f"False positives: {fp} of {runs} benign runs."]
    out += ["", "### Where attacks work, and the published figures", ""]
    seen: set[str] = set()
    for a, g in attacks:
        works = [lv.value for lv in LEVELS if (c := by_cell.get((a, g, lv.value))) is not None
                 and any(k in WORKS for k in c.classes)]
        if works:
            line = f"- **{a}** on {g}: works at {', '.join(works)}."
            if a not in seen and (published := _published(a)):
                line += f"  Published: {published}"
                seen.add(a)
            out.append(line)
    if out[-1] == "":
        out.append("None: no attack worked at any level in any seed.")
    out += ["", "### Residual leakage at `shim`", ""]
    residual = [a for a in aggs if a.level == Level.SHIM.value
                and a.kind == "confidentiality" and a.max_bits >= 1]
    if not any(a.level == Level.SHIM.value and a.kind == "confidentiality" for a in aggs):
        out.append("No confidentiality attack ran at `shim` in this campaign.")
    elif not residual:
        out.append("None: no confidentiality attack leaked a bit at `shim` in any seed.")
    for a in residual:
        out.append(f"- {a.attack} on {a.victim}: {cell_text(a)} — seeds leaking: "
                   f"{sum(1 for b in a.bits if b >= 1)}/{a.n}{_spent(a)}")
    if any(a.attack in _ADAPTIVE and a.level == Level.SHIM.value for a in aggs):
        out += ["", "Bits per launch and per fault of the adaptive attacks with each fault "
                "defence on and off, over 5 seeds: docs/policies.md, \"Residuals of the "
                "adaptive attacks at shim\" (`python -m tvmm_tools.residuals --seeds 5 "
                "--write-docs`)."]
    out += ["", "### Every cell", "", "<details><summary>each cell over its seeds</summary>",
            "", "| attack | victim | level | bits median (min–max) | success k/N [95 % CI] "
            "| detected k/N | class per seed | exits (median) | wall s (median) | detail "
            "(first seed) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for a in aggs:
        lo, hi = a.success_interval
        detail = (a.details[0] or "").replace("|", "\\|").replace("\n", " ")
        out.append(f"| {a.attack} | {a.victim} | {a.level} | {a.median_bits:.1f} "
                   f"({a.min_bits:.1f}–{a.max_bits:.1f}) | {a.successes}/{a.n} "
                   f"[{lo:.2f}, {hi:.2f}] | {a.detected}/{a.n} | {' '.join(a.classes)} | "
                   f"{statistics.median(a.exits):.0f} | {statistics.median(a.wall_s):.2f} | "
                   f"{detail} |")
    out += ["", "</details>", ""]
    return out


_ADAPTIVE = ("fault-budget", "relaunch", "cipher-stack", "timing-bound")  # issue 15's


def _spent(a: Aggregate) -> str:
    """The residual per owner launch secret and per fault the attack says it spent (mean
    over the seeds), where it says so for every seed."""
    out = ""
    if a.launches and all(x for x in a.launches):
        per = statistics.mean(b / x for b, x in zip(a.bits, a.launches, strict=True))
        out += (f"; {per:.1f} b a launch ({statistics.mean(a.launches):.1f} launches, "
                "mean)")
    if a.faults and all(x for x in a.faults):
        per = statistics.mean(b / x for b, x in zip(a.bits, a.faults, strict=True))
        out += f"; {per:.2f} b a fault ({statistics.mean(a.faults):.1f} faults, mean)"
    return out


def _summary(name: str) -> str:
    try:
        return attack_class(name).summary
    except KeyError:
        return ""


def _published(name: str) -> str:
    try:
        return attack_class(name).published
    except KeyError:
        return ""


def aggregates_json(rows: list[tuple[CellKey, Verdict]]) -> list[dict]:
    out = []
    for a in aggregates(rows):
        lo, hi = a.success_interval
        out.append({**asdict(a), "n": a.n, "median_bits": a.median_bits,
                    "successes": a.successes, "success_ci95": [lo, hi],
                    "cell": cell_text(a)})
    return out


def write_results(path: Path, meta: Meta, rows: list[tuple[CellKey, Verdict]]) -> Path:
    """Write the doc to ``path`` and its cells to ``path`` with ``.jsonl``; returns the
    latter."""
    data = path.with_suffix(".jsonl")
    path.write_text(results_markdown(meta, rows, data.name))
    data.write_text(dump_cells(meta, rows))
    return data


CAPTION = ("over the seeds: n b: the median run's bits leaked (min–max where seeds differ) · "
           "tampered · detected · blocked · ✗: no effect · k/N: only k of N seeds agree · "
           "bold: works in a seed · —: not run.  Each cell's 95 % interval and class per "
           "seed: --markdown FILE or --json")


def table(rows: list[tuple[CellKey, Verdict]]) -> Table:
    """The aggregates for the terminal, laid out as results.md's table: a row per attack and
    victim (and policy, when there are several), a column per level — every name whole and
    every cell readable at 80 columns (one row per cell with its interval and classes did
    not fit: its values were cut to "pa…").  The interval and the class per seed are in
    --markdown's page and --json."""
    aggs = aggregates(rows)
    policies = list(dict.fromkeys(a.policy for a in aggs))
    by_cell = {(a.attack, a.victim, a.policy, a.level): a for a in aggs}
    t = Table(title=f"campaign: {len(aggs)} cells, {len(rows)} runs", caption=CAPTION,
              box=box.SIMPLE_HEAD, pad_edge=False)  # no side rules: room for the cells
    t.add_column("attack", no_wrap=True)  # names are what the user types: never cut
    t.add_column("victim", no_wrap=True)
    if len(policies) > 1:
        t.add_column("policy")
    for lv in LEVELS:
        t.add_column(lv.value, justify="center", overflow="fold")  # never "…"
    for attack, victim, policy in dict.fromkeys((a.attack, a.victim, a.policy) for a in aggs):
        cells = []
        for lv in LEVELS:
            a = by_cell.get((attack, victim, policy, lv.value))
            text = "—" if a is None else escape(cell_text(a))
            cells.append(f"[bold]{text}[/]" if a is not None and a.successes else text)
        t.add_row(attack, victim, *([policy] if len(policies) > 1 else []), *cells)
    return t
