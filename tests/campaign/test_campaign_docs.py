"""The generated docs are their generators' output: each is regenerated from the data it
was written from (kept beside it) and compared byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tvmm.campaign import report
from tvmm_tools import bench_campaign, tradeoff

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("name", ["results"])
def test_results_pages_are_the_campaigns_output_over_five_seeds_or_more(name: str):
    """results.md: the whole matrix, every cell over five seeds or more."""
    meta, rows = report.load_cells((DOCS / f"{name}.jsonl").read_text())
    text = (DOCS / f"{name}.md").read_text()
    assert report.results_markdown(meta, rows, f"{name}.jsonl") == text
    assert min(a.n for a in report.aggregates(rows)) >= 5


@pytest.mark.xfail(not (DOCS / "tradeoff.json").exists(), strict=True,
                   reason="docs/tradeoff.md awaits its campaign: python -m tvmm_tools.tradeoff")
def test_tradeoff_page_is_regenerated_from_its_data():
    data = json.loads((DOCS / "tradeoff.json").read_text())
    assert tradeoff.document(data) == (DOCS / "tradeoff.md").read_text()


def _block(text: str, name: str) -> str:
    found = re.search(rf"<!-- {name}:begin -->\n(.*)<!-- {name}:end -->", text, re.S)
    assert found, f"no {name} block"
    return found.group(1)


def test_campaign_benchmark_block_is_regenerated_from_its_figures():
    body = _block((DOCS / "performance.md").read_text(), bench_campaign.BLOCK)
    res = bench_campaign.parse_block(body)
    assert bench_campaign.block(res) + "\n" == body
    assert res["pool_vs_serial"] == pytest.approx(
        res["cells_per_s"]["pool"] / res["cells_per_s"]["serial"])


def test_the_terminal_table_keeps_names_and_cells_whole_at_80_columns():
    """`tvmm campaign` printed one row per cell with its interval and per-seed classes; at
    80 columns the result and class columns were cut to "re…" and "pa…".  Now it is
    results.md's grid (a column per level), every name and cell whole, with a caption."""
    from rich.console import Console

    from tvmm.abi.types import Level
    from tvmm.campaign.keys import CellKey
    from tvmm.judge import Verdict
    from tvmm_tools.attacks import registry

    rows = []
    for name, cls in registry().items():
        for lv in Level:
            for seed, bits in ((0, 63.0), (1, 60.0)):  # seeds differ: "62 b (60–63)"-like
                v = Verdict(attack=name, guest=cls.victims[-1], level=lv.value, kind=cls.kind,
                            n_bits=64.0, bits_correct=bits, leaked_bits=bits,
                            full_recovery=False, detected=False, detected_after_exits=None,
                            integrity_violated=False, blocked=False, exits=1, wall_s=0.0)
                rows.append((CellKey(name, v.guest, lv.value, "default", seed, "c"), v))
    console = Console(record=True, width=80)
    console.print(report.table(rows))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for name, cls in registry().items():
        assert name in text and cls.victims[-1] in text, name
    cells = {report.cell_text(a) for a in report.aggregates(rows)}
    for cell in cells:  # each cell's text whole (a cell may wrap at its spaces)
        assert all(part in text for part in cell.split()), cell
    assert "--markdown FILE or --json" in text  # where the interval and classes are


def test_campaign_benchmark_block_shows_cpu_and_cores_used_per_side():
    """The block's CPU columns come from its figures, and parse back to them."""
    per_side = {"serial": 1.0, "pool": 1.9, "dask": 1.7}
    res = {"cells": 360, "rounds": 2, "workers": 2, "min_seconds": 60.0,
           "cells_per_s": {"serial": 3.0, "pool": 5.7, "dask": 5.1},
           "runs": {"serial": [3.0, 3.0], "pool": [5.6, 5.8], "dask": [5.0, 5.2]},
           "pool_vs_serial": 1.9, "dask_vs_pool": 5.1 / 5.7,
           "seconds_per_side": {"serial": 120.0, "pool": 63.2, "dask": 70.6},
           "cpu_s_per_cell": {"serial": 0.333, "pool": 0.331, "dask": 0.35},
           "cores_used": per_side, "load": 0.1, "cores": 2, "code": "c", "commit": "x",
           "date": "d"}
    text = bench_campaign.block(res)
    assert bench_campaign.parse_block(text) == res
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")][1:]
    assert [float(r[5]) for r in rows] == list(per_side.values())
    assert "--min-seconds 60 --rounds 2" in text


def test_matrix_benchmark_block_states_the_goal_its_figures_meet():
    """docs/performance.md's matrix time is bench_matrix's output: the figures in it and
    the goal's verdict agree (under 10 minutes and no cell in error is "met")."""
    from tvmm_tools import bench_matrix

    body = _block((DOCS / "performance.md").read_text(), bench_matrix.BLOCK)
    found = re.search(r"\| (\d+) \| ([\d.]+) s \([\d.]+ min\) \| ([\d.]+) s \| (\d+) \| "
                      r"< 10 min, no error: (met|missed) \|", body)
    assert found, body
    cells, wall, _cpu, errors, verdict = found.groups()
    assert int(cells) > 200
    assert verdict == ("met" if float(wall) < bench_matrix.GOAL_S and int(errors) == 0
                       else "missed")
    result = {"cells": int(cells), "wall_s": float(wall), "cpu_s": 1.0, "errors": 1,
              "seed": 0, "load_before": 0.0, "load_after": 0.0, "cpus": 2,
              "commit": "x", "date": "d"}
    assert "no error: missed" in bench_matrix.block(result)
