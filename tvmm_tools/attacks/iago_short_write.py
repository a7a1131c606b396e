"""Scenario 10 — an Iago answer on the console's way out: every write acknowledged one
byte short (an outside red team's finding, tenth session).

A short count is a legal answer for a pipe or a terminal, and glibc's stdout honours it:
it writes the unacknowledged tail again.  At ``shim`` the personality passes the count on,
so the guest really does ask to print the tail twice, and the TEE's record of what it
printed repeats whatever suffix of each write the host chooses.  Before the fix that was
``tampered`` and undetected at ``shim``; now the shim takes a console write whole or fails
it (docs/policies.md, "Bounce buffers"), and the short count is a recorded violation.
Below ``shim`` the personality's own driver does not pass the count on: no effect.
"""

from __future__ import annotations

from tvmm.abi.guest import Hypercall
from tvmm.abi.types import Device
from tvmm.host.hypervisor import HonestHypervisor
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome
from tvmm_tools.attacks.iago import PUBLISHED

MAX_EXITS = 20_000


class _ShortHost(HonestHypervisor):
    """An honest host, except that it takes every console write of two bytes or more
    one byte short (and says so)."""

    def serve_device(self, device: Device, slot: int, length: int, sector: int) -> int:
        if device == Device.CONSOLE and length > 1:
            self.devices.console.write(self.client.read_shared(self.vm, slot, length - 1))
            return length - 1
        return super().serve_device(device, slot, length, sector)

    def serve_guest_call(self, nr: int | None, a0: int, a1: int, a2: int) -> int:
        if nr == Hypercall.CONSOLE_WRITE and a1 > 1 and self._in_shared(a0, a1):
            self.devices.console.write(self.client.read_shared(self.vm, a0, a1 - 1))
            return a1 - 1
        return super().serve_guest_call(nr, a0, a1, a2)


class IagoShortWrite(Attack):
    name = "iago-short-write"
    summary = "acknowledge every console write one byte short (glibc writes the tail again)"
    victims = ("spellcheck",)
    kind = "integrity"
    published = PUBLISHED

    def run(self, ctx: AttackContext) -> Outcome:
        host = ctx.host(_ShortHost)
        ctx.launch(host)
        result = host.run(max_exits=MAX_EXITS)
        return Outcome(hosts=[host], exits=sum(host.exits.values()),
                       notes={"detail": f"every console write taken one byte short; the run "
                                        f"ended: {result.how}"})
