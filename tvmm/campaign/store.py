"""The campaign's store: one SQLite file, a row per finished cell, written the moment the
cell finishes (one transaction each), so a campaign killed at any point keeps every cell
it finished and a rerun skips them.

Only the campaign's own process writes (workers return verdicts to it), so there is one
writer; WAL mode lets a reader (another ``tvmm campaign --markdown``) look meanwhile.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from tvmm.campaign.keys import CampaignError, CellKey, decode_verdict, encode_verdict
from tvmm.judge import Verdict

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    attack TEXT NOT NULL, victim TEXT NOT NULL, level TEXT NOT NULL, policy TEXT NOT NULL,
    seed INTEGER NOT NULL, code TEXT NOT NULL,
    verdict TEXT NOT NULL,   -- tvmm.campaign.keys.encode_verdict
    finished REAL NOT NULL,  -- Unix time the cell was stored
    PRIMARY KEY (attack, victim, level, policy, seed, code)
)"""
_KEY = ("attack", "victim", "level", "policy", "seed", "code")


class Store:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise CampaignError(f"{self.path}: not a campaign store ({exc})") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, key: CellKey, verdict: Verdict) -> None:
        """Store one finished cell, durably, before the next one is reported."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key.attack, key.victim, key.level, key.policy, key.seed, key.code,
                 encode_verdict(verdict), time.time()))

    def done(self, keys: Iterable[CellKey]) -> set[CellKey]:
        """Which of ``keys`` are stored already."""
        wanted = set(keys)
        return {k for k in self.keys() if k in wanted}

    def keys(self) -> list[CellKey]:
        rows = self.db.execute(f"SELECT {', '.join(_KEY)} FROM cells ORDER BY rowid")
        return [CellKey(*row) for row in rows]

    def get(self, key: CellKey) -> Verdict | None:
        row = self.db.execute(
            f"SELECT verdict FROM cells WHERE {' AND '.join(f'{k} = ?' for k in _KEY)}",
            (key.attack, key.victim, key.level, key.policy, key.seed, key.code)).fetchone()
        return decode_verdict(row[0]) if row else None

    def rows(self, keys: Iterable[CellKey] | None = None
             ) -> Iterator[tuple[CellKey, Verdict, float]]:
        """(key, verdict, finished) of every stored cell, or of those of ``keys`` stored,
        in the order they were stored."""
        wanted = set(keys) if keys is not None else None
        for row in self.db.execute(f"SELECT {', '.join(_KEY)}, verdict, finished FROM cells "
                                   "ORDER BY rowid"):
            key = CellKey(*row[:6])
            if wanted is None or key in wanted:
                yield key, decode_verdict(row[6]), row[7]
