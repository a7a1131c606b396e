"""The exit path, top to bottom: accept the host's state → apply the answer to the last
request → deliver an interrupt → run the vCPU → classify the stop → serve it inside if we
can → otherwise build the host's view from the table of allowed fields → hand the register
state over in the level's form (plaintext, deterministic ciphertext, sealed) → trace.
Policies are one-line calls into shim.policies; at levels below ``shim`` they are off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shim import delivery, guest_calls, interrupts
from shim.errors import BadOperand, BadState, Denied, IntegrityError
from shim.views import View, host_fields, timer_fields
from shim.vm import CONSOLE_LIMIT, Pending, PendingKind, VcpuContext, Vm, VmState
from tvmm.abi.guest import Hypercall, exit_status
from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import Device, ExitReason, Field, KillReason, Result
from tvmm.hw.vcpu import RAX, RDI, RDX, REG_NAMES, RIP, RSI, Access, Stop, StopKind
from tvmm.hw.vmsa import slot_tags, unpack_plain

if TYPE_CHECKING:
    from shim.platform import Tee

HYPERCALL_LEN = 3
# Bound once: on Python 3.11 an Enum class attribute costs ~160 ns (EnumType.__getattr__
# sends every lookup down the slow path), and the timer exit reads these every time.
_STOP_TIMER, _TIMER, _KILLED = StopKind.TIMER, ExitReason.TIMER, ExitReason.KILLED
_RETIRED, _RIP, _OK = Field.RETIRED, Field.RIP, Result.OK


@dataclass(slots=True)
class Exit:
    reason: ExitReason
    fields: dict[Field, int]
    dead: str = ""  # why the VM ends here, if it does
    inside: dict | None = None  # for the trace (most exits add nothing: no dict each)


def view_of(vm: Vm) -> View:
    if vm.features.sanitise_exits:
        return View.SANITISED
    return View.RESTRICTED if vm.features.restricted_view else View.FULL


def enter(tee: Tee, vm: Vm, ctx: VcpuContext, quantum: int, state: bytes) -> Reply:
    if ctx.pending is not None and ctx.completion is None:
        raise BadState("vcpu", "a guest request is waiting for COMPLETE_IO")
    if state != ctx.handed_out:  # the same bytes back: the vCPU already holds that state
        try:
            accept_host_state(vm, ctx, state)
        except IntegrityError:
            return _hand_over(tee, vm, ctx, kill(vm, KillReason.SEALED_STATE, "sealed state"))
    policies = vm.policies
    if policies is not None:
        refusal = policies.before_entry(tee, vm, ctx)
        if refusal is not None:
            return _hand_over(tee, vm, ctx, refusal)
    if vm.writeback is not None:
        vm.writeback.begin_entry()
    if ctx.pending is not None:
        _apply_completion(tee, vm, ctx)
    if ctx.irqs or ctx.virqs:
        interrupts.deliver_pending(tee, vm, ctx)
    budget = quantum if policies is None else policies.step_quantum(tee, vm, ctx, quantum)
    ctx.entries += 1
    while True:
        stop = vm.vcpu.run(ctx.rip, budget)
        ctx.rip = stop.rip
        if stop.kind is _STOP_TIMER:  # the most common exit, handed over as _serve would
            ctx.retired += budget
            return _timer_exit(tee, vm, ctx, budget, stop.rip)
        out = _serve(tee, vm, ctx, stop)
        if out is not None:
            return _hand_over(tee, vm, ctx, out)


def accept_host_state(vm: Vm, ctx: VcpuContext, state: bytes) -> None:
    """What the host hands back: a plaintext register file it may edit (plain, sev), a
    deterministic ciphertext it may replay (sev-es), a guest-owned VMSA it cannot touch
    (snp), or a sealed blob that must authenticate for this VM, vCPU and exit (shim).
    Called only when ``state`` differs from what the host got at the last exit."""
    f = vm.features
    if not state and not f.sealed_state:
        return  # keep the registers as they are
    if ctx.seq == 0:
        raise BadOperand("state", "there is no state before the first entry")
    if f.sealed_state:
        regs = unpack_plain(vm.sealer.open(state, vm.id, ctx.index, ctx.seq - 1))
    elif f.ownership:
        raise Denied("state", "the VMSA is guest-owned")
    elif f.encrypt_registers:
        try:
            regs = vm.vmsa_cipher.decrypt(state, ctx.index)
        except ValueError as exc:
            raise BadOperand("state", str(exc)) from None
    else:
        try:
            regs = unpack_plain(state)
        except ValueError as exc:
            raise BadOperand("state", str(exc)) from None
    vm.vcpu.write_state(regs)
    ctx.rip = regs[RIP]


def _apply_completion(tee: Tee, vm: Vm, ctx: VcpuContext) -> None:
    pending, value = ctx.pending, ctx.completion
    if pending is None or value is None:
        return
    ctx.pending = ctx.completion = None
    if pending.kind == PendingKind.PORT_IN:
        mask = (1 << (8 * pending.size)) - 1
        rax = vm.vcpu.read_reg(RAX)
        vm.vcpu.write_reg(RAX, (rax & ~mask) | (value & mask))
    elif pending.kind == PendingKind.DEVICE and pending.record is not None:
        done = vm.bounce.complete(pending.record, value)
        if not done.accepted:
            vm.policies.note_violation("bounce", done.why, ctx)
        tee.recorder.emit(
            EventKind.IO, "complete" if done.accepted else "refused",
            inside={"device": pending.record.device.name.lower(), "op": "complete",
                    "len": done.guest_value, "data": done.data[:256], "why": done.why},
            outside={"slot": pending.record.slot_gpa, "len": value}, vcpu=ctx.index,
        )
        value = done.guest_value
        if done.accepted and pending.record.device == Device.INPUT and value >= 0:
            vm.io.received(done.data[:value])
    elif pending.kind == PendingKind.HYPERCALL and pending.call is not None:
        nr, _a0, a1, a2 = pending.call
        if nr == Hypercall.INPUT_READ and value == 0:  # end of input
            vm.io.received(b"")
        elif nr == Hypercall.INPUT_READ and 0 < value <= a2:  # the naive driver's reply
            _keep(vm.io.received, vm, a1 + _IO_REPLY_HEADER, value)
    if pending.kind in (PendingKind.HYPERCALL, PendingKind.DEVICE):
        vm.vcpu.write_reg(RAX, value)
    ctx.rip += pending.advance
    vm.vcpu.write_reg(RIP, ctx.rip)


def _serve(tee: Tee, vm: Vm, ctx: VcpuContext, stop: Stop) -> Exit | None:
    """Every stop but the timer's (enter hands that over itself: _timer_exit)."""
    kind = stop.kind
    if kind == StopKind.HYPERCALL:
        return _hypercall(tee, vm, ctx, stop)
    if kind == StopKind.NPF:
        if stop.access == Access.WRITE and vm.vcpu.serve_dirty_fault(stop.addr, stop.size):
            return None  # a page the TEE protected to track migration's dirty pages
        fields = {Field.GPA: stop.addr, Field.GPA_PAGE: stop.addr >> 12,
                  Field.ACCESS: int(stop.access), Field.RIP: stop.rip}
        if vm.policies is not None:
            return vm.policies.on_fault(tee, vm, ctx, stop, fields)
        return Exit(ExitReason.NPF, fields, inside={"fault_gpa": stop.addr})
    if kind == StopKind.HLT:
        ctx.rip = stop.rip + 1  # the vCPU already stands past the HLT
        return Exit(ExitReason.HLT, {Field.RIP: stop.rip})
    if kind in (StopKind.PORT_IN, StopKind.PORT_OUT):
        pk = PendingKind.PORT_IN if kind == StopKind.PORT_IN else PendingKind.PORT_OUT
        ctx.pending = Pending(pk, 0, stop.size)
        return Exit(ExitReason.IO_PORT, {Field.PORT: stop.port, Field.SIZE: stop.size,
                                         Field.VALUE: stop.value, Field.RIP: stop.rip})
    if kind == StopKind.SOFT_INT:
        if delivery.deliver(vm.vcpu, vm.memory, stop.vector, return_rip=stop.rip):
            ctx.rip = vm.vcpu.read_rip()
            return None
        return _guest_fault(vm, stop, f"int {stop.vector:#x} has no IDT gate")
    if kind == StopKind.EXCEPTION:
        return _guest_fault(vm, stop, stop.detail or f"exception {stop.vector}")
    return _guest_fault(vm, stop, stop.detail or "fault")


