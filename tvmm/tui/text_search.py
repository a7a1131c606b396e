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
    progress: Callable[[float], None] = lambda _: None,
) -> int | None:
    """The first event after ``after`` (wrapping around) that is in ``rows`` and contains
    ``query``; None if there is none or the search was cancelled.

    The file is searched a block at a time (``TraceReader.blocks``: pages released as it
    goes, so memory stays bounded on a trace of gigabytes); between blocks it checks
    ``cancelled`` and reports the fraction of the file searched to ``progress``."""
    n = len(reader)
    if not query or not n:
        return None
    pattern = query_pattern(query)
    begin = min(after + 1, n)
    total = max(1, reader.size - reader.offset(0))
    done = 0
    for lo_event, hi_event in ((begin, n), (0, begin)):
        for lo, hi in reader.blocks(lo_event, hi_event):
            if cancelled():
                return None
            pos = lo
            while pos < hi:
                m = pattern.search(reader.buffer, pos, hi)
                if m is None:
                    break
                event = reader.event_at_offset(m.start())
                if event >= 0 and _contains(rows, event):
                    return event
                pos = reader.offset(event + 1) if 0 <= event + 1 < n else hi
            done += hi - lo
            progress(min(1.0, done / total))
    return None


def _contains(rows: array, i: int) -> bool:
    at = bisect_left(rows, i)
    return at < len(rows) and rows[at] == i
