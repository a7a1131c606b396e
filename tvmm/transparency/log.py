"""The ledger's append-only log: entries in an RFC 9162 tree (pymerkle's SqliteTree, one
SQLite file), inclusion and consistency proofs, and the tree heads the service signed.

Consistency proofs follow RFC 9162 §2.1.4.1 (SUBPROOF) over pymerkle's range roots; the
subtree roots come from ``_get_root``, pymerkle's cached range hash (pinned to pymerkle
7; tests check it against tvmm.transparency.merkle)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pymerkle import SqliteTree

from tvmm.transparency.errors import TransparencyError
from tvmm.transparency.receipts import Inclusion


def _store_errors(method):
    """pymerkle on a damaged database raises what its queries meet: one clear error."""
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (IndexError, KeyError, TypeError, sqlite3.Error) as exc:
            raise TransparencyError("store", f"{self.path}: the log is damaged "
                                             f"({type(exc).__name__}: {exc})") from None
    return wrapper


class TransparencyLog:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._tree = SqliteTree(str(self.path), algorithm="sha256")
            self._db = sqlite3.connect(str(self.path))
            self._db.execute("CREATE TABLE IF NOT EXISTS head (size INTEGER PRIMARY KEY, "
                             "raw BLOB NOT NULL)")
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise TransparencyError("store", f"{self.path}: not a ledger database ({exc})"
                                    ) from None

    def close(self) -> None:
        self._tree.close()
        self._db.close()

    @property
    @_store_errors
    def size(self) -> int:
        return self._tree.get_size()

    @_store_errors
    def append(self, entry: bytes) -> int:
        """Append one entry; its index (from 0)."""
        return self._tree.append_entry(entry) - 1

    @_store_errors
    def append_many(self, entries: list[bytes]) -> int:
        """Append entries in one transaction; the index of the first."""
        return self._tree.append_entries(entries) - len(entries)

    @_store_errors
    def entry(self, index: int) -> bytes:
        self._bounds(index, self.size)
        return bytes(self._tree.get_entry(index + 1))

    @_store_errors
    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise TransparencyError("proof", f"no tree of {size} entries (the log has "
                                             f"{self.size})")
        return self._tree.get_root(size)

    @_store_errors
    def inclusion(self, index: int, size: int | None = None) -> Inclusion:
        size = self.size if size is None else size
        self._bounds(index, size)
        if size > self.size:
            raise TransparencyError("proof", f"no tree of {size} entries")
        path = self._tree.prove_inclusion(index + 1, size).path
        return Inclusion(size, index, [bytes(p) for p in path[1:]])

    @_store_errors
    def consistency(self, size1: int, size2: int) -> list[bytes]:
        if not 0 < size1 <= size2 <= self.size:
            raise TransparencyError("proof", f"no consistency proof from {size1} to {size2} "
                                             f"(the log has {self.size})")
        return self._subproof(size1, 0, size2, True)

    def _subproof(self, m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole else [self._tree._get_root(lo, hi)]
        k = 1 << ((n - 1).bit_length() - 1)
        if m <= k:
            return self._subproof(m, lo, lo + k, whole) + [self._tree._get_root(lo + k, hi)]
        return self._subproof(m - k, lo + k, hi, False) + [self._tree._get_root(lo, lo + k)]

    def add_head(self, size: int, raw: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO head (size, raw) VALUES (?, ?)", (size, raw))
        self._db.commit()

    @_store_errors
    def heads(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._db.execute("SELECT raw FROM head ORDER BY size")]

    @staticmethod
    def _bounds(index: int, size: int) -> None:
        if not 0 <= index < size:
            raise TransparencyError("proof", f"no entry {index} in a tree of {size}")
