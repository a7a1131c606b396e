"""The confidentiality attacks (docs/attacks.md, catalogue §1–5): the outcome of every
(attack, victim, level) cell, measured by running the attack through the judge, and the
decoders alone.

Outcome classes:
  full      the secret is recovered in full and nothing is detected;
  all-but-top  every bit but modexp's top one, which the guest forces to 1: no event
            depends on it, so the attack reports it unknown (Outcome.known);
  none      no bit leaks (the attack makes no guess) and nothing is detected;
  guess     the attack's guess is no better than a guess: not recovered, fewer than half
            its symbols right (the shim's jitter is drawn from the OS, so which noise guess
            the attack makes differs from run to run; test_att_conf_password_holds_at_shim_
            with_jitter checks over many runs that the hits are chance's);
  detected  the shim detects the attack; ``max_leak`` bounds what leaked before it did.

The constant-time twin modexp-ct is the control: a side-channel attack (single-step,
page-fault) must get exactly nothing from it at every level.
"""

from __future__ import annotations

import math
import random

import pytest

from tvmm.abi.messages import ExitRecord
from tvmm.abi.types import ExitReason, Field, Level
from tvmm.judge import run_attack
from tvmm.samples import MODEXP_BASE, MODEXP_MODULUS, PASSWORD_ALPHABET, resolve
from tvmm_tools.attacks import registry
from tvmm_tools.attacks._decode import (
    SLOT_SIZE,
    STATE_SIZE,
    Stepping,
    bits_to_guess,
    complete_bits,
    decode_segments,
    plain_registers,
)
from tvmm_tools.attacks.cipher_dictionary import CipherDictionary
from tvmm_tools.attacks.memory_scan import MemoryScan
from tvmm_tools.attacks.page_fault import PageFault
from tvmm_tools.attacks.register_snoop import RegisterSnoop
from tvmm_tools.attacks.single_step import SingleStep
from tvmm_tools.tradeoff import model_rearms_faults

P, S, ES, SNP, SHIM = Level.PLAIN, Level.SEV, Level.SEV_ES, Level.SNP, Level.SHIM
LEVELS = (P, S, ES, SNP, SHIM)
FULL, NONE, DETECTED, GUESS = "full", "none", "detected", "guess"
ALL_BUT_TOP = "all-but-top"  # every bit but modexp's forced top one, which stays unknown
SYMBOL_BITS = math.log2(len(PASSWORD_ALPHABET))  # what one right password character scores

CELLS = [
    # memory scan: the secrets page is plaintext only at plain
    *[(MemoryScan, v, lvl, FULL if lvl == P else NONE, 0)
      for v in ("modexp", "modexp-ct", "password", "kvstore") for lvl in LEVELS],
    # register snoop: plaintext registers at plain and sev; modexp's top bit is forced by
    # the guest, so no register follows it on the attacker's own runs: all but that bit
    *[(RegisterSnoop, v, lvl, (ALL_BUT_TOP if v != "password" else FULL) if lvl in (P, S)
       else NONE, 0) for v in ("modexp", "modexp-ct", "password") for lvl in LEVELS],
    # ciphertext dictionary: deterministic state up to snp; at shim it steps by page faults,
    # which pinning refuses (a detection), and the AEAD's fresh nonce would stop it anyway
    *[(CipherDictionary, v, lvl, DETECTED if lvl == SHIM else FULL, 0)
      for v in ("modexp-ct", "modexp") for lvl in LEVELS],
    # single-stepping and instruction counting
    *[(SingleStep, "modexp", lvl, ALL_BUT_TOP, 0) for lvl in (P, S, ES, SNP)],
    (SingleStep, "modexp", SHIM, DETECTED, 16),
    # modexp-ct: the attacker's own profiled runs show no count depends on the secret, so
    # it says n/a without stepping the victim (at shim too: nothing to be detected for)
    *[(SingleStep, "modexp-ct", lvl, NONE, 0) for lvl in LEVELS],
    # the password falls at every level below shim; at shim every timed entry is
    # jittered, so threshold tests at quanta above the minimum count nothing exactly
    *[(SingleStep, "password", lvl, FULL if lvl != SHIM else GUESS, 0) for lvl in LEVELS],
    # page-fault controlled channel: at shim pinning refuses the first entry with a page
    # unmapped, so not one fault is taken (detected, nothing read); modexp-ct: the
    # attacker's own profiled runs show no fault depends on the secret (n/a, never launched)
    *[(PageFault, "modexp", lvl, ALL_BUT_TOP, 0) for lvl in (P, S, ES, SNP)],
    (PageFault, "modexp", SHIM, DETECTED, 0),
    *[(PageFault, "modexp-ct", lvl, NONE, 0) for lvl in LEVELS],
]


