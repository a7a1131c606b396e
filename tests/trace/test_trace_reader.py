"""The reader against the recorder: what is written is what is read, with or without index."""

from __future__ import annotations

import json
import os
from array import array
from pathlib import Path

import pytest

from tvmm.abi.trace_events import KIND_CODES, EventKind, Position, TraceEvent, TraceHeader
from tvmm.trace.reader import (
    TraceError,
    TraceErrorReason,
    TraceReader,
    pack_index,
    scan_lines,
    unpack_index,
)
from tvmm.trace.recorder import TraceRecorder, index_path
from tvmm.trace.synthetic import write_synthetic_trace

HEADER = TraceHeader(
    guest="modexp",
    level="snp",
    seed=7,
    versions={"tvmm": "0.1.0"},
    elf="guest.elf",
    elf_sha256="00" * 32,
    symbols=[(0x401000, 0x20, "main")],
    extra={"attack": "none"},
)
EVENTS = [  # (kind, name, inside, outside, icount, vcpu) — JSON-native values only
    (EventKind.MGMT, "launch", {"step": "launch"}, {"ok": True}, None, 0),
    (
        EventKind.EXIT,
        "npf",
        {
            "rip": 0x401007,
            "symbol": "main+0x7",
            "fault_gpa": 0x7000,
            "regs": {"rax": 1, "rip": 0x401007},
            "retired": 12,
        },
        {"reason": "npf", "fields": {"exit_info_2": 0x7000}, "state": "ab" * 16, "level": "snp"},
        12,
        0,
    ),
    (
        EventKind.POLICY,
        "fault_rule",
        {"policy": "fault", "reason": "6 faults at one rip"},
        None,
        12,
        0,
    ),
    (EventKind.INJECT, "timer", {"vector": 32, "delivered": False, "why": "blocked"}, None, 40, 1),
    (EventKind.CONSOLE, "console", {"text": 'héllo\n"quoted" \u2603'}, None, None, 0),
    (EventKind.ATTACK, "unmap_page", None, {"gpa": 0x7000}, None, 0),
    (EventKind.END, "shutdown", {"how": "shutdown", "status": 0, "exits": {"npf": 1}}, None, 99, 0),
]


def record(path: Path) -> list[TraceEvent]:
    ticks = iter(range(0, 10_000, 100))
    with TraceRecorder(path, HEADER, clock=lambda: next(ticks)) as rec:
        return [
            rec.emit(k, n, inside=i, outside=o, icount=c, vcpu=v) for k, n, i, o, c, v in EVENTS
        ]


def test_round_trip_with_the_recorder(tmp_path: Path) -> None:
    trace = tmp_path / "run.jsonl"
    written = record(trace)
    with TraceReader(trace) as reader:
        assert not reader.index_rebuilt
        assert reader.header == HEADER
        assert len(reader) == len(EVENTS)
        assert [reader.event(i) for i in range(len(reader))] == written
        assert list(reader.iter_events()) == written
        assert list(reader.iter_events(2, 4)) == written[2:4]
        assert reader.event(-1) == written[-1]
        assert list(reader.kinds) == [KIND_CODES[e[0]] for e in EVENTS]
        assert reader.kind(1) is EventKind.EXIT
        with pytest.raises(IndexError):
            reader.event(len(EVENTS))


def test_bytes_and_tuples_are_stored_as_json(tmp_path: Path) -> None:
    trace = tmp_path / "bytes.jsonl"
    with TraceRecorder(trace, HEADER) as rec:
        rec.emit(EventKind.IO, "read", inside={"data": b"\x00\xff", "pair": (1, 2)})
    with TraceReader(trace) as reader:
        assert reader.event(0).inside == {"data": "00ff", "pair": [1, 2]}


def test_indices_filter_on_the_kind_column(tmp_path: Path) -> None:
    trace = write_synthetic_trace(tmp_path / "s.jsonl", 3000, seed=3)
    with TraceReader(trace) as reader:
        exits = reader.indices({EventKind.EXIT})
        marks = reader.indices({EventKind.POLICY, EventKind.ATTACK})
        assert isinstance(exits, array)
        parsed = list(reader.iter_events())
        assert list(exits) == [i for i, e in enumerate(parsed) if e.kind is EventKind.EXIT]
        assert list(marks) == [
            i for i, e in enumerate(parsed) if e.kind in (EventKind.POLICY, EventKind.ATTACK)
        ]
        assert list(reader.indices()) == list(range(len(reader)))
        counts = reader.count_by_kind()
        assert sum(counts.values()) == len(reader) == 3000
        assert counts[EventKind.VERDICT] == 1 and counts[EventKind.END] == 1


