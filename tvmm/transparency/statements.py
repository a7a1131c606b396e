"""Signed statements: an issuer's COSE_Sign1 over a Claim (tvmm.transparency.claims)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from tvmm.transparency import cose
from tvmm.transparency.claims import CONTENT_TYPE, Claim
from tvmm.transparency.errors import TransparencyError


@dataclass(frozen=True)
class Statement:
    raw: bytes  # the COSE_Sign1 exactly as signed: the log's entry
    issuer: bytes  # the issuer's key id
    claim: Claim


def sign_statement(claim: Claim, issuer: ec.EllipticCurvePrivateKey) -> bytes:
    return cose.sign(issuer, claim.to_cbor(), content_type=CONTENT_TYPE)


def parse_statement(raw: bytes) -> Statement:
    """The statement's issuer and claim, NOT yet verified (verify_statement does)."""
    signed = cose.decode(raw, "statement")
    if signed.protected.get(cose.CONTENT_TYPE) != CONTENT_TYPE:
        raise TransparencyError("malformed", f"statement's content type is not {CONTENT_TYPE}")
    if signed.payload is None:
        raise TransparencyError("malformed", "statement has no payload")
    return Statement(raw, signed.kid, Claim.from_cbor(signed.payload))


def verify_statement(raw: bytes, issuer: ec.EllipticCurvePublicKey) -> Statement:
    statement = parse_statement(raw)
    cose.verify(cose.decode(raw, "statement"), issuer, "statement")
    return statement
