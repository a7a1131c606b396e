"""The VMSA: the register save area, and its deterministic encryption at sev-es/snp.

Layout: NSLOTS 16-byte slots, each a value u64 LE then the slot's own address u64 LE:
the general registers (``vcpu.REG_NAMES``), then ``vcpu.EXT_NAMES`` (FS and GS base,
STAR, LSTAR, FMASK), then the x87/SSE state in FXSAVE's 512-byte layout, eight bytes a
slot (FCW/FSW/FTW/FOP, FIP, FDP, MXCSR/MXCSR_MASK, ST0-7, XMM0-15, reserved).  At ``sev-es``/``snp`` the host holds the save area encrypted
block by block under the VM's key, deterministically and bound to the slot address, as
SEV-ES does with its address-tweaked memory encryption: the same register value in the
same slot always gives the same 16 ciphertext bytes.  That is what the ciphertext
dictionary attack (CipherLeaks) exploits; the shim's AEAD sealing is what stops it.
"""

from __future__ import annotations

import struct
from array import array

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tvmm.hw.vcpu import NSLOTS, SLOT

VMSA_SIZE = NSLOTS * SLOT
VMSA_GPA = 0xFFFF_FFFF_F000  # where SNP measures VMSA pages; also the slots' tweak base
_SLOT = struct.Struct("<QQ")


_FILE = struct.Struct("<" + "QQ" * NSLOTS)
_templates: dict[int, array] = {}


def _template(vcpu: int) -> array:
    """The save area with its slot addresses filled in and every value zero."""
    if vcpu not in _templates:
        base = VMSA_GPA + vcpu * VMSA_SIZE
        _templates[vcpu] = array("Q", [w for i in range(NSLOTS) for w in (0, base + i * SLOT)])
    return _templates[vcpu]


_tags: dict[int, tuple[int, ...]] = {}


def slot_tags(vcpu: int) -> tuple[int, ...]:
    """The slot addresses of a vCPU's save area (Vcpu.save_area writes them beside the
    values); one tuple per vCPU, so the vCPU rewrites them only when the vCPU changes."""
    tags = _tags.get(vcpu)
    if tags is None:
        tags = _tags[vcpu] = tuple(_template(vcpu)[1::2])
    return tags


def pack_plain(regs: tuple[int, ...], vcpu: int = 0) -> bytes:
    """NSLOTS values, u64 each (as the vCPU reads them); anything else is refused."""
    words = array("Q", _template(vcpu))
    words[0::2] = array("Q", regs)
    return words.tobytes()


def unpack_plain(blob: bytes) -> tuple[int, ...]:
    if len(blob) != VMSA_SIZE:
        raise ValueError(f"a register state is {VMSA_SIZE} bytes, got {len(blob)}")
    return _FILE.unpack(blob)[0::2]


class DeterministicVmsaCipher:
    """Address-bound, deterministic block encryption of the save area."""

    def __init__(self, key: bytes) -> None:
        cipher = Cipher(algorithms.AES(key), modes.ECB())
        self._enc = cipher.encryptor()  # one stream, reused: ECB keeps no state
        self._dec = cipher.decryptor()

    def encrypt(self, plain: bytes) -> bytes:
        """``plain``: a save area (pack_plain, Vcpu.save_area)."""
        if len(plain) != VMSA_SIZE:
            raise ValueError(f"a VMSA is {VMSA_SIZE} bytes, got {len(plain)}")
        return self._enc.update(plain)

    def decrypt(self, blob: bytes, vcpu: int = 0) -> tuple[int, ...]:
        """A block moved to another slot, or altered, decrypts to a garbage value."""
        if len(blob) != VMSA_SIZE:
            raise ValueError(f"a VMSA is {VMSA_SIZE} bytes, got {len(blob)}")
        plain = self._dec.update(blob)
        base = VMSA_GPA + vcpu * VMSA_SIZE
        out = []
        for i in range(NSLOTS):
            value, addr = _SLOT.unpack_from(plain, i * SLOT)
            expected = base + i * SLOT
            out.append(value if addr == expected else value ^ addr ^ expected)
        return tuple(out)
