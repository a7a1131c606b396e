"""The fuzzers' oracles catch what they are for: each test plants the bug an oracle
guards against (by monkeypatching the TEE) and checks that the oracle fires, and that
the unpatched TEE passes the same program."""

from __future__ import annotations

import pytest

from tvmm.abi import codec
from tvmm.abi.messages import AddPages, CreateVm, Map, ReadPage, WritePage
from tvmm.abi.types import DEFAULT_POLICY, Level, PageType, Result
from tvmm_tools.fuzz import guest, host, parsers
from tvmm_tools.fuzz.engine import finding_of
from tvmm_tools.fuzz.input import Choices
from tvmm_tools.fuzz.known import known_id
from tvmm_tools.fuzz.targets import OracleViolation

PAGE = 0x1000


def session() -> host.Session:
    return host.Session(Choices(b""))


def running(level: Level) -> tuple[host.Session, int]:
    s = session()
    vm = host.launch(s, level)
    assert vm is not None and s.tee.vms[vm].state.name == "RUNNABLE"
    return s, vm


def test_write_to_a_private_page_is_caught_where_the_ownership_table_forbids_it(monkeypatch):
    s, vm = running(Level.SNP)
    page = WritePage(vm, host.MARKER_GPA, bytes(PAGE))
    assert s.call(page).result == Result.DENIED  # the real TEE: refused, nothing changed
    monkeypatch.setattr(s.tee.vms[vm].memory, "ownership", False)  # the planted bug
    with pytest.raises(OracleViolation) as exc:
        s.call(page)
    assert exc.value.oracle == "private_page_changed"


def test_a_refusal_that_changes_something_is_caught(monkeypatch):
    import shim.platform as platform

    s, vm = running(Level.SHIM)
    bad = Map(vm, 0x1001, 1)
    assert s.call(bad).result == Result.BAD_OPERAND
    call, handle, legal = platform._ROUTES[Map]

    def leaky(tee, vm_, req):
        vm_.memory.set_mapped(0, 1, False)  # changes the page table, then refuses
        return handle(tee, vm_, req)

    monkeypatch.setitem(platform._ROUTES, Map, (call, leaky, legal))
    with pytest.raises(OracleViolation) as exc:
        s.call(bad)
    assert exc.value.oracle == "refusal_changed_state"


def test_a_call_accepted_outside_its_states_is_caught(monkeypatch):
    import shim.platform as platform

    s, vm = running(Level.PLAIN)
    late = AddPages(vm, 0x8000, PageType.CPUID, 1)
    assert s.call(late).result == Result.BAD_STATE
    call, handler, legal = platform._ROUTES[AddPages]
    state = s.tee.vms[vm].state
    monkeypatch.setitem(platform._ROUTES, AddPages, (call, handler, legal | {state}))
    with pytest.raises(OracleViolation) as exc:
        s.call(late)
    assert exc.value.oracle == "illegal_call_accepted"


def test_plaintext_handed_to_the_host_is_caught(monkeypatch):
    s, vm = running(Level.SEV_ES)
    read = ReadPage(vm, host.MARKER_GPA)
    assert s.call(read).ok  # ciphertext: passes
    memory = s.tee.vms[vm].memory
    monkeypatch.setattr(memory, "mee", None)  # the planted bug: no encryption
    with pytest.raises(OracleViolation) as exc:
        s.call(read)
    assert exc.value.oracle in ("plaintext_in_reply", "private_page_plaintext")


