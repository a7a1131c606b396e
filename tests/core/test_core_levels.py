"""What the host can and cannot read and write, level by level."""

from __future__ import annotations

import pytest

from tvmm.abi.guest import SECRETS_GPA, SHARED_BASE
from tvmm.abi.types import ExitReason, Field, Level, Result
from tvmm.hw.vcpu import NSLOTS, RIP
from tvmm.hw.vmsa import VMSA_SIZE, pack_plain, unpack_plain

LEVELS = [lv.value for lv in Level]


def first_exit(v):
    reply = v.client.enter(v.vm_id)
    assert reply.ok
    return reply.exit


@pytest.mark.parametrize("level", LEVELS)
def test_private_memory_is_plaintext_only_at_plain(launch, level):
    v = launch("modexp", level)
    page = v.client.read_page(v.vm_id, SECRETS_GPA)
    assert (v.secret in page) == (level == "plain")


@pytest.mark.parametrize("level", LEVELS)
def test_private_ciphertext_is_hidden_at_shim_only(launch, level):
    """SEV-SNP ciphertext hiding at shim: READ_PAGE of a private page is all ones, whatever
    it holds (the host cannot even tell when it changes).  Below shim the ciphertext is
    deterministic: the same plaintext reads back the same, a change shows (CipherLeaks)."""
    v = launch("counter", level)
    before = v.client.read_page(v.vm_id, SECRETS_GPA)
    v.vm.memory.write(SECRETS_GPA, (7).to_bytes(8, "little"))  # the guest changes it
    after = v.client.read_page(v.vm_id, SECRETS_GPA)
    again = v.client.read_page(v.vm_id, SECRETS_GPA)
    if level == "shim":
        assert before == after == b"\xff" * 4096
    else:
        assert before != after and after == again and after != b"\xff" * 4096


@pytest.mark.parametrize("level", LEVELS)
def test_shared_memory_is_plaintext_at_every_level(launch, level):
    v = launch("hello", level)
    rec = first_exit(v)
    assert rec.reason == ExitReason.HYPERCALL
    text = v.client.read_shared(v.vm_id, SHARED_BASE, 64)
    assert b"hello from a tvmm guest" in text


@pytest.mark.parametrize("level", LEVELS)
def test_register_state_per_level(launch, level):
    v = launch("hello", level)
    rec = first_exit(v)
    if level in ("plain", "sev"):
        regs = unpack_plain(rec.state)
        assert regs[RIP] == rec.get(Field.RIP)
        assert len(regs) == NSLOTS
    elif level in ("sev-es", "snp"):
        assert len(rec.state) == VMSA_SIZE
        assert rec.get(Field.RIP) is None  # the host does not learn RIP
        assert unpack_plain(rec.state)[RIP] != v.vm.vcpus[0].rip  # ciphertext, not the truth
    else:
        assert len(rec.state) == VMSA_SIZE + 28  # nonce + sealed register state + tag
        assert rec.get(Field.RIP) is None and rec.get(Field.NR) is None


def test_deterministic_encryption_repeats_and_sealing_never_does(launch):
    """Same registers → same ciphertext at sev-es (the CipherLeaks premise); AEAD with a
    fresh nonce at shim gives different bytes each time."""
    for level, should_repeat in (("sev-es", True), ("shim", False)):
        v = launch("hello", level)
        vm, ctx = v.vm, v.vm.vcpus[0]
        plain = pack_plain(vm.vcpu.read_state(), ctx.index)
        if vm.features.sealed_state:
            a = vm.sealer.seal(plain, vm.id, 0, 0)
            b = vm.sealer.seal(plain, vm.id, 0, 0)
        else:
            a = vm.vmsa_cipher.encrypt(plain)
            b = vm.vmsa_cipher.encrypt(plain)
        assert (a == b) == should_repeat


@pytest.mark.parametrize("level, lands", [("plain", True), ("sev", True), ("sev-es", True),
                                          ("snp", False), ("shim", False)])
def test_host_writes_to_private_memory(launch, level, lands):
    v = launch("modexp", level)
    before = v.client.read_page(v.vm_id, SECRETS_GPA)
    forged = bytes(4096)
    reply = v.client.write_page(v.vm_id, SECRETS_GPA, forged)
    if lands:
        assert reply.ok
        assert v.vm.memory.read(SECRETS_GPA, 8) != v.secret[:8]
    else:
        assert reply.result == Result.DENIED and reply.operand == "gpa"
        assert v.client.read_page(v.vm_id, SECRETS_GPA) == before
        assert v.vm.memory.read(SECRETS_GPA + 8, 8) == v.secret[:8]


@pytest.mark.parametrize("level, works", [("sev", True), ("sev-es", True), ("snp", False)])
def test_ciphertext_replay_restores_old_plaintext_below_snp(launch, level, works):
    v = launch("counter", level)
    gpa = SECRETS_GPA  # the counter's limit lives there
    old = v.client.read_page(v.vm_id, gpa)
    v.vm.memory.write(gpa, (7).to_bytes(8, "little"))  # the guest changes it (inside)
    assert v.client.read_page(v.vm_id, gpa) != old  # the host sees the ciphertext change
    reply = v.client.write_page(v.vm_id, gpa, old)
    assert reply.ok == works
    restored = v.vm.memory.read(gpa, 8) != (7).to_bytes(8, "little")
    assert restored == works


@pytest.mark.parametrize("level, refused", [("sev", False), ("snp", True), ("shim", True)])
def test_enter_with_a_changed_register_state(launch, level, refused):
    v = launch("hello", level)
    rec = first_exit(v)
    v.client.complete_io(v.vm_id, 24)
    changed = bytes([rec.state[0] ^ 1]) + rec.state[1:]
    reply = v.client.enter(v.vm_id, state=changed)
    if level == "sev":
        assert reply.ok
    elif level == "snp":
        assert reply.result == Result.DENIED and reply.operand == "state"
    else:
        assert reply.result == Result.VM_DEAD and reply.exit.reason == ExitReason.KILLED


def test_core_levels_save_area_is_the_packed_register_file(launch):
    """The vCPU's save area (read straight into VMSA slots) equals pack_plain of its
    registers for every vCPU index, and a register write is seen by the next read."""
    from tvmm.hw.vcpu import RAX
    from tvmm.hw.vmsa import slot_tags

    vcpu = launch("hello", "plain").vm.vcpu
    for index in (0, 1, 0):
        assert vcpu.save_area(slot_tags(index)) == pack_plain(vcpu.read_state(), index)
    vcpu.write_reg(RAX, 0x1234)
    assert vcpu.read_regs()[RAX] == 0x1234
    assert unpack_plain(vcpu.save_area(slot_tags(0)))[RAX] == 0x1234
