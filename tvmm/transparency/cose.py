"""COSE_Sign1 (RFC 9052) with ES384, through pycose: sign, and decode-then-verify with
every header checked once.  Everything else here builds on these two functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from pycose.algorithms import Es384
from pycose.headers import KID, Algorithm, ContentType
from pycose.messages import CoseMessage, Sign1Message

from tvmm.transparency.errors import TransparencyError
from tvmm.transparency.keys import cose_private, cose_public, key_id

MAX_MESSAGE = 1 << 20  # a statement, receipt or tree head is small; refuse anything larger


@dataclass(frozen=True)
class Signed:
    """A decoded COSE_Sign1, not yet verified."""

    kid: bytes
    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes | None
    message: Sign1Message


def sign(key: ec.EllipticCurvePrivateKey, payload: bytes | None, *,
         protected: dict[Any, Any] | None = None, unprotected: dict[Any, Any] | None = None,
         content_type: str | None = None, detached: bytes | None = None) -> bytes:
    """COSE_Sign1 by ``key`` over ``payload`` (or, with ``detached``, over that payload,
    which the message then leaves out)."""
    phdr: dict[Any, Any] = {Algorithm: Es384, KID: key_id(key.public_key())}
    if content_type is not None:
        phdr[ContentType] = content_type
    phdr.update(protected or {})
    message = Sign1Message(phdr=phdr, uhdr=dict(unprotected or {}),
                           payload=None if detached is not None else payload)
    message.key = cose_private(key)
    return message.encode(detached_payload=detached) if detached is not None else message.encode()


def decode(data: bytes, what: str) -> Signed:
    """The COSE_Sign1 in ``data``, its algorithm ES384 and its kid 32 bytes, or
    TransparencyError("malformed")."""
    if not isinstance(data, bytes) or len(data) > MAX_MESSAGE:
        raise TransparencyError("malformed", f"{what} is not a COSE_Sign1 of at most "
                                             f"{MAX_MESSAGE} bytes")
    try:
        message = CoseMessage.decode(data)
    except Exception as exc:  # pycose and cbor2 raise many types on hostile input
        raise TransparencyError("malformed", f"{what} is not a COSE_Sign1: {exc}") from None
    if not isinstance(message, Sign1Message):
        raise TransparencyError("malformed", f"{what} is not a COSE_Sign1")
    if message.phdr.get(Algorithm) is not Es384:
        raise TransparencyError("malformed", f"{what} is not signed with ES384")
    kid = message.phdr.get(KID)
    if not isinstance(kid, bytes) or len(kid) != 32:
        raise TransparencyError("malformed", f"{what} has no 32-byte key id")
    payload = message.payload
    if payload is not None and not isinstance(payload, bytes):
        raise TransparencyError("malformed", f"{what}'s payload is not a byte string")
    return Signed(kid, dict(message.phdr), dict(message.uhdr), payload, message)


def verify(signed: Signed, public: ec.EllipticCurvePublicKey, what: str, *,
           detached: bytes | None = None) -> None:
    """Check ``signed``'s signature by ``public`` (whose key id it must name)."""
    if signed.kid != key_id(public):
        raise TransparencyError("key", f"{what} names key {signed.kid.hex()[:16]}…, "
                                       f"not {key_id(public).hex()[:16]}…")
    signed.message.key = cose_public(public)
    try:
        ok = (signed.message.verify_signature(detached_payload=detached)
              if detached is not None else signed.message.verify_signature())
    except Exception as exc:
        raise TransparencyError("signature", f"{what}: {exc}") from None
    if not ok:
        raise TransparencyError("signature", f"{what}'s signature does not verify")
