"""Sealed vCPU state: what the host holds between exits at the ``shim`` level.

AES-256-GCM under a per-VM key that never leaves the TEE; a fresh 96-bit nonce for every
seal; associated data binds VM id, vCPU and exit sequence number, so a blob of another VM,
another vCPU or an older exit fails to open.  Blob = nonce (12) ‖ ciphertext ‖ tag (16).
``seal_with_nonce`` takes the nonce explicitly for known-answer tests.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shim.errors import IntegrityError

NONCE = 12
TAG = 16
_AD = struct.Struct("<4sQQQ")
_COUNTER = struct.Struct("<Q")


def associated_data(vm: int, vcpu: int, seq: int) -> bytes:
    return _AD.pack(b"TVMS", vm, vcpu, seq)


class StateSealer:
    """Nonces follow NIST SP 800-38D's deterministic construction: a 32-bit field fixed per
    sealer (random) and a 64-bit invocation counter, so no nonce repeats under one key and
    no seal needs fresh random bytes on the exit path."""

    def __init__(self, key: bytes | None = None, nonce_prefix: bytes | None = None) -> None:
        self._aead = AESGCM(key if key is not None else AESGCM.generate_key(bit_length=256))
        self._prefix = nonce_prefix if nonce_prefix is not None else os.urandom(4)
        if len(self._prefix) != 4:
            raise ValueError("the fixed nonce field is 4 bytes")
        self._count = 0

    def seal(self, state: bytes, vm: int, vcpu: int, seq: int) -> bytes:
        self._count += 1
        nonce = self._prefix + _COUNTER.pack(self._count)
        return nonce + self._aead.encrypt(nonce, state, _AD.pack(b"TVMS", vm, vcpu, seq))

    def seal_with_nonce(self, state: bytes, vm: int, vcpu: int, seq: int, nonce: bytes) -> bytes:
        if len(nonce) != NONCE:
            raise ValueError("a GCM nonce is 12 bytes")
        return nonce + self._aead.encrypt(nonce, state, associated_data(vm, vcpu, seq))

    def open(self, blob: bytes, vm: int, vcpu: int, seq: int) -> bytes:
        if not isinstance(blob, bytes) or len(blob) < NONCE + TAG:
            raise IntegrityError()
        try:
            return self._aead.decrypt(blob[:NONCE], blob[NONCE:], associated_data(vm, vcpu, seq))
        except InvalidTag:
            raise IntegrityError() from None
