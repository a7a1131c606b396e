"""The ledger as a perimeter process: its key is attested and never on disk, receipts
verify offline, and an edited or rolled-back database is refused at start."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tvmm.cli import main
from tvmm.operator.launcher import spawn
from tvmm.operator.launcher import start as start_process
from tvmm.transparency import keys


def run(*argv: object) -> int:
    return main([str(a) for a in argv])


def start(state: Path, *extra: str):
    return spawn(["ledger", "--name", "ledger", *extra], state, die_with_parent=True)


def stop(proc) -> None:
    proc.popen.terminate()
    proc.popen.wait(10)


@pytest.fixture(scope="module")
def issuer(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("issuer")
    assert run("transparency", "keygen", d / "issuer.pem") == 0
    for svn in (1, 2):
        assert run("transparency", "claim", "hello", "--feed", "tvmm/samples", "--svn", svn,
                   "--issuer-key", d / "issuer.pem", "-o", d / f"h{svn}.stmt") == 0
    return d


def test_a_perimeter_ledger_registers_attests_its_key_and_audits(issuer, tmp_path,
                                                                 capsys) -> None:
    state = Path(os.environ["TVMM_STATE_DIR"])
    db = tmp_path / "ledger.db"
    proc = start(state, "--db", str(db), "--issuer", str(issuer / "issuer.pub.pem"),
                 "--feed", "tvmm/samples")
    address = f"127.0.0.1:{proc.info['port']}"
    try:
        assert run("transparency", "register", issuer / "h1.stmt", "--ledger", address,
                   "-o", tmp_path / "h1.receipt") == 0
        assert run("transparency", "ledger-key", "--ledger", address,
                   "-o", tmp_path / "ledger.pub.pem") == 0
        assert run("transparency", "verify", issuer / "h1.stmt", tmp_path / "h1.receipt",
                   "--service-key", tmp_path / "ledger.pub.pem") == 0
        assert run("transparency", "audit", "--ledger", address,
                   "--state", tmp_path / "auditor.json") == 0
        assert run("transparency", "register", issuer / "h2.stmt", "--ledger", address,
                   "-o", tmp_path / "h2-first.receipt") == 0
        # the ledger proves over the wire that its newest head extends the one remembered
        assert run("transparency", "audit", "--ledger", address, "--light",
                   "--state", tmp_path / "auditor.json") == 0
        assert "extends every head" in capsys.readouterr().out
    finally:
        stop(proc)
    # no private key on disk: nothing under the state directory or beside the database
    # holds the key the ledger signs with
    public = keys.load_public(tmp_path / "ledger.pub.pem")
    for root in (state, tmp_path):
        for path in root.rglob("*"):
            if path.is_file() and b"PRIVATE KEY" in path.read_bytes():
                try:
                    key = keys.load_private(path)
                except Exception:  # noqa: BLE001 - not a P-384 key: not the ledger's
                    continue
                assert keys.key_id(key.public_key()) != keys.key_id(public), path
    # restarted, the same key and the same log
    old = tmp_path / "old.db"
    shutil.copy(db, old)
    proc = start(state, "--db", str(db))
    address = f"127.0.0.1:{proc.info['port']}"
    try:
        assert proc.info["entries"] == 2
        assert run("transparency", "register", issuer / "h2.stmt", "--ledger", address,
                   "-o", tmp_path / "h2.receipt") == 0
        assert run("transparency", "verify", issuer / "h2.stmt", tmp_path / "h2.receipt",
                   "--service-key", tmp_path / "ledger.pub.pem") == 0
    finally:
        stop(proc)
    # an older copy of the database (before h2) is a rollback
    shutil.copy(old, db)
    refused = start(state, "--db", str(db))
    assert refused.popen.wait(30) == 1
    assert refused.info["ready"] is False and "rollback" in refused.info["error"]
    db.unlink()  # and with the database gone, the ledger cannot start over empty
    refused = start(state, "--db", str(db))
    assert refused.info["ready"] is False and "missing" in refused.info["error"]
    refused.popen.wait(30)


def test_an_edited_ledger_database_is_refused(issuer, tmp_path) -> None:
    state = Path(os.environ["TVMM_STATE_DIR"])
    db = tmp_path / "ledger.db"
    proc = start(state, "--db", str(db), "--issuer", str(issuer / "issuer.pub.pem"),
                 "--feed", "tvmm/samples", "--name", "ledger2")
    stop(proc)
    stranger = keys.new_key()
    with sqlite3.connect(db) as conn:  # the operator adds an issuer of its own
        conn.execute("INSERT INTO issuer VALUES (?, ?)",
                     (keys.public_pem(stranger.public_key()).decode(), "tvmm/samples"))
    process = start_process(["ledger", "--name", "ledger2", "--db", str(db)], state,
                            die_with_parent=True)
    line = json.loads(process.stdout.readline())
    assert process.wait(30) == 1
    assert line["ready"] is False and "tampered" in line["error"]
