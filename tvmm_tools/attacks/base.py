"""The attack API: a malicious host plus a decoder, run against a victim at a level.

An attack gets an ``AttackContext``: the host side of the platform ABI (a
``PlatformClient``), the victim's public image (with its symbols — the binary is public),
a way to launch the victim with a fresh opaque secret blob from its owner (one per
launch), a link to the owner, a public random stream and a trace hook for its own actions.  It returns an ``Outcome``: its
guess of the secret (confidentiality) and what it observed.  It never sees the secret; the
judge scores the outcome.  Scored runs (tvmm.harness) run the attack in a process of its
own: the client's transport is a byte pipe to the TEE's process, the owner a message link
to the judge's, and the Outcome travels back as data (``outcome_to_data``).

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


def launch_secrets_from(owner: Callable[[bytes], bytes], record: Callable[..., None]
                        ) -> Callable[[], bytes]:
    """``AttackContext.launch_secret`` over an owner link: each call asks the owner's
    broker for one launch's secret; a refusal (its launch budget is spent) is recorded and
    gives b"" (the victim then launches without its secret)."""
    from tvmm.abi.guest import OWNER_LAUNCH_SECRET, OWNER_REFUSED

    def launch_secret() -> bytes:
        answer = owner(OWNER_LAUNCH_SECRET)
        if answer.startswith(OWNER_REFUSED):
            record("owner_refused_launch_secret",
                   reason=answer[len(OWNER_REFUSED):].decode(errors="replace"))
            return b""
        return answer

    return launch_secret


@dataclass
class AttackContext:
    client: PlatformClient  # the host side of the ABI: all an attack may touch
    image: GuestImage  # the victim's public image
    guest: str  # the victim's name
    level: Level
    rng: random.Random  # public randomness derived from the run's seed
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
    # For an owner that releases by transparency policy (Attack.owner_policy "ledger"):
    # the genuine build's signed statement and receipt (public), which a host presents
    # with the guest's evidence (tvmm.transparency.bundle); None otherwise.
    receipt: bytes | None = None
    # The judge's perimeter, for a management-interface attack: perimeter([node names])
    # starts a coordinator and those genuine nodes and gives what an operator holds of
    # them — {host, port, nodes, state_dir} — or {"error": why}.  The judge reads the
    # coordinator's audit log itself afterwards.  None: no perimeter in this run.
    perimeter: Callable[[list[str]], dict] | None = None

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
    """What an attack learned.  Knowledge can be partial: ``known`` marks which parts of
    ``guess`` the attacker claims (for a secret of bits, a set bit; for a secret of symbols
    such as password characters, a nonzero byte per symbol) — unmarked parts count as
    unknown, not as guessed.  ``candidates`` is a ranked list of whole guesses, best first,
    for an attack that enumerates.  The judge scores key rank (docs/attacks.md)."""

    guess: bytes | None = None  # the attacker's guess of the victim's secret, if any
    known: bytes | None = None  # mask over guess of what is claimed known; None: all of it
    candidates: list[bytes] | None = None  # ranked whole guesses, best first
    hosts: list[HonestHypervisor] = field(default_factory=list)  # hosts whose VMs it ran
    exits: int = 0  # exits the attack took
    stepping: dict[str, int] | None = None  # {"zero": z, "single": s, "multi": m}
    notes: dict[str, object] = field(default_factory=dict)


def not_applicable(why: str, *, exits: int = 0) -> Outcome:
    """The Outcome of a scenario that does not apply to this victim (a missing public
    feature, no secret, a channel its own profiling shows carries nothing): no guess, and
    ``n/a: why`` as its one-line detail."""
    return Outcome(exits=exits, notes={"na": why, "detail": f"n/a: {why}"})


def needs_symbols(ctx: AttackContext, *names: str, why: str = "") -> Outcome | None:
    """``not_applicable`` when the victim's public image lacks a symbol the scenario
    targets (its variable, its routine), else None."""
    have = {name for _start, _size, name in ctx.image.symbols}
    missing = [n for n in names if n not in have]
    if not missing:
        return None
    return not_applicable(f"the image has no {' or '.join(missing)} symbol" + (f" ({why})"
                                                                               if why else ""))


class Attack(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    victims: ClassVar[tuple[str, ...]]  # sample guests it fits
    kind: ClassVar[str]  # "confidentiality" or "integrity"
    published: ClassVar[str] = ""  # the published figure to compare with, and its source
    # How the victim's owner releases its secret in a scored run: "digest" — to the one
    # launch digest it predicts; "ledger" — to any build registered in a transparency
    # ledger under its policy (docs/transparency.md), the host presenting the receipt.
    owner_policy: ClassVar[str] = "digest"

    @abstractmethod
    def run(self, ctx: AttackContext) -> Outcome:
        """Drive the victim through ``ctx.client`` and return what was learned."""


def outcome_to_data(outcome: Outcome) -> dict:
    """The Outcome as JSON-ready data: what the judge reads of an attack run elsewhere.

    Each host becomes what it saw: its VM's id, its console, the input lines it served and
    whether its run ended with the guest's own exit."""
    return {
        "guess": outcome.guess.hex() if outcome.guess is not None else None,
        "known": outcome.known.hex() if outcome.known is not None else None,
        "candidates": ([c.hex() for c in outcome.candidates]
                       if outcome.candidates is not None else None),
        "exits": outcome.exits,
        "stepping": outcome.stepping,
        "notes": jsonable(outcome.notes),
        "hosts": [{"vm": h.vm, "console": h.devices.console.text,
                   "served": [line.hex() for line in h.devices.input.served],
                   "ended": h.run_result.how if h.run_result is not None else None}
                  for h in outcome.hosts],
    }


def jsonable(value: object) -> object:
    """``value`` with bytes as hex, tuples and sets as lists, anything else unknown as text."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
