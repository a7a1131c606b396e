"""Keys of issuers and of the ledger service: P-384 ECDSA (COSE ES384), identified by the
SHA-256 of their SubjectPublicKeyInfo (the COSE ``kid``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tvmm.transparency.errors import TransparencyError


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def key_id(public: ec.EllipticCurvePublicKey) -> bytes:
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(public: ec.EllipticCurvePublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(path: Path | str) -> ec.EllipticCurvePrivateKey:
    key = _load(path, private=True)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_public(path: Path | str) -> ec.EllipticCurvePublicKey:
    """A public key from a PEM file holding a public key (or a private one: its half)."""
    key = _load(path, private=False)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def public_from_pem(pem: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise TransparencyError("key", f"not a PEM public key: {exc}") from None
    _p384(key)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _load(path: Path | str, *, private: bool) -> object:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TransparencyError("key", f"{path}: {exc.strerror or exc}") from None
    if private and b"PRIVATE KEY" not in data:
        raise TransparencyError("key", f"{path}: holds no private key (give the PEM file "
                                       "keygen wrote, not its .pub.pem)")
    try:
        if b"PRIVATE KEY" in data:
            key: object = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        # cryptography's first sentence; the rest is a link to its FAQ
        raise TransparencyError("key", f"{path}: not a PEM key "
                                       f"({str(exc).split('. ')[0]})") from None
    _p384(key)
    return key


def _p384(key: object) -> None:
    curve = getattr(key, "curve", None)
    if not isinstance(curve, ec.SECP384R1):
        raise TransparencyError("key", "keys must be ECDSA P-384 (COSE ES384)")
