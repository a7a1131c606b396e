"""Signed tree heads: the service's COSE_Sign1 over (tree size, root, time).  An auditor
keeps the heads it has seen; two heads that no consistency proof joins are a fork."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from tvmm.transparency import cose
from tvmm.transparency.errors import TransparencyError

CONTENT_TYPE = "application/vnd.tvmm.tree-head+cbor"


@dataclass(frozen=True)
class TreeHead:
    size: int
    root: bytes
    time: int  # seconds since the epoch, as the service's clock said
    raw: bytes = b""  # the signed head


def sign_head(service: ec.EllipticCurvePrivateKey, size: int, root: bytes, time: int) -> bytes:
    payload = cbor2.dumps({"size": size, "root": root, "time": time}, canonical=True)
    return cose.sign(service, payload, content_type=CONTENT_TYPE)


def verify_head(raw: bytes, service: ec.EllipticCurvePublicKey) -> TreeHead:
    signed = cose.decode(raw, "tree head")
    cose.verify(signed, service, "tree head")
    try:
        document = cbor2.loads(signed.payload or b"")
    except Exception:
        raise TransparencyError("malformed", "tree head's payload is not CBOR") from None
    if (not isinstance(document, Mapping) or set(document) != {"size", "root", "time"}
            or type(document["size"]) is not int or document["size"] < 0
            or not isinstance(document["root"], bytes) or len(document["root"]) != 32
            or type(document["time"]) is not int):
        raise TransparencyError("malformed", "tree head is not {size, root, time}")
    return TreeHead(document["size"], document["root"], document["time"], raw)
