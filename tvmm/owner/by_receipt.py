"""Release by policy instead of by pinned digest: the owner names a ledger (its service
key), an issuer (its key), a feed and a least SVN; a report's measurement is accepted if
the host presents a statement by that issuer, on that feed, with at least that SVN, whose
launch digest the report carries, and a receipt from that ledger proving the statement
was registered.  In a release policy::

    [transparency]
    service_key = '''-----BEGIN PUBLIC KEY-----
    …'''                             # the ledger service's public key (PEM)
    issuer_key = '''-----BEGIN PUBLIC KEY-----
    …'''                             # the issuer's public key (PEM)
    feed = "tvmm/samples"
    min_svn = 3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from tvmm.transparency import bundle
from tvmm.transparency.claims import MAX_SVN, Claim
from tvmm.transparency.errors import TransparencyError
from tvmm.transparency.keys import public_from_pem
from tvmm.transparency.receipts import verify_receipt
from tvmm.transparency.statements import verify_statement

KEYS = ("service_key", "issuer_key", "feed", "min_svn")


@dataclass(frozen=True)
class ReceiptPolicy:
    service_key: ec.EllipticCurvePublicKey
    issuer_key: ec.EllipticCurvePublicKey
    feed: str
    min_svn: int = 0

    @classmethod
    def from_mapping(cls, table: dict[str, Any]) -> ReceiptPolicy:
        """Raises ValueError naming the key (the broker turns it into a PolicyError)."""
        unknown = sorted(set(table) - set(KEYS))
        if unknown:
            raise ValueError(f"transparency: unknown key(s): {', '.join(unknown)}")
        for key in ("service_key", "issuer_key", "feed"):
            if not isinstance(table.get(key), str) or not table[key]:
                raise ValueError(f"transparency.{key}: required, a string")
        min_svn = table.get("min_svn", 0)
        if type(min_svn) is not int or not 0 <= min_svn <= MAX_SVN:
            raise ValueError(f"transparency.min_svn: must be an integer in [0, {MAX_SVN}]")
        try:
            service = public_from_pem(table["service_key"].encode())
            issuer = public_from_pem(table["issuer_key"].encode())
        except TransparencyError as exc:
            raise ValueError(f"transparency: {exc}") from None
        return cls(service, issuer, table["feed"], min_svn)

    def admit(self, presented: bytes) -> Claim:
        """The claim of a presented bundle, if everything holds; else TransparencyError."""
        if not presented:
            raise TransparencyError("receipt", "no statement and receipt were presented")
        statement, receipt = bundle.unpack(presented)
        verify_receipt(statement, receipt, self.service_key)
        claim = verify_statement(statement, self.issuer_key).claim
        if claim.feed != self.feed:
            raise TransparencyError("feed", f"the statement is for feed {claim.feed!r}, "
                                            f"not {self.feed!r}")
        if claim.svn < self.min_svn:
            raise TransparencyError("svn", f"the build's SVN {claim.svn} is below the "
                                           f"policy's {self.min_svn}")
        return claim
