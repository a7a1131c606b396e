"""The ledger service: registers signed statements from issuers its policy admits, appends
them to the log and answers with a receipt; signs tree heads and consistency proofs for
auditors.

Its state is one directory: ``service.pem`` (its signing key), ``policy.toml`` (who may
register what) and ``log.db`` (the log and the heads it signed).  The registration policy::

    [[issuer]]
    key = "issuer.pub.pem"          # the issuer's public key (relative to this file)
    feeds = ["tvmm/samples"]        # feeds it may publish on
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from tvmm.transparency import keys
from tvmm.transparency.errors import TransparencyError
from tvmm.transparency.heads import sign_head
from tvmm.transparency.log import TransparencyLog
from tvmm.transparency.receipts import make_receipt
from tvmm.transparency.statements import Statement, parse_statement, verify_statement


@dataclass(frozen=True)
class Issuer:
    public: ec.EllipticCurvePublicKey
    feeds: tuple[str, ...]


def load_registration_policy(path: Path) -> dict[bytes, Issuer]:
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TransparencyError("policy", f"{path}: {exc}") from None
    if set(document) - {"issuer"} or not isinstance(document.get("issuer", []), list):
        raise TransparencyError("policy", f"{path}: only [[issuer]] tables are allowed")
    issuers: dict[bytes, Issuer] = {}
    for entry in document.get("issuer", []):
        if (not isinstance(entry, dict) or set(entry) != {"key", "feeds"}
                or not isinstance(entry["key"], str) or not isinstance(entry["feeds"], list)
                or not all(isinstance(f, str) and f for f in entry["feeds"])):
            raise TransparencyError("policy", f"{path}: each [[issuer]] has key (a path) "
                                              "and feeds (a list of names)")
        public = keys.load_public(path.parent / entry["key"])
        issuers[keys.key_id(public)] = Issuer(public, tuple(entry["feeds"]))
    return issuers


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's; DEL must be escaped)."""
    return json.dumps(text).replace("\x7f", "\\u007f")


class LedgerService:
    """A ledger: its log, its signing key, the issuers it admits.  ``on_registered`` runs
    after each registration is durable (the perimeter's ledger seals its state there)."""

    def __init__(self, log: TransparencyLog, key: ec.EllipticCurvePrivateKey,
                 issuers: dict[bytes, Issuer],
                 on_registered: Callable[[], None] | None = None) -> None:
        self.log = log
        self.key = key
        self.issuers = issuers
        self.on_registered = on_registered

    @classmethod
    def open(cls, directory: Path | str) -> LedgerService:
        """The ledger kept in ``directory`` (``tvmm transparency init``)."""
        directory = Path(directory)
        if not (directory / "service.pem").exists():
            raise TransparencyError("store", f"{directory}: no ledger here "
                                             "(tvmm transparency init)")
        return cls(TransparencyLog(directory / "log.db"),
                   keys.load_private(directory / "service.pem"),
                   load_registration_policy(directory / "policy.toml"))

    @classmethod
    def create(cls, directory: Path | str, issuers: list[tuple[Path, list[str]]]
               ) -> LedgerService:
        """A new ledger in ``directory`` admitting each (public key file, feeds)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / "service.pem").exists():
            raise TransparencyError("store", f"{directory}: a ledger is already here")
        lines = []
        for n, (key_path, feeds) in enumerate(issuers):
            public = keys.load_public(key_path)
            (directory / f"issuer-{n}.pub.pem").write_bytes(keys.public_pem(public))
            lines += ["[[issuer]]", f'key = "issuer-{n}.pub.pem"',
                      "feeds = [" + ", ".join(toml_string(f) for f in feeds) + "]", ""]
        (directory / "policy.toml").write_text("\n".join(lines))
        fd = os.open(directory / "service.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(keys.private_pem(keys.new_key()))
        (directory / "service.pub.pem").write_bytes(
            keys.public_pem(keys.load_private(directory / "service.pem").public_key()))
        return cls.open(directory)

    def close(self) -> None:
        self.log.close()

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    def admit(self, raw: bytes) -> Statement:
        """The statement, if its issuer is registered for its feed and signed it."""
        issuer = self.issuers.get(parse_statement(raw).issuer)
        if issuer is None:
            raise TransparencyError("issuer", "the statement's issuer is not registered "
                                              "with this ledger")
        statement = verify_statement(raw, issuer.public)
        if statement.claim.feed not in issuer.feeds:
            raise TransparencyError("feed", f"the issuer may not publish on feed "
                                            f"{statement.claim.feed!r}")
        return statement

    def register(self, raw: bytes) -> tuple[int, bytes]:
        """Append an admitted statement; (its index, a receipt)."""
        self.admit(raw)
        index = self.log.append(raw)
        self.sign_head()
        if self.on_registered is not None:
            self.on_registered()
        return index, self.receipt(index)

    def receipt(self, index: int) -> bytes:
        proof = self.log.inclusion(index)
        return make_receipt(self.key, proof, self.log.root(proof.size))

    def sign_head(self) -> bytes:
        size = self.log.size
        raw = sign_head(self.key, size, self.log.root(size), int(time.time()))
        self.log.add_head(size, raw)
        return raw
