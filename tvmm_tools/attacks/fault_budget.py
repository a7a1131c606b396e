"""Adaptive page-fault attacks that stay inside the shim's documented fault limits.

An attacker who reads docs/policies.md knows the defaults: more than 6 faults at one RIP
trip the TDX rule (``fault_same_rip``), more than 64 in a window of a million instructions
kill the VM (``fault_budget``).  Both attacks here take faults only while under them.

Targets come from the public image (tvmm_tools.attacks._targets): the program's routines on
code pages of their own, and ``main``'s page.  The host keeps one of these pages mapped at
a time (tvmm_tools.attacks.page_fault's controlled channel): every call and every return
faults.  A fault on a routine's page is at that routine's entry, a fault on main's page at
the return site of the routine that ran, so the host counts faults per RIP without seeing
one.  Which routine is the loop's and which the bit's, and how many instructions an
iteration takes, it learns from its own copy at ``plain`` with no secret (RIP shown,
single steps):

- "extra" (modexp): the loop routine runs every iteration and the other one only for a
  1 bit; the own copy's first iteration calls it (the top bit is forced), bits are read
  from the top;
- "either" (branches): each iteration calls one of two routines, the own copy only the
  first; bits are read from the bottom.

``fault-budget`` (one launch) reads bits from the first iteration until the next fault
would pass a limit, then maps everything and lets the victim finish.  ``relaunch`` adds
the locate-by-count step and repeats: from the first fault on the loop's page (the start
of iteration 0) it runs a timer of the instructions up to where its knowledge ends (the
iteration lengths of the bits it knows, from the own copy), less the shim's jitter, then
takes the next few bits the same way; the new run is placed by matching its first bits
against those already known.  Each launch costs one owner launch secret: the owner's
launch budget (docs/attestation.md) bounds how many windows it reads.  Up to ``snp`` the
limits do not exist and the timer is exact; one launch reads everything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tvmm.abi.guest import PAGE_SIZE
from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import ExitReason, Level, Result
from tvmm.host.hypervisor import HonestHypervisor
from tvmm_tools.attacks._decode import (
    EXPONENT_BITS,
    bits_to_guess,
    complete_bits,
    fault_page,
    is_console_write,
    printed_result,
)
from tvmm_tools.attacks._stepper import RoutineStepper, step_own_copy
from tvmm_tools.attacks._targets import program_routines
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, not_applicable

SAME_RIP = 6  # docs/policies.md: fault_same_rip (default)
BUDGET = 64  # docs/policies.md: fault_budget per window (default)
JITTER = 32  # docs/policies.md: a timed entry runs 0..32 further
MIN_QUANTUM = 32
MAX_LAUNCHES = 40
OVERLAP = 2  # iterations a relaunch re-reads to place its window


def _page(addr: int) -> int:
    return addr & ~(PAGE_SIZE - 1)


@dataclass(frozen=True, slots=True)
class Layout:
    """What the own copy shows: the routines, the style, and iteration lengths."""

    loop: int  # the routine of iteration 0 of the own copy (called every iteration)
    other: int  # the bit's routine
    main: int  # main's page
    style: str  # "extra" or "either"
    zero: int  # instructions from one iteration's first call to the next, for a 0 bit
    one: int | None  # the same for a 1 bit, when the own copy shows one


def layout(ctx: AttackContext) -> Layout | str:
    """The own copy's layout, or why the victim does not fit (the scenario's n/a)."""
    routines = program_routines(ctx.image)
    if len(routines) != 2:
        return (f"{len(routines)} routine{'' if len(routines) == 1 else 's'} above main on "
                "code pages of their own, not 2: no pair of calls tells a bit apart")
    pages = sorted({_page(r) for r in routines})
    host = ctx.host(RoutineStepper, pages=pages)
    step_own_copy(ctx, host)
    calls = sorted((t, r) for r in routines for t, rip in enumerate(host.rips) if rip == r)
    if len(calls) < 3:
        return (f"the own copy calls its two routines {len(calls)} times: no loop of calls "
                "to read")
    loop = calls[0][1]
    other = next(r for r in routines if r != loop)
    starts = [t for t, r in calls if r == loop]
    extra = any(r == other for _t, r in calls)
    if extra:  # 1 then zeros: the first gap is a 1 bit's
        return Layout(loop, other, _page(ctx.image.symbol("main")), "extra",
                      starts[2] - starts[1], starts[1] - starts[0])
    return Layout(loop, other, _page(ctx.image.symbol("main")), "either",
                  starts[1] - starts[0], None)


@dataclass
class Window:
    """One launch's reading: the bits of consecutive iterations from its first."""

    bits: list[int | None] = field(default_factory=list)
    lead: bool = False  # bits[0] is the iteration the timer landed in (it called the other)
    faults: int = 0
    how: str = ""
    refused: bool = False


