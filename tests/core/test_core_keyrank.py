"""Key rank (tvmm/keyrank.py): leaked bits = n − log2(rank of the true secret).

Properties of the formula, for secrets of bits and of password characters: a guess fully
claimed and right is n bits, an unclaimed one 0, one wrong claimed symbol among K costs
exactly log2(1 + K(q − 1)), more right claims never lower the score and a wrong one never
raises it; a candidate list scores the truth's position.  The worked examples of
docs/attacks.md are the code's own output."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tvmm import keyrank
from tvmm.keyrank import BITS, SecretForm, score, score_candidates, score_guess

PASSWORD = SecretForm("symbols", "abcdefghijklmnopqrstuvwxyz0123456789")
FEW = settings(max_examples=40, deadline=None)  # pure arithmetic: 40 cases a property
DOC = Path(__file__).resolve().parents[2] / "docs" / "attacks.md"


def _bits(secret: bytes, mask_bits: list[bool]) -> bytes:
    """A known-mask over ``secret``'s bits."""
    value = sum(1 << i for i, m in enumerate(mask_bits) if m)
    return value.to_bytes(len(secret), "little")


secrets_of_bits = st.binary(min_size=1, max_size=12)
passwords = st.text(alphabet=PASSWORD.alphabet, min_size=1, max_size=10).map(str.encode)


@st.composite
def secret_and_mask(draw, source=secrets_of_bits):
    secret = draw(source)
    length = keyrank.length_of(secret, BITS)
    mask = draw(st.lists(st.booleans(), min_size=length, max_size=length))
    return secret, mask


def _flip(data: bytes, i: int) -> bytes:
    return (int.from_bytes(data, "little") ^ (1 << i)).to_bytes(len(data), "little")


@FEW
@given(secrets_of_bits)
def test_all_claimed_and_right_is_n_bits(secret):
    s = score_guess(secret, secret)
    assert s.leaked_bits == s.n_bits == 8 * len(secret) and s.full_recovery


@FEW
@given(passwords)
def test_a_password_all_right_is_n_bits_of_its_alphabet(secret):
    s = score_guess(secret, secret, None, PASSWORD)
    assert math.isclose(s.leaked_bits, len(secret) * math.log2(36)) and s.full_recovery


@FEW
@given(secret_and_mask(), st.binary(min_size=12, max_size=12))
def test_nothing_claimed_is_0_bits_whatever_the_guess(sm, guess):
    secret, _ = sm
    s = score_guess(secret, guess[: len(secret)], bytes(len(secret)))
    assert s.leaked_bits == 0 and s.log2_rank == s.n_bits and not s.full_recovery
    assert score_guess(secret, None).leaked_bits == 0


@FEW
@given(secret_and_mask())
def test_right_claims_count_their_bits_and_unknown_ones_nothing(sm):
    secret, mask = sm
    s = score_guess(secret, secret, _bits(secret, mask))
    assert math.isclose(s.leaked_bits, sum(mask)) and s.correct == sum(mask)


@FEW
@given(secret_and_mask(), st.data())
def test_one_wrong_claimed_bit_costs_exactly_log2_of_one_plus_the_claimed(sm, data):
    secret, mask = sm
    claimed = [i for i, m in enumerate(mask) if m]
    if not claimed:
        return
    i = data.draw(st.sampled_from(claimed))
    right = score_guess(secret, secret, _bits(secret, mask))
    wrong = score_guess(secret, _flip(secret, i), _bits(secret, mask))
    k = len(claimed)
    assert math.isclose(right.leaked_bits - wrong.leaked_bits, min(k, math.log2(k + 1)),
                        abs_tol=1e-9) or wrong.leaked_bits == 0
    assert math.isclose(wrong.log2_rank - right.log2_rank, math.log2(k + 1))


@FEW
@given(passwords, st.data())
def test_one_wrong_character_costs_log2_of_one_plus_35_per_claimed(secret, data):
    i = data.draw(st.integers(0, len(secret) - 1))
    other = next(c for c in PASSWORD.alphabet.encode() if c != secret[i])
    guess = secret[:i] + bytes([other]) + secret[i + 1 :]
    right, wrong = score_guess(secret, secret, None, PASSWORD), \
        score_guess(secret, guess, None, PASSWORD)
    assert math.isclose(wrong.log2_rank - right.log2_rank, math.log2(1 + 35 * len(secret)))


@FEW
@given(secret_and_mask(), st.binary(min_size=12, max_size=12), st.data())
def test_more_right_claims_never_lower_and_a_wrong_one_never_raises_the_score(sm, noise, data):
    secret, mask = sm
    guess = noise[: len(secret)]
    i = data.draw(st.integers(0, len(mask) - 1))
    base = score_guess(secret, guess, _bits(secret, mask))
    more = list(mask)
    more[i] = True
    right_guess = guess if (guess[i // 8] ^ secret[i // 8]) >> (i % 8) & 1 == 0 \
        else _flip(guess, i)
    assert score_guess(secret, right_guess, _bits(secret, more)).leaked_bits >= \
        score_guess(secret, right_guess, _bits(secret, mask)).leaked_bits - 1e-9
    if mask[i]:
        worse = _flip(right_guess, i)
        assert score_guess(secret, worse, _bits(secret, mask)).leaked_bits <= \
            score_guess(secret, right_guess, _bits(secret, mask)).leaked_bits + 1e-9
    assert 0 <= base.leaked_bits <= base.n_bits


@FEW
@given(secrets_of_bits, st.lists(st.binary(min_size=1, max_size=12), max_size=6),
       st.integers(0, 6))
def test_a_candidate_list_scores_the_truths_position(secret, others, at):
    decoys = [o for o in dict.fromkeys(o[: len(secret)].ljust(len(secret), b"\0")
                                       for o in others) if o != secret]
    at = min(at, len(decoys))
    ranked = decoys[:at] + [secret] + decoys[at:]
    s = score_candidates(secret, ranked)
    assert math.isclose(s.leaked_bits, max(0.0, 8 * len(secret) - math.log2(at + 1)))
    assert s.full_recovery == (at == 0)
    assert score_candidates(secret, decoys).leaked_bits == 0


def test_the_outcome_as_data_takes_candidates_before_the_guess():
    outcome = {"guess": "00", "known": None, "candidates": ["01", "b5"]}
    assert score(b"\xb5", outcome).log2_rank == 1.0
    assert score(b"\xb5", {"guess": "b5", "known": "0f"}).leaked_bits == 4.0


def test_a_guess_shorter_than_the_secret_claims_only_what_it_covers():
    s = score_guess(b"\x12\x34", b"\x12")
    assert s.leaked_bits == 8.0 and s.correct == 8


def test_the_docs_worked_examples_are_the_codes_output():
    text = DOC.read_text()
    begin, end = "<!-- keyrank-examples:begin -->\n", "<!-- keyrank-examples:end -->"
    block = text.split(begin)[1].split(end)[0]
    assert block == keyrank.examples_markdown()
    assert "| 9 | 4.83 of 8.00 |" in block  # one wrong of 8 claimed bits: rank 1 + 8
