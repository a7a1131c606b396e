"""A perimeter an attack (or a fault trial) starts for itself keeps its node storage, logs
and rogue trees in a directory of its own, removed afterwards: it never writes into the
storage of the user's `tvmm perimeter up` (same node names, same state directory) nor of
another run, and leaves no temporary directory behind. The processes are not started
here: the launcher's start and wait are replaced by recorders of what they were given."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tvmm.operator import launcher
from tvmm_tools.attacks import _perimeter


class _Started:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], Path | None]] = []

    def start(self, args, state_dir, *, die_with_parent, env=None, log=None, code=None):
        self.calls.append((list(args), log))
        return subprocess.Popen(["true"], stdout=subprocess.PIPE)

    def ready(self, popen, args, timeout=120):
        popen.wait()
        popen.stdout.close()
        return launcher.Proc(args[args.index("--name") + 1], popen,
                             {"host": "127.0.0.1", "port": 1})


@pytest.fixture
def started(monkeypatch) -> _Started:
    rec = _Started()
    monkeypatch.setattr(launcher, "start", rec.start)
    monkeypatch.setattr(launcher, "await_ready", rec.ready)
    return rec


def _paths(rec: _Started) -> list[Path]:
    out = []
    for args, log in rec.calls:
        if "--storage" in args:
            out.append(Path(args[args.index("--storage") + 1]))
        if log is not None:
            out.append(log)
    return out


def test_a_perimeter_with_its_own_files_writes_only_there(tmp_path, started) -> None:
    state, files = tmp_path / "state", tmp_path / "run"
    per = launcher.Perimeter(state, die_with_parent=True, files=files)
    per.start_coordinator(db=files / "c.db")
    per.start_nodes(["n1", "n2"])
    per.stop()
    paths = _paths(started)
    assert len(paths) == 5  # the coordinator's log; each node's storage and log
    assert all(p.is_relative_to(files) for p in paths), paths
    assert per.storage("n1") == files / "storage" / "n1" and per.storage("n1").is_dir()
    assert not (state / "storage").exists()


def test_without_its_own_files_the_perimeter_is_the_state_directorys(tmp_path, started):
    per = launcher.Perimeter(tmp_path, die_with_parent=True)
    per.start_coordinator()
    per.start_nodes(["n1"])
    per.stop()
    assert _paths(started) == [tmp_path / "coordinator.log", tmp_path / "storage" / "n1",
                               tmp_path / "n1.log"]


def test_a_judged_attacks_perimeter_leaves_the_users_storage_alone(tmp_path, monkeypatch,
                                                                   started) -> None:
    """The judge's perimeter (genuine nodes) and the attack's own rogue nodes both keep
    their files in directories of the run, removed at its end."""
    from types import SimpleNamespace

    from tvmm.harness.perimeter import JudgePerimeter

    state = tmp_path / "state"
    users = state / "storage" / "n1"
    users.mkdir(parents=True)
    (users / "counter-1.v2.ckpt").write_bytes(b"the user's checkpoint")
    judge = JudgePerimeter(state)
    monkeypatch.setattr(_perimeter, "OperatorClient", lambda address, state_dir: None)
    ctx = SimpleNamespace(perimeter=lambda nodes: judge.offer({"nodes": nodes}))
    with _perimeter.perimeter(ctx, nodes=("n1", "n2"), rogue=("r1",)) as (own, _op):
        runs = [judge.per.run_dir, own.run_dir]
        assert state not in runs and judge.per.storage("n1").is_dir()
    judge.close()
    assert all(any(p.is_relative_to(r) for r in runs) for p in _paths(started))
    assert not any(r.exists() for r in runs)  # removed with the run
    assert [p.name for p in users.iterdir()] == ["counter-1.v2.ckpt"]
    assert not (state / "rogue").exists() and not (state / "n1.log").exists()