class _BudgetHost(HonestHypervisor):
    """Anchors on the first loop fault, waits ``skip`` instructions (a timer), then reads
    iterations by faults while under ``limits`` (None: no limit)."""

    def __init__(self, *args, lay: Layout, skip: int, limits: tuple[int, int] | None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lay, self.skip, self.limits = lay, skip, limits
        self.tracked = [_page(lay.loop), _page(lay.other), lay.main]
        self.phase = "anchor"
        self.per_rip: Counter = Counter()
        self.total = 0
        self.last_routine: int | None = None
        self.calls: list[int] = []  # routine pages called, in order, while reading
        self.complete = False  # the last iteration read is known to be over
        self.refused = False
        self.landing: int | None = None

    def start(self) -> None:
        self.client.unmap(self.vm, _page(self.lay.loop))
        if self.lay.style == "either":
            self.client.unmap(self.vm, _page(self.lay.other))

    def enter(self) -> Reply:
        self.quantum = self.skip if self.phase == "wait" else 0
        reply = super().enter()
        if reply.result == Result.ENTRY_REFUSED and self.phase != "done":
            self.refused = True
            self._stop()
            self.quantum = 0
            reply = super().enter()
        return reply

    def _unmap_except(self, keep: int) -> None:
        for page in self.tracked:
            if page != keep:
                self.client.unmap(self.vm, page)

    def on_exit(self, rec: ExitRecord) -> bool:
        page = fault_page(rec) if rec.reason == ExitReason.NPF else None
        if self.phase == "anchor" and page is not None and page in self.tracked:
            if self.skip:
                self.total += 1
                self.per_rip[(page, None)] += 1
                self.client.map(self.vm, page)
                if self.lay.style == "either":
                    self.client.map(self.vm, _page(self.lay.other))
                self.phase = "wait"
                return True
            self.phase = "read"
            return self._read(page)
        if self.phase == "wait" and rec.reason == ExitReason.TIMER:
            self.phase = "find"
            self._unmap_except(-1)
            return True
        if self.phase == "find" and page is not None and page in self.tracked:
            # Where the timer left the guest (maybe inside a routine): not a call.
            self.phase = "read"
            self.total += 1
            self.landing = page  # its RIP is unknown: it may be any RIP of the page
            if page != self.lay.main:
                self.last_routine = page
            self.client.map(self.vm, page)
            self._unmap_except(page)
            return True
        if self.phase == "read" and page is not None and page in self.tracked:
            return self._read(page)
        if self.phase in ("read", "find") and is_console_write(rec):
            self.complete = True
            self._stop()
        return super().on_exit(rec)

    def _read(self, page: int) -> bool:
        """Record a fault; stop (map everything) once a RIP or the window has used its
        limit: the shim counts a fault when it happens, so the next one must not come."""
        key = (page, self.last_routine if page == self.lay.main else None)
        self.total += 1
        self.per_rip[key] += 1
        if page != self.lay.main:
            self.calls.append(page)
            self.last_routine = page
        self.client.map(self.vm, page)
        self._unmap_except(page)
        if self.limits is not None:
            same, budget = self.limits
            same -= page == self.landing  # the landing fault may have been at this RIP
            if self.per_rip[key] >= same or self.total >= budget:
                self._stop()
        return True

    def _stop(self) -> None:
        self.phase = "done"
        for page in self.tracked:
            self.client.map(self.vm, page)

    def window(self) -> Window:
        """The bits of the iterations read, from the first loop call on."""
        loop, other = _page(self.lay.loop), _page(self.lay.other)
        calls = list(self.calls)
        bits: list[int | None] = []
        if self.lay.style == "either":
            bits = [1 if p == other else 0 for p in calls]
        else:
            lead = False
            while calls and calls[0] != loop:
                lead = lead or calls[0] == other
                calls.pop(0)
            if lead:  # the landing iteration called the bit's routine: a 1 before the first
                bits.append(1)
            starts = [i for i, p in enumerate(calls) if p == loop]
            for n, s in enumerate(starts):
                end = starts[n + 1] if n + 1 < len(starts) else len(calls)
                if other in calls[s:end]:
                    bits.append(1)
                elif n + 1 < len(starts) or self.complete:
                    bits.append(0)
                else:
                    bits.append(None)
        how = self.run_result.how if self.run_result is not None else ""
        lead = self.lay.style == "extra" and bool(bits) and self.phase != "anchor" and lead
        return Window(bits, lead, self.total, how, self.refused)


def _limits(ctx: AttackContext) -> tuple[int, int] | None:
    return (SAME_RIP, BUDGET) if ctx.level == Level.SHIM else None


def read_window(ctx: AttackContext, lay: Layout, skip: int
                ) -> tuple[Window, HonestHypervisor] | None:
    """One launch read from ``skip`` instructions after the first loop fault; None when the
    owner refuses a launch secret (its launch budget is spent)."""
    blob = ctx.fresh_secret_blob()
    if ctx.launch_secret is not None and not blob:
        return None
    host = ctx.host(_BudgetHost, lay=lay, skip=skip, limits=_limits(ctx))
    host.launch(ctx.image, ctx.level, ctx.memory, secret_blob=blob)
    host.start()
    ctx.record("unmap", gpa=_page(lay.loop), skip=skip)
    host.run(max_exits=50_000)
    return host.window(), host


def _order(bits: list[int | None], lay: Layout) -> list[int | None]:
    """Most significant first for bits_to_guess."""
    bits = (bits + [None] * EXPONENT_BITS)[:EXPONENT_BITS]
    return bits if lay.style == "extra" else bits[::-1]


def _outcome(bits: list[int | None], lay: Layout, console: str, hosts: list[HonestHypervisor],
             notes: dict[str, object]) -> Outcome:
    ordered = _order(bits, lay)
    verified = False
    if lay.style == "extra":
        ordered, verified = complete_bits(ordered, printed_result(console))
    known = sum(1 for b in ordered if b is not None)
    mask = bits_to_guess([0 if b is None else 1 for b in ordered])
    notes.update(known_bits=known, verified=verified)
    exits = sum(sum(h.exits.values()) for h in hosts)
    return Outcome(guess=bits_to_guess(ordered), known=mask, hosts=hosts, exits=exits,
                   notes=notes)


class FaultBudget(Attack):
    name = "fault-budget"
    summary = ("controlled channel that stays under the documented limits: at most 6 faults "
               "per RIP and 64 per window, then everything mapped (one launch)")
    victims = ("modexp", "modexp-ct", "branches")
    kind = "confidentiality"
    published = ("Xu, Cui, Peinado (S&P 2015) controlled channel; TDX 1.5's zero-step "
                 "heuristic lists pages after 6 faults at one RIP (Intel TDX module 1.5 spec), "
                 "a per-RIP count a loop's iterations meet only a few times each.")

    def run(self, ctx: AttackContext) -> Outcome:
        lay = layout(ctx)
        if isinstance(lay, str):
            return not_applicable(lay)
        got = read_window(ctx, lay, 0)
        if got is None:
            return Outcome(notes={"detail": "the owner refused the launch secret"})
        window, host = got
        read = sum(1 for b in window.bits if b is not None)
        notes: dict[str, object] = {
            "faults": window.faults, "style": lay.style, "run": window.how,
            "detail": f"{read} iterations read with {window.faults} faults "
                      f"({'under 6 per RIP, 64 in all' if _limits(ctx) else 'no limit'}); "
                      f"run {window.how}" + ("; entry refused" if window.refused else "")}
        return _outcome(window.bits, lay, host.devices.console.text, [host], notes)


def _merge(known: list[int | None], window: list[int | None], candidates: list[int]
           ) -> int | None:
    """Where ``window`` starts among ``candidates``: the one whose overlap with ``known``
    agrees — preferring those with an overlap at all — if they agree on the new bits."""
    fits: list[tuple[int, int]] = []  # (start, bits of overlap)
    for c in candidates:
        overlap = [(known[c + i], b) for i, b in enumerate(window)
                   if c + i < len(known) and known[c + i] is not None and b is not None]
        if all(k == b for k, b in overlap) and c <= len(known):
            fits.append((c, len(overlap)))
    if any(n for _c, n in fits):
        fits = [(c, n) for c, n in fits if n]
    news = {tuple(window[len(known) - c:]) for c, _n in fits}
    return fits[0][0] if len(news) == 1 else None


def _iteration_starts(known: list[int | None], lay: Layout) -> list[int]:
    """Instructions from iteration 0's first call to each known iteration's, and the next."""
    assert lay.one is not None
    out, t = [0], 0
    for b in known:
        if b is None:
            break
        t += lay.one if b else lay.zero
        out.append(t)
    return out


class Relaunch(Attack):
    name = "relaunch"
    summary = ("relaunch and read the next few bits each time, located by instruction count "
               "(a timer from the first loop fault) and aligned on bits already known")
    victims = ("modexp", "modexp-ct")
    kind = "confidentiality"
    published = ("Issue 15's relaunch attack: per-VM policies start afresh at each launch; "
                 "bounded only by the owner's launch budget (N releases per window).")

    def run(self, ctx: AttackContext) -> Outcome:
        lay = layout(ctx)
        if isinstance(lay, str):
            return not_applicable(lay)
        if lay.style != "extra" or lay.one is None:
            return not_applicable("no loop routine called every iteration with a conditional "
                                  "one: nothing to locate by count")
        known: list[int | None] = []
        hosts: list[HonestHypervisor] = []
        console = ""
        launches, tries, per_launch = 0, 0, []
        refused = False
        margin = JITTER if ctx.level == Level.SHIM else 0
        while len(known) < EXPONENT_BITS and launches < MAX_LAUNCHES:
            starts = _iteration_starts(known, lay)
            frontier = len(starts) - 1  # the first iteration not known
            # Land OVERLAP iterations back (a failed alignment: further back), so that every
            # place the jitter may leave the guest overlaps what is known.
            back = min(frontier, (OVERLAP if margin else 0) + tries)
            skip = max(MIN_QUANTUM, starts[frontier - back] - margin - 2) if frontier else 0
            got = read_window(ctx, lay, skip)
            if got is None:
                refused = True
                break
            window, host = got
            launches += 1
            hosts.append(host)
            console = console or host.devices.console.text
            if skip == 0:
                at: int | None = 0
            else:
                land_lo, land_hi = skip, skip + margin
                cands = [i for i, t in enumerate(starts) if t >= land_lo and
                         (i == 0 or starts[i - 1] <= land_hi)]
                if window.lead:
                    cands = [c - 1 for c in cands if c > 0]
                at = _merge(known, window.bits, cands)
            before = sum(1 for b in known if b is not None)
            if at is None:
                tries += 1
            else:
                tries = 0
                for i, b in enumerate(window.bits):
                    if b is None:
                        break
                    if at + i >= len(known):
                        known.append(b)
            per_launch.append(sum(1 for b in known if b is not None) - before)
        bits = list(known)
        notes: dict[str, object] = {
            "launches": launches, "new_bits_per_launch": per_launch,
            "detail": f"{launches} launches, {sum(per_launch)} bits located and read "
                      f"({', '.join(map(str, per_launch[:12]))}{'…' if launches > 12 else ''}"
                      " new per launch)"
                      + ("; then the owner refused a launch" if refused else "")}
        return _outcome(bits, lay, console, hosts, notes)
