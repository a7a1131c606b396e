"""Regressions of the hostile-input campaign against the trusted side (issue 16): an
oversized launch secret, REMAP moving plaintext, exit fields the codec could not carry,
a VM_DEAD reply without an operand.  Each failed on the code before its fix."""

from __future__ import annotations

import hashlib
import random

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim.launch import vmsa_page
from shim.platform import Platform
from shim.vm import VmState
from tvmm.abi import codec, launch_secret
from tvmm.abi.guest import IMAGE_BASE, SECRETS_GPA, SHARED_BASE, SHARED_SIZE
from tvmm.abi.launch_secret import MAX_SECRET, LaunchSecretError, unwrap
from tvmm.abi.messages import AddPages, CreateVm, Destroy, Enter, Finalize, ReadPage
from tvmm.abi.types import ExitReason, Field, Level, PageType, Result
from tvmm.hw import measurement
from tvmm.hw.vmsa import VMSA_GPA

PAGE = 0x1000
MEM = 4 << 20


def host_wrap(secret: bytes, platform_key: ec.EllipticCurvePublicKey, seed: int,
              digest: bytes = bytes(48)) -> bytes:
    """What a hostile host can do with the public launch key: wrap a secret of any size,
    bound to any digest field.  Written from the documented blob layout with
    cryptography's primitives (not with ``launch_secret.wrap``, which refuses oversized
    secrets and digests that are not 48 bytes on the owner's side)."""
    eph = ec.derive_private_key(random.Random(seed).getrandbits(383) | 1, ec.SECP384R1())
    point = eph.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    kek = HKDF(algorithm=hashes.SHA384(), length=32, salt=None,
               info=b"tvmm launch secret v2").derive(eph.exchange(ec.ECDH(), platform_key))
    head, nonce = b"TVLS" + point + bytes([len(digest) % 256]) + digest, bytes(12)
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
    assert unwrap(host_wrap(fits, key.public_key(), size), key).secret == fits
    digest = random.Random(size).randbytes(48)
    assert unwrap(launch_secret.wrap(fits, key.public_key(), digest), key) == \
        launch_secret.LaunchSecret(fits, digest)


CODE = b"\xf4" * PAGE  # hlt: one executable page, the whole image of a tiny launch


def tiny_launch_digest(level: Level, secrets_gpa: int) -> bytes:
    """The digest of the tiny launch: the SECRETS page at ``secrets_gpa``, one code page at
    the image base, FINALIZE at its first byte."""
    chain = measurement.LaunchDigest()
    chain.add_page(secrets_gpa, PageType.SECRETS, None)
    chain.add_run(IMAGE_BASE, CODE)
    chain.add_page(VMSA_GPA, PageType.VMSA, vmsa_page(IMAGE_BASE, MEM, level))
    return chain.digest


def tiny_launch(p: Platform, vm: int):
    """The rest of the tiny launch after its SECRETS page: the code page, FINALIZE."""
    assert p.handle(AddPages(vm, IMAGE_BASE, PageType.NORMAL, 1, CODE, True)).ok
    return p.handle(Finalize(vm, IMAGE_BASE))


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
    p = Platform()
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
    p = Platform()
    vm = _vm(p, level)
    secret = b"\x5a" * MAX_SECRET
    gpa = MEM - PAGE
    blob = host_wrap(secret, p.launch_public_key, 1, tiny_launch_digest(level, gpa))
    assert p.handle(AddPages(vm, gpa, PageType.SECRETS, 1, blob)).ok
    assert p.vm(vm).memory.read(gpa, PAGE) == bytes(PAGE)  # nothing before FINALIZE
    assert tiny_launch(p, vm).ok
    page = p.vm(vm).memory.read(gpa, PAGE)
    assert page == MAX_SECRET.to_bytes(8, "little") + secret
    assert len(p.vm(vm).digest.pages) == 3


# -- 1b. a launch secret goes only into the launch it is bound to (red team: blob-downgrade,
# blob-tamper: the owner's blob launched at plain, or with a changed image, gave the secret
# to the host; tests/attacks/test_att_launch_secret.py runs both attacks) ------------------

