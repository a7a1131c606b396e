"""Key rank: how many bits of a secret an attacker knows, as side-channel evaluations count.

A secret is L symbols over an alphabet of q (bits: q = 2; password characters: q = 36), so
n = L·log2(q) bits.  The attacker's knowledge is ranked: the position at which the true
secret comes up when it tries candidates in its best order.  leaked = n − log2(rank),
clamped at 0: rank 1 is full recovery (n bits), rank q^L knowing nothing (0 bits).

A hard guess with a mask of what it claims: the attacker tries the unknown symbols
exhaustively and the claimed ones in order of Hamming (symbol) distance from its guess.
With K claimed symbols of which d are wrong and U = L − K unknown,

    rank = (Σ_{j<d} C(K, j)·(q−1)^j  +  C(K, d)·(q−1)^d) · q^U

— the candidates strictly closer on the claimed part, plus the worst-case position among
those at the truth's distance, times every value of the unknown part.  So a right claimed
symbol counts log2(q), an unknown one nothing, and a wrong claimed one costs.

A ranked list of candidates: rank = the truth's position in the list (1-based); a truth
not in the list is somewhere among the rest: worst case, rank q^L (0 bits).

Pure functions of data: the judge (tvmm.judge) feeds them; tests and docs/attacks.md's
worked examples call them directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SecretForm:
    """How a secret's bytes are read: ``bits`` (each bit a symbol, bit i of the value is
    bit i%8 of byte i//8) or ``symbols`` (each byte a symbol of ``alphabet``)."""

    form: str = "bits"
    alphabet: str = ""

    def __post_init__(self) -> None:
        if self.form not in ("bits", "symbols"):
            raise ValueError(f"form must be 'bits' or 'symbols', not {self.form!r}")
        if self.form == "symbols" and len(set(self.alphabet)) < 2:
            raise ValueError("a secret of symbols needs an alphabet of at least 2 characters")

    @property
    def q(self) -> int:
        return 2 if self.form == "bits" else len(set(self.alphabet))


BITS = SecretForm()


@dataclass(frozen=True)
class Score:
    n_bits: float  # the secret's size: L·log2(q)
    log2_rank: float  # log2 of the true secret's rank in the attacker's order
    leaked_bits: float  # max(0, n − log2_rank)
    correct: int  # claimed symbols that are right (of the first candidate, for a list)
    full_recovery: bool  # rank 1


def symbols(data: bytes, form: SecretForm, length: int) -> tuple[int, ...]:
    """``data`` as ``length`` symbols (missing ones as 0)."""
    if form.form == "symbols":
        return tuple(data[:length].ljust(length, b"\0"))
    value = int.from_bytes(data, "little")
    return tuple((value >> i) & 1 for i in range(length))


def length_of(secret: bytes, form: SecretForm) -> int:
    return len(secret) * (8 if form.form == "bits" else 1)


def claimed(guess: bytes, known: bytes | None, form: SecretForm, length: int) -> tuple[bool, ...]:
    """Which of ``length`` symbols the attacker claims: the mask's set bits (bits) or nonzero
    bytes (symbols); without a mask, every symbol the guess covers."""
    if known is None:
        covered = len(guess) * (8 if form.form == "bits" else 1)
        return tuple(i < covered for i in range(length))
    return tuple(bool(s) for s in symbols(known, form, length))


def log2_hard_rank(q: int, known: int, wrong: int, unknown: int) -> float:
    """log2 of the worst-case rank of a hard guess: ``known`` claimed symbols, ``wrong`` of
    them wrong, ``unknown`` more tried exhaustively."""
    if not 0 <= wrong <= known or unknown < 0:
        raise ValueError("need 0 <= wrong <= known and unknown >= 0")
    within = sum(math.comb(known, j) * (q - 1) ** j for j in range(wrong + 1))
    return math.log2(within) + unknown * math.log2(q)


def score_guess(secret: bytes, guess: bytes | None, known: bytes | None = None,
                form: SecretForm = BITS) -> Score:
    """Key rank of a hard guess with an optional mask of what it claims."""
    length = length_of(secret, form)
    n = length * math.log2(form.q)
    if guess is None or length == 0:
        return Score(n, n, 0.0, 0, length == 0 and guess is not None)
    truth, got = symbols(secret, form, length), symbols(guess, form, length)
    mask = claimed(guess, known, form, length)
    k = sum(mask)
    wrong = sum(1 for t, g, m in zip(truth, got, mask, strict=True) if m and t != g)
    log2_rank = log2_hard_rank(form.q, k, wrong, length - k)
    return Score(n, log2_rank, max(0.0, n - log2_rank), k - wrong, log2_rank == 0)


