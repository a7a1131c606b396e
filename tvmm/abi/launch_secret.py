"""Launch secrets: how the owner gets a secret to the TEE through the untrusted host.

The owner wraps the secret to the platform's launch key (P-384 ECDH with an ephemeral key,
HKDF-SHA384, AES-256-GCM); the host only relays the blob in the SECRETS page of
ADD_PAGES; the TEE unwraps it into the guest's secrets page.  (The attested key release
of docs/attestation.md binds a secret to a verified measurement; this launch path is the
SEV-style pre-attestation channel.)

Blob = b"TVLS" ‖ ephemeral public key (97 bytes, uncompressed point) ‖ nonce (12) ‖
AES-GCM ciphertext and tag; the associated data is the first 101 bytes.

Each blob opens for one launch only: the TEE refuses a blob it opened before
(``launch_secret_identity``, shim.launch), so the owner is asked for every launch and its
broker counts them (tvmm.owner.broker, ``launch_secret``).

The launch key is public, so anyone (the host included) can wrap a secret of any size:
``unwrap`` enforces ``MAX_SECRET`` itself, before it decrypts, and does not rely on the
owner's ``wrap`` having done so.  The TEE writes ``u64 length ‖ secret`` into one page.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"TVLS"
POINT = 97
NONCE = 12
INFO = b"tvmm launch secret v1"
TAG = 16
MAX_SECRET = 4096 - 8  # u64 length ‖ secret fills one page
HEAD = len(MAGIC) + POINT
MAX_BLOB = HEAD + NONCE + MAX_SECRET + TAG


class LaunchSecretError(ValueError):
    """The blob is malformed or does not open under this key."""


def _kek(private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> AESGCM:
    shared = private.exchange(ec.ECDH(), peer)
    key = HKDF(algorithm=hashes.SHA384(), length=32, salt=None, info=INFO).derive(shared)
    return AESGCM(key)


def wrap(
    secret: bytes,
    platform_key: ec.EllipticCurvePublicKey,
    *,
    ephemeral: ec.EllipticCurvePrivateKey | None = None,
    nonce: bytes | None = None,
) -> bytes:
    if len(secret) > MAX_SECRET:
        raise LaunchSecretError(f"a launch secret is at most {MAX_SECRET} bytes")
    eph = ephemeral or ec.generate_private_key(ec.SECP384R1())
    nonce = nonce if nonce is not None else os.urandom(NONCE)
    point = eph.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    head = MAGIC + point
    return head + nonce + _kek(eph, platform_key).encrypt(nonce, secret, head)


def launch_secret_identity(blob: bytes) -> bytes:
    """What names a blob for the TEE's one-open rule: its ephemeral key and nonce.  The
    AEAD binds both to the ciphertext (the key through the KEK, the head as associated
    data), so another blob that opens has another identity."""
    return blob[: HEAD + NONCE]


def unwrap(blob: bytes, platform_key: ec.EllipticCurvePrivateKey) -> bytes:
    if len(blob) < HEAD + NONCE + TAG or not blob.startswith(MAGIC):
        raise LaunchSecretError("not a launch-secret blob")
    if len(blob) > MAX_BLOB:
        raise LaunchSecretError(f"a launch secret is at most {MAX_SECRET} bytes "
                                f"(a blob at most {MAX_BLOB}), got a {len(blob)}-byte blob")
    head = blob[:HEAD]
    nonce = blob[len(head) : len(head) + NONCE]
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), head[len(MAGIC) :])
        return _kek(platform_key, peer).decrypt(nonce, blob[len(head) + NONCE :], head)
    except (ValueError, InvalidTag):
        raise LaunchSecretError("the blob does not open under this platform's key") from None
