"""blob-tamper: the owner's launch secret blob with a *tampered* image at the run's own
level (shim).  The public SDK's ``tampered_launch.tamper`` patches the runtime's ``puts``
to console_write(secrets page + 8, its length); launched with the victim's launch-secret
blob at ``ctx.level``, the first "console write" is the secret.

This shows that binding the launch secret to the level alone would not be enough: the
blob is checked against no measurement at all (docs/attestation.md), so a changed image
gets it too.  One owner release; the run is an honest host's otherwise."""
from __future__ import annotations

from tvmm.host.devices import Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome
from tvmm_tools.attacks.tampered_launch import tamper


class _RawConsole(Console):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        super().write(data)


class BlobTamper(Attack):
    name = "blob-tamper"
    summary = "the victim's launch-secret blob with a puts-patched image, at the run's level"
    victims = ()
    kind = "confidentiality"

    def run(self, ctx: AttackContext) -> Outcome:
        tampered, page = tamper(ctx.image)
        console = _RawConsole()
        host = HonestHypervisor(ctx.client, Devices(console=console, input=InputDevice([])))
        host.launch(tampered, ctx.level, ctx.memory, secret_blob=ctx.fresh_secret_blob())
        result = host.run(max_exits=5_000)
        guess = console.writes[0] if console.writes else None
        return Outcome(guess=guess, hosts=[host], exits=sum(host.exits.values()),
                       notes={"detail": f"puts page {page:#x} patched, launched at "
                                        f"{ctx.level.value} with the owner's blob; first "
                                        f"write {guess.hex() if guess else None}; {result.how}"})