def test_add_pages_writing_outside_its_pages_is_caught(monkeypatch):
    from shim import launch

    s = session()
    vm = s.call(CreateVm(Level.SNP, host.MEMORY, 0x100000, 0x40000, DEFAULT_POLICY)).value
    s.info[vm] = host.VmInfo(Level.SNP)
    add = AddPages(vm, 0x5000, PageType.CPUID, 1)
    assert s.call(add).ok
    original = launch.add_pages

    def spills(tee, vm_, gpa, page_type, count, data, executable):
        original(tee, vm_, gpa, page_type, count, data, executable)
        vm_.vcpu.mem_write(gpa + count * PAGE, b"\x01")  # one byte past the last page

    monkeypatch.setattr(launch, "add_pages", spills)
    with pytest.raises(OracleViolation) as exc:
        s.call(AddPages(vm, 0x8000, PageType.CPUID, 1))
    assert exc.value.oracle == "add_pages_outside_range"
    assert exc.value.context["page_type"] == "CPUID"


def test_a_launch_secret_installed_into_another_launch_is_caught(monkeypatch):
    """The red team's downgrade, as the host fuzzer plays it: the owner's blob for a sev
    launch in a plain one.  The TEE refuses FINALIZE; a TEE that installs it anyway (the
    planted bug: the digest check gone) is caught."""
    from shim import launch

    def launched_with_a_downgraded_blob() -> tuple[host.Session, int]:
        s = session()
        monkeypatch.setattr(host, "launch_digest", lambda level, marker, real=host.launch_digest:
                            real(Level.SEV, marker))
        vm = host.launch(s, Level.PLAIN, finalize=False)
        s.info[vm].unbound.append(s.info[vm].secret)
        monkeypatch.undo()
        return s, vm

    s, vm = launched_with_a_downgraded_blob()
    reply = s.call(host.Finalize(vm, host._image().entry))
    assert (reply.result, reply.operand) == (Result.DENIED, "launch_secret")
    s, vm = launched_with_a_downgraded_blob()
    monkeypatch.setattr(launch, "_release_secrets", lambda tee, vm_, digest, real=(
        launch._release_secrets): real(tee, vm_, vm_.pending_secrets[0][1].launch_digest))
    with pytest.raises(OracleViolation) as exc:
        s.call(host.Finalize(vm, host._image().entry))
    assert exc.value.oracle == "unbound_secret_installed"


def test_an_exception_out_of_handle_bytes_is_not_swallowed(monkeypatch):
    import shim.platform as platform

    s, vm = running(Level.PLAIN)
    call, _, legal = platform._ROUTES[ReadPage]
    monkeypatch.setitem(platform._ROUTES, ReadPage, (call, lambda *a: 1 // 0, legal))
    with pytest.raises(ZeroDivisionError):
        s.call(ReadPage(vm, 0))


def test_parser_oracles_fire_on_a_wrong_error_and_a_broken_round_trip(monkeypatch):
    seed = parsers.seeds_abi()[0]
    parsers.run_abi(seed)
    monkeypatch.setattr(codec, "encode", lambda m: b"\0\0")
    with pytest.raises(OracleViolation) as exc:
        parsers.run_abi(seed)
    assert exc.value.oracle == "round_trip"
    monkeypatch.setattr(codec, "decode", lambda data: {}[0])
    with pytest.raises(KeyError):
        parsers.run_abi(seed)


def test_every_parser_passes_its_seeds_but_for_known_findings():
    for name in ("abi-codec", "wire", "checkpoint", "stream", "trace"):
        for s in parsers.seeds(name):
            try:
                parsers.runner(name)(s)
            except Exception as exc:  # a boundary seed may hit a finding being fixed
                assert known_id(finding_of(name, exc)) is not None, exc


def test_the_guest_fuzzer_ends_as_documented_and_the_oracle_fires_when_it_does_not(
        monkeypatch):
    narrow = bytes([4]) + (12345).to_bytes(8, "little") + (30).to_bytes(2, "little") + b"\0"
    assert guest.run(narrow) > 0  # shim, arguments below 2**63: the guest exits
    monkeypatch.setattr(guest, "MAX_EXITS", 3)
    with pytest.raises(OracleViolation) as exc:
        guest.run(narrow)
    assert exc.value.oracle == "run_end"
