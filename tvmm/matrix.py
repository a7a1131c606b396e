"""The attack matrix: every registered attack against each of its victims at every level,
plus a benign suite at ``shim`` that must show no detections (the false-positive rate).

``run_matrix`` returns the judge's verdicts; ``render_table`` (a rich Table),
``to_json`` and ``to_markdown`` (docs/results.md) present them.  ``outcome_class`` maps a
verdict to the classes of tvmm_tools/matrix_expectations.toml, which
tests/attacks/test_att_matrix.py checks cell by cell.

The benign workloads are honest hosts with many legitimate exits — heavy console output,
many input lines, block I/O, frequent timer exits, timer ticks and an interrupt storm of a
vector the guest registered.  They run through the same judge as attacks (kind
"benign"): a detection there is a false positive, a changed result a platform bug.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rich.table import Table

from shim.policies.config import PolicyConfig
from tvmm.abi.types import Level
from tvmm.harness import launcher
from tvmm.harness.judge import error_verdict, run_attack
from tvmm.judge import Verdict
from tvmm_tools.attacks import registry
from tvmm_tools.attacks.base import Attack
from tvmm_tools.benign import BENIGN

LEVELS: tuple[Level, ...] = tuple(Level)
CLASSES = ("leak", "partial", "none", "detected", "blocked", "tampered", "error")
Progress = Callable[[int, int, str], None]  # (cells done, cells in all, what runs now)


# -- running ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Cell:
    attack: str
    victim: str
    level: Level


def attack_class(name: str) -> type[Attack]:
    if name in BENIGN:
        return BENIGN[name]
    found = registry()
    if name not in found:
        raise KeyError(f"no attack {name!r}; known: {', '.join([*found, *BENIGN])}")
    return found[name]


def cells(attacks: Iterable[str] | None = None,
          levels: Iterable[Level | str] | None = None) -> list[Cell]:
    """The cells a matrix run covers: attacks × their victims × levels, then the benign
    suite at ``shim`` (benign workloads run only where the shim's policies exist)."""
    chosen = [Level(lv) for lv in levels] if levels is not None else list(LEVELS)
    names = list(attacks) if attacks is not None else [*registry(), *BENIGN]
    out: list[Cell] = []
    for name in names:
        cls = attack_class(name)
        at = [Level.SHIM] if cls.kind == "benign" else LEVELS
        out += [Cell(name, victim, lv) for victim in cls.victims for lv in at if lv in chosen]
    return out


def run_cell(cell: Cell, *, seed: int = 0, policy_config: PolicyConfig | None = None
             ) -> Verdict:
    """One cell through the judge, the attack in a process of its own (tvmm.harness.judge);
    an attack that crashes gives an "error" verdict (the exception as its detail) instead
    of ending the whole matrix."""
    cls = attack_class(cell.attack)
    start = time.perf_counter()
    try:
        return run_attack(cell.attack, cls.kind, cell.victim, cell.level, seed=seed,
                          policy_config=policy_config, owner_policy=cls.owner_policy)
    except Exception as exc:  # noqa: BLE001 - reported in the cell, the run goes on
        return error_verdict(cell.attack, cls.kind, cell.victim, cell.level,
                             time.perf_counter() - start, f"{type(exc).__name__}: {exc}")


def run_matrix(seed: int = 0, attacks: Iterable[str] | None = None,
               levels: Iterable[Level | str] | None = None,
               policy_config: PolicyConfig | None = None,
               progress: Progress | None = None, jobs: int = 1) -> list[Verdict]:
    """Run every cell of ``cells(attacks, levels)``; the verdicts come back in that order.

    ``progress(done, total, label)`` is called before each cell (label: "attack on victim
    at level"; with ``jobs`` > 1, as each cell finishes) and once at the end ("done").
    ``jobs`` > 1 runs cells in that many worker processes: every cell builds its own
    platform from the seed, so the verdicts are the same as in one process."""
    todo = cells(attacks, levels)
    if jobs > 1 and len(todo) > 1:
        return _run_parallel(todo, seed, policy_config, progress, jobs)
    verdicts: list[Verdict] = []
    with launcher.warm():  # each cell's TEE and host forked fresh from warm zygotes
        for cell in todo:
            if progress is not None:
                progress(len(verdicts), len(todo), _label(cell))
            verdicts.append(run_cell(cell, seed=seed, policy_config=policy_config))
    if progress is not None:
        progress(len(verdicts), len(todo), "done")
    return verdicts


def _label(cell: Cell) -> str:
    return f"{cell.attack} on {cell.victim} at {cell.level.value}"


def _run_parallel(todo: list[Cell], seed: int, policy_config: PolicyConfig | None,
                  progress: Progress | None, jobs: int) -> list[Verdict]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    results: dict[int, Verdict] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(run_cell, cell, seed=seed, policy_config=policy_config): i
                   for i, cell in enumerate(todo)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if progress is not None:
                progress(len(results), len(todo), _label(todo[i]))
    if progress is not None:
        progress(len(todo), len(todo), "done")
    return [results[i] for i in range(len(todo))]


# -- classes ------------------------------------------------------------------------------------
def outcome_class(v: Verdict) -> str:
    """The verdict as one class of the expectations file.

    integrity and benign: tampered (result changed unnoticed) > detected > blocked (the
    TEE refused one of the attack's requests, or the owner the secret) > none; a benign run that did not end
    with the guest's own exit is an "error".  confidentiality: detected (whatever leaked
    before, bounded by the row's max_leaked_bits) > leak (full recovery) > partial (≥ 1
    bit) > blocked > none."""
    if v.notes.get("error") or (v.kind == "benign" and v.notes.get("how") != "exit"
                                and not v.detected):
        return "error"
    if v.kind in ("integrity", "benign"):
        if v.integrity_violated:
            return "tampered"
        if v.detected:
            return "detected"
        return "blocked" if v.blocked else "none"
    if v.detected:
        return "detected"
    if v.full_recovery:
        return "leak"
    if v.leaked_bits >= 1:
        return "partial"
    return "blocked" if v.blocked else "none"


# -- presenting -----------------------------------------------------------------------------------
_STYLE = {"tampered": "bold red", "leak": "bold red", "partial": "yellow", "detected": "green",
          "blocked": "green", "none": "dim", "error": "bold magenta"}


def _rows(verdicts: list[Verdict]) -> dict[tuple[str, str], dict[str, Verdict]]:
    rows: dict[tuple[str, str], dict[str, Verdict]] = {}
    for v in verdicts:
        rows.setdefault((v.attack, v.guest), {})[v.level] = v
    return rows


def cell_text(v: Verdict) -> str:
    """``Verdict.cell``, or "error" when the attack crashed."""
    return "error" if v.notes.get("error") else v.cell


LEGEND = ("n b: bits leaked · tampered: the result changed, unnoticed · detected: the shim "
          "recorded a violation or killed the VM · blocked: the TEE refused the attack's "
          "requests, or the owner the secret · ✗: no effect · n/a: the scenario does not "
          "apply (see its detail) · —: not run")


def render_table(verdicts: list[Verdict]) -> Table:
    """Rows attack/victim, columns levels, cells ``Verdict.cell``."""
    table = Table(title="attack matrix", show_lines=False, caption=LEGEND)
    table.add_column("attack", no_wrap=True)  # names are what the user types: never cut
    table.add_column("victim", no_wrap=True)
    for lv in LEVELS:
        table.add_column(lv.value, justify="center")
    for (attack, guest), by_level in _rows(verdicts).items():
        cells_ = []
        for lv in LEVELS:
            v = by_level.get(lv.value)
            if v is None:
                cells_.append("—")
            else:
                cells_.append(f"[{_STYLE[outcome_class(v)]}]{cell_text(v)}[/]")
        table.add_row(attack, guest, *cells_)
    return table


def to_json(verdicts: list[Verdict]) -> list[dict]:
    """JSON-ready rows: each verdict's fields, its ``cell`` and its expectation ``class``
    (``json.dumps(to_json(v))``)."""
    return [{**v.to_dict(), "class": outcome_class(v)} for v in verdicts]


def _md_cell(v: Verdict | None) -> str:
    if v is None:
        return "—"
    text = cell_text(v).replace("|", "\\|")
    return f"**{text}**" if outcome_class(v) in ("tampered", "leak", "partial") else text


def to_markdown(verdicts: list[Verdict], *, seed: int | None = None,
                elapsed_s: float | None = None) -> str:
    """docs/results.md: the table, then for each level where an attack works the published
    figure it compares with, then what still leaks where a defence is on, and every cell's
    one-line detail."""
    rows = _rows(verdicts)
    attacks = [(a, g) for (a, g) in rows if not a.startswith("benign-")]
    benign = [(a, g) for (a, g) in rows if a.startswith("benign-")]
    out = ["# Attack matrix — measured results", ""]
    how = "`tvmm matrix --markdown docs/results.md`"
    meta = [f"Generated by {how} (tvmm.matrix.to_markdown) from one real run"]
    if seed is not None:
        meta.append(f"seed {seed}")
    if elapsed_s is not None:
        meta.append(f"{len(verdicts)} cells in {elapsed_s:.0f} s")
    else:
        meta.append(f"{len(verdicts)} cells, {sum(v.wall_s for v in verdicts):.0f} s of attack "
                    "time")
    out += ["; ".join(meta) + ".  Nothing here is typed by hand.", ""]
    out += ["Cells: confidentiality attacks show the bits leaked (`64 b`), integrity attacks "
            "`tampered` (the victim's result changed and nobody noticed), `detected` (the "
            "shim recorded a violation or killed the VM), `blocked` (the TEE refused one of the "
            "attack's requests, on its own record, or the owner refused to release the "
            "secret) or `✗` (no effect).  **Bold**: the attack works.", ""]
    head = "| attack | victim | " + " | ".join(lv.value for lv in LEVELS) + " |"
    out += [head, "|" + "---|" * (2 + len(LEVELS))]
    for a, g in attacks:
        out.append(f"| {a} | {g} | " + " | ".join(_md_cell(rows[(a, g)].get(lv.value))
                                                  for lv in LEVELS) + " |")
    if benign:
        out += ["", "## Benign suite at `shim` (false positives)", "",
                "Honest hosts with many legitimate exits, under the default policies.  Any "
                "detection here is a false positive.", "",
                "| workload | guest | result | exits | what it does |", "|---|---|---|---|---|"]
        for a, g in benign:
            v = rows[(a, g)][Level.SHIM.value]
            summary = BENIGN[a].summary if a in BENIGN else ""
            out.append(f"| {a} | {g} | {cell_text(v)} | {v.exits} | {summary} |")
        fp = sum(1 for a, g in benign if rows[(a, g)][Level.SHIM.value].detected)
        out += ["", f"False positives: {fp} of {len(benign)} benign workloads."]
    out += ["", "## Where attacks work, and the published figures", ""]
    seen: set[str] = set()
    for a, g in attacks:
        works = [lv.value for lv in LEVELS if (v := rows[(a, g)].get(lv.value)) is not None
                 and outcome_class(v) in ("tampered", "leak", "partial")]
        if not works:
            continue
        cls = _published(a)
        line = f"- **{a}** on {g}: works at {', '.join(works)}."
        if a not in seen and cls:
            line += f"  Published: {cls}"
            seen.add(a)
        out.append(line)
    out += ["", "## Residual leakage at `shim`", ""]
    residual = [v for v in verdicts if v.level == Level.SHIM.value
                and v.kind == "confidentiality" and v.leaked_bits >= 1]
    if not residual:
        out.append("None: no confidentiality attack leaked a bit at `shim`.")
    else:
        out += ["Bits that still leak with every defence on (before detection, where it "
                "comes); why each one gets through is explained in "
                "[attacks.md](attacks.md#residual-leakage-where-the-defence-is-on).", ""]
    for v in residual:
        out.append(f"- {v.attack} on {v.guest}: {cell_text(v)} — {v.detail or '—'}")
    out += ["", "## Every cell", "", "<details><summary>detail of each run</summary>", "",
            "| attack | victim | level | cell | exits | wall s | detail |",
            "|---|---|---|---|---|---|---|"]
    for v in verdicts:
        detail = (v.detail or "").replace("|", "\\|")
        out.append(f"| {v.attack} | {v.guest} | {v.level} | {cell_text(v)} | {v.exits} | "
                   f"{v.wall_s:.2f} | {detail} |")
    out += ["", "</details>", ""]
    return "\n".join(out)


def _published(name: str) -> str:
    try:
        return attack_class(name).published
    except KeyError:
        return ""


def timed_matrix(**kwargs) -> tuple[list[Verdict], float]:
    """``run_matrix`` and its wall time in seconds."""
    start = time.perf_counter()
    verdicts = run_matrix(**kwargs)
    return verdicts, time.perf_counter() - start