def _id(value: object) -> str:
    return value.name if isinstance(value, type) else str(value)


def test_att_conf_model_rearms_faults():
    """The controlled channel needs a code page that faults again after it ran: Unicorn
    keeps running chained translated blocks unless UNMAP drops them."""
    assert model_rearms_faults()


@pytest.mark.parametrize(("attack", "victim", "level", "expect", "max_leak"), CELLS, ids=_id)
def test_att_conf_cell(attack, victim, level, expect, max_leak):
    verdict = run_attack(attack(), victim, level, seed=0)
    assert verdict.kind == "confidentiality"
    if expect == FULL:
        assert verdict.full_recovery, verdict.detail
        assert verdict.leaked_bits == verdict.n_bits
        assert not verdict.detected
    elif expect == ALL_BUT_TOP:
        assert verdict.notes["known_bits"] == 63, verdict.detail
        assert verdict.leaked_bits >= verdict.n_bits - 2  # today's per-bit score guesses it 0
        assert not verdict.detected
    elif expect == NONE:
        assert verdict.leaked_bits == 0, verdict.detail
        assert not verdict.detected
    elif expect == GUESS:
        assert_no_better_than_guessing(verdict)
    else:
        assert verdict.detected, verdict.detail
        assert not verdict.full_recovery
        assert verdict.leaked_bits <= max_leak, verdict.detail


@pytest.mark.parametrize("seed", [1, 2])
def test_att_conf_password_falls_at_shim_without_jitter(seed):
    """The control for the step policy's jitter: with only short entries extended, counting
    with quanta at the minimum recovers the early-exit password undetected."""
    from shim.policies.config import PolicyConfig

    verdict = run_attack(SingleStep(), "password", SHIM, seed=seed,
                         policy_config=PolicyConfig(jitter=False))
    assert verdict.full_recovery and not verdict.detected
    assert verdict.notes["q_min"] == 32  # no count at shim: docs/policies.md's min_progress
    assert verdict.stepping["single"] == 0


def right_characters(verdict) -> int:
    return round(verdict.bits_correct / SYMBOL_BITS)


def assert_no_better_than_guessing(verdict) -> None:
    """Counting got nothing: the guess is not the password and has fewer than half its
    characters right (the counting attack gets them all)."""
    assert not verdict.full_recovery, verdict.detail
    assert 2 * right_characters(verdict) < round(verdict.n_bits / SYMBOL_BITS), verdict.detail


@pytest.mark.parametrize("seed", [1, 2])
def test_att_conf_password_holds_at_shim_with_jitter(seed):
    """Over 40 runs (40 fresh jitter streams and 40 fresh passwords from the OS) the attack
    gets no character right more often than its guesses do by chance.  Its noise guesses
    favour the early letters its search tries first, whatever the secret, so a password
    made of them is hit now and then: measured with OS draws, 10 hits in 160 runs over four
    fixed passwords, 0.2 a run at most (for 'dffxktqn'); 24 or more hits in 40 runs has a
    chance below 1e-5 for a guesser, while an attack that learned even one character would
    score 40."""
    runs = 40
    verdicts = [run_attack(SingleStep(), "password", SHIM, seed=seed) for _ in range(runs)]
    for verdict in verdicts:
        assert_no_better_than_guessing(verdict)
    hits = sum(right_characters(v) for v in verdicts)
    assert hits < 0.6 * runs, f"{hits} characters right in {runs} runs"


@pytest.mark.parametrize("seed", [1, 2])
def test_att_conf_dictionary_other_secrets(seed):
    verdict = run_attack(CipherDictionary(), "modexp-ct", SNP, seed=seed)
    assert verdict.full_recovery
    assert verdict.notes["known_bits"] == 64 and verdict.notes["anchored"]


def test_att_conf_cipher_dictionary_meets_the_aead_with_pinning_off():
    """What stops the dictionary at shim besides pinning and the data-fault budget: with
    both off it steps the guest, and the sealed state's fresh nonce leaves no ciphertext
    block that repeats."""
    from shim.policies.config import PolicyConfig

    verdict = run_attack(CipherDictionary(), "modexp", SHIM, seed=0,
                         policy_config=PolicyConfig(pin_working_set=False,
                                                    data_fault_budget=1 << 20))
    assert verdict.leaked_bits == 0 and verdict.notes["deterministic"] is False, verdict.detail


