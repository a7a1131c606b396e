"""Every host call is validated: a malformed, out-of-range or out-of-state request gets an
error reply naming the operand, and changes nothing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim.platform import Platform
from tvmm.abi import codec
from tvmm.abi.guest import SHARED_BASE, SHARED_SIZE
from tvmm.abi.messages import (
    AddPages,
    CompleteIo,
    CreateVm,
    Destroy,
    Enter,
    Finalize,
    Inject,
    Map,
    ReadPage,
    Remap,
    Unmap,
    WritePage,
)
from tvmm.abi.types import Level, PageType, Result

MEM = 4 << 20


def fresh_vm(platform: Platform, level: Level = Level.SNP) -> int:
    reply = platform.handle(CreateVm(level, MEM, SHARED_BASE, SHARED_SIZE))
    assert reply.ok
    return reply.value


@pytest.mark.parametrize("request_, result, operand", [
    (CreateVm(Level.SNP, 4096, SHARED_BASE, SHARED_SIZE), Result.BAD_OPERAND, "memory_size"),
    (CreateVm(Level.SNP, MEM + 1, SHARED_BASE, SHARED_SIZE), Result.BAD_OPERAND, "memory_size"),
    (CreateVm(Level.SNP, MEM, SHARED_BASE + 1, SHARED_SIZE), Result.BAD_OPERAND, "shared_base"),
    (CreateVm(Level.SNP, MEM, SHARED_BASE, SHARED_SIZE, policy=1 << 40), Result.BAD_OPERAND,
     "policy"),
    (CreateVm("tdx", MEM, SHARED_BASE, SHARED_SIZE), Result.MALFORMED, "level"),
    (CreateVm(Level.SNP, "4MiB", SHARED_BASE, SHARED_SIZE), Result.MALFORMED, "memory_size"),
])
def test_create_vm_refusals(request_, result, operand):
    reply = Platform().handle(request_)
    assert (reply.result, reply.operand) == (result, operand)


def test_calls_check_operands_and_state():
    p = Platform()
    vm = fresh_vm(p)
    cases = [
        (AddPages(vm, 0x201, PageType.NORMAL, 1, bytes(4096)), Result.BAD_OPERAND, "gpa"),
        (AddPages(vm, 0x200000, PageType.NORMAL, 1, b"short"), Result.BAD_OPERAND, "data"),
        (AddPages(vm, SHARED_BASE, PageType.ZERO, 1), Result.BAD_OPERAND, "gpa"),
        (AddPages(vm, 0x200000, PageType.VMSA, 1), Result.BAD_OPERAND, "page_type"),
        (AddPages(vm, MEM, PageType.ZERO, 1), Result.BAD_OPERAND, "gpa"),
        (Enter(vm, 0, 0), Result.BAD_STATE, "vm"),
        (CompleteIo(vm, 0, 1), Result.BAD_STATE, "vm"),
        (Finalize(vm, 0x200000), Result.BAD_OPERAND, "entry"),
        (Map(vm, 0, 0), Result.BAD_OPERAND, "count"),
        (Unmap(vm, 0xFFF, 1), Result.BAD_OPERAND, "gpa"),
        (ReadPage(vm, MEM), Result.BAD_OPERAND, "gpa"),
        (WritePage(vm, 0x1000, bytes(10)), Result.BAD_OPERAND, "data"),
        (Remap(vm, 0x1000, MEM), Result.BAD_OPERAND, "source"),
        (Inject(vm, 0, 32), Result.BAD_STATE, "vm"),
        (ReadPage(vm + 7, 0), Result.NO_VM, "vm"),
        (Destroy("1"), Result.MALFORMED, "vm"),
    ]
    for request, result, operand in cases:
        reply = p.handle(request)
        assert (reply.result, reply.operand) == (result, operand), request
    assert p.vm(vm).digest.pages == ()  # nothing was measured by the refused calls


def test_non_requests_are_refused():
    p = Platform()
    assert p.handle("CREATE_VM").result == Result.MALFORMED
    assert p.handle(object()).result == Result.MALFORMED
    assert codec.decode(p.handle_bytes(b"\x00")).result == Result.MALFORMED
    assert codec.decode(p.handle_bytes(b"\x00\x80" + bytes(30))).result == Result.MALFORMED


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=120))
def test_random_bytes_into_the_platform_get_an_error_reply(raw):
    p = Platform()
    vm = fresh_vm(p)
    before = (dict(p.tee.vms), p.vm(vm).state, p.vm(vm).digest.digest)
    reply = codec.decode(p.handle_bytes(raw))
    if reply.result != Result.OK:
        assert (dict(p.tee.vms), p.vm(vm).state, p.vm(vm).digest.digest) == before


requests_for_running_vm = st.one_of(
    st.builds(Enter, vm=st.just(1), vcpu=st.integers(-3, 3), quantum=st.integers(-5, 1 << 41),
              state=st.binary(max_size=400)),
    st.builds(Map, vm=st.just(1), gpa=st.integers(-1, 1 << 24), count=st.integers(-1, 2000)),
    st.builds(Inject, vm=st.just(1), vcpu=st.integers(-1, 2), vector=st.integers(-5, 300),
              mode=st.integers(-1, 3)),
    st.builds(CompleteIo, vm=st.just(1), vcpu=st.integers(-1, 2), value=st.integers(-9, 9)),
    st.builds(WritePage, vm=st.just(1), gpa=st.integers(-1, 1 << 23),
              data=st.binary(max_size=10)),
    st.builds(AddPages, vm=st.just(1), gpa=st.integers(-1, 1 << 23),
              page_type=st.sampled_from(PageType), count=st.integers(-1, 3)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(st.lists(requests_for_running_vm, max_size=6))
def test_hostile_calls_never_break_a_guest_they_cannot_touch(launch, calls):
    """A hostile call is refused and changes nothing, or kills the VM (a bad sealed blob);
    after refused calls the guest finishes exactly as an honest run."""
    v = launch("modexp", "shim")
    for call in calls:
        reply = v.machine.platform.handle(call)
        if reply.result == Result.VM_DEAD:
            assert reply.exit is not None and reply.exit.reason.name == "KILLED"
            assert v.machine.platform.handle(Enter(1, 0, 0)).result == Result.VM_DEAD
            return
        if reply.ok and isinstance(call, (Enter, CompleteIo, WritePage, Map)):
            return  # an accepted call changes the run; the other tests judge those
    result = v.host.run()
    assert result.how == "exit" and result.status == 0
    assert "result=" in v.devices.console.text
