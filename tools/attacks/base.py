"""The attack API: a malicious host plus a decoder, run against a victim at a level.

An attack gets an ``AttackContext``: the host side of the platform ABI (a
``PlatformClient``), the victim's public image (with its symbols — the binary is public),
a way to launch the victim with a fresh opaque secret blob from its owner, and a trace hook for its
own actions.  It returns an ``Outcome``: its guess of the secret (confidentiality) and
what it observed.  It never sees the secret; the judge (tvmm.judge) scores the outcome.

Writing a new attack is one file: subclass ``Attack``, set the class attributes, implement
``run``; ``tvmm attack --file my_attack.py`` runs it.  See docs/attacks.md.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from tvmm.abi.types import Level
from tvmm.guestimage import GuestImage
from tvmm.host.client import PlatformClient
from tvmm.host.hypervisor import Devices, HonestHypervisor


@dataclass
class AttackContext:
    client: PlatformClient  # the host side of the ABI: all an attack may touch
    image: GuestImage  # the victim's public image
    guest: str  # the victim's name
    level: Level
    seed: int
    rng: random.Random
    memory: int  # guest memory size the owner asked for
    secret_blob: bytes  # a fixed launch secret (tests); the judge gives launch_secret instead
    record: Callable[..., None]  # record(action, **outside) traces an attack action
    devices: Callable[[], Devices]  # fresh honest devices (console, disk, input)
    # The host's link to the victim owner's key broker (attested key release): message
    # in, answer out.  Only attacks on that path use it (Devices(owner=...)); launching
    # with an empty secret blob makes the guest ask for its secret through it.
    owner: Callable[[bytes], bytes] | None = None
    # The owner's launch secrets: each call asks the owner's broker for a blob good for one
    # launch (the TEE opens each blob once), or b"" if the owner refused (its launch
    # budget is used up).  Each launch of the victim costs one.
    launch_secret: Callable[[], bytes] | None = None

    def fresh_secret_blob(self) -> bytes:
        """A launch secret for the next launch: one from the owner, else ``secret_blob``."""
        return self.launch_secret() if self.launch_secret is not None else self.secret_blob

    def host(self, cls: type[HonestHypervisor] = HonestHypervisor, **kwargs: object
             ) -> HonestHypervisor:
        """A host of class ``cls`` on this context's client, with fresh devices."""
        return cls(self.client, self.devices(), **kwargs)

    def launch(self, host: HonestHypervisor, *, image: GuestImage | None = None) -> bytes:
        """Launch the victim (or a tampered ``image``) on ``host``; the launch digest."""
        return host.launch(image or self.image, self.level, self.memory,
                           secret_blob=self.fresh_secret_blob())


@dataclass
class Outcome:
    guess: bytes | None = None  # the attacker's guess of the victim's secret, if any
    hosts: list[HonestHypervisor] = field(default_factory=list)  # hosts whose VMs it ran
    exits: int = 0  # exits the attack took
    stepping: dict[str, int] | None = None  # {"zero": z, "single": s, "multi": m}
    notes: dict[str, object] = field(default_factory=dict)


class Attack(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    victims: ClassVar[tuple[str, ...]]  # sample guests it fits
    kind: ClassVar[str]  # "confidentiality" or "integrity"
    published: ClassVar[str] = ""  # the published figure to compare with, and its source

    @abstractmethod
    def run(self, ctx: AttackContext) -> Outcome:
        """Drive the victim through ``ctx.client`` and return what was learned."""
