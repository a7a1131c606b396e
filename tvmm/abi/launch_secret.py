"""Launch secrets: how the owner gets a secret to the TEE through the untrusted host.

The owner wraps the secret to the platform's launch key (P-384 ECDH with an ephemeral key,
HKDF-SHA384, AES-256-GCM) and binds it to the launch digest it predicts for the launch
(its image at its level: ``tvmm measure``); the host only relays the blob in the SECRETS
page of ADD_PAGES.  The TEE opens it there but keeps the secret to itself until FINALIZE
has computed the launch digest and found it equal to the bound one; only then does it
write the secret into the guest's secrets page (shim.launch).  A blob launched with
another image or at another level is refused at FINALIZE and its secret discarded — as
SEV's LAUNCH_SECRET comes after LAUNCH_MEASURE, under keys of that one launch.

Blob = b"TVLS" ‖ ephemeral public key (97 bytes, uncompressed point) ‖ digest length
(1 byte, must be 48) ‖ bound launch digest (48) ‖ nonce (12) ‖ AES-GCM ciphertext and
tag; the associated data is everything before the nonce (150 bytes), so the bound digest
cannot be changed without the blob failing to open.

Each blob opens for one launch only: the TEE refuses a blob it opened before
(``launch_secret_identity``, shim.launch), so the owner is asked for every launch and its
broker counts them (tvmm.owner.broker, ``launch_secret``).

The launch key is public, so anyone (the host included) can wrap a secret of any size
and bind it to any digest: ``unwrap`` enforces ``MAX_SECRET`` and the digest field's
length itself, before it decrypts, and does not rely on the owner's ``wrap`` having done
so.  A host's own blob binds only the host's own secret.  The TEE writes
``u64 length ‖ secret`` into one page.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"TVLS"
POINT = 97
DIGEST = 48  # a launch digest: SHA-384 (tvmm.hw.measurement.DIGEST_SIZE)
NONCE = 12
INFO = b"tvmm launch secret v2"  # v2: bound to a launch digest
TAG = 16
MAX_SECRET = 4096 - 8  # u64 length ‖ secret fills one page
HEAD = len(MAGIC) + POINT + 1 + DIGEST  # the associated data
MAX_BLOB = HEAD + NONCE + MAX_SECRET + TAG


class LaunchSecretError(ValueError):
    """The blob is malformed or does not open under this key."""


@dataclass(frozen=True, slots=True)
class LaunchSecret:
    """An opened blob: the secret, and the launch digest its owner bound it to."""

    secret: bytes
    launch_digest: bytes


def _kek(private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> AESGCM:
    shared = private.exchange(ec.ECDH(), peer)
    key = HKDF(algorithm=hashes.SHA384(), length=32, salt=None, info=INFO).derive(shared)
    return AESGCM(key)


def wrap(
    secret: bytes,
    platform_key: ec.EllipticCurvePublicKey,
    launch_digest: bytes,
    *,
    ephemeral: ec.EllipticCurvePrivateKey | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """The blob for ``secret``, opened by the TEE only into a launch whose digest is
    ``launch_digest`` (the owner's prediction for its image at the run's level)."""
    if len(secret) > MAX_SECRET:
        raise LaunchSecretError(f"a launch secret is at most {MAX_SECRET} bytes")
    if not isinstance(launch_digest, bytes) or len(launch_digest) != DIGEST:
        raise LaunchSecretError(f"the bound launch digest must be {DIGEST} bytes")
    eph = ephemeral or ec.generate_private_key(ec.SECP384R1())
    nonce = nonce if nonce is not None else os.urandom(NONCE)
    point = eph.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    head = MAGIC + point + bytes([DIGEST]) + launch_digest
    return head + nonce + _kek(eph, platform_key).encrypt(nonce, secret, head)


def launch_secret_identity(blob: bytes) -> bytes:
    """What names a blob for the TEE's one-open rule: its ephemeral key, bound digest and
    nonce.  The AEAD binds them to the ciphertext (the key through the KEK, the head as
    associated data), so another blob that opens has another identity."""
    return blob[: HEAD + NONCE]


def bound_digest(blob: bytes) -> bytes:
    """The launch digest a blob says it is bound to, checked for form only (``unwrap``
    authenticates it): LaunchSecretError if the field is missing or not 48 bytes."""
    at = len(MAGIC) + POINT
    if len(blob) <= at or not blob.startswith(MAGIC):
        raise LaunchSecretError("not a launch-secret blob")
    if blob[at] != DIGEST:
        raise LaunchSecretError(f"the bound launch digest must be {DIGEST} bytes, "
                                f"the blob says {blob[at]}")
    if len(blob) < HEAD:
        raise LaunchSecretError(f"the bound launch digest is cut short: "
                                f"{len(blob) - at - 1} of {DIGEST} bytes")
    return blob[at + 1 : HEAD]


def unwrap(blob: bytes, platform_key: ec.EllipticCurvePrivateKey) -> LaunchSecret:
    digest = bound_digest(blob)
    if len(blob) < HEAD + NONCE + TAG:
        raise LaunchSecretError("not a launch-secret blob: too short for a nonce and tag")
    if len(blob) > MAX_BLOB:
        raise LaunchSecretError(f"a launch secret is at most {MAX_SECRET} bytes "
                                f"(a blob at most {MAX_BLOB}), got a {len(blob)}-byte blob")
    head = blob[:HEAD]
    nonce = blob[HEAD : HEAD + NONCE]
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP384R1(), head[len(MAGIC) : len(MAGIC) + POINT])
        secret = _kek(platform_key, peer).decrypt(nonce, blob[HEAD + NONCE :], head)
    except (ValueError, InvalidTag):
        raise LaunchSecretError("the blob does not open under this platform's key") from None
    return LaunchSecret(secret, digest)
