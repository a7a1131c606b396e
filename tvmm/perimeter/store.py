"""The coordinator's persistent state: SQLite (WAL, one transaction per decision), sealed
to the coordinator's TEE.

Tables: nodes (the perimeter), vms (where each VM is and its monotonic version),
checkpoints (one per suspended version: its stream, whether it was resumed, and whether it
is only prepared — its key chosen before the node exports — or committed), migrations
(prepare → committed | aborted), audit (append-only, keyed chain), seal (one row).  Every
decision and its audit record commit in the same transaction, so a crash leaves either
both or neither.

The file is the operator's, so nothing secret is in it and nothing in it is believed
unchecked.  All keys come from the chip's sealing key for the coordinator's measurement
(``Chip.sealing_key``: other code, or another chip, cannot derive them):

* a checkpoint's key is derived on demand — HKDF(seal, database id ‖ vm ‖ epoch ‖
  stream) — and never stored;
* the audit chain is keyed: hash = HMAC-SHA256(audit key, prev ‖ seq ‖ time ‖ event ‖
  detail), so an edited or inserted record does not verify;
* every committed transaction advances a monotonic counter in the chip
  (``Chip.counter``) and seals the new value, the audit head and a digest of every other
  table into the seal row (HMAC).  A database older than the counter (a restored copy) is
  refused, and so is one that does not match its seal (edited, truncated); the refusal
  is counted by a second chip counter and audited in the genuine log when it is back.

The chip's counter moves after the SQLite commit, and nothing outside learns of a decision
before it moved, so at open a database one ahead of the counter (a crash between the two)
is the newest state and the counter catches up; one behind is a rollback.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tvmm.hw.root_of_trust import Chip, CounterError

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, host TEXT, port INTEGER,
  host_port INTEGER, binding TEXT, chip_id TEXT, measurement TEXT, registered REAL);
CREATE TABLE IF NOT EXISTS vms (name TEXT PRIMARY KEY, guest TEXT, level TEXT,
  memory INTEGER, node TEXT, state TEXT, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (vm TEXT, version INTEGER, stream INTEGER,
  consumed INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL DEFAULT 'committed',
  PRIMARY KEY (vm, version));
CREATE TABLE IF NOT EXISTS migrations (id INTEGER PRIMARY KEY, vm TEXT, src TEXT, dst TEXT,
  epoch INTEGER, stream INTEGER, state TEXT, started REAL);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, time REAL, event TEXT,
  detail TEXT, prev TEXT, hash TEXT);
CREATE TABLE IF NOT EXISTS seal (id INTEGER PRIMARY KEY CHECK (id = 1),
  counter_id TEXT NOT NULL, counter INTEGER NOT NULL, refusals INTEGER NOT NULL,
  audit_seq INTEGER NOT NULL, mac TEXT NOT NULL);
"""
GENESIS = "0" * 64
STATE_TABLES = (("nodes", "name"), ("vms", "name"), ("checkpoints", "vm, version"),
                ("migrations", "id"))
PURPOSE = "tvmm-coordinator-state-v1"


class Problem(enum.StrEnum):
    """What ``Store.check`` (and a refused open) can find; each problem string starts
    with one of these and a colon."""

    UNSEALED = "unsealed"  # state no coordinator sealed (older code, seal row removed)
    TAMPERED = "tampered"  # the tables do not match their seal
    ROLLBACK = "rollback"  # an older copy: its sealed counter is behind the chip's
    AUDIT_ALTERED = "audit_altered"  # a record does not verify under the audit key
    AUDIT_TRUNCATED = "audit_truncated"  # fewer records than were sealed
    INVARIANT = "invariant"  # the state verifies but contradicts itself


