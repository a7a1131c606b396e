"""The coordinator's persistent state: SQLite (WAL, one transaction per decision).

Tables: nodes (the perimeter), vms (where each VM is and its monotonic version),
checkpoints (one per suspended version: its stream key, whether it was resumed, and
whether it is only prepared — its key chosen before the node exports — or committed),
migrations (prepare → committed | aborted), audit (append-only, hash-chained:
hash = SHA-256(prev_hash ‖ seq ‖ time ‖ event ‖ detail JSON)).  Every decision and its
audit record commit in the same transaction, so a crash leaves either both or neither.
``check`` verifies the chain and the invariants (one place per VM, versions only grow).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, host TEXT, port INTEGER,
  host_port INTEGER, binding TEXT, chip_id TEXT, measurement TEXT, registered REAL);
CREATE TABLE IF NOT EXISTS vms (name TEXT PRIMARY KEY, guest TEXT, level TEXT,
  memory INTEGER, node TEXT, state TEXT, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (vm TEXT, version INTEGER, key TEXT, stream INTEGER,
  consumed INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT 'committed',
  PRIMARY KEY (vm, version));
CREATE TABLE IF NOT EXISTS migrations (id INTEGER PRIMARY KEY, vm TEXT, src TEXT, dst TEXT,
  epoch INTEGER, stream INTEGER, state TEXT, started REAL);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, time REAL, event TEXT,
  detail TEXT, prev TEXT, hash TEXT);
"""
GENESIS = "0" * 64


def _hash(prev: str, seq: int, at: float, event: str, detail: str) -> str:
    return hashlib.sha256(f"{prev}|{seq}|{at!r}|{event}|{detail}".encode()).hexdigest()


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                  timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(checkpoints)")}
        if "state" not in columns:  # a database made before checkpoints were prepared
            self.db.execute("ALTER TABLE checkpoints ADD COLUMN state TEXT NOT NULL "
                            "DEFAULT 'committed'")
        self.lock = threading.RLock()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def txn(self):
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def audit(self, db: sqlite3.Connection, event: str, **detail: object) -> None:
        """Append one record; call inside ``txn`` so it commits with the decision."""
        row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
        at = time.time()
        text = json.dumps(detail, sort_keys=True, default=str)
        db.execute("INSERT INTO audit VALUES (?,?,?,?,?,?)",
                   (seq, at, event, text, prev, _hash(prev, seq, at, event, text)))

    def log(self, event: str, **detail: object) -> None:
        with self.txn() as db:
            self.audit(db, event, **detail)

    # -- reads ---------------------------------------------------------------------------------------
    def query(self, sql: str, *args: object) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def audit_records(self, limit: int = 0) -> list[dict]:
        sql = "SELECT seq, time, event, detail, prev, hash FROM audit ORDER BY seq"
        rows = self.query(sql)
        if limit:
            rows = rows[-limit:]
        return [{"seq": s, "time": t, "event": e, "detail": json.loads(d), "prev": p,
                 "hash": h} for s, t, e, d, p, h in rows]

    def check(self) -> list[str]:
        """Problems found (empty: the chain verifies and the invariants hold)."""
        problems = []
        prev = GENESIS
        for seq, at, event, detail, p, h in self.query(
                "SELECT seq, time, event, detail, prev, hash FROM audit ORDER BY seq"):
            if p != prev or h != _hash(p, seq, at, event, detail):
                problems.append(f"audit chain broken at {seq}")
                break
            prev = h
        for (name, state, node, version) in self.query(
                "SELECT name, state, node, version FROM vms"):
            if state == "running" and not node:
                problems.append(f"{name} runs nowhere")
            if state == "suspended" and node:
                problems.append(f"{name} is suspended but placed on {node}")
            newest = self.query("SELECT MAX(version) FROM checkpoints WHERE vm=? AND "
                                "state='committed'", name)[0][0]
            if newest is not None and newest > version:
                problems.append(f"{name}: checkpoint {newest} newer than version {version}")
            prepared = self.query("SELECT COUNT(*) FROM checkpoints WHERE vm=? AND "
                                  "state='prepared'", name)[0][0]
            if prepared and state != "suspending":
                problems.append(f"{name} is {state} with a prepared checkpoint left")
        open_ = self.query("SELECT vm, COUNT(*) FROM migrations WHERE state='prepare' "
                           "GROUP BY vm HAVING COUNT(*) > 1")
        problems += [f"{vm}: {n} migrations in prepare" for vm, n in open_]
        return problems
