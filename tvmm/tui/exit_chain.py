"""An exit and the one before it on the same vCPU of the same VM.

The inside view's ``retired`` is the vCPU's running total since its VM started; what the
host experienced at an exit is the difference to the previous exit of that vCPU — one
instruction an exit is a single-step attack, whatever the total says.  A new VM starts
its count again, so the walk back stops at the VM's first event (``floor``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from tvmm.abi.trace_events import EventKind, TraceEvent
from tvmm.trace.reader import TraceError, TraceReader

LOOKBACK = 4096  # exits examined when looking for the same vCPU's previous exit


def previous_exit(
    reader: TraceReader,
    index: int,
    vcpu: int,
    *,
    floor: int = 0,
    read: Callable[[int], TraceEvent] | None = None,
) -> TraceEvent | None:
    """The last exit of ``vcpu`` before event ``index`` and at or after event ``floor``."""
    read = read or reader.event
    exits = reader.indices({EventKind.EXIT})
    at = bisect_left(exits, index)
    for j in range(at - 1, max(-1, at - 1 - LOOKBACK), -1):
        if exits[j] < floor:
            break
        try:
            candidate = read(int(exits[j]))
        except TraceError:
            continue
        if candidate.pos.vcpu == vcpu:
            return candidate
    return None


def retired_delta(event: TraceEvent, previous: TraceEvent | None) -> int | None:
    """Instructions retired since ``previous`` (since the VM started when there is none, or
    when the count went down: a new VM); None when the exit does not say."""
    now = _retired(event)
    if now is None:
        return None
    before = _retired(previous) if previous is not None else 0
    if before is None:
        return None
    return now if before > now else now - before


def _retired(event: TraceEvent) -> int | None:
    value = (event.inside or {}).get("retired")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return event.pos.icount