def score_candidates(secret: bytes, candidates: Sequence[bytes],
                     form: SecretForm = BITS) -> Score:
    """Key rank of a ranked list of whole guesses, best first."""
    length = length_of(secret, form)
    n = length * math.log2(form.q)
    truth = symbols(secret, form, length)
    first = symbols(candidates[0], form, length) if candidates else ()
    correct = sum(1 for t, g in zip(truth, first, strict=False) if t == g)
    seen: set[tuple[int, ...]] = set()
    for cand in candidates:  # a repeated candidate costs no position
        sym = symbols(cand, form, length)
        if sym in seen:
            continue
        seen.add(sym)
        if sym == truth:
            log2_rank = math.log2(len(seen))
            return Score(n, log2_rank, max(0.0, n - log2_rank), correct, len(seen) == 1)
    return Score(n, n, 0.0, correct, False)


def score(secret: bytes, outcome: dict, form: SecretForm = BITS) -> Score:
    """Key rank of an attack's outcome as data (tvmm_tools.attacks.base.outcome_to_data):
    its candidate list if it gave one, else its guess and mask."""
    def raw(key: str) -> bytes | None:
        value = outcome.get(key)
        return bytes.fromhex(value) if value is not None else None

    if outcome.get("candidates"):
        return score_candidates(secret, [bytes.fromhex(c) for c in outcome["candidates"]], form)
    return score_guess(secret, raw("guess"), raw("known"), form)


# -- worked examples (docs/attacks.md, written by ``python -m tvmm_tools.keyrank_docs``) ----------------
PASSWORD2 = SecretForm("symbols", "abcdefghijklmnopqrstuvwxyz0123456789")
EXAMPLES: tuple[tuple[str, bytes, bytes | None, bytes | None, SecretForm, list[bytes] | None],
                ...] = (
    ("8-bit secret, every bit claimed and right", b"\xb5", b"\xb5", None, BITS, None),
    ("6 bits claimed and right, 2 unknown", b"\xb5", b"\x35", b"\x3f", BITS, None),
    ("every bit claimed, 1 wrong", b"\xb5", b"\xb4", None, BITS, None),
    ("every bit claimed, 5 wrong (a blind guess)", b"\xb5", b"\x00", None, BITS, None),
    ("2-character password, 1st claimed and right", b"k7", b"k\x00", b"\x01\x00", PASSWORD2,
     None),
    ("candidate list, the truth 3rd", b"\xb5", None, None, BITS, [b"\x00", b"\xb4", b"\xb5"]),
)


def _hex(data: bytes | None, form: SecretForm, *, mask: bool = False) -> str:
    if data is None:
        return "—"
    if form.form == "symbols" and mask:
        return "`" + "".join("✓" if b else "·" for b in data) + "`"
    if form.form == "symbols":
        return "`" + data.decode("latin-1").replace("\0", "·") + "`"
    return f"`{int.from_bytes(data, 'little'):0{8 * len(data)}b}`"


def examples_markdown() -> str:
    """The worked examples as a Markdown table (secrets and guesses of bits shown most
    significant bit first; for characters, `·` unclaimed and `✓` claimed)."""
    rows = ["| case | secret | guess | known | rank | leaked bits |", "|---|---|---|---|---|---|"]
    for text, secret, guess, known, form, candidates in EXAMPLES:
        if candidates is not None:
            s = score_candidates(secret, candidates, form)
            shown, claims = ", ".join(_hex(c, form) for c in candidates), "—"
        else:
            s = score_guess(secret, guess, known, form)
            shown = _hex(guess, form)
            claims = _hex(known, form, mask=True) if known is not None else "all"
        rows.append(f"| {text} | {_hex(secret, form)} | {shown} | {claims} | "
                    f"{2 ** s.log2_rank:.0f} | {s.leaked_bits:.2f} of {s.n_bits:.2f} |")
    return "\n".join(rows) + "\n"
