"""The secret is not the seed's: an attack that brute-forces the run's public seed from its
own random stream finds the seed, and the secret made from it the old way
(``make_secret(random.Random(seed))``) does not match the victim — across the boundary,
where the judge draws the secret from the OS.  Given that old secret explicitly, the same
attack recovers all of it: the brute force works, only the secret moved out of reach."""

from __future__ import annotations

import random

from tvmm.abi.types import Level
from tvmm.harness.judge import run_attack as run_across
from tvmm.judge import run_attack as run_in_process
from tvmm.samples import SAMPLES
from tvmm_tools.attacks.seed_brute import SeedBrute, find_seed, stream_seed


def test_the_stream_gives_the_seed_away():
    assert find_seed(random.Random(stream_seed(4321))) == 4321


def test_the_seed_no_longer_makes_the_secret():
    seed = 9  # seed 0 too, in the matrix
    verdict = run_across(SeedBrute.name, SeedBrute.kind, "modexp", Level.SNP, seed=seed)
    assert not verdict.notes.get("error"), verdict.detail
    assert verdict.notes["seed"] == seed and not verdict.notes["checks"]
    assert verdict.leaked_bits == 0 and not verdict.full_recovery
    assert verdict.secret != SAMPLES["modexp"].make_secret(random.Random(seed)).hex()


def test_the_secret_made_from_the_seed_would_fall():
    seed = 9
    old = SAMPLES["modexp"].make_secret(random.Random(seed))
    verdict = run_in_process(SeedBrute(), "modexp", Level.SHIM, seed=seed, secret=old)
    assert verdict.full_recovery and verdict.leaked_bits == verdict.n_bits == 64
