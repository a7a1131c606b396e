"""UNTRUSTED: the benign suite — honest hosts with many legitimate exits, run through the
judge like attacks (kind "benign") so that a detection there counts as a false positive.

Here, not in tvmm.matrix, so that the host's process can run them without importing
anything trusted (tvmm.matrix imports the judge, which builds platforms)."""

from __future__ import annotations

from tvmm.abi.messages import ExitRecord
from tvmm.host.devices import InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome


class _StormHost(HonestHypervisor):
    """Honest, and rings the guest's registered vector at every exit."""

    def on_exit(self, rec: ExitRecord) -> bool:
        served = super().on_exit(rec)
        if self.tick_vector is not None:
            self.client.inject(self.vm, self.tick_vector)
        return served


class BenignWorkload(Attack):
    """An honest host with many legitimate exits (not an attack: kind "benign")."""

    kind = "benign"
    published = ("AEX-Notify's authors rejected rate heuristics for their false positives: "
                 "ours must show none on the benign suite (docs/policies.md)")
    quantum = 0
    tick_vector: int | None = None
    storm = False
    inputs: tuple[bytes, ...] = ()

    def run(self, ctx: AttackContext) -> Outcome:
        cls = _StormHost if self.storm else HonestHypervisor
        host = cls(ctx.client, Devices(input=InputDevice(self.inputs)), quantum=self.quantum,
                   tick_vector=None if self.storm else self.tick_vector)
        if self.storm:
            host.tick_vector = self.tick_vector
        ctx.launch(host)
        result = host.run()
        exits = sum(host.exits.values())
        return Outcome(hosts=[host], exits=exits, notes={
            "how": result.how, "exit_kinds": dict(host.exits),
            "detail": f"{exits} exits ({', '.join(f'{n} {k}' for k, n in host.exits.items())})"
                      f", ended: {result.how}"})


class BenignConsole(BenignWorkload):
    name = "benign-console"
    summary = "heavy console output: 300 console writes, no timer"
    victims = ("counter",)


class BenignInput(BenignWorkload):
    name = "benign-input"
    summary = "300 wrong password lines: an input request and a console write each"
    victims = ("password",)
    inputs = tuple(f"wrong{i:04d}".encode() for i in range(300))  # 9 chars: never the secret


class BenignBlock(BenignWorkload):
    name = "benign-block"
    summary = "block I/O of the key-value store, no timer"
    victims = ("kvstore",)


class BenignTimer(BenignWorkload):
    name = "benign-timer"
    summary = "frequent legitimate timer exits: quantum 10,000 on the key-value store"
    victims = ("kvstore",)
    quantum = 10_000


class BenignTicks(BenignWorkload):
    name = "benign-ticks"
    summary = "timer ticks: quantum 50 and vector 0x20 injected at every timer exit"
    victims = ("counter",)
    quantum = 50
    tick_vector = 0x20


class BenignIrqStorm(BenignWorkload):
    name = "benign-irq-storm"
    summary = "interrupt storm: the registered vector 0x20 rung at every exit (quantum 200)"
    victims = ("counter",)
    quantum = 200
    tick_vector = 0x20
    storm = True


BENIGN: dict[str, type[BenignWorkload]] = {
    cls.name: cls for cls in (BenignConsole, BenignInput, BenignBlock, BenignTimer,
                              BenignTicks, BenignIrqStorm)
}