@pytest.mark.parametrize("level", [Level.PLAIN, Level.SHIM])
def test_a_launch_secret_waits_for_finalize_and_its_digest(level):
    p = Platform()
    vm = _vm(p, level)
    secret = b"the owner's secret"
    blob = launch_secret.wrap(secret, p.launch_public_key, tiny_launch_digest(level, SECRETS_GPA))
    assert p.handle(AddPages(vm, SECRETS_GPA, PageType.SECRETS, 1, blob)).ok
    inside = p.vm(vm)
    assert inside.memory.read(SECRETS_GPA, PAGE) == bytes(PAGE)  # nothing of it yet
    if level == Level.PLAIN:  # the host reads plaintext here: still nothing
        assert p.handle(ReadPage(vm, SECRETS_GPA)).data == bytes(PAGE)
    assert tiny_launch(p, vm).ok
    assert inside.memory.read(SECRETS_GPA, 8 + len(secret)) == \
        len(secret).to_bytes(8, "little") + secret
    assert inside.io.secret_sha256 == hashlib.sha256(secret).hexdigest()


@pytest.mark.parametrize(("bound", "launched", "tampered"), [
    (Level.SEV, Level.PLAIN, False),   # blob-downgrade: another level
    (Level.SHIM, Level.SHIM, True),    # blob-tamper: another image at the bound level
    (Level.SNP, Level.SHIM, False),
])
def test_a_launch_secret_bound_to_another_launch_is_refused_at_finalize(bound, launched,
                                                                          tampered):
    p = Platform()
    vm = _vm(p, launched)
    secret = b"\x5a\xa5 never in this guest"
    blob = launch_secret.wrap(secret, p.launch_public_key, tiny_launch_digest(bound, SECRETS_GPA))
    assert p.handle(AddPages(vm, SECRETS_GPA, PageType.SECRETS, 1, blob)).ok
    code = b"\x90" + CODE[1:] if tampered else CODE
    assert p.handle(AddPages(vm, IMAGE_BASE, PageType.NORMAL, 1, code, True)).ok
    inside = p.vm(vm)
    before, pages = inside.memory.read(0, MEM), inside.digest.pages
    reply = p.handle(Finalize(vm, IMAGE_BASE))
    assert (reply.result, reply.operand) == (Result.DENIED, "launch_secret")
    assert inside.io.refusals == [{"call": "Finalize", "result": "DENIED",
                                   "operand": "launch_secret"}]  # the judge's "blocked"
    assert inside.state == VmState.CREATED and inside.digest.pages == pages
    assert inside.memory.read(0, MEM) == before and secret not in before
    assert inside.pending_secrets == [] and inside.io.secret_sha256 == ""
    # discarded: finalizing again launches without it; and the blob stays spent
    assert p.handle(Finalize(vm, IMAGE_BASE)).ok
    assert secret not in inside.memory.read(0, MEM)
    again = p.handle(AddPages(_vm(p, bound), SECRETS_GPA, PageType.SECRETS, 1, blob))
    assert (again.result, again.operand) == (Result.BAD_OPERAND, "data")


def test_the_owner_binds_the_digest_it_predicts_at_the_run_level():
    from tvmm.abi.guest import OWNER_LAUNCH_SECRET
    from tvmm.machine import expected_measurement, owner_endpoint
    from tvmm.samples import build_sample

    image = build_sample("hello")
    key = ec.derive_private_key(11, ec.SECP384R1())
    for level in (Level.PLAIN, Level.SHIM):
        owner = owner_endpoint(image, b"s", launch_key=key.public_key, launch_level=level)
        opened = unwrap(owner(OWNER_LAUNCH_SECRET), key)
        assert opened == launch_secret.LaunchSecret(b"s", expected_measurement(image, MEM,
                                                                               level))
    refusing = owner_endpoint(image, b"s")  # no launch key: no launch secrets at all
    assert refusing(OWNER_LAUNCH_SECRET).startswith(b"TVKX")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=st.integers(0, 255), size=st.integers(0, 120), cut=st.integers(0, 200),
       level=st.sampled_from([Level.PLAIN, Level.SHIM]))
def test_a_malformed_digest_field_is_refused_cleanly(length, size, cut, level):
    """Hostile input to the blob parser: a digest field whose length byte, or real length,
    is not 48, and blobs cut anywhere.  The parser raises LaunchSecretError and nothing
    else; the TEE refuses the blob (BAD_OPERAND, ``data``) and writes nothing; a blob
    opens only with a 48-byte digest field that says so."""
    key = _KEY
    digest = random.Random(size).randbytes(size)
    blob = bytearray(host_wrap(b"secret", key.public_key(), 3, digest))
    blob[len(launch_secret.MAGIC) + launch_secret.POINT] = length
    blob = bytes(blob[: len(blob) - cut] if cut < len(blob) else b"")
    well_formed = length == size == 48 and cut == 0
    try:
        opened = unwrap(blob, key)
    except LaunchSecretError:
        assert not well_formed
    else:
        assert well_formed and opened == launch_secret.LaunchSecret(b"secret", digest)
    if well_formed or not blob:
        return
    p = _PLATFORM[level]
    vm = _vm(p, level)
    before = p.vm(vm).memory.read(0, MEM)
    reply = p.handle(AddPages(vm, SECRETS_GPA, PageType.SECRETS, 1, blob))
    assert (reply.result, reply.operand) == (Result.BAD_OPERAND, "data")
    assert p.vm(vm).memory.read(0, MEM) == before and not any(p.vm(vm).added)
    p.handle(Destroy(vm))


