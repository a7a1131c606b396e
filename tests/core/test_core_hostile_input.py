"""Regressions of the hostile-input campaign against the trusted side (issue 16): an
oversized launch secret, REMAP moving plaintext, exit fields the codec could not carry,
a VM_DEAD reply without an operand.  Each failed on the code before its fix."""

from __future__ import annotations

import random

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shim.platform import Platform
from tvmm.abi import codec
from tvmm.abi.guest import SECRETS_GPA, SHARED_BASE, SHARED_SIZE
from tvmm.abi.messages import AddPages, CreateVm
from tvmm.abi.types import Level, PageType, Result
from tvmm.owner import launch_secret
from tvmm.owner.launch_secret import MAX_SECRET, LaunchSecretError, unwrap

PAGE = 0x1000
MEM = 4 << 20


def host_wrap(secret: bytes, platform_key: ec.EllipticCurvePublicKey, seed: int) -> bytes:
    """What a hostile host can do with the public launch key: wrap a secret of any size.
    Written from the documented blob layout with cryptography's primitives (not with
    ``launch_secret.wrap``, which refuses oversized secrets on the owner's side)."""
    eph = ec.derive_private_key(random.Random(seed).getrandbits(383) | 1, ec.SECP384R1())
    point = eph.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    kek = HKDF(algorithm=hashes.SHA384(), length=32, salt=None,
               info=b"tvmm launch secret v1").derive(eph.exchange(ec.ECDH(), platform_key))
    head, nonce = b"TVLS" + point, bytes(12)
    return head + nonce + AESGCM(kek).encrypt(nonce, secret, head)


# -- 1. an oversized launch secret ------------------------------------------------------

OVERSIZED = [MAX_SECRET + 1, 2 * PAGE, 3 * PAGE + 5]


@pytest.mark.parametrize("size", OVERSIZED)
def test_unwrap_refuses_a_secret_over_max_secret(size):
    key = ec.derive_private_key(7, ec.SECP384R1())
    secret = random.Random(size).randbytes(size)
    with pytest.raises(LaunchSecretError):
        unwrap(host_wrap(secret, key.public_key(), size), key)
    fits = secret[:MAX_SECRET]
    assert unwrap(host_wrap(fits, key.public_key(), size), key) == fits
    assert unwrap(launch_secret.wrap(fits, key.public_key()), key) == fits


def _vm(platform: Platform, level: Level) -> int:
    reply = platform.handle(CreateVm(level, MEM, SHARED_BASE, SHARED_SIZE))
    assert reply.ok
    return reply.value


@pytest.mark.parametrize("level", list(Level))
@pytest.mark.parametrize("gpa", [SECRETS_GPA, MEM - PAGE, MEM - 2 * PAGE])
@pytest.mark.parametrize("size", OVERSIZED)
def test_an_oversized_launch_secret_is_refused_and_changes_nothing(level, gpa, size):
    """Before: at SECRETS_GPA the host's plaintext spilled into the pages after the secrets
    page (unmeasured; the launch digest still matched the owner's prediction); at the end
    of memory the write raised UcError out of the TEE."""
    p = Platform(seed=3)
    vm = _vm(p, level)
    blob = host_wrap(b"\xa5" * size, p.launch_public_key, size)
    before = p.vm(vm).memory.read(0, MEM)
    for reply in (p.handle(AddPages(vm, gpa, PageType.SECRETS, 1, blob)),
                  codec.decode(p.handle_bytes(codec.encode(
                      AddPages(vm, gpa, PageType.SECRETS, 1, blob))))):
        assert (reply.result, reply.operand) == (Result.BAD_OPERAND, "data")
    inside = p.vm(vm)
    assert inside.memory.read(0, MEM) == before
    assert inside.digest.pages == () and not any(inside.added)


@pytest.mark.parametrize("level", [Level.SEV, Level.SHIM])
def test_the_largest_launch_secret_fills_its_page_exactly(level):
    p = Platform(seed=3)
    vm = _vm(p, level)
    secret = b"\x5a" * MAX_SECRET
    gpa = MEM - PAGE
    reply = p.handle(AddPages(vm, gpa, PageType.SECRETS, 1,
                              host_wrap(secret, p.launch_public_key, 1)))
    assert reply.ok
    page = p.vm(vm).memory.read(gpa, PAGE)
    assert page == MAX_SECRET.to_bytes(8, "little") + secret
    assert len(p.vm(vm).digest.pages) == 1
