"""short_write.py — red team 2, integrity: Iago on the console write's return value.

The host acknowledges every console write one byte short (a legal answer: the shim and the
personality refuse only counts *above* what was asked).  The tvmm runtime's puts ignores
the count (the byte is lost from what the host shows); glibc retries the unacknowledged
tail (the stream stays right).  What does the judge compare — the bytes the guest asked to
write, or the bytes the host acknowledged?  No secret is involved.

    tvmm attack --file /work/redteam2/attacks/short_write.py --guest /work/redteam2/vault.c --level shim
"""
from __future__ import annotations

from tvmm.abi.types import Device
from tvmm.host.hypervisor import HonestHypervisor
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome


class ShortHost(HonestHypervisor):
    def serve_device(self, device, slot, length, sector):
        if device == Device.CONSOLE and length > 1:
            self.devices.console.write(self.client.read_shared(self.vm, slot, length - 1))
            return length - 1
        return super().serve_device(device, slot, length, sector)

    def serve_guest_call(self, nr, a0, a1, a2):
        if nr == 1 and a1 > 1:  # below shim: CONSOLE_WRITE(gpa, len)
            self.devices.console.write(self.client.read_shared(self.vm, a0, a1 - 1))
            return a1 - 1
        return super().serve_guest_call(nr, a0, a1, a2)


class ShortWrite(Attack):
    name = "rt2-short-write"
    summary = "acknowledge each console write one byte short"
    victims = ()
    kind = "integrity"

    def run(self, ctx: AttackContext) -> Outcome:
        host = ctx.host(ShortHost)
        host.devices.input.__init__(["0" * 32, "hello"])
        ctx.launch(host)
        r = host.run(max_exits=10_000)
        return Outcome(hosts=[host], exits=sum(host.exits.values()),
                       notes={"detail": f"short acks; ended {r.how}; host saw {host.devices.console.text[-80:]!r}"})