def _guest_fault(vm: Vm, stop: Stop, detail: str) -> Exit:
    return Exit(ExitReason.FAULT, {Field.VECTOR: stop.vector, Field.RIP: stop.rip,
                                   Field.GPA: stop.addr},
                dead=f"guest fault at {stop.rip:#x}: {detail}")


def _hypercall(tee: Tee, vm: Vm, ctx: VcpuContext, stop: Stop) -> Exit | None:
    regs = vm.vcpu.read_regs()
    nr, a0, a1, a2 = regs[RAX], regs[RDI], regs[RSI], regs[RDX]
    outcome = guest_calls.handle(vm, vm.bounce, nr, a0, a1, a2, tee)
    if isinstance(outcome, guest_calls.Served):
        tee.recorder.emit(EventKind.HYPERCALL, "served", inside={
            "nr": nr, "args": [a0, a1, a2], "value": int(outcome.value), "note": outcome.note},
            vcpu=ctx.index)
        vm.vcpu.write_reg(RAX, int(outcome.value))
        ctx.rip = stop.rip + HYPERCALL_LEN
        vm.vcpu.write_reg(RIP, ctx.rip)
        # Back-pressure waits on the host: give it the CPU (as a HLT: the guest is waiting),
        # or a guest that retries would spin inside the TEE and the host never run again.
        return Exit(ExitReason.HLT, {Field.RIP: stop.rip}) if outcome.yield_to_host else None
    if isinstance(outcome, guest_calls.Shutdown):
        return Exit(ExitReason.SHUTDOWN, {Field.STATUS: outcome.status, Field.RIP: stop.rip},
                    dead=f"guest exited with status {exit_status(outcome.status)}")
    kind = PendingKind.DEVICE if outcome.record is not None else PendingKind.HYPERCALL
    if nr == Hypercall.CONSOLE_WRITE:  # what the guest wrote, as the TEE saw it
        _keep(vm.io.wrote, vm, a0, a1)
    ctx.pending = Pending(kind, HYPERCALL_LEN, record=outcome.record,
                          call=(nr, a0, a1, a2) if outcome.record is None else None)
    fields = dict(outcome.fields)
    fields[Field.RIP] = stop.rip
    return Exit(ExitReason.HYPERCALL, fields)


