"""The integrity and I/O attacks (docs/attacks.md, catalogue §6–10) and the model pieces
they rest on: the write-back buffer behind DROP_WRITES (CacheWarp), the instruction timer
after untimed runs, and unmapped code pages faulting again.  The matrix test runs every cell at seed 0; here
the attacks are run for other secrets too, and each defence is shown to be the thing that
stops its attack (switch it off and the attack works)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from shim import levels
from shim.host_calls.dispatch import HANDLERS, LEGAL_IN
from shim.platform import Platform
from shim.policies.config import PolicyConfig, StepMode
from shim.vm import VmState
from tvmm.abi import codec
from tvmm.abi.guest import SHARED_BASE, SHARED_SIZE
from tvmm.abi.messages import REQUESTS, DropWrites, Reply
from tvmm.abi.types import DEFAULT_POLICY, Call, ExitReason, Field, Level, Result
from tvmm.host.client import PlatformClient
from tvmm.host.devices import InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.hw.memory import GuestMemory
from tvmm.hw.vcpu import PAGE, RSP, StopKind, Vcpu
from tvmm.hw.writeback import DEFAULT_LINES, LINE, WriteBackBuffer
from tvmm.judge import run_attack
from tvmm.machine import DEFAULT_MEMORY, make_machine, wrap_secret
from tvmm.matrix import outcome_class
from tvmm.samples import SAMPLES, build_sample
from tvmm_tools.attacks.dropped_writes import DroppedWrites
from tvmm_tools.attacks.iago import PAYLOAD, IagoDoubleFetch, _LyingHost
from tvmm_tools.attacks.interrupt_injection import InterruptInjection
from tvmm_tools.attacks.memory_replay import MemoryReplay
from tvmm_tools.attacks.state_tamper import StateTamper, length_register

BELOW_SHIM = (Level.PLAIN, Level.SEV, Level.SEV_ES, Level.SNP)


def _launch(guest: str, level: Level, *, seed: int = 0, inputs=(), policy_config=None,
            host_cls=HonestHypervisor, **host_kw):
    image = build_sample(guest)
    secret = SAMPLES[guest].make_secret(random.Random(seed))
    machine = make_machine(seed=seed, image=image, level=level, policy_config=policy_config)
    host = host_cls(machine.client, Devices(input=InputDevice(inputs)), **host_kw)
    host.launch(image, level, DEFAULT_MEMORY,
                secret_blob=wrap_secret(machine, secret, image, level))
    return machine, host


# -- DROP_WRITES on the ABI ------------------------------------------------------------------
def test_drop_writes_is_a_call_of_the_abi():
    assert REQUESTS[Call.DROP_WRITES] is DropWrites
    assert codec.decode(codec.encode(DropWrites(7))) == DropWrites(7)
    assert Call.DROP_WRITES in HANDLERS and LEGAL_IN[Call.DROP_WRITES] == {VmState.RUNNABLE}


def test_drop_writes_is_refused_outside_a_running_vm():
    platform = Platform()
    vm = PlatformClient(platform.handle).create_vm(Level.SEV, DEFAULT_MEMORY, SHARED_BASE,
                                                   SHARED_SIZE, DEFAULT_POLICY)
    assert platform.handle(DropWrites(vm)).result == Result.BAD_STATE  # not finalized
    assert platform.handle(DropWrites(vm + 1)).result == Result.NO_VM
    wire = codec.decode(platform.handle_bytes(codec.encode(DropWrites(vm))))
    assert isinstance(wire, Reply) and wire.result == Result.BAD_STATE


def test_a_vm_that_never_drops_writes_has_no_write_back_model():
    machine, host = _launch("counter", Level.SEV)
    assert host.run().how == "exit"
    assert machine.platform.vm(host.vm).writeback is None


def test_only_the_shim_writes_back_at_every_exit():
    assert [levels.FEATURES[lv].commit_writes for lv in Level] == [False] * 4 + [True]


# -- the write-back buffer --------------------------------------------------------------------
def _store_program(addresses: list[int]) -> bytes:
    """mov [addr], rax for each address, then vmcall."""
    code = b"".join(b"\x48\x89\x04\x25" + a.to_bytes(4, "little") for a in addresses)
    return code + b"\x0f\x01\xc1"


def _memory(shared: range = range(0x8000, 0x9000)) -> GuestMemory:
    vcpu = Vcpu(0x10000, lambda leaf, sub: (0, 0, 0, 0))
    memory = GuestMemory(vcpu, shared, None, ownership=False)
    memory.set_mapped(0, 0x10, True)
    vcpu.write_reg(RSP, 0x10000)
    return memory


def _run_stores(memory: GuestMemory, buffer: WriteBackBuffer, addresses: list[int]) -> None:
    memory.write(0x1000, _store_program(addresses))
    memory.vcpu.flush_code(0x1000, PAGE)
    memory.vcpu.write_reg(0, 0x1122334455667788)
    buffer.begin_entry()
    assert memory.vcpu.run(0x1000, 0).kind == StopKind.HYPERCALL


def test_drop_reverts_the_last_lines_written_and_keeps_evicted_ones():
    memory = _memory()
    buffer = WriteBackBuffer(memory)
    lines = [0x4000 + i * LINE for i in range(DEFAULT_LINES + 2)]
    _run_stores(memory, buffer, lines)
    assert buffer.dirty_lines() == lines[2:]  # the two oldest were evicted: written back
    assert buffer.drop() == DEFAULT_LINES
    assert [memory.read(a, 8) != bytes(8) for a in lines] == [True, True] + [False] * 8
    assert buffer.drop() == 0  # nothing left


def test_shared_stores_are_not_buffered_and_commit_empties_the_buffer():
    memory = _memory()
    buffer = WriteBackBuffer(memory)
    _run_stores(memory, buffer, [0x8000, 0x4000, 0x4008])  # shared, then one private line
    assert buffer.dirty_lines() == [0x4000]
    buffer.commit()
    assert buffer.drop() == 0 and memory.read(0x4000, 8) != bytes(8)


def test_a_new_entry_starts_with_an_empty_buffer():
    memory = _memory()
    buffer = WriteBackBuffer(memory)
    _run_stores(memory, buffer, [0x4000])
    _run_stores(memory, buffer, [0x5000])
    assert buffer.dirty_lines() == [0x5000]


# -- model fixes the attacks depend on ------------------------------------------------------------
def test_the_timer_counts_after_untimed_runs():
    """Unicorn counts with a code hook that blocks translated by untimed runs lack
    (unicorn #2200): a quantum of 1 must still stop after one instruction."""
    machine, host = _launch("counter", Level.PLAIN)
    for _ in range(12):  # untimed: the counter loop's code gets translated
        rec = host.enter().exit
        host.state = rec.state
        host.on_exit(rec)
    host.quantum = 1
    for _ in range(6):
        rec = host.enter().exit
        assert rec.reason == ExitReason.TIMER and rec.get(Field.RETIRED) == 1
        host.state = rec.state


def test_an_unmapped_code_page_faults_again():
    memory = _memory()
    vcpu = memory.vcpu
    memory.write(0x1000, b"\xe8" + (0x2000 - 0x1005).to_bytes(4, "little") + b"\x0f\x01\xc1")
    memory.write(0x2000, b"\xc3")  # call 0x2000; vmcall / ret
    assert vcpu.run(0x1000, 0).kind == StopKind.HYPERCALL  # both pages translated
    vcpu.write_reg(RSP, 0x10000)
    memory.set_mapped(0x2000, 1, False)
    stop = vcpu.run(0x1000, 0)
    assert stop.kind == StopKind.NPF and stop.addr == 0x2000


# -- the attacks, for other secrets, and what stops them ---------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("attack", [StateTamper, InterruptInjection, IagoDoubleFetch,
                                    DroppedWrites, MemoryReplay])
