"""The index rebuild against a naive line scan, on arbitrary traces: recorder lines, lines
in another key order, damaged lines and a last line cut short.  The index must say where
every whole line starts and the kind it claims, however the file was damaged; a file cut
inside its last line opens with the lines before the cut and says where it stops."""

from __future__ import annotations

import json
import tempfile
from array import array
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvmm.abi.trace_events import EventKind, Position, TraceEvent, TraceHeader
from tvmm.trace.reader import (
    TraceError,
    TraceErrorReason,
    TraceReader,
    kind_code_of_line,
    scan_lines,
)
from tvmm.trace.recorder import index_path

HEADER = TraceHeader(guest="g", level="snp", seed=0, versions={}, elf=None, elf_sha256=None,
                     symbols=[], extra={}).to_json().encode()
NUMBERS = st.integers(min_value=-(2**63), max_value=2**64)


@st.composite
def event_lines(draw: st.DrawFn) -> bytes:
    """A line as the recorder writes it, perhaps reordered or damaged (never a newline)."""
    event = TraceEvent(
        Position(draw(NUMBERS), draw(st.none() | NUMBERS), draw(st.integers(0, 300))),
        draw(st.sampled_from(list(EventKind))),
        draw(st.text(max_size=12)),
        draw(st.none() | st.dictionaries(st.sampled_from(["kind", "rip", "x"]),
                                          st.sampled_from(["exit", "io", 1, None]))),
        None,
        draw(st.integers(0, 2**40)),
    )
    line = event.to_json().encode()
    damage = draw(st.sampled_from(["none", "none", "reorder", "cut", "bytes", "garbage"]))
    if damage == "reorder":
        line = json.dumps(dict(reversed(json.loads(line).items()))).encode()
    elif damage == "cut":
        line = line[: draw(st.integers(0, len(line)))]
    elif damage == "bytes":
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(st.binary(max_size=8)).replace(b"\n", b" ") + line[at:]
    elif damage == "garbage":
        line = draw(st.binary(max_size=200)).replace(b"\n", b"")
    return line


@st.composite
def traces(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """The whole lines of a trace, and a cut-short last line (perhaps empty)."""
    lines = draw(st.lists(event_lines(), max_size=40))
    tail = draw(event_lines()) if draw(st.booleans()) else b""
    return HEADER + b"\n" + b"".join(line + b"\n" for line in lines), tail


def naive(data: bytes) -> tuple[list[int], list[int]]:
    """Line starts and claimed kinds, one line at a time: the definition the index meets."""
    offsets, kinds, pos = [], [], 0
    for line in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        offsets.append(pos)
        kinds.append(kind_code_of_line(data, pos, pos + len(line)) if pos else 0)
        pos += len(line) + 1
    return offsets, kinds


@settings(max_examples=50, deadline=None)
@given(traces(), st.integers(1, 400))
def test_the_index_equals_a_naive_line_scan(trace: tuple[bytes, bytes], chunk: int) -> None:
    data = trace[0] + trace[1]
    whole_offsets, whole_kinds, end = scan_lines(data)
    assert end == len(data)
    assert (list(whole_offsets), list(whole_kinds)) == naive(data)
    offsets, kinds, pos = array("Q"), array("B"), 0
    while pos < len(data):  # in chunks, as a rebuild goes: the same columns
        part_offsets, part_kinds, pos = scan_lines(data, pos, pos + chunk)
        offsets.extend(part_offsets)
        kinds.extend(part_kinds)
    assert (offsets, kinds) == (whole_offsets, whole_kinds)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), st.integers(1, 2000))
def test_a_damaged_or_cut_trace_opens_up_to_where_it_stops(
    trace: tuple[bytes, bytes], preview: int
) -> None:
    whole, tail = trace
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.jsonl"
        path.write_bytes(whole + tail)
        offsets, kinds = naive(whole)
        with TraceReader(path, allow_truncated=True) as reader:
            assert reader.index_rebuilt  # no index beside it: the scan is what is tested
            assert len(reader) == len(offsets) - 1
            assert [reader.offset(i) for i in range(len(reader))] == offsets[1:]
            assert list(reader.kinds) == kinds[1:]
            if tail:
                assert reader.truncation is not None
                assert f"ends at byte {len(whole) + len(tail):,}" in reader.truncation
                assert f"the {len(reader):,} whole events" in reader.truncation
            else:
                assert reader.truncation is None
            for i in range(len(reader)):  # each event is read, or its line named as damaged
                try:
                    reader.event(i)
                except TraceError as exc:
                    assert exc.reason in (TraceErrorReason.CORRUPT_LINE,
                                          TraceErrorReason.INDEX_MISMATCH)
                    assert exc.line == i + 1
        assert index_path(path).exists()
        with TraceReader(path, allow_truncated=True) as again:  # the saved index is reused
            assert not again.index_rebuilt
            assert list(again.kinds) == kinds[1:]
        with TraceReader(path, allow_truncated=True, preview=preview) as first:
            assert first.previewing
            assert len(first) <= len(offsets) - 1
            assert [first.offset(i) for i in range(len(first))] == offsets[1 : len(first) + 1]
            assert first.size <= max(preview, len(HEADER) + 1)