_KEY = ec.derive_private_key(5, ec.SECP384R1())
_PLATFORM = {level: Platform() for level in (Level.PLAIN, Level.SHIM)}


# -- 2. REMAP moves what the host sees: ciphertext from sev up --------------------------

ENCRYPTED = [Level.SEV, Level.SEV_ES]
TARGET = 0x300000  # a private page the image leaves empty


@pytest.mark.parametrize("level", ENCRYPTED)
def test_remapping_the_secrets_page_to_a_shared_page_shows_only_ciphertext(launch, level):
    """Before: REMAP(shared ← secrets page) copied the secret's plaintext where READ_PAGE
    returns plaintext."""
    v = launch("password", level)
    record = len(v.secret).to_bytes(8, "little") + v.secret
    assert v.vm.memory.read(SECRETS_GPA, len(record)) == record  # the secret is there
    ciphertext = v.client.read_page(v.vm_id, SECRETS_GPA)
    assert v.client.remap(v.vm_id, SHARED_BASE, SECRETS_GPA).ok
    shown = v.client.read_page(v.vm_id, SHARED_BASE)
    assert shown == ciphertext  # what the host could read anyway, nothing more
    assert v.secret not in shown and shown[: len(record)] != record


@pytest.mark.parametrize("level", ENCRYPTED)
def test_host_plaintext_remapped_into_private_memory_is_not_what_the_guest_reads(
        launch, level):
    """Before: REMAP(private ← shared) put the host's chosen plaintext in private memory.
    Now it decrypts under the destination's tweak, as ciphertext the host wrote would."""
    v = launch("password", level)
    chosen = random.Random(1).randbytes(PAGE)
    assert v.client.write_page(v.vm_id, SHARED_BASE, chosen).ok
    assert v.client.remap(v.vm_id, TARGET, SHARED_BASE).ok
    landed = v.vm.memory.read(TARGET, PAGE)
    assert landed != chosen
    assert landed == v.vm.memory.mee.decrypt_page(TARGET, chosen)


@pytest.mark.parametrize("level", ENCRYPTED)
def test_a_private_page_remapped_onto_another_decrypts_to_garbage(launch, level):
    v = launch("password", level)
    assert v.client.remap(v.vm_id, TARGET, SECRETS_GPA).ok
    landed = v.vm.memory.read(TARGET, PAGE)
    assert v.secret not in landed
    assert landed == v.vm.memory.mee.decrypt_page(
        TARGET, v.vm.memory.mee.encrypt_page(SECRETS_GPA, v.vm.memory.read(SECRETS_GPA, PAGE)))


def test_plain_remap_moves_plaintext(launch):
    v = launch("password", Level.PLAIN)
    assert v.client.remap(v.vm_id, SHARED_BASE, SECRETS_GPA).ok
    assert v.secret in v.client.read_page(v.vm_id, SHARED_BASE)
    chosen = random.Random(2).randbytes(PAGE)
    assert v.client.write_page(v.vm_id, SHARED_BASE, chosen).ok
    assert v.client.remap(v.vm_id, TARGET, SHARED_BASE).ok
    assert v.vm.memory.read(TARGET, PAGE) == chosen


def test_a_counter_that_stops_before_its_limit_is_not_an_honest_run():
    """A remap at sev/sev-es leaves garbage in the counter's page: the counter jumps past
    its limit and the guest ends early.  The judge must call that tampered."""
    from tvmm.samples import expected_console_ok

    limit = (100).to_bytes(8, "little")
    counts = "".join(f"count={i}\n" for i in range(1, 21))
    assert expected_console_ok("counter", limit, counts)  # still running
    assert not expected_console_ok("counter", limit, counts + "ticks=0\n")
    full = "".join(f"count={i}\n" for i in range(1, 101)) + "ticks=0\n"
    assert expected_console_ok("counter", limit, full)


@pytest.mark.parametrize("level", ["plain", "sev", "sev-es"])
def test_page_remap_still_tampers_below_snp(level):
    from tvmm.judge import run_attack
    from tvmm_tools.attacks.memory_replay import PageRemap

    assert run_attack(PageRemap(), "counter", Level(level)).cell == "tampered"


# -- 3. exit fields >= 2**63 through the bytes ABI --------------------------------------