def test_integrity_attacks_work_below_their_defence_whatever_the_secret(attack, seed):
    level = Level.SEV_ES  # no RIP, no plaintext registers: every attack still works
    verdict = run_attack(attack(), attack.victims[0], level, seed=seed)
    assert outcome_class(verdict) == "tampered", verdict.detail


def test_state_tamper_reads_the_length_register_off_the_binary():
    from tvmm_tools.attacks.base import AttackContext

    ctx = AttackContext(client=None, image=build_sample("password"), guest="password",
                        level=Level.SEV, rng=random.Random(0), memory=DEFAULT_MEMORY,
                        secret_blob=b"", record=lambda *a, **k: None, devices=Devices)
    assert length_register(ctx) in ("rbx", "rbp", "r12", "r13", "r14", "r15")


def test_state_tamper_at_shim_kills_the_vm_for_its_sealed_state():
    verdict = run_attack(StateTamper(), "password", Level.SHIM)
    assert verdict.detected and verdict.notes["kill_reason"] == "SEALED_STATE"


def test_the_shims_write_back_is_what_stops_dropped_writes(monkeypatch):
    no_step = PolicyConfig(step_mode=StepMode.OFF)  # the timer fires right after the store
    verdict = run_attack(DroppedWrites(), "counter", Level.SHIM, policy_config=no_step)
    # Neutralised, not refused: DROP_WRITES is accepted and finds nothing to drop, so the
    # TEE has no refusal on record and the attack had no effect.
    assert outcome_class(verdict) == "none", verdict.detail
    monkeypatch.setitem(levels.FEATURES, Level.SHIM, dataclasses.replace(
        levels.FEATURES[Level.SHIM], commit_writes=False))
    verdict = run_attack(DroppedWrites(), "counter", Level.SHIM, policy_config=no_step)
    assert outcome_class(verdict) == "tampered", verdict.detail


def test_the_ownership_table_is_what_stops_memory_replay(monkeypatch):
    assert outcome_class(run_attack(MemoryReplay(), "counter", Level.SNP)) == "blocked"
    monkeypatch.setitem(levels.FEATURES, Level.SNP, dataclasses.replace(
        levels.FEATURES[Level.SNP], ownership=False))
    assert outcome_class(run_attack(MemoryReplay(), "counter", Level.SNP)) == "tampered"


def test_iago_lengths_at_shim_are_checked_against_the_record():
    machine, host = _launch("password", Level.SHIM, host_cls=_LyingHost,
                            header_len=len(PAYLOAD), result=len(PAYLOAD))
    result = host.run()
    vm = machine.platform.vm(host.vm)
    assert result.how == "exit" and "granted" not in host.devices.console.text
    assert [v.policy for v in vm.policies.violations] == ["bounce"]
    assert machine.client.read_shared(host.vm, SHARED_BASE, SHARED_SIZE) == bytes(SHARED_SIZE)


@pytest.mark.parametrize("level", BELOW_SHIM)
def test_the_double_fetch_window_is_found_on_the_own_copy(level):
    verdict = run_attack(IagoDoubleFetch(), "password", level)
    assert verdict.integrity_violated and verdict.notes["guest_said"] == "granted"
    assert verdict.notes["k"] == verdict.notes["trials"]  # the first granting stop point
