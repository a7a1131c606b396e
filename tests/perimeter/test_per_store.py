"""Store.check finds what it exists to find (mutants b and c of issue 16): a tampered,
cut or spliced audit chain, and each broken invariant of the coordinator's state."""

from __future__ import annotations

from pathlib import Path

import pytest

from tvmm.hw.root_of_trust import Chip, load_chip
from tvmm.perimeter.store import Store


@pytest.fixture(scope="module")
def chip(tmp_path_factory: pytest.TempPathFactory) -> Chip:
    state = tmp_path_factory.mktemp("store-chip")
    return load_chip(state, "coordinator-c")


@pytest.fixture
def store(tmp_path: Path, chip: Chip):
    s = Store(tmp_path / "c.db", chip, bytes(48))
    for i in range(4):
        s.log("launch", vm=f"c-{i}", node="n1")
    assert s.check() == []
    yield s
    s.close()


@pytest.mark.parametrize("tamper", [
    "UPDATE audit SET detail='{\"vm\": \"evil\"}' WHERE seq=2",
    "UPDATE audit SET event='launch_refused' WHERE seq=3",
    "UPDATE audit SET time=time+1 WHERE seq=1",
    "DELETE FROM audit WHERE seq=2",
    "UPDATE audit SET prev=(SELECT prev FROM audit WHERE seq=2) WHERE seq=3",
])
def test_a_tampered_audit_chain_is_found(store: Store, tamper: str) -> None:
    store.db.execute(tamper)
    assert store.check() != []


def _vm(db, name: str, node: str | None, state: str, version: int) -> None:
    db.execute("INSERT INTO vms VALUES (?,?,?,?,?,?,?)",
               (name, "counter", "shim", 4096, node, state, version))


def _checkpoint(db, vm: str, version: int, state: str = "committed") -> None:
    db.execute("INSERT INTO checkpoints VALUES (?,?,?,0,?)", (vm, version, 1, state))


def _migration(db, vm: str) -> None:
    db.execute("INSERT INTO migrations (vm, src, dst, epoch, stream, state, started) "
               "VALUES (?, 'n1', 'n2', 2, 1, 'prepare', 0)", (vm,))


BROKEN = {
    "runs nowhere": lambda db: _vm(db, "v", None, "running", 1),
    "suspended but placed": lambda db: _vm(db, "v", "n1", "suspended", 2),
    "checkpoint newer than the version": lambda db: (_vm(db, "v", None, "suspended", 2),
                                                     _checkpoint(db, "v", 3)),
    "prepared checkpoint left": lambda db: (_vm(db, "v", "n1", "running", 2),
                                            _checkpoint(db, "v", 3, "prepared")),
    "two migrations in prepare": lambda db: (_vm(db, "v", "n1", "migrating", 1),
                                             _migration(db, "v"), _migration(db, "v")),
}


def _consistent(db) -> None:
    _vm(db, "ok-run", "n1", "running", 1)
    _vm(db, "ok-susp", None, "suspended", 2)
    _checkpoint(db, "ok-susp", 2)
    _vm(db, "ok-prep", "n1", "suspending", 2)
    _checkpoint(db, "ok-prep", 3, "prepared")
    _vm(db, "ok-mig", "n1", "migrating", 1)
    _migration(db, "ok-mig")


@pytest.mark.parametrize("broken", list(BROKEN))
def test_each_broken_invariant_is_found(store: Store, broken: str) -> None:
    with store.txn() as db:
        _consistent(db)
    assert store.check() == []
    with store.txn() as db:
        BROKEN[broken](db)
    problems = store.check()
    assert len(problems) == 1  # that one, and nothing about the consistent VMs