def test_event_at_offset_maps_bytes_to_events(tmp_path: Path) -> None:
    trace = tmp_path / "run.jsonl"
    record(trace)
    with TraceReader(trace) as reader:
        assert reader.event_at_offset(0) == -1  # the header
        for i in range(len(reader)):
            assert reader.event_at_offset(reader.offset(i)) == i
            assert reader.event_at_offset(reader.offset(i) + 5) == i


def test_rebuilt_index_equals_the_written_one(tmp_path: Path) -> None:
    trace = write_synthetic_trace(tmp_path / "s.jsonl", 5000, seed=1)
    written = index_path(trace).read_bytes()
    index_path(trace).unlink()
    with TraceReader(trace) as reader:
        assert reader.index_rebuilt and reader.index_written
        kinds = reader.kinds
    assert index_path(trace).read_bytes() == written
    with TraceReader(trace) as again:
        assert not again.index_rebuilt
        assert again.kinds == kinds


def test_scanning_in_chunks_equals_one_scan(tmp_path: Path) -> None:
    data = write_synthetic_trace(tmp_path / "s.jsonl", 800, seed=2).read_bytes()
    whole_offsets, whole_kinds, end = scan_lines(data)
    assert end == len(data)
    offsets, kinds, pos = array("Q"), array("B"), 0
    while pos < len(data):
        part_offsets, part_kinds, pos = scan_lines(data, pos, pos + 1000)
        offsets.extend(part_offsets)
        kinds.extend(part_kinds)
    assert (offsets, kinds) == (whole_offsets, whole_kinds)
    assert unpack_index(pack_index(offsets, kinds)) == (offsets, kinds)


def test_lines_in_another_key_order_get_their_kind(tmp_path: Path) -> None:
    trace = tmp_path / "reordered.jsonl"
    record(trace)
    lines = trace.read_bytes().splitlines()
    reordered = [lines[0]] + [
        json.dumps(dict(reversed(json.loads(x).items()))).encode() for x in lines[1:]
    ]
    trace.write_bytes(b"\n".join(reordered) + b"\n")
    index_path(trace).unlink()
    with TraceReader(trace) as reader:
        assert list(reader.kinds) == [KIND_CODES[e[0]] for e in EVENTS]
        assert reader.event(1).kind is EventKind.EXIT


@pytest.mark.parametrize("change", ["cut", "append", "garbage"])
def test_a_stale_index_is_rebuilt(tmp_path: Path, change: str) -> None:
    trace = write_synthetic_trace(tmp_path / "s.jsonl", 400, seed=4)
    lines = trace.read_bytes().splitlines(keepends=True)
    if change == "cut":
        trace.write_bytes(b"".join(lines[:200]))
    elif change == "append":
        trace.write_bytes(b"".join(lines + lines[1:50]))
    else:
        index_path(trace).write_bytes(os.urandom(8 * len(lines)))
    with TraceReader(trace) as reader:
        # lines after the index's last: the tail is indexed, as for a killed recorder's
        assert reader.index_rebuilt is (change != "append")
        assert reader.unfinished is (change == "append")
        expected = {"cut": 199, "append": 449, "garbage": 400}[change]
        assert len(reader) == expected
        assert reader.event(expected - 1).pos.seq == (expected - 1) % 400


def test_stale_index_without_rebuild_is_an_error(tmp_path: Path) -> None:
    trace = write_synthetic_trace(tmp_path / "s.jsonl", 100, seed=5)
    index_path(trace).write_bytes(index_path(trace).read_bytes()[:-8])
    with pytest.raises(TraceError) as err:
        TraceReader(trace, rebuild_index=False)
    assert err.value.reason is TraceErrorReason.INDEX_MISMATCH
    index_path(trace).unlink()
    with pytest.raises(TraceError) as err:
        TraceReader(trace, rebuild_index=False)
    assert err.value.reason is TraceErrorReason.INDEX_MISMATCH


def test_rebuilt_index_is_not_written_when_asked_not_to(tmp_path: Path) -> None:
    trace = write_synthetic_trace(tmp_path / "s.jsonl", 50, seed=6)
    index_path(trace).unlink()
    with TraceReader(trace, write_index=False) as reader:
        assert reader.index_rebuilt and not reader.index_written
        assert len(reader) == 50
    assert not index_path(trace).exists()


def test_header_with_missing_optional_keys_gets_defaults(tmp_path: Path) -> None:
    trace = tmp_path / "minimal.jsonl"
    trace.write_text(
        '{"kind":"header","format":"tvmm-trace","version":1}\n'
        '{"kind":"console","inside":{"text":"x"}}\n'
    )
    with TraceReader(trace) as reader:
        assert reader.header.guest == "unknown" and reader.header.symbols == []
        assert reader.event(0) == TraceEvent(Position(0), EventKind.CONSOLE, "", {"text": "x"})
