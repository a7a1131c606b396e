"""The profiling decoder (tvmm_tools/attacks/_learn.py) on synthetic traces: leaks of known
shapes, written here as functions from a secret to a trace, learned only from the traces
of the attacker's chosen secrets, then decoded on random secrets.  Every bit the decoder
claims known must be right (the known-mask is tested, not just the score), and bits no
event depends on must stay unknown."""

from __future__ import annotations

import functools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvmm_tools.attacks._learn import decode, learn, profile_secrets, to_guess

NBYTES = 8
NBITS = 64


def _bits(secret: bytes) -> int:
    return int.from_bytes(secret, "little")


def square_multiply(secret: bytes) -> list:
    """MSB first, top bit forced: <sq, main, mul, main> for 1, <sq, main> for 0."""
    e = _bits(secret) | 1 << 63
    out = ["boot", "main"]
    for i in range(63, -1, -1):
        out += ["sq", "main"] + (["mul", "main"] if e >> i & 1 else [])
    return out + ["puts"]


def table_pages(secret: bytes) -> list:
    """Four rounds of 16 lookups: the page is the nibble's top two bits."""
    s = _bits(secret)
    return ["fill"] + [("page", s >> (4 * j + 2) & 3) for _r in range(4)
                       for j in range(16)] + ["out"]


def early_exit_counts(secret: bytes) -> list:
    """Per byte, one event carrying the instructions of a loop run byte + 1 times."""
    s = _bits(secret)
    return [("loop", 7 + 4 * ((s >> (8 * j)) & 0xFF)) for j in range(8)] + [("end", 3)]


def switch_low_bits(secret: bytes) -> list:
    """Per nibble a call to one of four handlers (its low two bits) and back."""
    s = _bits(secret)
    out = []
    for j in range(16):
        out += [f"h{(s >> (4 * j)) & 3}", "main"]
    return out


def trailing_ones(secret: bytes) -> list:
    """An early-exit loop over the bits, low first, stopping at the first 0."""
    s = _bits(secret)
    out = []
    for i in range(64):
        out += ["step", "main"]
        if not s >> i & 1:
            break
    return [*out, "puts"]


@functools.cache
def _learned(leak):
    profiles = [(secret, leak(secret)) for _label, secret in profile_secrets(NBYTES)]
    return learn(profiles, NBITS)


def _check(leak, secret: bytes) -> dict[int, int]:
    model = _learned(leak)
    assert model is not None
    bits, _segs = decode(model, leak(secret))
    truth = _bits(secret)
    wrong = {j for j, v in bits.items() if v != truth >> j & 1}
    assert not wrong, f"bits claimed known but wrong: {sorted(wrong)}"
    return bits


@settings(max_examples=25)
@given(st.binary(min_size=NBYTES, max_size=NBYTES))
def test_att_learn_square_multiply_reads_all_but_the_forced_bit(secret):
    bits = _check(square_multiply, secret)
    assert set(bits) == set(range(63))  # bit 63 is forced: nothing shows it


@settings(max_examples=25)
@given(st.binary(min_size=NBYTES, max_size=NBYTES))
def test_att_learn_table_reads_the_top_two_bits_of_each_nibble(secret):
    bits = _check(table_pages, secret)
    assert set(bits) == {4 * j + k for j in range(16) for k in (2, 3)}


@settings(max_examples=25)
@given(st.binary(min_size=NBYTES, max_size=NBYTES))
def test_att_learn_loop_counts_read_whole_bytes_by_their_affine_fit(secret):
    assert set(_check(early_exit_counts, secret)) == set(range(64))


@settings(max_examples=25)
@given(st.binary(min_size=NBYTES, max_size=NBYTES))
def test_att_learn_switch_reads_the_low_two_bits_of_each_nibble(secret):
    assert set(_check(switch_low_bits, secret)) == {4 * j + k for j in range(16)
                                                    for k in (0, 1)}


@settings(max_examples=25)
@given(st.integers(0, 63), st.integers(0, 2**64 - 1))
def test_att_learn_early_exit_claims_only_what_the_stop_shows(stop, noise):
    """The loop runs to the first 0 bit: what it shows is the 1s before it and that 0;
    the bits after the stop never show, whatever they are."""
    value = ((1 << stop) - 1) | (noise >> (stop + 1) << (stop + 1))
    bits = _check(trailing_ones, value.to_bytes(NBYTES, "little"))
    assert all(j <= stop for j in bits)
    assert 0 in bits  # the first bit always shows: a second iteration or none


def test_att_learn_constant_time_gives_no_model():
    assert _learned(lambda secret: ["a", "b"] * 64) is None


def test_att_learn_cut_short_trace_drops_its_partial_segment():
    """A victim killed mid-run: the segments read before are decoded, the cut one is not."""
    rng = random.Random(5)
    secret = rng.randbytes(NBYTES)
    model = _learned(square_multiply)
    trace = square_multiply(secret)[:60]
    bits, _segs = decode(model, trace, complete=False)
    truth = _bits(secret)
    assert bits and all(v == truth >> j & 1 for j, v in bits.items())
    assert max(bits) == 63 - 1 and min(bits) > 40


@pytest.mark.parametrize("nbytes", [1, 8, 32])
def test_att_learn_profile_secrets_spell_each_bit_index(nbytes):
    """Each bit's index reads off the flipped profiles: bit m of j set in idx{m}, clear
    in not{m}; zeros and ones first."""
    chosen = dict(profile_secrets(nbytes))
    assert _bits(chosen["zeros"]) == 0 and _bits(chosen["ones"]) == (1 << 8 * nbytes) - 1
    for j in range(8 * nbytes):
        for m in range(max(1, (8 * nbytes - 1).bit_length())):
            assert (_bits(chosen[f"idx{m}"]) >> j & 1) == (j >> m & 1)
            assert (_bits(chosen[f"not{m}"]) >> j & 1) != (j >> m & 1)


def test_att_learn_known_mask_marks_exactly_the_bits_read():
    guess, known = to_guess({0: 1, 9: 0, 63: 1}, NBYTES)
    assert int.from_bytes(known, "little") == 1 | 1 << 9 | 1 << 63
    assert int.from_bytes(guess, "little") == 1 | 1 << 63
