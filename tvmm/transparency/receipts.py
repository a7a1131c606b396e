"""COSE receipts (RFC 9942) for the RFC 9162 SHA-256 tree (verifiable data structure 1).

A receipt is a COSE_Sign1 by the ledger service whose protected header names the
structure (vds = 1) and whose unprotected header carries the proof (vdp, -1: inclusion
proofs, each ``bstr .cbor [tree_size, leaf_index, [hashes…]]``); its payload is detached:
the tree root, which the verifier recomputes from the entry and the proof.  So a receipt
verifies with nothing but the statement and the service's public key."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from tvmm.transparency import cose, merkle
from tvmm.transparency.cose import _sequence
from tvmm.transparency.errors import TransparencyError

VDS = 395  # COSE header: verifiable data structure
VDP = 396  # COSE header: verifiable data structure proofs
RFC9162_SHA256 = 1
INCLUSION = -1


@dataclass(frozen=True)
class Inclusion:
    size: int
    index: int
    path: list[bytes]


def make_receipt(service: ec.EllipticCurvePrivateKey, proof: Inclusion, root: bytes) -> bytes:
    encoded = cbor2.dumps([proof.size, proof.index, proof.path])
    return cose.sign(service, None, protected={VDS: RFC9162_SHA256},
                     unprotected={VDP: {INCLUSION: [encoded]}}, detached=root)


def verify_receipt(entry: bytes, receipt: bytes, service: ec.EllipticCurvePublicKey
                   ) -> Inclusion:
    """The proof of ``entry``'s inclusion, if ``receipt`` is the service's signature over
    the root that proof leads to; else TransparencyError."""
    proof = parse_receipt(receipt)
    root = merkle.root_from_inclusion(merkle.leaf_hash(entry), proof.index, proof.size,
                                      proof.path)
    cose.verify(cose.decode(receipt, "receipt"), service, "receipt", detached=root)
    return proof


def parse_receipt(receipt: bytes) -> Inclusion:
    signed = cose.decode(receipt, "receipt")
    if signed.protected.get(VDS) != RFC9162_SHA256:
        raise TransparencyError("malformed", "receipt is not for an RFC 9162 SHA-256 tree")
    if signed.payload is not None:
        raise TransparencyError("malformed", "a receipt's payload (the root) is detached")
    proofs = signed.unprotected.get(VDP)
    if (not isinstance(proofs, Mapping) or set(proofs) != {INCLUSION}
            or not _sequence(proofs[INCLUSION]) or len(proofs[INCLUSION]) != 1
            or not isinstance(proofs[INCLUSION][0], bytes)):
        raise TransparencyError("malformed", "receipt must carry exactly one inclusion proof")
    try:
        size, index, path = cbor2.loads(proofs[INCLUSION][0])
    except Exception:
        raise TransparencyError("malformed", "inclusion proof is not [size, index, path]"
                                ) from None
    if type(size) is not int or type(index) is not int or not _sequence(path):
        raise TransparencyError("malformed", "inclusion proof is not [size, index, path]")
    return Inclusion(size, index, list(path))
