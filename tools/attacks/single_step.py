"""Single-stepping and instruction counting (SGX-Step, SEV-Step, CopyCat).

The host arms the timer with a quantum of one instruction and follows the victim's
secret-dependent control flow.

modexp, modexp-ct — the host unmaps the page of the exponent loop's routine
(``modexp_square``; ``ladder`` for the constant-time twin); its fault marks the start.

- Where the exit shows RIP (``plain``, ``sev``) the host single-steps to the end of the
  computation and keeps the RIP of every step: cut at a RIP seen once per exponent bit,
  the iterations follow two different paths, ⟨square, multiply⟩ or ⟨square⟩, and the top
  bit (always 1) names them (tools.attacks._decode.decode_segments).
- Without RIP (``sev-es``, ``snp``, ``shim``) the host counts instructions between
  page-level events: it keeps exactly one of {routine page, caller page} mapped, so every
  call and every return faults, and single-steps in between.  From the return to the next
  call the caller retires 6 instructions after a 0 bit and 14 after a 1 bit (it calls the
  multiply on a page left mapped); the host counts 5 or 13 timer exits, because the call
  itself retires in the entry that then faults on the next fetch.  Where a step retires more than one instruction (the
  shim extends short quanta) the counts are only lower bounds; the host then takes the
  two path lengths from a profiling run of the public image that it launches itself at
  ``snp`` with no secret (its own VM, destroyed afterwards and not handed to the judge),
  and reads a bit as 1 only when the lower bound already exceeds the 0-bit path.

password — the host serves the input lines and counts the instructions between each
input's completion and the next console write (``denied``): the early-exit compare runs 6
instructions longer per matching leading byte.  It first finds the length (the compare
returns at once when the lengths differ), then tries a-z0-9 at each position; the
candidate whose count is longer is right.  The host first calibrates the timer: if a
quantum of 1 comes back with RETIRED > 1 the platform extends short quanta, and the host
finds the smallest quantum it honours (at ``shim``, where a timer exit shows no count, it
takes the minimum progress docs/policies.md documents, 32).  It then counts with threshold tests instead of
single steps — one attempt answers "did the timer at q fire before the console write?",
a binary search gives the exact count — and never arms a short quantum again.

The stepping histogram compares the armed quantum (1) with RETIRED at each timer exit
(tools.attacks._decode.Stepping).  The modeled timer is exact — Unicorn stops after the
counted instruction — so there are no zero steps, unlike SGX-Step's ≈2% on hardware.
"""

from __future__ import annotations

import statistics
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from tools.attacks._decode import (
    EXPONENT_BITS,
    Stepping,
    bits_to_guess,
    bits_to_known,
    complete_bits,
    decode_segments,
    fault_page,
    is_console_write,
    is_input_read,
    page_of,
    printed_result,
)
from tools.attacks.base import Attack, AttackContext, Outcome
from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import ExitReason, Field, Level, Result
from tvmm.host.devices import InputDevice
from tvmm.host.hypervisor import HonestHypervisor
from tvmm.samples import PASSWORD_ALPHABET

LOOP_SYMBOL = {"modexp": "modexp_square", "modexp-ct": "ladder"}
CALLER_SYMBOL = "main"
MAX_PASSWORD = 32  # guests/samples/password.c: MAX_PW
MAX_STEPS = 50_000


class SingleStep(Attack):
    name = "single-step"
    summary = ("single-step the victim (timer quantum 1) or count its instructions between "
               "events: the exponent's control flow, the early-exit compare's length")
    victims = ("modexp", "modexp-ct", "password")
    kind = "confidentiality"
    published = ("SGX-Step: 100,000 of 100,000 nops single-stepped with 0 multi-steps "
                 "(zero-steps ≈2%); an early-exit memcmp password falls byte by byte in "
                 "linear time; CopyCat: 100/100 DSA keys with ~22,000 interrupts per "
                 "signature (docs/attacks.md §4).  Defences: TDX random 1–32-instruction "
                 "stepping; AEX-Notify residual single-step rate 4.2%.")

    def run(self, ctx: AttackContext) -> Outcome:
        if ctx.guest == "password":
            return _password(ctx)
        return _exponent(ctx)


