"""Campaigns that run cells: a tiny grid on 2 local workers and on a Dask LocalCluster, and
a campaign killed twice — a worker process, then the campaign's own process, each with
SIGKILL — that resumes without redoing a cell.

memory-scan on password is the grid: a few seconds a cell, and its outcome does not rest on
the seed (the whole secret at plain, nothing at shim), so the resumed results can be compared with
what an uninterrupted run gives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tvmm.campaign.run import grid, run_campaign, verdicts
from tvmm.campaign.stats import aggregate
from tvmm.campaign.store import Store
from tvmm.cli import main

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--attack", "memory-scan", "--victim", "password", "--level", "plain", "--level",
        "shim"]
EXPECTED = {"plain": "leak", "shim": "none"}


def _check(rows) -> None:
    for agg in aggregate((k.seed, k.policy, v) for k, v in rows):
        assert set(agg.classes) == {EXPECTED[agg.level]}, agg
        assert agg.min_bits >= 1 if agg.level == "plain" else agg.max_bits == 0, agg


def test_a_tiny_grid_on_two_local_workers(tmp_path):
    keys = grid(["memory-scan"], ["password"], ["plain", "shim"], seeds=range(2))
    seen = []
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_campaign(keys, store, workers=2,
                               progress=lambda d, t, label: seen.append((d, t)))
        rows = verdicts(store, keys)
    assert (summary.total, summary.skipped, summary.ran) == (4, 0, 4)
    assert seen == [(i, 4) for i in range(5)]
    assert [k for k, _ in rows] == keys
    _check(rows)


def test_a_tiny_grid_on_a_dask_local_cluster(tmp_path):
    from distributed import LocalCluster

    keys = grid(["memory-scan"], ["password"], ["plain", "shim"], seeds=[3])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Store(tmp_path / "s.sqlite") as store:
        summary = run_campaign(keys, store, cluster=cluster.scheduler_address)
        rows = verdicts(store, keys)
    assert summary.ran == 2 and [k for k, _ in rows] == keys
    _check(rows)


def _start(store: Path, workers: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tvmm", "campaign", "--store", str(store), "--seeds", "3",
         "--workers", str(workers), *ARGS], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})


def _until_a_cell_is_stored(proc: subprocess.Popen) -> None:
    for line in proc.stdout:
        if line.startswith("[") and "stored before" not in line:
            return
    raise AssertionError(f"the campaign ended before storing a cell: {proc.stderr.read()}")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _snapshot(store: Path) -> dict:
    with Store(store) as s:
        return {k: (v, finished) for k, v, finished in s.rows()}


def _end(proc: subprocess.Popen) -> None:
    """End what is left of a killed campaign: its session is ours (start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def test_a_killed_campaign_resumes_without_redoing_a_cell(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    # 1. SIGKILL to a worker process: the campaign stops with one line, its cells kept
    proc = _start(store, workers=2)
    try:
        _until_a_cell_is_stored(proc)
        workers = [p for p in _children(proc.pid)
                   if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]
        os.kill(workers[0], signal.SIGKILL)
        assert proc.wait(timeout=120) == 2
        err = proc.stderr.read()
        assert "a worker process died" in err and "Traceback" not in err, err
    finally:
        _end(proc)
    first = _snapshot(store)
    assert 1 <= len(first) < 6
    # 2. SIGKILL to the campaign's own process, after it stored a cell of its own
    proc = _start(store, workers=1)
    try:
        _until_a_cell_is_stored(proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        _end(proc)
    second = _snapshot(store)
    assert len(second) > len(first)
    assert {k: second[k] for k in first} == first  # nothing stored was run again
    # 3. resume to the end: only the missing cells run; the earlier ones are as they were
    assert main(["campaign", "--store", str(store), "--seeds", "3", "--workers", "2",
                 "--json", *ARGS]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert (summary["stored_before"], summary["ran"]) == (len(second), 6 - len(second))
    final = _snapshot(store)
    assert len(final) == 6 and {k: final[k] for k in second} == second
    _check([(k, v) for k, (v, _) in final.items()])
    # 4. once more: nothing left to run, and it says so (not "0.00 cells/s")
    assert main(["campaign", "--store", str(store), "--seeds", "3", *ARGS]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "nothing to run: all 6 cells were stored before, in" in out and "s.sqlite" in out
    assert _snapshot(store) == final


def test_bad_input_is_one_line(tmp_path, capsys):
    not_a_store = tmp_path / "x.sqlite"
    not_a_store.write_text("hello " * 1000)
    for argv, message in ((["--setting", "fault_budget"], "expected FIELD=VALUE"),
                          (["--attack", "nope"], "no attack 'nope'"),
                          (["--victim", "nobody"], "the grid is empty"),
                          (["--store", str(not_a_store)], "not a campaign store"),
                          (["--markdown", str(tmp_path / "no" / "r.md")], "no directory")):
        store = [] if "--store" in argv else ["--store", str(tmp_path / "s.sqlite")]
        assert main(["campaign", *store, *argv]) == 2, argv
        err = capsys.readouterr().err
        one = " ".join(err.split())  # the console wraps a long line at its width
        assert message in one and "Traceback" not in err and err.count("error:") == 1, err
