"""Seed brute force: rebuild the victim's secret from the run's public seed — the regression
attack for the judge's secrets (tvmm.judge.draw_secret).

The attack's random stream is seeded one way from the run's seed (tvmm.judge.public_rng_seed:
SHA-256 of a small integer, a public formula).  The attacker tries every seed up to
SEARCH, finds the one whose stream matches its own, and makes the secret the way a
sample's secret was once made from that seed (``Sample.make_secret(random.Random(seed))``).
A candidate is checked against what the victim prints (modexp prints g^e mod p: the
attacker knows g and p), so the attack either has the secret or has nothing.

When the judge made the secret from the seed, this recovered all 64 bits at every level;
with the secret drawn from the OS it finds the seed and gets nothing
(tests/attacks/test_att_seed_brute.py shows both).
"""

from __future__ import annotations

import hashlib
import random

from tvmm.samples import SAMPLES, modexp_expected
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome

SEARCH = 1 << 14  # seeds tried: every small seed a user types


def stream_seed(seed: int) -> int:
    """The attack's stream seed for a run seed (the judge's public formula, copied)."""
    return int.from_bytes(hashlib.sha256(b"tvmm attack rng %d" % seed).digest()[:8], "little")


def find_seed(rng: random.Random, search: int = SEARCH) -> int | None:
    """The run seed whose stream ``rng`` is (its state is left as it was)."""
    probe = random.Random()
    probe.setstate(rng.getstate())
    first = probe.getrandbits(64)
    for seed in range(search):
        if random.Random(stream_seed(seed)).getrandbits(64) == first:
            return seed
    return None


class SeedBrute(Attack):
    name = "seed-brute"
    summary = ("brute-force the run's public seed from the attack's own random stream and "
               "remake the secret from it")
    victims = ("modexp",)
    kind = "confidentiality"
    published = ("none: a model's artefact — secrets made from a public seed; the judge "
                 "draws them from the OS (docs/attacks.md, What the judge scores)")

    def run(self, ctx: AttackContext) -> Outcome:
        host = ctx.host()
        ctx.launch(host)
        result = host.run()
        text = host.devices.console.text
        seed = find_seed(ctx.rng)
        ctx.record("seed", found=seed)
        candidate = SAMPLES[ctx.guest].make_secret(random.Random(seed)) \
            if seed is not None else None
        printed = _printed(text)
        checks = candidate is not None and printed is not None and \
            modexp_expected(candidate) == printed
        detail = (f"seed {seed} found from the stream; the secret made from it "
                  + ("matches the printed result" if checks else "does not match the printed "
                     "result: the secret is not made from the seed")) \
            if seed is not None else f"no seed below {SEARCH} makes this stream"
        return Outcome(guess=candidate if checks else None, hosts=[host],
                       exits=sum(result.exits.values()),
                       notes={"seed": seed, "checks": checks, "detail": detail})


def _printed(console: str) -> int | None:
    for line in console.splitlines():
        if line.startswith("result="):
            try:
                return int(line[len("result="):], 16)
            except ValueError:
                return None
    return None