_IO_REPLY_HEADER = 8  # below shim the runtime's reply slot starts with u32 length, u32 status


def _keep(sink: Callable[[bytes], None], vm: Vm, gpa: int, length: int) -> None:
    """Hand the guest's bytes at ``gpa`` to ``sink`` (the judge's record), if they are
    guest memory at all (the registers are the guest's: anything may be in them)."""
    if 0 < length <= CONSOLE_LIMIT and vm.memory.contains(gpa, length):
        sink(vm.memory.read(gpa, length))


def kill(vm: Vm, reason: KillReason, detail: str) -> Exit:
    vm.kill_reason = reason
    return Exit(ExitReason.KILLED, {Field.KILL_REASON: int(reason)}, dead=f"killed: {detail}")


def host_state(vm: Vm, ctx: VcpuContext, seq: int) -> bytes:
    """The vCPU's registers in the form the level hands the host at exit ``seq``: the
    plaintext save area, its deterministic encryption, or a blob sealed for that exit."""
    f = vm.features
    plain = vm.vcpu.save_area(slot_tags(ctx.index))
    if f.sealed_state:
        return vm.sealer.seal(plain, vm.id, ctx.index, seq)
    if f.encrypt_registers:
        return vm.vmsa_cipher.encrypt(plain)
    return plain


def _record(vm: Vm, ctx: VcpuContext, reason: ExitReason,
            fields: tuple[tuple[Field, int], ...]) -> ExitRecord:
    """The exit record of exit ``ctx.seq`` (the state in the level's form), now the
    host's: every exit handed over passes here."""
    if vm.writeback is not None and vm.features.commit_writes:
        vm.writeback.commit()  # written back before the host runs: INVD finds nothing
    state = b"" if reason == _KILLED else host_state(vm, ctx, ctx.seq)
    record = ExitRecord(reason, ctx.seq, ctx.index, fields, state)
    ctx.handed_out = state
    ctx.seq += 1
    return record


def _timer_exit(tee: Tee, vm: Vm, ctx: VcpuContext, retired: int, rip: int) -> Reply:
    """What _hand_over makes of ``Exit(TIMER, {RETIRED: retired, RIP: rip})``, without
    that Exit, its dict and the filter's loop: a single-stepping or ticking host takes
    this exit most (the fields are the view's, by views.timer_fields)."""
    record = _record(vm, ctx, _TIMER, timer_fields(vm.view, retired, rip))
    if tee.recorder.enabled:
        _trace_exit(tee, vm, ctx, Exit(_TIMER, {_RETIRED: retired, _RIP: rip}), record)
    return Reply(_OK, "", exit=record)


def _hand_over(tee: Tee, vm: Vm, ctx: VcpuContext, out: Exit) -> Reply:
    record = _record(vm, ctx, out.reason, host_fields(vm.view, out.reason, out.fields))
    result, operand = _OK, ""
    if out.dead:
        vm.state = VmState.DEAD
        vm.end_detail = out.dead
        if out.reason == ExitReason.SHUTDOWN:
            vm.exit_status = exit_status(out.fields[Field.STATUS])
        if out.reason == ExitReason.KILLED:
            # An error reply names its operand: the VM, as every later call on it does.
            result, operand = Result.VM_DEAD, "vm"
    if tee.recorder.enabled:
        _trace_exit(tee, vm, ctx, out, record)
    return Reply(result, operand, exit=record)


def _trace_exit(tee: Tee, vm: Vm, ctx: VcpuContext, out: Exit, record: ExitRecord) -> None:
    regs = vm.vcpu.read_regs()
    inside = {"rip": regs[RIP], "regs": dict(zip(REG_NAMES, regs, strict=True)),
              "retired": ctx.retired, **(out.inside or {})}
    if out.dead:
        inside["end"] = out.dead
    outside = {"reason": record.reason.name.lower(), "level": vm.level.value,
               "fields": {k.name.lower(): v for k, v in record.fields}, "state": record.state}
    tee.recorder.emit(EventKind.EXIT, record.reason.name.lower(), inside=inside,
                      outside=outside, icount=ctx.retired, vcpu=ctx.index)
