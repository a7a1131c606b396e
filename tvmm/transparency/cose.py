"""COSE_Sign1 (RFC 9052 §4.2) with ES384 (RFC 9053 §2.1): sign, and decode-then-verify
with every header checked once.  Everything else here builds on these two functions.

The structure is CBOR (cbor2); the signature is `cryptography`'s ECDSA P-384 over the
Sig_structure ["Signature1", protected, external_aad = b"", payload], carried as r ‖ s
(48 bytes each).  Not pycose: its ECDSA is the pure-Python ``ecdsa`` package (slow, and
not side-channel safe); the tests check our messages against pycose's verifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from tvmm.transparency.errors import TransparencyError
from tvmm.transparency.keys import key_id

MAX_MESSAGE = 1 << 20  # a statement, receipt or tree head is small; refuse anything larger
COSE_SIGN1_TAG = 18
ALG, CONTENT_TYPE, KID = 1, 3, 4  # COSE header labels
ES384 = -35
SCALAR = 48  # bytes of r and of s for P-384


@dataclass(frozen=True)
class Signed:
    """A decoded COSE_Sign1, not yet verified."""

    kid: bytes
    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes | None
    protected_raw: bytes
    signature: bytes


def sign(key: ec.EllipticCurvePrivateKey, payload: bytes | None, *,
         protected: dict[Any, Any] | None = None, unprotected: dict[Any, Any] | None = None,
         content_type: str | None = None, detached: bytes | None = None) -> bytes:
    """COSE_Sign1 by ``key`` over ``payload`` (or, with ``detached``, over that payload,
    which the message then leaves out)."""
    header: dict[Any, Any] = {ALG: ES384, KID: key_id(key.public_key())}
    if content_type is not None:
        header[CONTENT_TYPE] = content_type
    header.update(protected or {})
    protected_raw = cbor2.dumps(header, canonical=True)
    signed_payload = detached if detached is not None else payload
    der = key.sign(_to_be_signed(protected_raw, signed_payload or b""),
                   ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(SCALAR, "big") + s.to_bytes(SCALAR, "big")
    body = [protected_raw, dict(unprotected or {}),
            None if detached is not None else payload, signature]
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, body))


def decode(data: bytes, what: str) -> Signed:
    """The COSE_Sign1 in ``data``, its algorithm ES384 and its kid 32 bytes, or
    TransparencyError("malformed")."""
    if not isinstance(data, bytes) or len(data) > MAX_MESSAGE:
        raise TransparencyError("malformed", f"{what} is not a COSE_Sign1 of at most "
                                             f"{MAX_MESSAGE} bytes")
    try:
        message = cbor2.loads(data)
    except Exception:  # cbor2 raises several types on malformed input
        raise TransparencyError("malformed", f"{what} is not CBOR") from None
    if (not isinstance(message, cbor2.CBORTag) or message.tag != COSE_SIGN1_TAG
            or not _sequence(message.value) or len(message.value) != 4):
        raise TransparencyError("malformed", f"{what} is not a tagged COSE_Sign1")
    protected_raw, unprotected, payload, signature = message.value
    if not isinstance(protected_raw, bytes) or not isinstance(unprotected, Mapping):
        raise TransparencyError("malformed", f"{what}'s headers are not (bstr, map)")
    try:
        protected = cbor2.loads(protected_raw) if protected_raw else {}
    except Exception:
        raise TransparencyError("malformed", f"{what}'s protected header is not CBOR") from None
    if not isinstance(protected, Mapping):
        raise TransparencyError("malformed", f"{what}'s protected header is not a map")
    if protected.get(ALG) != ES384 or ALG in unprotected:
        raise TransparencyError("malformed", f"{what} is not signed with ES384")
    kid = protected.get(KID)
    if not isinstance(kid, bytes) or len(kid) != 32:
        raise TransparencyError("malformed", f"{what} has no 32-byte key id")
    if payload is not None and not isinstance(payload, bytes):
        raise TransparencyError("malformed", f"{what}'s payload is not a byte string")
    if not isinstance(signature, bytes) or len(signature) != 2 * SCALAR:
        raise TransparencyError("malformed", f"{what}'s signature is not {2 * SCALAR} bytes")
    return Signed(kid, dict(protected), dict(unprotected), payload, protected_raw, signature)


def verify(signed: Signed, public: ec.EllipticCurvePublicKey, what: str, *,
           detached: bytes | None = None) -> None:
    """Check ``signed``'s signature by ``public`` (whose key id it must name)."""
    if signed.kid != key_id(public):
        raise TransparencyError("key", f"{what} names key {signed.kid.hex()[:16]}…, "
                                       f"not {key_id(public).hex()[:16]}…")
    if (detached is None) == (signed.payload is None):
        raise TransparencyError("malformed", f"{what}: payload must be either attached or "
                                             "detached")
    payload = detached if detached is not None else signed.payload
    r = int.from_bytes(signed.signature[:SCALAR], "big")
    s = int.from_bytes(signed.signature[SCALAR:], "big")
    try:
        public.verify(encode_dss_signature(r, s),
                      _to_be_signed(signed.protected_raw, payload or b""),
                      ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise TransparencyError("signature", f"{what}'s signature does not verify") from None


def _to_be_signed(protected_raw: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected_raw, b"", payload])


def _sequence(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (bytes, str))
