"""The memory encryption engine: what the host gets when it reads a private page.

AES-XTS under a per-VM key with the page's guest-physical address as the tweak, like
SEV's address-tweaked encryption: the same plaintext at the same address always gives
the same ciphertext (this is what makes replay and dictionary attacks possible), and
ciphertext moved to another address decrypts to garbage.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

PAGE = 0x1000


class MemoryEncryptionEngine:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else os.urandom(64)
        if len(self._key) != 64 or self._key[:32] == self._key[32:]:
            raise ValueError("an AES-256-XTS key is 64 bytes with two different halves")

    @staticmethod
    def _tweak(gpa: int) -> bytes:
        return gpa.to_bytes(16, "little")

    def encrypt_page(self, gpa: int, plaintext: bytes) -> bytes:
        enc = Cipher(algorithms.AES(self._key), modes.XTS(self._tweak(gpa))).encryptor()
        return enc.update(plaintext) + enc.finalize()

    def decrypt_page(self, gpa: int, ciphertext: bytes) -> bytes:
        dec = Cipher(algorithms.AES(self._key), modes.XTS(self._tweak(gpa))).decryptor()
        return dec.update(ciphertext) + dec.finalize()
