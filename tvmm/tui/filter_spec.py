"""What the filter bar asks for, and the event numbers that satisfy it.

Typed as words: a kind name keeps that kind (``exit policy``), ``-kind`` drops it,
``name=GLOB`` keeps events whose name matches (``name=step_*``), ``level=X`` keeps events
that carry ``"level":"X"`` (exits' outside views, verdicts); any other word is a name glob.
Kinds come from the index; names and levels from one regex pass over the mapped trace
(relying on the recorder's key order), so a million events filter in about a second —
in a worker, never on the UI thread.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from tvmm.abi.trace_events import KIND_CODES, EventKind
from tvmm.trace.reader import TraceReader

_PREFIX = rb'\n\{"seq":-?\d+,"icount":(?:-?\d+|null),"vcpu":-?\d+,"kind":"[a-z_]+",'


@dataclass(frozen=True, slots=True)
class FilterSpec:
    kinds: frozenset[EventKind] | None = None  # None: every kind
    names: tuple[str, ...] = ()  # globs, any of which may match
    levels: tuple[str, ...] = ()
    text: str = ""

    def describe(self) -> str:
        parts = [
            "all kinds"
            if self.kinds is None
            else " ".join(k.value for k in EventKind if k in self.kinds) or "no kinds"
        ]
        parts += [f"name={n}" for n in self.names] + [f"level={v}" for v in self.levels]
        return ", ".join(parts)


def parse_filter(text: str) -> FilterSpec:
    """The spec for what was typed; ValueError names a word that makes no sense."""
    include: set[EventKind] = set()
    exclude: set[EventKind] = set()
    names: list[str] = []
    levels: list[str] = []
    for word in text.replace(",", " ").split():
        key, eq, value = word.partition("=")
        if eq and key in ("name", "level"):
            if not value:
                raise ValueError(f"{key}= needs a value")
            (names if key == "name" else levels).append(value)
        elif eq:
            raise ValueError(f"unknown filter {key!r} (use name= or level=)")
        elif word[0] in "-!":
            exclude.add(_kind(word[1:]))
        elif word in EventKind._value2member_map_:
            include.add(EventKind(word))
        else:
            names.append(word)
    kinds: frozenset[EventKind] | None = None
    if include or exclude:
        kinds = frozenset((include or set(EventKind)) - exclude)
    return FilterSpec(kinds, tuple(names), tuple(levels), text.strip())


def _kind(word: str) -> EventKind:
    try:
        return EventKind(word)
    except ValueError:
        known = ", ".join(k.value for k in EventKind)
        raise ValueError(f"unknown event kind {word!r} (kinds: {known})") from None


def apply_filter(
    reader: TraceReader,
    spec: FilterSpec,
    cancelled: Callable[[], bool] = lambda: False,
    progress: Callable[[float], None] = lambda _: None,
) -> array:
    """Event numbers matching ``spec``, ascending (an empty array if cancelled)."""
    rows = reader.indices(spec.kinds)
    for terms, pattern in ((spec.names, _name_pattern), (spec.levels, _level_pattern)):
        if terms and not cancelled():
            hits = _events_matching(reader, pattern(terms), cancelled, progress)
            rows = array("Q", (i for i in hits if _contains(rows, i)))
    return array("Q") if cancelled() else rows


def _name_pattern(globs: tuple[str, ...]) -> re.Pattern[bytes]:
    alternatives = b"|".join(_glob(g) for g in globs)
    return re.compile(_PREFIX + rb'"name":"(?:' + alternatives + rb')"')


def _level_pattern(levels: tuple[str, ...]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(v.encode()) for v in levels)
    return re.compile(rb'"level":"(?:' + alternatives + rb')"')


def _glob(glob: str) -> bytes:
    out = re.escape(glob.encode()).replace(rb"\*", rb'[^"\n]*').replace(rb"\?", rb'[^"\n]')
    return out


def _events_matching(
    reader: TraceReader,
    pattern: re.Pattern[bytes],
    cancelled: Callable[[], bool],
    progress: Callable[[float], None] = lambda _: None,
) -> array:
    """Events with a match, a block of the file at a time (bounded memory)."""
    hits: array = array("Q")
    last = -2
    size = max(1, reader.size)
    for lo, hi in reader.blocks():
        if cancelled():
            break
        for m in pattern.finditer(reader.buffer, lo, hi):
            event = reader.event_at_offset(m.start() + 1)  # +1: past the newline, if any
            if event >= 0 and event != last:
                hits.append(event)
                last = event
        progress(hi / size)
    return hits


def _contains(rows: array, i: int) -> bool:
    at = bisect_left(rows, i)
    return at < len(rows) and rows[at] == i


def kind_codes(kinds: frozenset[EventKind] | None) -> set[int]:
    return set(KIND_CODES.values()) if kinds is None else {KIND_CODES[k] for k in kinds}
