"""TEE side of suspend/resume/migrate: EXPORT_VM / IMPORT_VM at every level."""

from __future__ import annotations

import json
import os
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim import management
from shim.launch import predict
from shim.management.stream import HEADER, Kind, StreamCipher, parse_header
from shim.platform import Platform
from shim.vm import VmState
from tvmm.abi import launch_secret
from tvmm.abi.messages import AddPages, Enter, ExportVm, ImportVm
from tvmm.abi.types import InjectMode, Level, PageType, Result
from tvmm.host.client import HostCallError, PlatformClient
from tvmm.host.hypervisor import Devices
from tvmm.host.node_host import PausableHost, export_round, import_stream
from tvmm.launch_plan import plan_launch
from tvmm.samples import build_sample

MEM = 4 << 20


@pytest.fixture(scope="module")
def image():
    return build_sample("counter")


def _launched(image, level: Level, count: int = 200):
    platform = Platform()
    client = PlatformClient(platform.handle)
    host = PausableHost(client, Devices())
    blob = launch_secret.wrap(count.to_bytes(8, "little"), platform.launch_public_key,
                              predict(plan_launch(image, MEM), level).digest)
    host.launch(image, level, MEM, secret_blob=blob)
    return platform, client, host


def _counts(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"count=(\d+)", text)]


