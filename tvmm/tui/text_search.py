"""Search the trace text for what the user typed, from the selected event on.

The search runs over the mapped file with one regex (case-insensitive), so it is C speed
and must run in a worker.  Numbers are stored in decimal while the viewer shows addresses
in hex, so a query like ``0x402000`` also finds ``4202496``.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from collections.abc import Callable

from tvmm.trace.reader import TraceReader


def query_pattern(query: str) -> re.Pattern[bytes]:
    alternatives = [re.escape(query.encode())]
    try:
        value = int(query, 0)
    except ValueError:
        pass
    else:
        alternatives.append(rb"(?<![0-9])" + str(value).encode() + rb"(?![0-9])")
    return re.compile(b"|".join(alternatives), re.IGNORECASE)


def find_text(
    reader: TraceReader,
    query: str,
    after: int,
    rows: array,
    *,
    cancelled: Callable[[], bool] = lambda: False,
) -> int | None:
    """The first event after ``after`` (wrapping around) that is in ``rows`` and contains
    ``query``; None if there is none or the search was cancelled."""
    if not query or not len(reader):
        return None
    pattern = query_pattern(query)
    start = reader.offset(after + 1) if after + 1 < len(reader) else reader.size
    first = reader.offset(0)
    for lo, hi in ((start, reader.size), (first, start)):
        pos = lo
        while pos < hi and not cancelled():
            m = pattern.search(reader.buffer, pos, hi)
            if m is None:
                break
            event = reader.event_at_offset(m.start())
            if event >= 0 and _contains(rows, event):
                return event
            pos = reader.offset(event + 1) if event + 1 < len(reader) else hi
    return None


def _contains(rows: array, i: int) -> bool:
    at = bisect_left(rows, i)
    return at < len(rows) and rows[at] == i
