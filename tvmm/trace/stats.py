"""The summary behind ``tvmm trace stats``: what happened in a run, counted.

Exit reasons and policy decisions are counted by matching the recorder's fixed line prefix
over the mapped trace (one regex pass per block of lines, no JSON parsing), which keeps a
million-event trace to about a second; lines written in another key order fall back to
parsing.  Injections, verdicts and the end record are few and are parsed.

Memory stays bounded whatever the lines hold: the pattern's every repeat is of a single
character class with an upper bound (an alternation under ``*`` kept a backtracking frame
per character: an 8 MiB name cost 1.4 GB), matches are collected one block of lines at a
time, and a line longer than MAX_LINE_BYTES is never parsed but counted in
``TraceStats.skipped``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape
from rich.table import Table

from tvmm.abi.trace_events import EventKind, TraceEvent
from tvmm.trace.reader import TraceError, TraceReader

MAX_LINE_BYTES = 1 << 20  # an event this long is damaged or not the recorder's
_NAME_MAX = 256  # longer names, and names with escapes, are counted by parsing
_BLOCK_BYTES = 16 << 20  # bytes matched per findall (a match is a small tuple)
_NAMED = re.compile(
    rb'\n\{"seq":-?\d{1,20},"icount":(?:-?\d{1,20}|null),"vcpu":-?\d{1,20},'
    rb'"kind":"(exit|policy)","name":"([^"\\\n]{0,%d})"' % _NAME_MAX
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judge's score of one attack, as a verdict event reports it (missing keys → None)."""

    attack: str
    level: str
    n: float | None = None  # bits at stake: "n" or, as the judge writes it, "n_bits"
    bits_correct: float | None = None
    leaked_bits: float | None = None
    full_recovery: bool | None = None
    detected: bool | None = None
    detected_after_exits: int | None = None
    truth: str | None = None
    guess: str | None = None
    integrity_violated: bool | None = None
    seq: int | None = None

    @classmethod
    def from_event(cls, event: TraceEvent) -> Verdict:
        inside = event.inside or {}

        def get(key: str, kind: type | tuple[type, ...]) -> Any:
            value = inside.get(key)
            return value if isinstance(value, kind) else None

        return cls(
            attack=get("attack", str) or event.name or "?",
            level=get("level", str) or "?",
            n=_number(inside, "n", "n_bits"),
            bits_correct=_number(inside, "bits_correct"),
            leaked_bits=get("leaked_bits", (int, float)),
            full_recovery=get("full_recovery", bool),
            detected=get("detected", bool),
            detected_after_exits=get("detected_after_exits", int),
            truth=get("truth", str),
            guess=get("guess", str),
            integrity_violated=get("integrity_violated", bool),
            seq=event.pos.seq,
        )


def _number(inside: dict[str, Any], *keys: str) -> float | None:
    """The first of ``keys`` holding a number (the judge writes counts as floats: 64.0)."""
    for key in keys:
        value = inside.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    return None


@dataclass(frozen=True, slots=True)
class TraceStats:
    """Counts over one trace; dictionaries are ordered most frequent first."""

    guest: str
    level: str
    events: int
    by_kind: dict[str, int]
    exits: dict[str, int]
    policy: dict[str, int]
    injections_delivered: int
    injections_refused: int  # refused by the shim's interrupt filter
    injections_pending: int = 0  # posted, held, or without a handler: not (yet) delivered
    verdicts: tuple[Verdict, ...] = ()
    end: dict[str, Any] = field(default_factory=dict)
    unreadable: int = 0  # events that could not be parsed (see TraceError)
    skipped: int = 0  # events on lines over MAX_LINE_BYTES, not read (not in the counts above)


def trace_stats(reader: TraceReader) -> TraceStats:
    """Count what happened in the trace behind ``reader``."""
    by_kind = reader.count_by_kind()
    names, unreadable, skipped = _names(reader, by_kind)
    delivered = refused = pending = 0
    verdicts: list[Verdict] = []
    end: dict[str, Any] = {}
    for kind in (EventKind.INJECT, EventKind.VERDICT, EventKind.END):
        for i in reader.indices({kind}):
            if _too_long(reader, int(i)):
                skipped += 1
                continue
            try:
                event = reader.event(int(i))
            except TraceError:
                unreadable += 1
                continue
            inside = event.inside or {}
            if kind is EventKind.INJECT:  # the producers name a refusal "refused"
                if inside.get("delivered") is True:
                    delivered += 1
                elif event.name == "refused":
                    refused += 1
                else:
                    pending += 1
            elif kind is EventKind.VERDICT:
                verdicts.append(Verdict.from_event(event))
            else:
                end = inside
    return TraceStats(
        guest=reader.header.guest,
        level=reader.header.level,
        events=len(reader),
        by_kind={k.value: n for k, n in sorted(by_kind.items(), key=_most) if n},
        exits=_ordered(names[EventKind.EXIT]),
        policy=_ordered(names[EventKind.POLICY]),
        injections_delivered=delivered,
        injections_refused=refused,
        injections_pending=pending,
        verdicts=tuple(verdicts),
        end=end,
        unreadable=unreadable + reader.kinds.count(0),
        skipped=skipped,
    )