@pytest.mark.parametrize("level", list(Level))
def test_live_export_import_keeps_counting(image, level: Level) -> None:
    a, ca, host = _launched(image, level)
    host.run(max_exits=150)
    key = os.urandom(32)
    management.open_export(a.tee, host.vm, key, 7, "c-1", 2)
    bundles = list(export_round(ca, host.vm, 7, False))
    host.run(max_exits=300)  # the guest runs between pre-copy rounds
    bundles += list(export_round(ca, host.vm, 7, False))
    bundles += list(export_round(ca, host.vm, 7, True))
    kinds = [parse_header(b).kind for b in bundles]
    assert kinds[0] == Kind.HEAD and kinds[-2:] == [Kind.STATE, Kind.END]
    assert kinds.count(Kind.PAGES) >= 2
    # the frozen source cannot run
    assert ca.call(Enter(host.vm, 0, 0, host.state)).result == Result.VM_DEAD
    b = Platform()
    cb = PlatformClient(b.handle)
    management.open_import(b.tee, key, 7, "c-1", 2)
    vm2, state = import_stream(cb, 7, level, MEM, bundles, a.tee.vms[host.vm].policy)
    # the destination maps all memory, as launch does (at shim entry needs it: pinning)
    assert b.tee.vms[vm2].memory.mapped == bytes([1]) * (MEM // 4096)
    assert cb.call(Enter(vm2, 0, 0, state)).result == Result.VM_DEAD  # before the commit
    assert management.activate(b.tee, vm2)
    management.destroy_frozen(a.tee, host.vm)
    h2 = PausableHost(cb, Devices())
    h2.vm, h2.state = vm2, state
    result = h2.run()
    assert result.how == "exit" and result.status == 0
    assert _counts(host.devices.console.text + h2.devices.console.text) == list(range(1, 201))


def test_a_pending_virtual_interrupt_travels_with_the_vm(image) -> None:
    """A virtual interrupt the host posted and the guest has not taken yet (it waits for
    IF = 1) is part of the vCPU's state: the destination delivers it, as the source would."""
    a, ca, host = _launched(image, Level.PLAIN)
    host.run(max_exits=20)
    ca.inject(host.vm, 0x20, mode=InjectMode.VIRTUAL)
    assert list(a.tee.vms[host.vm].vcpus[0].virqs) == [0x20]
    key = os.urandom(32)
    management.open_export(a.tee, host.vm, key, 5, "c-5", 2)
    bundles = [bytes(b) for b in export_round(ca, host.vm, 5, True)]
    b = Platform()
    cb = PlatformClient(b.handle)
    management.open_import(b.tee, key, 5, "c-5", 2)
    vm2, _state = import_stream(cb, 5, Level.PLAIN, MEM, bundles, a.tee.vms[host.vm].policy)
    assert list(b.tee.vms[vm2].vcpus[0].virqs) == [0x20]


def _stream(image, level=Level.SHIM):
    a, ca, host = _launched(image, level)
    host.run(max_exits=100)
    key = os.urandom(32)
    management.open_export(a.tee, host.vm, key, 9, "c-9", 3)
    bundles = [bytes(b) for b in export_round(ca, host.vm, 9, True)]  # as a socket gives them
    return key, bundles, a.tee.vms[host.vm].policy


def _dest(key: bytes, policy: int, level=Level.SHIM):
    b = Platform()
    cb = PlatformClient(b.handle)
    management.open_import(b.tee, key, 9, "c-9", 3)
    vm = cb.create_vm(level, MEM, 0x100000, 0x40000, policy)
    return b, cb, vm


@pytest.mark.parametrize("tamper", ["replay", "reorder", "drop", "flip", "wrong_epoch"])
def test_tampered_streams_are_refused_and_reported(image, tamper: str) -> None:
    key, bundles, policy = _stream(image)
    seq = list(bundles)
    if tamper == "replay":
        seq.insert(2, seq[1])
    elif tamper == "reorder":
        seq[1], seq[2] = seq[2], seq[1]
    elif tamper == "drop":
        del seq[1]
    elif tamper == "flip":
        raw = bytearray(seq[1])
        raw[HEADER.size + 5] ^= 1
        seq[1] = bytes(raw)
    b, cb, vm = _dest(key, policy)
    if tamper == "wrong_epoch":
        management.close(b.tee, 9)
        management.open_import(b.tee, key, 9, "c-9", 4)
    results = [cb.call(ImportVm(vm, 9, bundle)).result for bundle in seq]
    assert Result.DENIED in results
    after = results[results.index(Result.DENIED) + 1:]
    assert all(r == Result.DENIED for r in after)  # a refused stream stays refused
    events = management.drain_events(b.tee)
    assert events and events[0]["event"] == "stream_refused"
    assert not b.tee.vms[vm].state == 2  # never runnable


def test_a_refused_first_bundle_leaves_the_empty_vm_as_it_was(image) -> None:
    """Found by tvmm_tools/fuzz (host-abi): a tampered first bundle was refused but left the
    empty VM sealed off (DEAD) and bound to the failed stream.  A refusal changes nothing."""
    key, bundles, policy = _stream(image)
    b, cb, vm = _dest(key, policy)
    raw = bytearray(bundles[0])
    raw[40] ^= 1
    assert cb.call(ImportVm(vm, 9, bytes(raw))).result in (Result.DENIED, Result.BAD_OPERAND)
    assert b.tee.vms[vm].state == VmState.CREATED
    reply = cb.call(AddPages(vm, 0x300000, PageType.NORMAL, 1, bytes(4096)))
    assert reply.result == Result.OK  # the host's empty VM, usable again


def test_importing_vm_is_sealed_off(image) -> None:
    key, bundles, policy = _stream(image)
    b, cb, vm = _dest(key, policy)
    assert cb.call(ImportVm(vm, 9, bundles[0])).result == Result.OK
    # the host cannot add pages to (or finalize, or enter) a VM being imported
    reply = cb.call(AddPages(vm, 0x300000, PageType.NORMAL, 1, bytes(4096)))
    assert reply.result == Result.VM_DEAD
    assert cb.call(ImportVm(vm, 9, b"garbage")).result == Result.BAD_OPERAND


def test_unanswered_request_blocks_the_freeze(image) -> None:
    a, ca, host = _launched(image, Level.SHIM)
    reply = ca.enter(host.vm)  # the first exit: a console request waits for COMPLETE_IO
    assert reply.exit is not None
    management.open_export(a.tee, host.vm, os.urandom(32), 5, "x", 2)
    with pytest.raises(HostCallError) as exc:
        list(export_round(ca, host.vm, 5, True))
    assert exc.value.result == Result.BAD_STATE


def test_export_needs_an_agent_session(image) -> None:
    _a, ca, host = _launched(image, Level.SNP)
    assert ca.call(ExportVm(host.vm, 1234, True)).result == Result.BAD_OPERAND


@pytest.mark.parametrize("max_pages", [1, 7, 256])
def test_frozen_export_sends_exactly_the_nonzero_pages(image, max_pages: int) -> None:
    """The first round's scan runs along with the stream: every page that is not zero
    goes out once, in bundles of at most ``max_pages``, and the destination's memory
    equals the source's byte for byte (a page with one non-zero byte at its end too)."""
    a, ca, host = _launched(image, Level.SHIM)
    host.run(max_exits=50)
    vm = a.tee.vms[host.vm]
    marks = (0x180000, 0x181000 + 4095, 0x300000, 0x3FF000)  # sparse, one at a page's end
    for gpa in marks:
        vm.vcpu.mem_write(gpa, b"\x5a")
    before = vm.vcpu.mem_read(0, MEM)
    nonzero = sum(1 for p in range(MEM // 4096) if before[p * 4096:(p + 1) * 4096].strip(b"\0"))
    key = os.urandom(32)
    management.open_export(a.tee, host.vm, key, 9, "c-1", 2)
    bundles = list(export_round(ca, host.vm, 9, True, max_pages))
    headers = [parse_header(b) for b in bundles]
    pages = [h.items for h in headers if h.kind == Kind.PAGES]
    assert sum(pages) == nonzero and max(pages) <= max_pages
    b = Platform()
    cb = PlatformClient(b.handle)
    management.open_import(b.tee, key, 9, "c-1", 2)
    vm2, _state = import_stream(cb, 9, Level.SHIM, MEM, bundles, vm.policy)
    assert b.tee.vms[vm2].vcpu.mem_read(0, MEM) == before


def _pages_of(key: bytes, bundle: bytes) -> set[int]:
    header, payload = StreamCipher(key).open(bundle)
    if header.kind != Kind.PAGES:
        return set()
    return set(struct.unpack_from(f"<{header.items}I", payload, header.items * 4096))


def test_a_reordered_live_stream_is_refused_at_the_counter(image) -> None:
    """A page sent in the first pre-copy round and again, changed, in the second: the
    host delivers the second round's bundle before the first's.  Each bundle alone is
    authentic (its nonce is its own counter) and the END count still matches, so only the
    counter check stands between this and a guest resumed on the stale page."""
    a, ca, host = _launched(image, Level.SHIM)
    host.run(max_exits=50)
    vm = a.tee.vms[host.vm]
    page = 0x300000 // 4096
    vm.vcpu.mem_write(page * 4096, b"old")
    key = os.urandom(32)
    management.open_export(a.tee, host.vm, key, 9, "c-9", 3)
    first = [bytes(b) for b in export_round(ca, host.vm, 9, False)]
    vm.vcpu.mem_write(page * 4096, b"new")
    rest = [bytes(b) for b in export_round(ca, host.vm, 9, True)]
    i = next(k for k, b in enumerate(first) if page in _pages_of(key, b))
    j = len(first) + next(k for k, b in enumerate(rest) if page in _pages_of(key, b))
    seq = first + rest
    seq[i], seq[j] = seq[j], seq[i]
    b, cb, _vm = _dest(key, vm.policy)
    with pytest.raises(HostCallError) as exc:
        import_stream(cb, 9, Level.SHIM, MEM, seq, vm.policy)
    assert exc.value.result == Result.DENIED
    refused = management.drain_events(b.tee)
    assert [e["check"] for e in refused] == ["counter"]
    assert not management.state(b.tee).awaiting_commit  # no VM completed


def _sealed(key: bytes, kind: Kind, counter: int, payload: bytes) -> bytes:
    return bytes(StreamCipher(key).seal_parts(kind, 9, counter, [payload]))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                     lambda inner: st.lists(inner, max_size=3), max_leaves=6)
_KEYS = ["vm", "epoch", "level", "memory", "shared", "policy", "digest", "entry", "code",
         "rip", "seq", "retired", "entries", "registered", "irqs", "virqs", "tsc", "pending",
         "completion", "added", "bounce", "bundles"]


def _state_payload(meta: bytes) -> bytes:
    return struct.pack("<I", len(meta)) + meta


_PAYLOADS = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=12)
    .map(lambda d: json.dumps(d).encode()).flatmap(
        lambda raw: st.sampled_from([raw, _state_payload(raw)])),
    st.sampled_from([b"[" * 100_000, b"9" * 5000, b'{"vm": "c-9", "epoch": 3}', b"{}",
                     b"\x05\0\0\0" + b"[" * 50, b'{"bundles": ' + b"9" * 5000 + b"}",
                     b'{"bundles": "x"}', b"null", b"[]"]),
)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([Kind.HEAD, Kind.STATE, Kind.END]), _PAYLOADS)
def test_authentic_garbage_payloads_are_denied(image, kind: Kind, payload: bytes) -> None:
    """Whatever an authentic bundle carries, the importer refuses it (DENIED, "payload"
    or "kind") or accepts it; it never raises anything else through IMPORT_VM."""
    key, bundles, policy = _STREAM_CACHE.setdefault("s", _stream(image))
    kinds = [parse_header(x).kind for x in bundles]
    at = kinds.index(kind)
    b, cb, vm = _dest(key, policy)
    for bundle in bundles[:at]:
        assert cb.call(ImportVm(vm, 9, bundle)).result == Result.OK
    reply = cb.call(ImportVm(vm, 9, _sealed(key, kind, at, payload)))
    assert reply.result in (Result.OK, Result.DENIED)
    if reply.result == Result.DENIED:
        assert [e["check"] for e in management.drain_events(b.tee)] == ["payload"]


_STREAM_CACHE: dict = {}
