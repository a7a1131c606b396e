"""The shim's mechanisms on the sample guests: sealed state, sanitised exits, step and
fault policies, the interrupt filter, bounce buffers, and the benign suite."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shim.policies.config import PolicyConfig, PolicyConfigError, Response, from_mapping, load
from shim.views import ALLOWED, View
from tvmm.abi.types import Device, ExitReason, Field, KillReason, Level, Result
from tvmm.host.hypervisor import HonestHypervisor
from tvmm.machine import boot


def run_to_first(v, reason):
    while True:
        rec = v.client.enter(v.vm_id, state=v.host.state).exit
        v.host.state = rec.state
        if rec.reason == reason:
            return rec
        assert v.host.on_exit(rec)


@pytest.mark.parametrize("level", list(Level))
@pytest.mark.parametrize("size", [1, 28, 288, 316])
def test_state_before_the_first_entry_is_refused_and_changes_nothing(launch, level, size):
    """There is no state before the first exit: any bytes there are a bad operand at
    every level (at shim, too: not a crash, not a kill), and the VM then runs normally."""
    v = launch("hello", level)
    reply = v.client.enter(v.vm_id, state=bytes(size))
    assert (reply.result, reply.operand) == (Result.BAD_OPERAND, "state")
    assert v.client.enter(v.vm_id).exit.reason != ExitReason.KILLED


@pytest.mark.parametrize("mutate", ["flip", "replay", "other_vm", "empty"])
def test_bad_sealed_state_kills_the_vm(launch, images, mutate):
    v = launch("counter", "shim")
    first = v.client.enter(v.vm_id).exit
    v.host.on_exit(first)
    second = v.client.enter(v.vm_id, state=first.state).exit
    v.host.on_exit(second)
    blob = {
        "flip": second.state[:20] + bytes([second.state[20] ^ 0x04]) + second.state[21:],
        "replay": first.state,
        "other_vm": None,
        "empty": b"",
    }[mutate]
    if mutate == "other_vm":
        other = launch("counter", "shim", seed=0)
        o_first = other.client.enter(other.vm_id).exit
        blob = o_first.state  # a valid blob, of another VM with the same numbers
    reply = v.client.enter(v.vm_id, state=blob)
    assert reply.result == Result.VM_DEAD
    assert reply.exit.reason == ExitReason.KILLED
    assert reply.exit.get(Field.KILL_REASON) == KillReason.SEALED_STATE
    assert v.vm.kill_reason == KillReason.SEALED_STATE
    assert v.client.enter(v.vm_id, state=second.state).result == Result.VM_DEAD


def test_exit_fields_match_the_documented_table(tmp_path):
    for level, view in ((Level.PLAIN, View.FULL), (Level.SNP, View.RESTRICTED),
                        (Level.SHIM, View.SANITISED)):
        for guest in ("kvstore", "password", "counter"):
            import json

            trace = tmp_path / f"{guest}-{level.value}.jsonl"
            boot(guest, level, trace=trace, quantum=5000)
            for line in trace.read_text().splitlines()[1:]:
                event = json.loads(line)
                if event["kind"] != "exit":
                    continue
                reason = ExitReason[event["name"].upper()]
                shown = {Field[name.upper()] for name in event["outside"]["fields"]}
                assert shown <= ALLOWED[view][reason], (level, reason, shown)


def test_quantum_one_cannot_single_step_at_shim(launch):
    v = launch("modexp", "shim", policy_config=PolicyConfig(step_response=Response.NOTIFY))
    retired = Counter()  # the TEE's own count per timed entry (the host is not shown it)
    ctx = v.vm.vcpus[0]
    for _ in range(200):
        before = ctx.retired
        reply = v.client.enter(v.vm_id, quantum=1, state=v.host.state)
        rec = reply.exit
        v.host.state = rec.state
        if rec.reason == ExitReason.TIMER:
            assert rec.fields == ()
            retired[ctx.retired - before] += 1
        elif not v.host.on_exit(rec) or rec.reason == ExitReason.SHUTDOWN:
            break
    assert retired and 1 not in retired  # never exactly one instruction
    assert min(retired) >= 2 and max(retired) <= 33
    assert v.vm.policies.violations  # and the short entries were noticed


def test_single_stepping_is_detected_and_terminated_by_default(launch):
    v = launch("modexp", "shim")
    exits = 0
    while exits < 500:
        exits += 1
        reply = v.client.enter(v.vm_id, quantum=1, state=v.host.state)
        v.host.state = reply.exit.state
        if reply.exit.reason == ExitReason.KILLED:
            assert (reply.result, reply.operand) == (Result.VM_DEAD, "vm")
            assert reply.exit.get(Field.KILL_REASON) == KillReason.STEP_POLICY
            break
        v.host.on_exit(reply.exit)
    else:
        pytest.fail("single-stepping went unnoticed")
    assert exits <= 70


def test_repeated_faults_at_one_rip_trip_the_tdx_rule(launch, images):
    """The TDX rule under pinning (which is on by default and refuses the first unmapped
    entry: test_an_unmapped_private_page_refuses_entry)."""
    v = launch("modexp", "shim", policy_config=PolicyConfig(pin_working_set=False))
    mul = images["modexp"].symbol("modexp_multiply") & ~0xFFF
    faults = 0
    refused = False
    for _ in range(400):
        v.client.unmap(v.vm_id, mul)
        reply = v.client.enter(v.vm_id, state=v.host.state)
        if reply.result == Result.ENTRY_REFUSED:
            refused = True
            v.client.map(v.vm_id, mul)  # the host must map the listed pages to go on
            assert v.client.enter(v.vm_id, state=v.host.state).ok
            break
        rec = reply.exit
        v.host.state = rec.state
        if rec.reason == ExitReason.NPF:
            faults += 1
            assert rec.get(Field.GPA) is None and rec.get(Field.GPA_PAGE) == mul >> 12
            v.client.map(v.vm_id, mul)
        elif rec.reason == ExitReason.SHUTDOWN:
            break
        else:
            v.host.on_exit(rec)
    assert refused and faults == 7
    assert [x.policy for x in v.vm.policies.violations][:1] == ["fault_rule"]


def test_the_fault_budget_allows_exactly_its_budget():
    """``fault_budget`` faults in a window are allowed; one more is over (the boundary)."""
    from shim.policies.faults import FaultPolicy

    policy = FaultPolicy(PolicyConfig(fault_budget=3, fault_same_rip=100))
    over = [policy.record(0x200000 + i, 0x300000, retired=0)[1] for i in range(5)]
    assert over == [False, False, False, True, True]


@pytest.mark.parametrize("budget", [1, 4])
def test_the_vm_is_killed_at_the_first_fault_over_its_budget(launch, images, budget):
    """The host unmaps a page the guest uses, again and again: the VM runs on after
    ``budget`` faults and is killed (FAULT_POLICY) at the entry after fault budget + 1."""
    config = PolicyConfig(fault_budget=budget, fault_same_rip=1000, pin_working_set=False)
    v = launch("modexp", "shim", policy_config=config)
    mul = images["modexp"].symbol("modexp_multiply") & ~0xFFF
    faults = 0
    for _ in range(400):
        v.client.unmap(v.vm_id, mul)
        reply = v.client.enter(v.vm_id, state=v.host.state)
        if reply.result == Result.VM_DEAD:
            assert reply.exit.get(Field.KILL_REASON) == KillReason.FAULT_POLICY
            break
        rec = reply.exit
        v.host.state = rec.state
        if rec.reason == ExitReason.NPF:
            faults += 1
            v.client.map(v.vm_id, mul)
        else:
            assert rec.reason != ExitReason.SHUTDOWN
            v.host.on_exit(rec)
    else:
        pytest.fail("the fault budget never tripped")
    assert faults == budget + 1


@pytest.mark.parametrize("where", ["code", "stack", "heap"])
def test_an_unmapped_private_page_refuses_entry(launch, images, where):
    """Pinning (the default at shim): a private page unmapped before an entry — code
    added at launch, or the stack and the free memory above the image, which launch never
    adds — refuses the entry with no instruction run, and the refusal is a violation (the
    judge scores it as a detection); once the host maps it back the guest runs on."""
    v = launch("modexp", "shim")
    page = {"code": images["modexp"].symbol("modexp_multiply") & ~0xFFF,
            "stack": v.vm.memory.size - 0x1000, "heap": 0x380000}[where]
    assert v.vm.memory.is_private(page) and (where == "code") == bool(v.vm.added[page >> 12])
    retired = v.vm.vcpus[0].retired
    v.client.unmap(v.vm_id, page)
    reply = v.client.enter(v.vm_id, state=v.host.state)
    assert reply.result == Result.ENTRY_REFUSED and v.vm.vcpus[0].retired == retired
    assert [x.policy for x in v.vm.policies.violations] == ["pinning"]
    assert [x.response for x in v.vm.policies.violations] == ["refuse"]
    v.client.map(v.vm_id, page)
    result = v.host.run()
    assert result.how == "exit" and result.status == 0


def test_a_private_page_unmapped_while_the_guest_runs_ends_the_vm(launch, images):
    """Entry saw every private page mapped; a fault on one can only come from an unmap
    while the guest ran (here: the vCPU's table changed behind the entry check, as another
    CPU's unmap would): the VM is killed at the fault and the host is not told its page."""
    v = launch("modexp", "shim")
    mul = images["modexp"].symbol("modexp_multiply") & ~0xFFF
    v.vm.vcpu.set_mapped(mul, 1, False)
    for _ in range(400):
        reply = v.client.enter(v.vm_id, state=v.host.state)
        rec = reply.exit
        v.host.state = rec.state
        assert rec.reason not in (ExitReason.NPF, ExitReason.SHUTDOWN)
        if rec.reason == ExitReason.KILLED:
            assert rec.get(Field.KILL_REASON) == KillReason.FAULT_POLICY
            assert rec.get(Field.GPA) is None and rec.get(Field.GPA_PAGE) is None
            break
        v.host.on_exit(rec)
    else:
        pytest.fail("the fault went unnoticed")
    assert [x.policy for x in v.vm.policies.violations] == ["pinning"]


@pytest.mark.parametrize("vector", [0, 3, 13, 14, 31, 0x80, 0x21])
def test_host_vectors_the_guest_did_not_register_never_arrive(launch, vector):
    v = launch("counter", "shim")
    v.client.inject(v.vm_id, vector)
    assert not v.vm.vcpus[0].irqs
    if vector < 32:  # an exception vector from the host is a violation, not just refused
        assert v.vm.policies.violations[-1].policy == "irq_filter"
    result = v.host.run()
    assert result.how == "exit" and result.status == 0


def test_registered_vectors_arrive_when_the_guest_can_take_them(launch):
    v = launch("counter", "shim", quantum=50)
    v.host.tick_vector = 0x20
    result = v.host.run()
    assert result.how == "exit"
    ticks = int(v.devices.console.text.split("ticks=")[1])
    assert ticks > 0 and not v.vm.policies.violations


class HostileLengths(HonestHypervisor):
    """Answers every device read with a length larger than asked, or a changed slot."""

    def __init__(self, *a, mode: str, **kw):
        super().__init__(*a, **kw)
        self.mode = mode

    def serve_device(self, device, slot, length, sector):
        if device != Device.INPUT:
            return super().serve_device(device, slot, length, sector)
        self.client.write_shared(self.vm, slot, b"A" * 64 + b"\x01" * 8)
        return length + 8 if self.mode == "oversize" else -(1 << 40)


@pytest.mark.parametrize("mode", ["oversize", "huge_negative"])
def test_hostile_lengths_never_reach_guest_logic(launch, mode):
    v = launch("password", "shim", host_cls=lambda *a, **k: HostileLengths(*a, mode=mode, **k))
    result = v.host.run()
    assert result.how == "exit" and "granted" not in v.devices.console.text
    assert v.vm.bounce.in_use() == 0


def test_bounce_exhaustion_is_back_pressure(launch):
    v = launch("hello", "shim")
    bounce = v.vm.bounce
    held = [bounce.start(Device.CONSOLE, 0x300000, 2048) for _ in range(bounce.nslots)]
    rec = v.client.enter(v.vm_id).exit
    assert rec.reason == ExitReason.HLT  # the guest waits; the host gets the CPU back
    v.host.state = rec.state
    for r in held:
        bounce.free(r)
    result = v.host.run()
    assert result.how == "exit" and v.devices.console.text.startswith("hello")


@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(value=st.integers(-(1 << 63), (1 << 63) - 1), garbage=st.binary(max_size=80))
def test_any_host_answer_to_a_device_read_is_checked(launch, value, garbage):
    v = launch("password", "shim", inputs=["x"])
    rec = run_to_first(v, ExitReason.HYPERCALL)
    if rec.get(Field.DEVICE) != Device.INPUT:
        rec = run_to_first(v, ExitReason.HYPERCALL)
    slot, length = rec.get(Field.SLOT), rec.get(Field.LENGTH)
    v.client.write_shared(v.vm_id, slot, garbage)
    v.client.complete_io(v.vm_id, value)
    result = v.host.run()
    assert result.how == "exit"
    if not 0 <= value <= length:
        assert "granted" not in v.devices.console.text
    assert v.vm.bounce.in_use() == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(value=st.integers(-(1 << 63), (1 << 63) - 1))
def test_a_console_write_is_taken_whole_or_failed(launch, value):
    """An outside red team acknowledged every console write one byte short: the program's
    libc wrote the tail again, so the host could repeat any suffix of the output, unnoticed.
    Any count but the whole write is now a violation and an I/O error for the guest; a host
    error (negative, in range) passes as before."""
    v = launch("hello", "shim")
    rec = run_to_first(v, ExitReason.HYPERCALL)
    assert rec.get(Field.DEVICE) == Device.CONSOLE
    length = rec.get(Field.LENGTH)
    v.client.complete_io(v.vm_id, value)
    v.host.run()
    refused = [r for r in v.vm.policies.violations if r.policy == "bounce"]
    assert bool(refused) == (value >= 0 and value != length), v.vm.policies.violations
    assert v.vm.bounce.in_use() == 0


def test_benign_suite_has_zero_violations(tmp_path):
    reports = [
        boot("kvstore", Level.SHIM, disk=tmp_path / "kv.img"),
        boot("counter", Level.SHIM, quantum=10_000, tick_vector=0x20),
        boot("counter", Level.SHIM, quantum=500, tick_vector=0x20),
        boot("password", Level.SHIM, input_lines=[f"try{i}" for i in range(300)]),
        boot("modexp", Level.SHIM, quantum=64),
    ]
    for r in reports:
        assert r.how == "exit" and r.violations == [], (r.guest, r.violations)


def test_policy_file_and_errors(tmp_path):
    good = tmp_path / "p.toml"
    good.write_text('[policy]\nstep_mode = "detect"\nfault_budget = 8\n')
    config = load(good)
    assert config.step_mode == "detect" and config.fault_budget == 8
    for text in ('[policy]\nnope = 1\n', '[policy]\nstep_mode = "sideways"\n',
                 '[policy]\nfault_budget = -1\n', "not toml ["):
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(PolicyConfigError):
            load(bad)
    assert from_mapping({"pin-working-set": True}).pin_working_set


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.one_of(st.integers(), st.text(max_size=5),
                                                        st.booleans()), max_size=4))