def _names(
    reader: TraceReader, by_kind: dict[EventKind, int]
) -> tuple[dict[EventKind, Counter[str]], int, int]:
    """Exit reasons and policy decisions, by regex; parse only if some lines were missed.
    Also returns how many lines were unreadable and how many too long to read."""
    found: Counter[tuple[bytes, bytes]] = Counter()
    for start, stop in _blocks(reader):
        found.update(_NAMED.findall(reader.buffer, start, stop))
    names: dict[EventKind, Counter[str]] = {EventKind.EXIT: Counter(), EventKind.POLICY: Counter()}
    for (kind, raw), n in found.items():
        try:
            names[EventKind(kind.decode())][json.loads(b'"' + raw + b'"')] += n
        except ValueError:
            continue  # the totals will not match, and the kind is counted by parsing
    unreadable = skipped = 0
    for kind, counter in names.items():
        if counter.total() == by_kind[kind]:
            continue
        counter.clear()
        for i in reader.indices({kind}):
            if _too_long(reader, int(i)):
                skipped += 1
                continue
            try:
                counter[reader.event(int(i)).name] += 1
            except TraceError:
                unreadable += 1
    return names, unreadable, skipped


def _blocks(reader: TraceReader) -> Iterator[tuple[int, int]]:
    """Byte ranges of about _BLOCK_BYTES each, every one from the newline before its first
    line (where _NAMED starts) to the newline before the next block's; the reader releases
    a block's pages when the next is asked for, so a gigabyte trace is never all resident."""
    return reader.blocks(chunk=_BLOCK_BYTES)


def _too_long(reader: TraceReader, i: int) -> bool:
    end = reader.offset(i + 1) if i + 1 < len(reader) else reader.size
    return end - reader.offset(i) > MAX_LINE_BYTES + 1  # the line and its newline


def _most(item: tuple[Any, int]) -> tuple[int, str]:
    return -item[1], str(item[0])


def _ordered(counter: Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items(), key=_most))


def stats_table(stats: TraceStats) -> Table:
    """A rich Table of ``stats``, one section per question."""
    title = f"{escape(stats.guest)} @ {escape(stats.level)}: {stats.events:,} events"
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("count", justify="right")
    _section(table, "events by kind", stats.by_kind)
    _section(table, "exits by reason", stats.exits)
    _section(table, "policy decisions", stats.policy)
    _section(
        table,
        "injections",
        {
            "delivered": stats.injections_delivered,
            "refused": stats.injections_refused,
            "not delivered (posted, held, no handler)": stats.injections_pending,
        },
    )
    for v in stats.verdicts:
        table.add_section()
        table.add_row(f"[bold]verdict: {escape(v.attack)} @ {escape(v.level)}[/]", "")
        if v.bits_correct is not None and v.n is not None:
            table.add_row("  bits correct", f"{v.bits_correct:g}/{v.n:g}")
        table.add_row("  leaked bits", "?" if v.leaked_bits is None else f"{v.leaked_bits:g}")
        table.add_row("  full recovery", _yes_no(v.full_recovery))
        detected = _yes_no(v.detected)
        if v.detected and v.detected_after_exits is not None:
            detected += f" (after {v.detected_after_exits} exits)"
        table.add_row("  detected", detected)
        table.add_row("  integrity violated", _yes_no(v.integrity_violated))
    if stats.end:
        table.add_section()
        how = escape(str(stats.end.get("how", "?")))
        table.add_row(f"[bold]end: {how}[/]", f"status {stats.end.get('status', '?')}")
        if isinstance(stats.end.get("instructions"), int):
            table.add_row("  instructions", f"{stats.end['instructions']:,}")
        if isinstance(stats.end.get("wall_s"), int | float):
            table.add_row("  wall time", f"{stats.end['wall_s']:.3f} s")
        unsupported = stats.end.get("unsupported_syscalls")
        if isinstance(unsupported, dict) and isinstance(unsupported.get("total"), int):
            names = ", ".join(f"{escape(str(k))} {v}" for k, v in unsupported.items()
                              if k != "total")
            table.add_row("  system calls answered -ENOSYS",
                          f"{unsupported['total']:,}" + (f" ({names})" if names else ""))
    if stats.unreadable:
        table.add_section()
        table.add_row("[red]unreadable events[/]", f"{stats.unreadable:,}")
    if stats.skipped:
        table.add_section()
        table.add_row(
            f"[red]events on lines over {MAX_LINE_BYTES >> 20} MiB, not read[/]",
            f"{stats.skipped:,}",
        )
    return table


def _section(table: Table, title: str, counts: dict[str, int]) -> None:
    table.add_section()
    table.add_row(f"[bold]{title}[/]", f"{sum(counts.values()):,}")
    for name, n in counts.items():
        table.add_row(f"  {escape(name)}", f"{n:,}")


def _yes_no(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")
