"""``tvmm trace stats``: the counts agree with reading every event."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from rich.console import Console

from tvmm.abi.trace_events import EventKind
from tvmm.trace.reader import TraceReader
from tvmm.trace.recorder import index_path
from tvmm.trace.stats import Verdict, stats_table, trace_stats
from tvmm.trace.synthetic import write_synthetic_trace


def _expected(reader: TraceReader) -> dict:
    events = list(reader.iter_events())
    injections = [e for e in events if e.kind is EventKind.INJECT]
    return {
        "exits": Counter(e.name for e in events if e.kind is EventKind.EXIT),
        "policy": Counter(e.name for e in events if e.kind is EventKind.POLICY),
        "delivered": sum(1 for e in injections if e.inside["delivered"]),
        "refused": sum(1 for e in injections if e.name == "refused"),
        "pending": sum(1 for e in injections if not e.inside["delivered"] and e.name != "refused"),
        "verdicts": [Verdict.from_event(e) for e in events if e.kind is EventKind.VERDICT],
    }


def test_stats_match_a_full_read(tmp_path: Path) -> None:
    reader = TraceReader(write_synthetic_trace(tmp_path / "s.jsonl", 4000, seed=5, level="shim"))
    stats = trace_stats(reader)
    expected = _expected(reader)
    assert stats.events == 4000 and stats.level == "shim"
    assert stats.exits == dict(expected["exits"])
    assert stats.policy == dict(expected["policy"])
    assert stats.injections_delivered == expected["delivered"]
    assert stats.injections_refused == expected["refused"] > 0
    assert stats.injections_pending == expected["pending"]
    assert list(stats.verdicts) == expected["verdicts"]
    assert stats.end["how"] == "shutdown"
    assert list(stats.exits.values()) == sorted(stats.exits.values(), reverse=True)


def test_stats_of_lines_in_another_key_order(tmp_path: Path) -> None:
    trace = write_synthetic_trace(tmp_path / "s.jsonl", 600, seed=6)
    expected = _expected(TraceReader(trace))
    lines = trace.read_bytes().splitlines()
    trace.write_bytes(
        b"\n".join(
            [lines[0]]
            + [json.dumps(dict(reversed(json.loads(x).items()))).encode() for x in lines[1:]]
        )
        + b"\n"
    )
    index_path(trace).unlink()
    stats = trace_stats(TraceReader(trace))
    assert stats.exits == dict(expected["exits"])
    assert stats.policy == dict(expected["policy"])


def test_verdict_tolerates_missing_keys() -> None:
    from tvmm.abi.trace_events import Position, TraceEvent

    v = Verdict.from_event(TraceEvent(Position(3), EventKind.VERDICT, "probe", {"n": "x"}))
    assert (v.attack, v.level, v.n, v.truth, v.seq) == ("probe", "?", None, None, 3)


def test_stats_table_renders(tmp_path: Path) -> None:
    reader = TraceReader(write_synthetic_trace(tmp_path / "s.jsonl", 500, seed=7))
    console = Console(width=100, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(stats_table(trace_stats(reader)))
    text = console.export_text()
    for expected in (
        "exits by reason",
        "npf",
        "policy decisions",
        "injections",
        "verdict: page_fault_channel @ snp",
        "bits correct",
        "end: shutdown",
    ):
        assert expected in text


def test_injections_as_the_shim_names_them(tmp_path: Path) -> None:
    from tvmm.abi.trace_events import TraceHeader
    from tvmm.trace.recorder import TraceRecorder

    trace = tmp_path / "irq.jsonl"
    with TraceRecorder(trace, TraceHeader("g", "shim", 0, {})) as rec:
        rec.emit(
            EventKind.INJECT, "posted", inside={"vector": 32, "delivered": False, "why": "pending"}
        )
        rec.emit(EventKind.INJECT, "delivered", inside={"vector": 32, "delivered": True})
        rec.emit(
            EventKind.INJECT,
            "refused",
            inside={"vector": 14, "delivered": False, "why": "vector not registered"},
        )
    stats = trace_stats(TraceReader(trace))
    assert (stats.injections_delivered, stats.injections_refused, stats.injections_pending) == (
        1,
        1,
        1,
    )


def test_names_the_fast_pattern_leaves_are_counted_by_parsing(tmp_path: Path) -> None:
    from tvmm.abi.trace_events import TraceHeader
    from tvmm.trace.recorder import TraceRecorder

    trace = tmp_path / "names.jsonl"
    odd = ['quote"d', "back\\slash", "n" * 300, "ünïcode"]
    with TraceRecorder(trace, TraceHeader("g", "shim", 0, {})) as rec:
        for name in ["timer", *odd, "timer"]:
            rec.emit(EventKind.EXIT, name)
        rec.emit(EventKind.POLICY, "step_extend")
    stats = trace_stats(TraceReader(trace))
    assert stats.exits == {"timer": 2, **dict.fromkeys(odd, 1)}
    assert stats.policy == {"step_extend": 1}
    assert (stats.unreadable, stats.skipped) == (0, 0)


_STATS_UNDER_A_LIMIT = """
import resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from tvmm.cli import main
sys.exit(main(["trace", "stats", sys.argv[1], "--json"]))
"""


def test_stats_of_a_16_mib_line_in_bounded_memory(tmp_path: Path) -> None:
    """An 8 MiB exit name cost 1.45 GB (the name pattern kept a backtracking frame per
    character); 16 MiB under a 2 GB limit ended in a MemoryError traceback.  Now lines over
    MAX_LINE_BYTES are skipped and counted, in the same memory as any trace."""
    import os
    import subprocess
    import sys

    from tvmm.abi.trace_events import TraceHeader
    from tvmm.trace.recorder import TraceRecorder

    trace = tmp_path / "long.jsonl"
    with TraceRecorder(trace, TraceHeader("g", "shim", 0, {})) as rec:
        rec.emit(EventKind.EXIT, "timer")
        rec.emit(EventKind.EXIT, "x" * (16 << 20))  # a 16 MiB name
        rec.emit(EventKind.INJECT, "posted", inside={"delivered": False, "pad": "y" * (16 << 20)})
        rec.emit(EventKind.EXIT, "npf")
        rec.emit(EventKind.INJECT, "delivered", inside={"vector": 32, "delivered": True})
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run(
        [sys.executable, "-c", _STATS_UNDER_A_LIMIT, str(trace), str(768 << 20)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    stats = json.loads(child.stdout)
    assert stats["exits"] == {"timer": 1, "npf": 1}
    assert stats["by_kind"] == {"exit": 3, "inject": 2}
    assert (stats["injections_delivered"], stats["injections_pending"]) == (1, 0)
    assert (stats["skipped"], stats["unreadable"]) == (2, 0)