# -- modexp, modexp-ct ------------------------------------------------------------------------
class _StepHost(HonestHypervisor):
    """Single-steps from the first fault on the loop's page to the first console write."""

    def __init__(self, *args, target: int, caller: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.target, self.caller = target, caller
        self.stepping = False
        self.mode = ""  # "rip": RIPs visible; "count": counts between page events
        self.rips: list[int] = []
        self.events: list[tuple[str, int]] = []  # (page event, instructions counted before it)
        self.counted = 0
        self.refused = 0
        self.steps = Stepping()

    def enter(self) -> Reply:
        self.quantum = 1 if self.stepping else 0
        reply = super().enter()
        if reply.result == Result.ENTRY_REFUSED and self.mode:
            self.refused += 1
            self._stop()  # the shim insists on its pages: map them and let it run
            self.quantum = 0
            reply = super().enter()
        return reply

    def on_exit(self, rec: ExitRecord) -> bool:
        if self.stepping:
            self.steps.note(1, rec)
        if rec.reason == ExitReason.NPF and fault_page(rec) in (self.target, self.caller):
            return self._page_event(rec)
        if self.stepping and rec.reason == ExitReason.TIMER:
            self.counted += rec.get(Field.RETIRED, self.quantum) or 0  # shim: not shown
            if self.mode == "rip":
                self.rips.append(rec.get(Field.RIP))
            if len(self.rips) + len(self.events) > MAX_STEPS:
                self._stop()
        elif self.stepping and is_console_write(rec):
            self.events.append(("end", self.counted))
            self._stop()
        return super().on_exit(rec)

    def _page_event(self, rec: ExitRecord) -> bool:
        page = fault_page(rec)
        if not self.mode:
            self.mode = "rip" if rec.get(Field.RIP) is not None else "count"
            self.stepping = True
        self.client.map(self.vm, page)
        if self.mode == "count":
            self.events.append(("call" if page == self.target else "return", self.counted))
            self.counted = 0
            other = self.caller if page == self.target else self.target
            self.client.unmap(self.vm, other)
        return True

    def _stop(self) -> None:
        self.stepping = False
        self.client.map(self.vm, self.target)
        self.client.map(self.vm, self.caller)


def _step_run(ctx: AttackContext, level: Level, secret_blob: bytes) -> _StepHost:
    host = ctx.host(_StepHost, target=page_of(ctx.image, LOOP_SYMBOL[ctx.guest]),
                    caller=page_of(ctx.image, CALLER_SYMBOL))
    host.launch(ctx.image, level, ctx.memory, secret_blob=secret_blob)
    ctx.client.unmap(host.vm, host.target)
    ctx.record("unmap", gpa=host.target, level=level.value)
    host.run(max_exits=MAX_STEPS + 10_000)
    return host


def _gaps(events: list[tuple[str, int]]) -> list[tuple[int, str]]:
    """Instructions counted from each return to the caller until the next call (or the
    end), with what ended the gap."""
    return [(events[i + 1][1], events[i + 1][0]) for i, (kind, _) in enumerate(events[:-1])
            if kind == "return"]


def _exponent(ctx: AttackContext) -> Outcome:
    host = _step_run(ctx, ctx.level, ctx.fresh_secret_blob())
    profile_exits = 0
    printed = printed_result(host.devices.console.text)
    how = host.run_result.how if host.run_result else "?"
    notes: dict[str, object] = {"mode": host.mode, "run": how, "stepping_cut": host.steps.cut}
    if host.refused:
        notes.update(blocked=True, refused=host.refused)
    bits: list[int | None] | None = None
    if host.mode == "rip":
        decoded = decode_segments([(rip,) for rip in host.rips], 0)
        if decoded is not None:
            bits = decoded.bits
        notes["detail"] = (f"{len(host.rips)} single steps with RIP; "
                           + ("the iterations follow two paths" if bits else
                              "every iteration follows the same path"))
    elif host.mode == "count":
        calls = sum(1 for kind, _ in host.events if kind == "call")
        gaps = _gaps(host.events)
        exact = host.steps.multi == 0
        notes.update(calls=calls, gaps=[g for g, _ in gaps][:EXPONENT_BITS])
        if calls < 2:
            notes["detail"] = (f"{calls} call(s) of the loop's routine: no per-iteration "
                               "events to count between")
        elif exact:
            bits = _bits_from_exact(gaps)
            notes["detail"] = (f"{calls} calls; exact counts between return and call: "
                               f"{sorted({g for g, end in gaps if end == 'call'})}")
        else:
            profile = _step_run(ctx, Level.SNP, b"")
            paths = sorted({g for g, end in _gaps(profile.events) if end == "call"})
            profile_exits = sum(profile.exits.values())
            profile.destroy()  # the attacker's own VM: not the victim, not for the judge
            notes["profile_paths"] = paths
            if len(paths) == 2:
                bits = _bits_from_bounds(gaps, paths[0])
            ended = "entry refused, pages mapped again" if host.refused else f"run {how}"
            notes["detail"] = (f"{calls} calls traced ({ended}); steps not exact "
                               f"({host.steps.multi} multi-steps), lower bounds against the "
                               f"profiled paths {paths}")
    else:
        notes["detail"] = "the loop's page never faulted"
    guess = known = None
    if bits is not None:
        bits = (bits + [None] * EXPONENT_BITS)[:EXPONENT_BITS]
        notes["known_bits"] = sum(1 for b in bits if b is not None)
        bits, verified = complete_bits(bits, printed)
        notes["verified"] = verified
        guess, known = bits_to_guess(bits), bits_to_known(bits)
    exits = sum(host.exits.values()) + profile_exits
    return Outcome(guess=guess, known=known, hosts=[host], exits=exits,
                   stepping=host.steps.histogram(), notes=notes)


def _bits_from_exact(gaps: list[tuple[int, str]]) -> list[int | None] | None:
    """Two path lengths, named by the anchor: the first iteration is a 1 bit."""
    lengths = [g for g, end in gaps if end == "call"]
    if len(set(lengths)) != 2:
        return None
    one = lengths[0]
    return [1 if g == one else 0 for g in lengths] + [None]


def _bits_from_bounds(gaps: list[tuple[int, str]], zero_path: int) -> list[int | None]:
    """A lower bound above the 0-bit path proves a 1; otherwise the bit stays unknown."""
    return [1 if g > zero_path else None for g, end in gaps if end == "call"]


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