def test_att_conf_stepping_histogram_snp_single_shim_uncounted():
    """At snp every armed step retires exactly one instruction, and the exit says so; at
    shim no timer exit shows a count (each was extended by 1..32, which the host is not
    told), so the host counts no step of any size.  (Pinning off at shim: with it, the
    attack's entries with a page unmapped are refused and it takes no step at all; the
    data-fault budget off too, or its first data fault ends the VM.)"""
    from shim.policies.config import PolicyConfig

    # How many steps the trace takes depends on the exponent (827 for 0, 1,205 for all
    # ones): a fixed secret, so that the count is the same on every run.
    secret = resolve("modexp")[1].make_secret(random.Random(0))
    snp = run_attack(SingleStep(), "modexp", SNP, seed=0, secret=secret).stepping
    shim = run_attack(SingleStep(), "modexp", SHIM, seed=0, secret=secret,
                      policy_config=PolicyConfig(pin_working_set=False,
                                                 data_fault_budget=1 << 20)).stepping
    assert snp["single"] > 800 and snp["zero"] == 0 and snp["multi"] == 0
    assert snp["uncounted"] == 0
    assert shim["single"] == shim["multi"] == shim["zero"] == 0 and shim["uncounted"] > 0


def test_att_conf_attack_classes_describe_themselves():
    found = registry()
    for cls in (MemoryScan, RegisterSnoop, CipherDictionary, SingleStep, PageFault):
        assert found[cls.name] is cls
        assert cls.kind == "confidentiality"
        assert cls.summary and cls.published and cls.victims


# -- decoders alone ---------------------------------------------------------------------------
def _loop_trace(bits: list[int]) -> list[tuple[int]]:
    """A square-and-multiply RIP trace: a 1 bit takes a longer path than a 0 bit."""
    trace = [(0x10,), (0x11,)]  # prologue
    for bit in bits:
        trace += [(0x20,), (0x21,), (0x22,)]
        trace += [(0x30,), (0x31,), (0x32,)] if bit else [(0x40,)]
    return trace + [(0x50,), (0x51,)]


def test_att_conf_decode_segments_recovers_two_paths():
    bits = [1] + [(i * 7 >> 2) & 1 for i in range(63)]
    decoded = decode_segments(_loop_trace(bits), 0)
    assert decoded is not None
    assert decoded.bits[:63] == bits[:63]


def test_att_conf_decode_segments_constant_time_gives_nothing():
    trace = [(0x10,)] + [(a,) for _ in range(64) for a in (0x20, 0x21, 0x22)] + [(0x50,)]
    assert decode_segments(trace, 0) is None


def test_att_conf_complete_bits_uses_the_printed_result():
    exponent = 0xDEADBEEF12345677 | 1 << 63
    bits = [(exponent >> (63 - i)) & 1 for i in range(64)]
    holes: list[int | None] = list(bits)
    for i in (5, 17, 63):
        holes[i] = None
    filled, ok = complete_bits(holes, pow(MODEXP_BASE, exponent, MODEXP_MODULUS))
    assert ok and filled == bits
    assert int.from_bytes(bits_to_guess(filled), "little") == exponent


def test_att_conf_plain_registers_rejects_ciphertext():
    from tvmm.hw.vmsa import DeterministicVmsaCipher, pack_plain

    regs = tuple(range(100, 100 + STATE_SIZE // SLOT_SIZE))
    assert plain_registers(pack_plain(regs))["rip"] == 116
    assert plain_registers(DeterministicVmsaCipher(bytes(32)).encrypt(pack_plain(regs))) is None
    assert plain_registers(bytes(STATE_SIZE + 16)) is None


def test_att_conf_stepping_counts_timer_exits_only():
    steps = Stepping()
    timer = ExitRecord(ExitReason.TIMER, 0, 0, ((Field.RETIRED, 1),))
    steps.note(1, timer)
    steps.note(1, ExitRecord(ExitReason.TIMER, 1, 0, ((Field.RETIRED, 7),)))
    steps.note(1, ExitRecord(ExitReason.NPF, 2, 0, ((Field.GPA_PAGE, 3),)))
    steps.note(40, timer)  # not armed as a single step
    steps.note(1, ExitRecord(ExitReason.TIMER, 3, 0, ()))  # shim: no count shown
    assert steps.histogram() == {"zero": 0, "single": 1, "multi": 1, "uncounted": 1}
    assert steps.cut == 1
