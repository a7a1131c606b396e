"""Attacks retarget: a victim written only from docs/guests.md and its ``<name>.toml``
secret declaration, in a temporary directory, with no change to tvmm, gets a scored cell
or a one-line ``n/a: why`` from every attack at every level.

The two victims here leak in shapes guests/victims does not have: a switch through a
jump table to four handlers on code pages of their own (the page shows each nibble's low
two bits), and an early-exit loop over the secret's bits (it runs until the first 0 bit).
The attacks know nothing of them but their public images and what their own profiled
runs show; the bits they claim known are checked against the secret one by one.

The default suite runs the CLI as a user would (page-fault and single-step at snp); the
whole grid, every registered attack at every level on both victims, is long (each
attack profiles its own copies first) and runs with ``-m bench``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tvmm.abi.types import Level
from tvmm.harness.judge import run_attack
from tvmm.judge import run_attack as judge_in_process
from tvmm.samples import declared
from tvmm_tools.attacks import registry
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome

DISPATCH = r"""
#include "tvmm.h"

__attribute__((noinline, aligned(4096))) u64 h0(u64 x) { return x * 3 + 1; }
__attribute__((noinline, aligned(4096))) u64 h1(u64 x) { return x ^ (x >> 7); }
__attribute__((noinline, aligned(4096))) u64 h2(u64 x) { return x + 0x9e3779b9UL; }
__attribute__((noinline, aligned(4096))) u64 h3(u64 x) { return (x << 5) | (x >> 59); }

__attribute__((aligned(4096))) int main(void)
{
    u64 s = secret_u64();
    u64 x = 7;
    for (int j = 0; j < 16; j++) {
        switch ((s >> (4 * j)) & 3) {
        case 0: x = h0(x); break;
        case 1: x = h1(x); break;
        case 2: x = h2(x); break;
        default: x = h3(x); break;
        }
    }
    puts("result=");
    put_hex(x);
    puts("\n");
    return 0;
}
"""

EARLY = r"""
#include "tvmm.h"

__attribute__((noinline, aligned(4096))) u64 step(u64 x) { return x * 0x2545f4914f6cdd1dUL + 1; }

__attribute__((aligned(4096))) int main(void)
{
    u64 s = secret_u64();
    u64 x = 1;
    for (int i = 0; i < 64; i++) {
        x = step(x);
        if (!((s >> i) & 1))
            break;
    }
    puts("result=");
    put_hex(x);
    puts("\n");
    return 0;
}
"""

LOW_TWO = {4 * j + k for j in range(16) for k in (0, 1)}  # what the handler's page shows


@pytest.fixture(scope="module")
def victims(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("my-victims")
    out = {}
    for name, source in (("dispatch", DISPATCH), ("early", EARLY)):
        path = root / f"{name}.c"
        path.write_text(source)
        path.with_suffix(".toml").write_text(
            f'secret_bytes = 8\ndescription = "{name}: a test victim"\n')
        out[name] = path
    return out


def _secret(path: Path, seed: int) -> int:
    sample = declared(path)
    assert sample is not None
    return int.from_bytes(sample.make_secret(random.Random(seed)), "little")


class _Recorded(Attack):
    """Runs a registered attack in this process and keeps its Outcome (the judge keeps
    only its score): the test reads the known-mask itself."""

    kind = "confidentiality"
    victims = ()

    def __init__(self, name: str) -> None:
        self.inner = registry()[name]()
        self.name, self.summary = name, self.inner.summary
        self.outcome: Outcome | None = None

    def run(self, ctx: AttackContext) -> Outcome:
        self.outcome = self.inner.run(ctx)
        return self.outcome


def _claimed(outcome: Outcome, truth: int) -> set[int]:
    """The bits the Outcome claims known, each checked against the secret."""
    if outcome.guess is None:
        return set()
    guess = int.from_bytes(outcome.guess, "little")
    known = (int.from_bytes(outcome.known, "little") if outcome.known is not None
             else (1 << 8 * len(outcome.guess)) - 1)
    claimed = {j for j in range(8 * len(outcome.guess)) if known >> j & 1}
    wrong = sorted(j for j in claimed if (guess >> j & 1) != (truth >> j & 1))
    assert not wrong, f"bits claimed known but wrong: {wrong}"
    return claimed


def _run(name: str, path: Path, level: Level, seed: int):
    recorded = _Recorded(name)
    sample = declared(path)
    assert sample is not None  # the secret the test checks the claims against, given to the run
    verdict = judge_in_process(recorded, str(path), level, seed=seed,
                               secret=sample.make_secret(random.Random(seed)))
    return verdict, recorded.outcome


def test_att_retarget_cli_scores_page_fault_on_my_victim(victims):
    """The 'done when' line, as a user types it: a scored cell, no traceback."""
    out = subprocess.run(
        [sys.executable, "-m", "tvmm", "attack", "page-fault", "--guest",
         str(victims["dispatch"]), "--level", "snp", "--json"],
        capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    verdict = json.loads(out.stdout)
    assert verdict["cell"].endswith(" b") and verdict["leaked_bits"] >= 8, verdict["detail"]


def test_att_retarget_handler_pages_give_the_low_two_bits(victims):
    seed = 3
    verdict, outcome = _run("page-fault", victims["dispatch"], Level.SNP, seed)
    assert not verdict.detected
    assert _claimed(outcome, _secret(victims["dispatch"], seed)) == LOW_TWO, verdict.detail


@pytest.mark.bench
def test_att_retarget_counts_between_handler_calls_claim_only_low_bits(victims):
    """Single-step at snp counts instructions between the page events: a count on the
    dispatcher's page spans two nibbles, so some go unread — none is claimed wrong."""
    seed = 3
    verdict, outcome = _run("single-step", victims["dispatch"], Level.SNP, seed)
    claimed = _claimed(outcome, _secret(victims["dispatch"], seed))
    assert claimed <= LOW_TWO and len(claimed) >= 16, verdict.detail


