"""Attested key release, the half both sides share: the report_data binding and the wrap.

The guest (inside the TEE) makes an ECDH P-384 key pair and asks its chip for a report
whose REPORT_DATA is

    report_data = SHA-384(nonce ‖ guest_public_key) ‖ 16 zero bytes          (64 bytes)

with ``nonce`` the broker's 32-byte challenge and ``guest_public_key`` the 97-byte SEC1
uncompressed point (0x04 ‖ X ‖ Y). The signed report thus names the one key a secret
may be wrapped to, and a fresh nonce. The broker, once the evidence verifies, wraps:

    shared = ECDH(ephemeral private key, guest public key)
    key    = HKDF-SHA384(shared, salt=nonce, info=b"tvmm key release v1", length=32)
    sealed = AES-256-GCM(key, iv (12 bytes), secret, associated data = report measurement)

WrappedSecret wire format (integers big-endian):

    0    4  magic b"TVKR"
    4    1  format version, 1
    5   97  ephemeral public key, SEC1 uncompressed point
    102 12  AES-GCM IV
    114  4  n = length of the sealed secret (ciphertext ‖ 16-byte tag), 16 <= n
    118  n  sealed secret; nothing may follow

Unwrapping with the wrong key, nonce or measurement, or a damaged blob, raises the same
detail-free UnwrapError, so failures are no oracle.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_SIZE = 32
POINT_SIZE = 97
IV_SIZE = 12
TAG_SIZE = 16
MEASUREMENT_SIZE = 48
MAX_SECRET_SIZE = 1 << 20
HKDF_INFO = b"tvmm key release v1"
MAGIC = b"TVKR"
FORMAT_VERSION = 1

_HEADER = struct.Struct(f">4sB{POINT_SIZE}s{IV_SIZE}sI")


class KeyReleaseFormatError(ValueError):
    """Bytes that are not a well-formed WrappedSecret, or a malformed input value."""


class UnwrapError(Exception):
    """The wrapped secret does not open with this key, nonce and measurement."""

    def __init__(self) -> None:
        super().__init__("wrapped secret does not open")


def encode_public_key(key: ec.EllipticCurvePublicKey) -> bytes:
    """The 97-byte SEC1 uncompressed point of a P-384 public key."""
    if not isinstance(key.curve, ec.SECP384R1):
        raise KeyReleaseFormatError("key release uses P-384 keys only")
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def decode_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a 97-byte uncompressed P-384 point, rejecting points off the curve."""
    if not isinstance(data, bytes) or len(data) != POINT_SIZE or data[0] != 0x04:
        raise KeyReleaseFormatError(f"public key must be a {POINT_SIZE}-byte uncompressed point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), data)
    except ValueError:
        raise KeyReleaseFormatError("public key is not a point on P-384") from None


def report_data_for(nonce: bytes, guest_public_key: bytes) -> bytes:
    """The REPORT_DATA a guest must request to ask for a secret wrapped to its key."""
    _check_nonce(nonce)
    decode_public_key(guest_public_key)
    return hashlib.sha384(nonce + guest_public_key).digest() + bytes(16)


@dataclass(frozen=True)
class WrappedSecret:
    """A secret sealed to one guest key, one nonce and one measurement."""

    ephemeral_public_key: bytes
    iv: bytes
    ciphertext: bytes  # AES-GCM ciphertext followed by its 16-byte tag

    def __post_init__(self) -> None:
        decode_public_key(self.ephemeral_public_key)
        if not isinstance(self.iv, bytes) or len(self.iv) != IV_SIZE:
            raise KeyReleaseFormatError(f"IV must be {IV_SIZE} bytes")
        if not isinstance(self.ciphertext, bytes) or not (
            TAG_SIZE <= len(self.ciphertext) <= MAX_SECRET_SIZE + TAG_SIZE
        ):
            raise KeyReleaseFormatError("sealed secret has an impossible length")

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(
            MAGIC, FORMAT_VERSION, self.ephemeral_public_key, self.iv, len(self.ciphertext)
        )
        return header + self.ciphertext

    @classmethod
    def from_bytes(cls, data: bytes) -> WrappedSecret:
        if not isinstance(data, bytes) or len(data) < _HEADER.size:
            raise KeyReleaseFormatError("too short for a wrapped secret")
        magic, version, point, iv, size = _HEADER.unpack_from(data)
        if magic != MAGIC:
            raise KeyReleaseFormatError("bad magic: not a wrapped secret")
        if version != FORMAT_VERSION:
            raise KeyReleaseFormatError(f"unknown wrapped-secret version {version}")
        if len(data) != _HEADER.size + size:
            raise KeyReleaseFormatError("length field does not match the data")
        return cls(point, iv, data[_HEADER.size :])


def wrap_secret(
    secret: bytes, guest_public_key: bytes, nonce: bytes, measurement: bytes
) -> WrappedSecret:
    """Seal ``secret`` to the guest key with a fresh ephemeral key and IV."""
    return wrap_secret_with(
        secret,
        guest_public_key,
        nonce,
        measurement,
        ephemeral_key=ec.generate_private_key(ec.SECP384R1()),
        iv=os.urandom(IV_SIZE),
    )


def wrap_secret_with(
    secret: bytes,
    guest_public_key: bytes,
    nonce: bytes,
    measurement: bytes,
    *,
    ephemeral_key: ec.EllipticCurvePrivateKey,
    iv: bytes,
) -> WrappedSecret:
    """wrap_secret with its randomness given, for known-answer tests. Never reuse a pair."""
    if not isinstance(secret, bytes) or len(secret) > MAX_SECRET_SIZE:
        raise KeyReleaseFormatError(f"secret must be bytes of at most {MAX_SECRET_SIZE}")
    _check_measurement(measurement)
    aead = _aead(ephemeral_key, decode_public_key(guest_public_key), nonce)
    if not isinstance(iv, bytes) or len(iv) != IV_SIZE:
        raise KeyReleaseFormatError(f"IV must be {IV_SIZE} bytes")
    return WrappedSecret(
        ephemeral_public_key=encode_public_key(ephemeral_key.public_key()),
        iv=iv,
        ciphertext=aead.encrypt(iv, secret, measurement),
    )


def unwrap(
    wrapped: WrappedSecret,
    guest_private_key: ec.EllipticCurvePrivateKey,
    nonce: bytes,
    measurement: bytes,
) -> bytes:
    """The guest side: open a WrappedSecret with the key whose public half was attested."""
    _check_nonce(nonce)
    _check_measurement(measurement)
    peer = decode_public_key(wrapped.ephemeral_public_key)
    try:
        return _aead(guest_private_key, peer, nonce).decrypt(
            wrapped.iv, wrapped.ciphertext, measurement
        )
    except InvalidTag:
        raise UnwrapError() from None


def _aead(
    private_key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey, nonce: bytes
) -> AESGCM:
    _check_nonce(nonce)
    if not isinstance(private_key.curve, ec.SECP384R1):
        raise KeyReleaseFormatError("key release uses P-384 keys only")
    shared = private_key.exchange(ec.ECDH(), peer)
    key = HKDF(algorithm=hashes.SHA384(), length=32, salt=nonce, info=HKDF_INFO).derive(shared)
    return AESGCM(key)


def _check_nonce(nonce: bytes) -> None:
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise KeyReleaseFormatError(f"nonce must be {NONCE_SIZE} bytes")


def _check_measurement(measurement: bytes) -> None:
    if not isinstance(measurement, bytes) or len(measurement) != MEASUREMENT_SIZE:
        raise KeyReleaseFormatError(f"measurement must be {MEASUREMENT_SIZE} bytes")
