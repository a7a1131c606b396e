"""The attack matrix against its expectations file (tvmm_tools/matrix_expectations.toml).

One parametrised test runs every (attack, victim, level) row through the judge and asserts
its outcome class and the most bits it may leak — the matrix as Wycheproof-style
valid/invalid verdicts: a regression in the shim, the hardware model or an attack changes
a class and fails here.  Every registered cell must have a row, and every row a cell.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from rich.console import Console

from tvmm.abi.types import Level
from tvmm.matrix import (
    CLASSES,
    Cell,
    cells,
    outcome_class,
    render_table,
    run_cell,
    run_matrix,
    to_json,
    to_markdown,
)

EXPECTATIONS = Path(__file__).resolve().parents[2] / "tvmm_tools" / "matrix_expectations.toml"
ROWS: list[dict] = tomllib.loads(EXPECTATIONS.read_text())["cell"]


def _allowed(row: dict) -> set[str]:
    """A row expects one class, or any of a list (a cell whose outcome rests on the TEE's
    own random draws, which no seed replays: chance-level results are bounded by bits)."""
    expect = row["expect"]
    return {expect} if isinstance(expect, str) else set(expect)


def _id(row: dict) -> str:
    return f"{row['attack']}-{row['victim']}-{row['level']}"


def test_expectations_are_well_formed():
    keys = {(r["attack"], r["victim"], r["level"]) for r in ROWS}
    assert len(keys) == len(ROWS), "a cell has two rows"
    for row in ROWS:
        assert set(row) - {"slow"} == {"attack", "victim", "level", "expect",
                                       "max_leaked_bits"}, row
        allowed = _allowed(row)
        assert allowed <= set(CLASSES) and "error" not in allowed, row
        Level(row["level"])
        assert row["max_leaked_bits"] >= 0
        if allowed <= {"none", "blocked", "tampered"}:
            assert row["max_leaked_bits"] == 0, row


def test_every_registered_cell_has_a_row_and_every_row_a_cell():
    registered = {(c.attack, c.victim, c.level.value) for c in cells()}
    rows = {(r["attack"], r["victim"], r["level"]) for r in ROWS}
    assert registered - rows == set(), "cells without an expectation"
    assert rows - registered == set(), "expectations for cells nobody registers"


def _param(row: dict) -> object:
    """A row marked ``slow = true`` (a cell of a minute or more, or one whose attack has a
    fast test of its own) runs only with ``-m bench``."""
    return pytest.param(row, id=_id(row), marks=pytest.mark.bench if row.get("slow") else ())


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_cell_meets_its_expectation(row: dict):
    verdict = run_cell(Cell(row["attack"], row["victim"], Level(row["level"])), seed=0)
    got = outcome_class(verdict)
    assert got in _allowed(row), f"{verdict.cell}: {verdict.detail}"
    assert verdict.leaked_bits <= row["max_leaked_bits"] + 0.05, verdict.detail


def test_presenters_show_every_cell():
    verdicts = run_matrix(attacks=["state-tamper", "benign-console"],
                          levels=[Level.SEV, Level.SHIM])
    assert [(v.attack, v.level) for v in verdicts] == [
        ("state-tamper", "sev"), ("state-tamper", "shim"), ("benign-console", "shim")]
    console = Console(record=True, width=140)
    console.print(render_table(verdicts))
    text = console.export_text()
    assert "tampered" in text and "detected" in text and "ok" in text
    rows = to_json(verdicts)
    assert [r["class"] for r in rows] == ["tampered", "detected", "none"]
    md = to_markdown(verdicts)
    assert "| state-tamper | password | — | **tampered** | — | — | detected |" in md
    assert "False positives: 0 of 1" in md and "Published:" in md


def test_progress_reports_each_cell_then_done():
    seen: list[tuple[int, int, str]] = []
    run_matrix(attacks=["iago-length"], levels=["plain", "shim"],
               progress=lambda done, total, label: seen.append((done, total, label)))
    assert seen == [(0, 2, "iago-length on password at plain"),
                    (1, 2, "iago-length on password at shim"), (2, 2, "done")]


def test_parallel_run_gives_the_same_verdicts():
    names = ["iago-length", "memory-replay"]
    one = run_matrix(attacks=names, levels=["sev", "snp"])
    two = run_matrix(attacks=names, levels=["sev", "snp"], jobs=2)
    assert [(v.attack, v.level, v.cell) for v in one] == [(v.attack, v.level, v.cell)
                                                           for v in two]


def test_an_80_column_table_keeps_every_name_whole_and_has_a_legend():
    from tvmm.judge import Verdict
    from tvmm_tools.attacks import registry

    verdicts = [Verdict(attack=name, guest=cls.victims[0], level=lv.value, kind=cls.kind,
                        n_bits=64.0, bits_correct=64.0, leaked_bits=64.0, full_recovery=True,
                        detected=False, detected_after_exits=None, integrity_violated=False,
                        blocked=False, exits=1, wall_s=0.0)
                for name, cls in registry().items() for lv in Level]
    console = Console(record=True, width=80)
    console.print(render_table(verdicts))
    text = console.export_text()
    for name in registry():
        assert name in text, name
    assert "bits leaked" in text and "tampered" in text  # the legend


def test_the_attack_list_keeps_names_whole_at_80_columns():
    import os
    import subprocess
    import sys

    from tvmm_tools.attacks import registry

    out = subprocess.run([sys.executable, "-m", "tvmm", "attacks"], capture_output=True,
                         text=True, check=True, env={**os.environ, "COLUMNS": "80"}).stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    for name in registry():
        assert name in out, name
