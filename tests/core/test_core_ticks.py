"""Timer ticks an honest host can use (issue 17): INJECT's event injection stays
unconditional (what a Heckler-style attack uses below shim), and a virtual interrupt is
delivered only when the guest has RFLAGS.IF = 1 — so a tick per short quantum never nests
into the guest's handler, and the counter ends by its own exit with ticks at every level."""

from __future__ import annotations

import json
import re

import pytest

from shim.delivery import handler_of, interrupts_enabled
from tvmm.abi import codec
from tvmm.abi.messages import Inject
from tvmm.abi.types import InjectMode, Level, Result
from tvmm.cli import main as cli
from tvmm.hw.vcpu import IF_FLAG, RFLAGS, RSP

BELOW_SHIM = ["plain", "sev", "sev-es", "snp"]


@pytest.mark.parametrize("level", [lv.value for lv in Level])
def test_short_quantum_ticks_end_with_the_guests_own_exit(level, capsys):
    """`tvmm boot counter --quantum 50 --tick 0x20`: before, below shim, a tick injected at
    every timer exit nested handlers until the stack ran into the image (fault, vector 6)."""
    code = cli(["boot", "counter", "--level", level, "--quantum", "50", "--tick", "0x20",
                "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (code, report["how"], report["status"]) == (0, "exit", 0), report["detail"]
    ticks = int(re.search(r"ticks=(\d+)", report["console"]).group(1))
    assert ticks > 0 and report["exits"]["timer"] >= ticks


def _set_if(vcpu, on: bool) -> None:
    regs = list(vcpu.read_regs())
    regs[RFLAGS] = regs[RFLAGS] | IF_FLAG if on else regs[RFLAGS] & ~IF_FLAG
    vcpu.write_regs(regs)


def _step(v) -> None:
    """One entry of one instruction, its exit served as the honest host serves it."""
    reply = v.client.enter(v.vm_id, 1, v.host.state)
    assert reply.exit is not None, reply
    v.host.state = reply.exit.state
    v.host.on_exit(reply.exit)


@pytest.mark.parametrize("level", BELOW_SHIM)
def test_a_virtual_interrupt_waits_for_if_an_event_does_not(launch, level):
    v = launch("counter", level)
    v.host.run(max_exits=4)  # past irq_register and sti: the guest prints
    vcpu, ctx = v.vm.vcpu, v.vm.vcpus[0]
    handler = handler_of(vcpu, v.vm.memory, 0x20)
    assert handler is not None and interrupts_enabled(vcpu)

    _set_if(vcpu, False)  # the guest cannot take an interrupt now
    for _ in range(3):
        v.client.inject(v.vm_id, 0x20, mode=InjectMode.VIRTUAL)
    assert list(ctx.virqs) == [0x20]  # one pending per vector, as an IRR bit
    _set_if(vcpu, False)
    _step(v)
    assert list(ctx.virqs) == [0x20] and not handler <= vcpu.read_rip() < handler + 16

    _set_if(vcpu, True)  # now it can: delivered at this entry
    _step(v)
    assert not ctx.virqs and handler <= vcpu.read_rip() < handler + 16
    assert not interrupts_enabled(vcpu)  # inside the handler

    v.client.inject(v.vm_id, 0x20, mode=InjectMode.VIRTUAL)  # never nested in a handler
    rsp = vcpu.read_regs()[RSP]
    _step(v)
    assert list(ctx.virqs) == [0x20] and vcpu.read_regs()[RSP] >= rsp - 8

    v.client.inject(v.vm_id, 0x20)  # event injection: nested into the handler regardless
    _step(v)
    assert not ctx.irqs and handler <= vcpu.read_rip() < handler + 16
    assert vcpu.read_regs()[RSP] < rsp - 40  # a second interrupt frame on the stack


def test_at_shim_both_modes_pass_the_filter(launch):
    """The shim's filter keeps its policies: an unregistered or exception vector is
    refused in either mode, and a registered one is held until IF = 1 (in ``irqs``)."""
    v = launch("counter", "shim")
    ctx = v.vm.vcpus[0]
    for mode in InjectMode:
        v.client.inject(v.vm_id, 0x21, mode=mode)
        v.client.inject(v.vm_id, 13, mode=mode)
        assert not ctx.irqs and not ctx.virqs
    assert [x.policy for x in v.vm.policies.violations] == ["irq_filter", "irq_filter"]


@pytest.mark.parametrize("mode, result", [(2, Result.BAD_OPERAND), (-1, Result.BAD_OPERAND),
                                          (True, Result.MALFORMED), (1.0, Result.MALFORMED),
                                          ("1", Result.MALFORMED)])
@pytest.mark.parametrize("level", ["plain", "shim"])
def test_a_bad_mode_is_refused_and_changes_nothing(launch, level, mode, result):
    v = launch("counter", level)
    reply = v.machine.platform.handle(Inject(v.vm_id, 0, 0x20, mode))
    assert (reply.result, reply.operand) == (result, "mode")
    assert not v.vm.vcpus[0].irqs and not v.vm.vcpus[0].virqs


def test_an_unknown_mode_on_the_wire_is_malformed(launch):
    v = launch("counter", "plain")
    raw = bytearray(codec.encode(Inject(v.vm_id, 0, 0x20, InjectMode.VIRTUAL)))
    raw[-8:] = (7).to_bytes(8, "little")  # the last field: mode, an i64
    reply = codec.decode(v.machine.platform.handle_bytes(bytes(raw)))
    assert (reply.result, reply.operand) == (Result.MALFORMED, "mode")
    assert not v.vm.vcpus[0].virqs