class StateRefused(Exception):
    """The coordinator's database is not the newest state its TEE sealed."""

    def __init__(self, reason: Problem, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


def _kdf(key: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(key)


def _mac(key: bytes, data: bytes) -> str:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize().hex()


def _mac_ok(key: bytes, data: bytes, tag: str) -> bool:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    try:
        h.verify(bytes.fromhex(tag))
    except (InvalidSignature, ValueError):
        return False
    return True


def _record(prev: str, seq: int, at: float, event: str, detail: str) -> bytes:
    return f"{prev}|{seq}|{at!r}|{event}|{detail}".encode()


class Store:
    def __init__(self, path: Path | str, chip: Chip, measurement: bytes) -> None:
        self.path = str(path)
        self.chip = chip
        root = chip.sealing_key(measurement, PURPOSE)
        self._state_key = _kdf(root, b"state-mac")
        self._audit_key = _kdf(root, b"audit-chain")
        self._checkpoint_key = _kdf(root, b"checkpoint-keys")
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                  timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()
        try:
            self._open()
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    # -- the seal ------------------------------------------------------------------------------------
    def _digest(self, db: sqlite3.Connection) -> bytes:
        """SHA-256 over every row of the state tables and the audit head."""
        h = hashlib.sha256()
        for table, order in STATE_TABLES:
            for row in db.execute(f"SELECT * FROM {table} ORDER BY {order}"):  # noqa: S608
                h.update(json.dumps([table, *row]).encode() + b"\n")
        head = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        h.update(json.dumps(["audit", *(head or (0, GENESIS))]).encode())
        return h.digest()

    def _seal_input(self, counter_id: str, counter: int, refusals: int, audit_seq: int,
                    digest: bytes) -> bytes:
        return f"{counter_id}|{counter}|{refusals}|{audit_seq}|".encode() + digest

    def _sealed(self, db: sqlite3.Connection) -> tuple[str, int, int, int] | None:
        """The seal row if its MAC verifies over the current tables, else None."""
        row = db.execute("SELECT counter_id, counter, refusals, audit_seq, mac FROM seal "
                         "WHERE id = 1").fetchone()
        if row is None:
            return None
        counter_id, counter, refusals, audit_seq, mac = row
        if not _mac_ok(self._state_key, self._seal_input(
                counter_id, counter, refusals, audit_seq, self._digest(db)), mac):
            return None
        return counter_id, counter, refusals, audit_seq

    def _write_seal(self, db: sqlite3.Connection, counter: int) -> None:
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0]
        mac = _mac(self._state_key, self._seal_input(self.counter_id, counter,
                                                     self.refusals, seq, self._digest(db)))
        db.execute("INSERT OR REPLACE INTO seal VALUES (1, ?, ?, ?, ?, ?)",
                   (self.counter_id, counter, self.refusals, seq, mac))

    def _refuse(self, reason: Problem, message: str, counter_id: str = "") -> None:
        if counter_id and self._has_counter(counter_id):
            self.chip.counter(counter_id + ".refused").increment()
        raise StateRefused(reason, message)

    def _has_counter(self, counter_id: str) -> bool:
        try:
            self.chip.counter(counter_id).read()
        except (CounterError, ValueError):
            return False
        return True

    def _refusals(self) -> int:
        try:
            return self.chip.counter(self.counter_id + ".refused").read()
        except CounterError:
            return 0

    def _open(self) -> None:
        db = self.db
        raw = db.execute("SELECT counter_id FROM seal WHERE id = 1").fetchone()
        if raw is None:
            used = any(db.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()  # noqa: S608
                       for t in ("nodes", "vms", "checkpoints", "migrations", "audit"))
            if used:
                self._refuse(Problem.UNSEALED, f"{self.path} holds state no coordinator "
                             "sealed (made by older code, or its seal was removed)")
            self.counter_id, self.refusals = self.chip.new_counter(), 0
            self.chip.define_counter(self.counter_id + ".refused")
            db.execute("BEGIN IMMEDIATE")
            self._write_seal(db, 0)
            db.execute("COMMIT")
            self.counter = 0
            return
        counter_id = str(raw[0])
        sealed = self._sealed(db)
        if sealed is None:
            self._refuse(Problem.TAMPERED, f"{self.path} does not match its seal: edited "
                         "outside the coordinator, or sealed by other code or another chip",
                         counter_id)
        _, counter, refusals, audit_seq = sealed
        if not self._has_counter(counter_id):
            self._refuse(Problem.TAMPERED, f"this chip holds no counter {counter_id}")
        chip = self.chip.counter(counter_id).read()
        if counter < chip:
            self._refuse(Problem.ROLLBACK, f"{self.path} is at sealed state {counter} but "
                         f"the TEE's counter is at {chip}: an older copy of the database",
                         counter_id)
        if counter > chip + 1:
            self._refuse(Problem.TAMPERED, f"{self.path} is at sealed state {counter}, "
                         f"ahead of the TEE's counter {chip}", counter_id)
        if counter == chip + 1:  # committed, then a crash before the counter moved
            self.chip.counter(counter_id).increment()
        self.counter_id, self.counter, self.refusals = counter_id, counter, refusals
        broken = self._chain_problems(audit_seq)
        if broken:
            self._refuse(Problem.TAMPERED, "; ".join(broken), counter_id)
        now = self._refusals()
        if now > refusals:  # refused copies were presented meanwhile: audit it here
            with self.txn() as db:
                self.refusals = now
                self.audit(db, "state_refused", count=now - refusals,
                           message="an older, edited or truncated copy of this database "
                                   "was presented and refused")

    @contextmanager
    def txn(self):
        """One decision: the seal is checked first, and rewritten with the counter's next
        value before the commit; the chip's counter moves after it."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                sealed = self._sealed(self.db)
                if sealed is None or sealed[1] != self.counter:
                    self._refuse(Problem.TAMPERED, f"{self.path} was changed outside the "
                                 "coordinator since its last decision", self.counter_id)
                yield self.db
                self._write_seal(self.db, self.counter + 1)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            self.counter = self.chip.counter(self.counter_id).increment()

    def audit(self, db: sqlite3.Connection, event: str, **detail: object) -> None:
        """Append one record; call inside ``txn`` so it commits with the decision."""
        row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
        at = time.time()
        text = json.dumps(detail, sort_keys=True, default=str)
        db.execute("INSERT INTO audit VALUES (?,?,?,?,?,?)",
                   (seq, at, event, text, prev,
                    _mac(self._audit_key, _record(prev, seq, at, event, text))))

    def log(self, event: str, **detail: object) -> None:
        with self.txn() as db:
            self.audit(db, event, **detail)

    def checkpoint_key(self, vm: str, epoch: int, stream: int) -> bytes:
        """The key of one checkpoint: derived from the sealing key, never stored."""
        info = f"tvmm-checkpoint-v1|{self.counter_id}|{vm}|{epoch}|{stream}".encode()
        return _kdf(self._checkpoint_key, info)

    # -- reads ---------------------------------------------------------------------------------------
    def query(self, sql: str, *args: object) -> list[tuple]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def audit_records(self, limit: int = 0) -> list[dict]:
        sql = "SELECT seq, time, event, detail, prev, hash FROM audit ORDER BY seq"
        rows = self.query(sql)
        if limit:
            rows = rows[-limit:]
        out = []
        for s, t, e, d, p, h in rows:
            try:
                detail = json.loads(d)
            except (TypeError, ValueError):
                detail = {"unreadable": str(d)[:80]}
            out.append({"seq": s, "time": t, "event": e, "detail": detail, "prev": p,
                        "hash": h})
        return out

    def _chain_problems(self, sealed_seq: int) -> list[str]:
        prev, last = GENESIS, 0
        for seq, at, event, detail, p, h in self.query(
                "SELECT seq, time, event, detail, prev, hash FROM audit ORDER BY seq"):
            if seq != last + 1 or p != prev or not isinstance(h, str) or not _mac_ok(
                    self._audit_key, _record(p, seq, at, event, detail), h):
                return [f"{Problem.AUDIT_ALTERED}: audit record {seq} does not verify "
                        "(edited, inserted or reordered)"]
            prev, last = h, seq
        if last < sealed_seq:
            return [f"{Problem.AUDIT_TRUNCATED}: the audit log ends at record {last}, "
                    f"{sealed_seq} were sealed"]
        return []

    def check(self) -> list[str]:
        """Problems found (empty: the seal, the counter and the keyed chain verify, and the
        invariants hold).  Each starts with a ``Problem`` value."""
        problems = []
        with self.lock:
            raw = self.db.execute("SELECT audit_seq FROM seal WHERE id = 1").fetchone()
            sealed = self._sealed(self.db)
        problems += self._chain_problems(raw[0] if raw else 0)
        try:
            chip = self.chip.counter(self.counter_id).read()
        except CounterError as exc:
            chip = None
            problems.append(f"{Problem.TAMPERED}: {exc}")
        if sealed is None:
            problems.append(f"{Problem.TAMPERED}: the database does not match its seal")
        elif chip is not None and sealed[1] < chip:
            problems.append(f"{Problem.ROLLBACK}: the database is behind the TEE's counter")
        bad = f"{Problem.INVARIANT}: "
        for (name, state, node, version) in self.query(
                "SELECT name, state, node, version FROM vms"):
            if state == "running" and not node:
                problems.append(f"{bad}{name} runs nowhere")
            if state == "suspended" and node:
                problems.append(f"{bad}{name} is suspended but placed on {node}")
            newest = self.query("SELECT MAX(version) FROM checkpoints WHERE vm=? AND "
                                "state='committed'", name)[0][0]
            if newest is not None and newest > version:
                problems.append(f"{bad}{name}: checkpoint {newest} newer than version "
                                f"{version}")
            prepared = self.query("SELECT COUNT(*) FROM checkpoints WHERE vm=? AND "
                                  "state='prepared'", name)[0][0]
            if prepared and state != "suspending":
                problems.append(f"{bad}{name} is {state} with a prepared checkpoint left")
        open_ = self.query("SELECT vm, COUNT(*) FROM migrations WHERE state='prepare' "
                           "GROUP BY vm HAVING COUNT(*) > 1")
        problems += [f"{bad}{vm}: {n} migrations in prepare" for vm, n in open_]
        return problems
