"""The VMs of a trace: one run can hold several (an attack's own profiling VM, then the
victim), each with its level, and each must be read on its own.

A VM starts at its ``create_vm`` management event (the TEE writes one at CREATE_VM).
Traces without such events are split where an exit's (or an attack action's) outside
view names another level — one search over the mapped file, a block at a time, meant for
a worker.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tvmm.abi.trace_events import EventKind
from tvmm.trace.reader import TraceError, TraceReader

CREATE_VM = "create_vm"


@dataclass(frozen=True, slots=True)
class VmSpan:
    """Events ``first`` .. ``stop - 1`` belong to the ``number``-th VM of the trace."""

    number: int
    level: str
    first: int
    stop: int
    vm_id: int | None = None
    created: bool = False  # True when ``first`` is the TEE's create_vm event

    @property
    def events(self) -> int:
        return self.stop - self.first

    def title(self, *, with_id: bool = False) -> str:
        ident = f" (id {self.vm_id})" if with_id and self.vm_id is not None else ""
        return f"VM {self.number}{ident} @ {self.level}"


def created_vms(reader: TraceReader) -> list[VmSpan] | None:
    """The VMs marked by create_vm events (management events are few: read each), or None
    when the trace has none."""
    starts: list[tuple[int, str, int | None]] = []
    for i in reader.indices({EventKind.MGMT}):
        try:
            event = reader.event(int(i))
        except TraceError:
            continue
        if event.name == CREATE_VM:
            inside = event.inside or {}
            vm_id = inside.get("vm")
            level = inside.get("level")
            starts.append((int(i), str(level) if level else reader.header.level,
                           vm_id if isinstance(vm_id, int) else None))
    if not starts:
        return None
    return _spans(reader, starts, created=True)


def derived_vms(
    reader: TraceReader,
    *,
    cancelled: Callable[[], bool] = lambda: False,
    progress: Callable[[float], None] = lambda _: None,
) -> list[VmSpan]:
    """VMs of a trace without create_vm events: a new one where an exit or attack action
    names another level than the one before.  One C-speed search for "a level other than
    the current one" per block, so only the changes come back to Python (a million events
    in about a second); a VM at the same level as the one before it is not told apart."""
    starts: list[tuple[int, str, int | None]] = []
    level: bytes | None = None
    pattern = _OTHER_LEVEL(None)
    size = max(1, reader.size)
    for lo, hi in reader.blocks():
        if cancelled():
            break
        pos = lo
        while (m := pattern.search(reader.buffer, pos, hi)) is not None:
            pos = m.end()
            event = reader.event_at_offset(m.start())
            if event < 0 or reader.kind(event) not in _LEVELLED_KINDS:
                continue  # a level named inside a verdict or a management event
            level = m.group(1)
            starts.append((event, level.decode(), None))
            pattern = _OTHER_LEVEL(level)
        progress(hi / size)
    if not starts:
        return [VmSpan(1, reader.header.level, 0, len(reader))]
    return _spans(reader, starts, created=False)


_LEVELLED_KINDS = frozenset({EventKind.EXIT, EventKind.ATTACK})


def _OTHER_LEVEL(level: bytes | None) -> re.Pattern[bytes]:  # noqa: N802 - a pattern maker
    """``"level":"X"`` for any X but ``level``."""
    other = rb"(?!" + re.escape(level) + rb'")' if level is not None else b""
    return re.compile(rb'"level":"' + other + rb'([a-z0-9_-]{1,32})"')


def _spans(
    reader: TraceReader, starts: list[tuple[int, str, int | None]], *, created: bool
) -> list[VmSpan]:
    """Spans from start events; events before the first start belong to the first VM
    (an attack's first action can come before the first exit)."""
    spans = []
    for n, (first, level, vm_id) in enumerate(starts):
        stop = starts[n + 1][0] if n + 1 < len(starts) else len(reader)
        spans.append(VmSpan(n + 1, level, 0 if n == 0 and not created else first, stop,
                            vm_id, created))
    if created and spans[0].first > 0:  # events before the first create_vm: the run's own
        first = spans[0]
        spans[0] = VmSpan(1, first.level, first.first, first.stop, first.vm_id, True)
    return spans


def span_of(spans: Sequence[VmSpan], index: int) -> VmSpan | None:
    """The VM event ``index`` belongs to (None before the first VM)."""
    at = bisect_right([s.first for s in spans], index) - 1
    return spans[at] if at >= 0 else None
