"""The page-access map of a run: which guest pages faulted (npf exits), how often, in
what order.  This is what a controlled-channel attacker collects, laid out for a human:
with square-and-multiply the order of the two code pages spells the key.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from tvmm.abi.trace_events import EventKind
from tvmm.trace.reader import TraceError, TraceReader

PAGE_SHIFT = 12
_EXIT = re.compile(  # every exit line in the recorder's key order, with its name
    rb'\n\{"seq":-?\d+,"icount":(?:-?\d+|null),"vcpu":-?\d+,"kind":"exit","name":"([^"\\\n]{0,64})",'
)
_FAULT_GPA = b'"fault_gpa":'
_DIGITS = re.compile(rb"\d+")


@dataclass(frozen=True, slots=True)
class PageFaults:
    page: int  # guest-physical page number (gpa >> 12)
    count: int
    first_event: int
    last_event: int
    symbol: str | None = None  # what the first faulting RIP was in, if known


@dataclass(frozen=True, slots=True)
class PageAccessMap:
    pages: tuple[PageFaults, ...]  # by first fault, i.e. in order of discovery
    sequence: tuple[int, ...]  # page numbers in fault order (the first ``limit`` faults)
    faults: int
    unreadable: int = 0

    def label(self, page: int) -> str:
        """A short stable name for a page: A, B, … in order of first fault."""
        for n, p in enumerate(self.pages):
            if p.page == page:
                return _letters(n)
        return "?"


def scan_page_faults(
    reader: TraceReader,
    *,
    start: int = 0,
    stop: int | None = None,
    limit: int = 4096,
    cancelled: Callable[[], bool] = lambda: False,
    progress: Callable[[float], None] = lambda _: None,
    symbolize: Callable[[int], str | None] = lambda _: None,
) -> PageAccessMap:
    """Collect every npf exit among events ``start..stop`` (one VM); for a worker thread.

    One regex pass over the mapped trace, a block at a time (``TraceReader.blocks``:
    bounded memory, ``cancelled`` checked and ``progress`` told between blocks), finds npf
    exits written in the recorder's key order and their ``fault_gpa``; only lines it
    cannot read are parsed, and a trace in another key order is read event by event.
    ``symbolize`` names the code a page first faulted in when the exit carries no symbol
    (real traces carry RIP only; the viewer passes the guest image's symbols).
    """
    stop = len(reader) if stop is None else min(stop, len(reader))
    found = _Collector(limit)
    lo_byte = reader.offset(start) if start < stop else 0
    span = max(1, (reader.offset(stop) if stop < len(reader) else reader.size) - lo_byte)
    matched = 0
    for lo, hi in reader.blocks(start, stop):
        if cancelled():
            break
        buf = reader.buffer
        for m in _EXIT.finditer(buf, lo, hi):
            matched += 1
            if m.group(1) != b"npf":
                continue
            i = reader.event_at_offset(m.start() + 1)
            end = buf.find(b"\n", m.end(), hi + 1)
            k = buf.find(_FAULT_GPA, m.end(), end if end >= 0 else hi)
            digits = _DIGITS.match(buf, k + len(_FAULT_GPA)) if k >= 0 else None
            if digits is not None:
                found.add(i, int(digits.group()))
            else:
                found.add_event(reader, i)
        progress(min(1.0, (hi - lo_byte) / span))
    exits = reader.indices({EventKind.EXIT})
    exits = exits[bisect_left(exits, start) : bisect_left(exits, stop)]
    if matched != len(exits) and not cancelled():  # lines in another key order: parse
        found = _Collector(limit)
        for n, i in enumerate(exits):
            if n % 2048 == 0 and cancelled():
                break
            found.add_event(reader, int(i))
    return found.result(reader, symbolize)


class _Collector:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pages: dict[int, list[int]] = {}  # page -> [count, first event, last event]
        self.sequence: list[int] = []
        self.faults = 0
        self.unreadable = 0

    def add(self, event: int, gpa: int) -> None:
        page = gpa >> PAGE_SHIFT
        self.faults += 1
        if len(self.sequence) < self.limit:
            self.sequence.append(page)
        entry = self.pages.setdefault(page, [0, event, event])
        entry[0] += 1
        entry[2] = event

    def add_event(self, reader: TraceReader, i: int) -> None:
        try:
            event = reader.event(i)
        except TraceError:
            self.unreadable += 1
            return
        gpa = _fault_gpa(event.inside, event.outside) if event.name == "npf" else None
        if gpa is not None:
            self.add(i, gpa)

    def result(
        self, reader: TraceReader, symbolize: Callable[[int], str | None]
    ) -> PageAccessMap:
        pages = tuple(
            PageFaults(page, count, first, last, _symbol(reader, first, symbolize))
            for page, (count, first, last) in self.pages.items()
        )
        return PageAccessMap(pages, tuple(self.sequence), self.faults, self.unreadable)


def _symbol(
    reader: TraceReader, i: int, symbolize: Callable[[int], str | None]
) -> str | None:
    """The symbol the exit names, else its RIP's symbol from the guest's symbol table."""
    try:
        inside = reader.event(i).inside or {}
    except TraceError:
        return None
    symbol = inside.get("symbol")
    if isinstance(symbol, str):
        return symbol
    rip = inside.get("rip")
    return symbolize(rip) if isinstance(rip, int) and not isinstance(rip, bool) else None


def _fault_gpa(inside: dict | None, outside: dict | None) -> int | None:
    gpa = (inside or {}).get("fault_gpa")
    if isinstance(gpa, int):
        return gpa
    fields = (outside or {}).get("fields")
    if isinstance(fields, dict):
        for key in ("fault_gpa", "gpa", "exit_info_2"):
            if isinstance(fields.get(key), int):
                return fields[key]
    return None


def _letters(n: int) -> str:
    out = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(ord("A") + r) + out
    return out