def test_att_retarget_early_exit_gives_the_bits_up_to_the_stop(victims):
    seed = 4
    truth = _secret(victims["early"], seed)
    stop = next(i for i in range(64) if not truth >> i & 1)
    verdict, outcome = _run("page-fault", victims["early"], Level.SNP, seed)
    known = _claimed(outcome, truth)
    assert 0 in known and max(known) <= stop, verdict.detail


GRID = [(a, g, lv) for a in registry() for g in ("dispatch", "early") for lv in Level]


@pytest.mark.bench
@pytest.mark.parametrize(("attack", "guest", "level"), GRID,
                         ids=[f"{a}-{g}-{lv.value}" for a, g, lv in GRID])
def test_att_retarget_every_attack_scores_or_says_na(victims, attack, guest, level):
    cls = registry()[attack]
    verdict = run_attack(attack, cls.kind, str(victims[guest]), level, seed=1)
    assert not verdict.notes.get("error"), verdict.detail
    if verdict.cell == "n/a":
        assert verdict.detail.startswith("n/a: ") and "\n" not in verdict.detail


PIN = r"""
#include "tvmm.h"

__attribute__((noinline)) int same(const u8 *a, const u8 *b, u64 n)
{
    for (u64 i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

int main(void)
{
    const struct secrets_page *s = secrets();
    u8 line[64];
    for (int k = 0; k < 64; k++) {
        i64 n = input_read(line, sizeof line);
        if (n <= 0)
            break;
        if (same(line, s->data, 6)) {
            puts("open\n");
            return 0;
        }
        puts("closed\n");
    }
    return 1;
}
"""


def test_att_retarget_register_snoop_reads_a_pin_by_no_routine_name(tmp_path: Path):
    """An input-driven victim whose compare has a name of its own: register-snoop finds
    where the secret's bytes pass through a register on its own profiled runs."""
    path = tmp_path / "pin.c"
    path.write_text(PIN)
    path.with_suffix(".toml").write_text('secret_bytes = 6\ndescription = "a 6-byte PIN"\n')
    secret = b"k3y!Z9"
    verdict = judge_in_process(registry()["register-snoop"](), str(path), Level.PLAIN,
                               secret=secret)
    assert verdict.full_recovery and verdict.leaked_bits == 48, verdict.detail
    assert "6 of 6 bytes read" in verdict.detail