def test_policy_mappings_parse_or_fail_cleanly(values):
    try:
        from_mapping(values)
    except PolicyConfigError:
        pass


def test_sealing_known_answer_and_nonce_uniqueness():
    """The expected blobs are computed apart from shim.sealing: AES-256-GCM straight from
    cryptography, with the layout the module documents — nonce = 4-byte fixed field ‖
    u64 LE invocation counter from 1; associated data = b"TVMS" ‖ vm ‖ vcpu ‖ seq, each
    u64 LE; blob = nonce ‖ ciphertext ‖ tag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from shim.errors import IntegrityError
    from shim.sealing import StateSealer

    key, prefix, state = bytes(range(32)), b"\x01\x02\x03\x04", b"registers" * 4
    aad = b"TVMS" + (7).to_bytes(8, "little") + (0).to_bytes(8, "little") \
        + (42).to_bytes(8, "little")
    sealer = StateSealer(key, prefix)
    for count in (1, 2, 3):  # the counter part of the nonce, as seal draws it
        nonce = prefix + count.to_bytes(8, "little")
        assert sealer.seal(state, 7, 0, 42) == nonce + AESGCM(key).encrypt(nonce, state, aad)
    blob = sealer.seal_with_nonce(state, 7, 0, 42, bytes(12))
    assert blob == bytes(12) + AESGCM(key).encrypt(bytes(12), state, aad)
    blobs = {sealer.seal(state, 7, 0, 42) for _ in range(100)}
    assert len(blobs) == 100 and len({b[:12] for b in blobs}) == 100
    assert sealer.open(blob, 7, 0, 42) == state
    for vm, vcpu, seq in ((8, 0, 42), (7, 1, 42), (7, 0, 41)):
        with pytest.raises(IntegrityError):
            sealer.open(blob, vm, vcpu, seq)


@pytest.mark.parametrize("level", ["snp", "shim"])
def test_dirty_tracking_faults_are_served_inside(launch, images, level):
    """Live migration write-protects pages to find dirty ones: the guest's write faults are
    served inside the TEE (the host sees no NPF) and the written pages are reported."""
    v = launch("counter", level)
    vcpu, mapped = v.vm.vcpu, bytes(v.vm.memory.mapped)
    assert vcpu.track_dirty(mapped) == set()
    result = v.host.run()
    assert result.how == "exit" and result.exits.get("npf", 0) == 0
    dirty = vcpu.stop_dirty(bytes(v.vm.memory.mapped))
    assert images["counter"].symbol("counter") // 0x1000 in dirty
    assert images["counter"].entry // 0x1000 not in dirty  # code is never written
    assert "count=100" in v.devices.console.text
