"""The owner's launch ledger: every release and refusal of one secret, kept on the owner's side.

The key broker counts launches here, not in memory, so that a restarted broker still
knows how many launches it served (docs/attestation.md, "Launch budget").  A launch
budget of N launches per window allows a release only while fewer than N releases of this
secret lie in the last ``window_s`` seconds; time is always passed in (``now``), so
tests need no clock and no sleeps.

One JSON file holds the whole audit log and an HMAC-SHA256 over it under a key kept
beside it (``<ledger>.key``, made with the ledger, 0600):

    {"version": 1, "records": [{"time": …, "nonce": "…", "measurement": "…",
      "path": "attested" | "launch", "released": true | false, "reason": "…"}, …],
     "mac": "…64 hex digits…"}

Every change rewrites the file under a temporary name and renames it into place (after
fsync), under an exclusive lock on ``<ledger>.lock``, so a crash leaves the old ledger or
the new one, and two brokers on one ledger do not lose each other's releases.  A ledger
that does not parse, whose MAC does not match (tampered, or truncated at any point), or
that is missing while its key exists, raises LedgerError: the broker then releases
nothing (fail closed) and never starts counting from zero.  What the MAC cannot see: an
older authentic copy put back (rollback), or the ledger and its key deleted together;
either needs write access to the owner's state directory (docs/threat-model.md).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

LEDGER_VERSION = 1
KEY_SIZE = 32
PATHS = ("attested", "launch")
_RECORD_KEYS = {"time", "nonce", "measurement", "path", "released", "reason"}

# The launch budget of the owner in tvmm's scored runs (tvmm.harness.judge, tvmm attack
# --launches): releases of the victim's secret per hour.  The victim's own launch is one;
# an attack that relaunches it to average gets two more.
SCORED_RUN_LAUNCHES = 3


class LedgerError(Exception):
    """The ledger cannot be trusted or written: nothing may be released on it."""


@dataclass(frozen=True)
class LaunchBudget:
    """At most ``launches`` releases in any ``window_s`` seconds."""

    launches: int
    window_s: int

    def __post_init__(self) -> None:
        if type(self.launches) is not int or self.launches < 1:
            raise ValueError("launches: must be an integer >= 1")
        if type(self.window_s) is not int or self.window_s < 1:
            raise ValueError("window_s: must be an integer >= 1 (seconds)")


@dataclass(frozen=True)
class AuditRecord:
    """One decision of the broker: when, for which nonce and measurement, and why."""

    time: float
    nonce: str  # hex; "" if the request carried none
    measurement: str  # hex: the verified one on release, the report's claimed one otherwise
    path: str  # "attested" (key release) or "launch" (a launch secret)
    released: bool
    reason: str = ""  # the refusal reason (a VerifyFailure value); "" on release

    @classmethod
    def from_mapping(cls, value: object) -> AuditRecord:
        if not isinstance(value, dict) or set(value) != _RECORD_KEYS:
            raise LedgerError("a record does not have exactly the audit fields")
        time = value["time"]
        if type(time) not in (int, float) or not 0 <= time < 1e12:
            raise LedgerError("a record's time is not a number of seconds")
        strings = ("nonce", "measurement", "path", "reason")
        if not all(isinstance(value[k], str) for k in strings) or type(value["released"]) is not bool:
            raise LedgerError("a record's fields have the wrong types")
        if value["path"] not in PATHS:
            raise LedgerError(f"a record's path is not one of {PATHS}")
        return cls(float(time), value["nonce"], value["measurement"], value["path"],
                   value["released"], value["reason"])


@dataclass(frozen=True)
class BudgetState:
    """What the budget allows at ``now``: None for launches and left means no budget."""

    launches: int | None
    window_s: int | None
    used: int  # releases in the window ending now (all releases without a budget)
    left: int | None
    next_at: float | None  # when the oldest release in the window leaves it, if exhausted

    def to_dict(self) -> dict:
        return asdict(self)


class LaunchLedger:
    """The audit log and launch count of one secret, in one file in the owner's state dir."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.key_path = self.path.with_name(self.path.name + ".key")
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    # -- reading ---------------------------------------------------------------------------
    def records(self) -> list[AuditRecord]:
        """The audit log, checked; LedgerError if it cannot be trusted."""
        with self._locked():
            return self._load()

    def state(self, budget: LaunchBudget | None, now: float) -> BudgetState:
        with self._locked():
            return budget_state(self._load(), budget, now)

    # -- deciding --------------------------------------------------------------------------
    def admit(self, budget: LaunchBudget | None, record: AuditRecord) -> str:
        """Record a release if the ledger allows it at ``record.time`` ("" ), else record
        it as refused and return the reason: ``nonce`` if a release to this nonce is on
        record already (so a restarted broker that issues a nonce again still releases
        once), ``launch_budget`` if the budget is spent.  One locked read-check-write."""
        with self._locked():
            records = self._load()
            left = budget_state(records, budget, record.time).left
            reason = ""
            if record.nonce and any(r.released and r.nonce == record.nonce for r in records):
                reason = "nonce"
            elif left is not None and left <= 0:
                reason = "launch_budget"
            if reason:
                record = AuditRecord(record.time, record.nonce, record.measurement,
                                     record.path, False, reason)
            self._store([*records, record])
        return reason

    def refuse(self, record: AuditRecord) -> None:
        """Audit a refusal (the broker refuses whatever happens here)."""
        with self._locked():
            self._store([*self._load(), record])

    # -- the file --------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot lock the ledger: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _load(self) -> list[AuditRecord]:
        key_exists, ledger_exists = self.key_path.exists(), self.path.exists()
        if not key_exists and not ledger_exists:
            self._write(self.key_path, os.urandom(KEY_SIZE))
            self._store([])
            return []
        if not key_exists:
            raise LedgerError(f"{self.key_path}: the ledger's key is missing")
        if not ledger_exists:
            raise LedgerError(f"{self.path}: the ledger is missing but its key exists "
                              "(deleted?); refusing to count launches from zero")
        try:
            document = json.loads(self.path.read_bytes())
        except (OSError, ValueError) as exc:
            raise LedgerError(f"{self.path}: not a readable ledger (truncated?): "
                              f"{type(exc).__name__}") from None
        if not isinstance(document, dict) or set(document) != {"version", "records", "mac"}:
            raise LedgerError(f"{self.path}: not a ledger (fields)")
        if document["version"] != LEDGER_VERSION or not isinstance(document["records"], list):
            raise LedgerError(f"{self.path}: not a version-{LEDGER_VERSION} ledger")
        mac = document["mac"]
        try:
            expected = bytes.fromhex(mac) if isinstance(mac, str) else b""
            self._mac(document["records"]).verify(expected)
        except (ValueError, InvalidSignature):
            raise LedgerError(f"{self.path}: the ledger's MAC does not match "
                              "(tampered or cut); nothing is released on it") from None
        try:
            return [AuditRecord.from_mapping(r) for r in document["records"]]
        except LedgerError as exc:
            raise LedgerError(f"{self.path}: {exc}") from None

    def _store(self, records: list[AuditRecord]) -> None:
        rows = [asdict(r) for r in records]
        mac = self._mac(rows).finalize().hex()
        body = json.dumps({"version": LEDGER_VERSION, "records": rows, "mac": mac},
                          separators=(",", ":")).encode()
        self._write(self.path, body + b"\n")

    def _mac(self, rows: list) -> hmac.HMAC:
        try:
            key = self.key_path.read_bytes()
        except OSError as exc:
            raise LedgerError(f"{self.key_path}: cannot read the ledger's key: {exc}") from None
        if len(key) != KEY_SIZE:
            raise LedgerError(f"{self.key_path}: the ledger's key is not {KEY_SIZE} bytes")
        mac = hmac.HMAC(key, hashes.SHA256())
        mac.update(json.dumps([LEDGER_VERSION, rows], sort_keys=True,
                              separators=(",", ":")).encode())
        return mac

    def _write(self, path: Path, data: bytes) -> None:
        """Write ``data`` under a temporary name, fsync, rename into place, fsync the dir."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as out:  # 0600, as mkstemp makes it
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise LedgerError(f"{path}: cannot write the ledger: {exc}") from None


def budget_state(records: list[AuditRecord], budget: LaunchBudget | None,
                 now: float) -> BudgetState:
    """The budget at ``now`` over ``records``: releases after ``now - window_s`` count
    (a release stamped in the future counts too: a clock set back buys nothing)."""
    releases = [r.time for r in records if r.released]
    if budget is None:
        return BudgetState(None, None, len(releases), None, None)
    in_window = sorted(t for t in releases if t > now - budget.window_s)
    left = max(0, budget.launches - len(in_window))
    next_at = None
    if left == 0:
        next_at = in_window[len(in_window) - budget.launches] + budget.window_s
    return BudgetState(budget.launches, budget.window_s, len(in_window), left, next_at)