TOP = 1 << 63


def _wired(image, level: Level, inputs=()):
    """A VM launched over the bytes ABI (Platform.handle_bytes), as a node process runs it."""
    from tvmm.host.devices import BlockDevice, Console, InputDevice
    from tvmm.host.hypervisor import Devices, HonestHypervisor
    from tvmm.machine import DEFAULT_MEMORY, make_machine

    machine = make_machine(seed=0, image=image, level=level, wire=True)
    host = HonestHypervisor(machine.client, Devices(Console(), BlockDevice(None),
                                                    InputDevice(list(inputs))))
    host.launch(image, level, DEFAULT_MEMORY)
    return machine, host


@pytest.mark.parametrize("level", [Level.PLAIN, Level.SEV])
@pytest.mark.parametrize("rip", [TOP, (1 << 64) - 16])
def test_a_host_set_rip_of_2_63_comes_back_as_an_exit_not_a_traceback(images, level, rip):
    """Before: the FAULT record's RIP did not fit the codec's i64 and handle_bytes raised
    struct.error after the VM had already died."""
    from tvmm.hw.vcpu import RIP
    from tvmm.hw.vmsa import pack_plain, unpack_plain

    machine, host = _wired(images["hello"], level)
    first = machine.client.enter(host.vm).exit
    assert host.on_exit(first)  # the console write it asked for is answered
    regs = list(unpack_plain(first.state))
    regs[RIP] = rip
    reply = machine.client.enter(host.vm, state=pack_plain(tuple(regs)))
    # Where it stops depends on what Unicorn runs up there; its RIP is >= 2**63 anyway.
    assert reply.ok and reply.exit.get(Field.RIP) >= TOP
    assert reply.exit.seq == first.seq + 1
    assert machine.platform.vm(host.vm).vcpus[0].seq == reply.exit.seq + 1  # and it has it


BIG_SECTOR_GUEST = """#include "tvmm.h"
static u8 buf[512];
int main(void) {
    i64 got = block_read(%dUL, buf, sizeof buf);
    puts(got < 0 ? "refused\\n" : "read\\n");
    return -1;
}
"""


@pytest.fixture(scope="module")
def big_sector_image(tmp_path_factory):
    from tvmm import guestbuild
    from tvmm.samples import resolve

    src = tmp_path_factory.mktemp("guest") / "big_sector.c"
    src.write_text(BIG_SECTOR_GUEST % TOP)
    return resolve(str(guestbuild.build([src], src.with_suffix(".elf"))))[0]


@pytest.mark.parametrize("level", list(Level))
def test_a_guest_block_sector_of_2_63_reaches_the_host_over_the_bytes_abi(
        big_sector_image, level):
    """Before: the HYPERCALL record carrying the sector as ARG0 raised struct.error out of
    handle_bytes, at every level (the guest chooses the sector).  The host then ends the
    guest's request and the guest's exit status -1 travels as its 32 bits."""
    machine, host = _wired(big_sector_image, level)
    while True:
        reply = machine.client.enter(host.vm, state=host.state)
        assert reply.ok, reply
        rec = reply.exit
        host.state = rec.state
        if rec.reason == ExitReason.HYPERCALL and TOP in dict(rec.fields).values():
            break
        assert host.on_exit(rec)
    assert rec.get(Field.ARG0) == TOP
    machine.client.complete_io(host.vm, -5)  # the host refuses the read
    result = host.run()
    assert result.how == "exit" and result.status == -1
    assert "refused" in host.devices.console.text
    assert machine.platform.vm(host.vm).exit_status == -1


# -- 4. a VM_DEAD reply names its operand -------------------------------------------------

@pytest.mark.parametrize("wire", [False, True])
def test_the_reply_that_kills_a_vm_names_the_vm(launch, wire):
    """Before: the ENTER that killed the VM (here: a tampered sealed state) answered
    VM_DEAD with an empty operand, contrary to docs/abi.md."""
    v = launch("counter", "shim")
    first = v.client.enter(v.vm_id).exit
    v.host.on_exit(first)
    blob = first.state[:20] + bytes([first.state[20] ^ 1]) + first.state[21:]
    request = Enter(v.vm_id, 0, 0, blob)
    platform = v.machine.platform
    reply = (codec.decode(platform.handle_bytes(codec.encode(request))) if wire
             else platform.handle(request))
    assert (reply.result, reply.operand) == (Result.VM_DEAD, "vm")
    assert reply.exit.reason == ExitReason.KILLED
    later = platform.handle(Enter(v.vm_id, 0, 0))
    assert (later.result, later.operand) == (Result.VM_DEAD, "vm")
