"""What the host learns at each exit: a table of allowed fields per view and exit reason.

Everything not in the table is left out of the exit record.  docs/exits.md renders this
table; a test checks every exit of the sample guests against it.

- ``full`` (plain, sev): the host holds the register file in plaintext and sees every field.
- ``restricted`` (sev-es, snp): registers stay encrypted; an exit shows only what the guest
  exposes for it (the hypercall's number and arguments, the port access) plus what the
  hardware reports (the full faulting GPA and access type of a nested page fault).
- ``sanitised`` (shim): the minimum.  A timer exit shows nothing, not even the count of
  instructions retired: the host knows the quantum it asked for, and an exact count would
  tell it each random extension the step policy drew (docs/exits.md); HLT nothing; a fault
  the shim cannot serve shows the page number only; a hypercall never leaves the shim
  except as a device request on a bounce-buffer slot.
"""

from __future__ import annotations

from enum import StrEnum

from tvmm.abi.types import ExitReason, Field


class View(StrEnum):
    FULL = "full"
    RESTRICTED = "restricted"
    SANITISED = "sanitised"


F = Field
_ALL = frozenset(Field)

ALLOWED: dict[View, dict[ExitReason, frozenset[Field]]] = {
    View.FULL: {reason: _ALL for reason in ExitReason},
    View.RESTRICTED: {
        ExitReason.TIMER: frozenset({F.RETIRED}),
        ExitReason.NPF: frozenset({F.GPA, F.GPA_PAGE, F.ACCESS}),
        ExitReason.HYPERCALL: frozenset({F.NR, F.ARG0, F.ARG1, F.ARG2}),
        ExitReason.IO_PORT: frozenset({F.PORT, F.SIZE, F.VALUE}),
        ExitReason.HLT: frozenset(),
        ExitReason.INTERRUPT_WINDOW: frozenset(),
        ExitReason.SHUTDOWN: frozenset({F.STATUS}),
        ExitReason.KILLED: frozenset({F.KILL_REASON}),
        ExitReason.FAULT: frozenset({F.VECTOR}),
    },
    View.SANITISED: {
        ExitReason.TIMER: frozenset(),
        ExitReason.NPF: frozenset({F.GPA_PAGE}),
        ExitReason.HYPERCALL: frozenset({F.DEVICE, F.SLOT, F.LENGTH, F.ARG0}),
        ExitReason.IO_PORT: frozenset({F.PORT, F.SIZE, F.VALUE}),
        ExitReason.HLT: frozenset(),
        ExitReason.INTERRUPT_WINDOW: frozenset(),
        ExitReason.SHUTDOWN: frozenset({F.STATUS}),
        ExitReason.KILLED: frozenset({F.KILL_REASON}),
        ExitReason.FAULT: frozenset(),
    },
}


def host_fields(
    view: View, reason: ExitReason, candidates: dict[Field, int]
) -> tuple[tuple[Field, int], ...]:
    allowed = ALLOWED[view][reason]
    if allowed is _ALL:
        return tuple(candidates.items())
    kept = []  # a loop, not a comprehension: on 3.11 that is a frame of its own per exit
    for item in candidates.items():
        if item[0] in allowed:
            kept.append(item)
    return tuple(kept)


# Per view: whether a timer exit shows RETIRED, and RIP (read off the table above).
_TIMER_SHOWS = {view: (F.RETIRED in ALLOWED[view][ExitReason.TIMER],
                       F.RIP in ALLOWED[view][ExitReason.TIMER]) for view in View}
_RETIRED, _RIP = F.RETIRED, F.RIP


def timer_fields(view: View, retired: int, rip: int) -> tuple[tuple[Field, int], ...]:
    """``host_fields(view, TIMER, {RETIRED: retired, RIP: rip})`` without the dict and
    the loop: the timer exit is the one a single-stepping or ticking host takes most."""
    shows_retired, shows_rip = _TIMER_SHOWS[view]
    if shows_retired:
        return ((_RETIRED, retired), (_RIP, rip)) if shows_rip else ((_RETIRED, retired),)
    return ((_RIP, rip),) if shows_rip else ()


def markdown_table() -> str:
    """The table of docs/exits.md (a test keeps the two equal)."""
    levels = {View.FULL: "plain, sev", View.RESTRICTED: "sev-es, snp", View.SANITISED: "shim"}
    lines = ["| exit | " + " | ".join(levels.values()) + " |", "|---|---|---|---|"]
    for reason in ExitReason:
        cells = []
        for view in View:
            allowed = ALLOWED[view][reason]
            cells.append("all" if allowed == _ALL else
                         ", ".join(f.name for f in Field if f in allowed) or "—")
        lines.append(f"| {reason.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
