"""Search the trace text for what the user typed, from the selected event on.

The search runs over the mapped file a block at a time (lowercased, ``bytes.find``: C
speed, bounded memory) and must run in a worker.  Numbers are stored in decimal while the viewer shows addresses
in hex, so a query like ``0x402000`` also finds ``4202496``.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable

from tvmm.trace.reader import TraceReader

_SEARCH_BLOCK = 16 << 20  # bytes lowercased and searched at a time


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
    goes, so memory stays bounded on a trace of gigabytes): each block is lowercased and
    searched with ``bytes.find`` (several times faster than a case-insensitive regex);
    between blocks it checks ``cancelled`` and reports the fraction searched to
    ``progress``."""
    n = len(reader)
    if not query or not n:
        return None
    needles = _needles(query)
    begin = min(after + 1, n)
    total = max(1, reader.size - reader.offset(0))
    done = 0
    for lo_event, hi_event in ((begin, n), (0, begin)):
        for lo, hi in reader.blocks(lo_event, hi_event, chunk=min(_SEARCH_BLOCK,
                                                                   reader.block_bytes)):
            if cancelled():
                return None
            block = reader.buffer[lo:hi].lower()
            pos = 0
            while True:
                at = _first(block, needles, pos)
                if at < 0:
                    break
                event = reader.event_at_offset(lo + at)
                if event >= 0 and _contains(rows, event):
                    return event
                pos = (reader.offset(event + 1) - lo) if 0 <= event + 1 < n else len(block)
            done += hi - lo
            progress(min(1.0, done / total))
    return None


def _needles(query: str) -> list[tuple[bytes, bool]]:
    """What to look for: the query in lower case, and for a number its decimal form (which
    must not sit inside a longer number)."""
    needles = [(query.encode().lower(), False)]
    try:
        value = int(query, 0)
    except ValueError:
        pass
    else:
        needles.append((str(value).encode(), True))
    return needles


def _first(block: bytes, needles: list[tuple[bytes, bool]], pos: int) -> int:
    """The earliest position at or after ``pos`` where a needle occurs, or -1."""
    best = -1
    for needle, whole_number in needles:
        at = block.find(needle, pos)
        while whole_number and at >= 0 and (
            (at > 0 and block[at - 1 : at].isdigit())
            or block[at + len(needle) : at + len(needle) + 1].isdigit()
        ):
            at = block.find(needle, at + 1)
        if at >= 0 and (best < 0 or at < best):
            best = at
    return best


def _contains(rows: array, i: int) -> bool:
    at = bisect_left(rows, i)
    return at < len(rows) and rows[at] == i
