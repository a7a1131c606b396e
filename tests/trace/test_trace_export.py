"""Perfetto export: the JSON is well formed for trace-event consumers, and the checker
catches what would break them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tvmm.abi.trace_events import EventKind
from tvmm.trace.export import ATTACKER_TID, export_perfetto, validate_trace_event_json
from tvmm.trace.reader import TraceReader
from tvmm.trace.synthetic import write_synthetic_trace


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, TraceReader]:
    tmp = tmp_path_factory.mktemp("export")
    reader = TraceReader(write_synthetic_trace(tmp / "s.jsonl", 1500, seed=11))
    out = tmp / "s.json"
    count = export_perfetto(reader, out)
    obj = json.loads(out.read_text())
    assert len(obj["traceEvents"]) == count
    return obj, reader


def test_export_validates(exported: tuple[dict, TraceReader]) -> None:
    obj, _ = exported
    assert validate_trace_event_json(obj) == []


def test_exits_are_slices_until_the_next_event(exported: tuple[dict, TraceReader]) -> None:
    obj, reader = exported
    slices = [e for e in obj["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == len(reader.indices({EventKind.EXIT}))
    by_seq = {e.pos.seq: e for e in reader.iter_events()}
    for s in slices:
        event = by_seq[s["args"]["seq"]]
        assert s["name"] == event.name and s["pid"] == 1 and s["tid"] == event.pos.vcpu
        assert s["ts"] == pytest.approx(event.t_ns / 1000)
        following = [
            e
            for e in by_seq.values()
            if e.pos.seq > event.pos.seq and e.kind is not EventKind.ATTACK
        ]
        if following:
            assert s["dur"] == pytest.approx((following[0].t_ns - event.t_ns) / 1000)


def test_policy_and_attacks_are_instants(exported: tuple[dict, TraceReader]) -> None:
    obj, reader = exported
    instants = [e for e in obj["traceEvents"] if e["ph"] == "i"]
    assert {e["s"] for e in instants} == {"t"}
    attacks = [e for e in instants if e["cat"] == "attack"]
    policies = [e for e in instants if e["cat"] == "policy"]
    assert len(attacks) == len(reader.indices({EventKind.ATTACK}))
    assert len(policies) == len(reader.indices({EventKind.POLICY}))
    assert {e["tid"] for e in attacks} == {ATTACKER_TID}


def test_counters_and_metadata(exported: tuple[dict, TraceReader]) -> None:
    obj, reader = exported
    counters = [e for e in obj["traceEvents"] if e["ph"] == "C"]
    assert len(counters) == len(reader.indices({EventKind.EXIT}))
    assert sum(counters[-1]["args"].values()) == len(counters)
    meta = {(e["name"], e.get("tid")): e["args"] for e in obj["traceEvents"] if e["ph"] == "M"}
    assert meta[("process_name", None)]["name"] == "tvmm modexp @ snp"
    assert meta[("thread_name", 0)]["name"] == "vCPU 0"
    assert meta[("thread_name", ATTACKER_TID)]["name"] == "host (attacker)"


def _broken(obj: dict, change: str) -> object:
    obj = copy.deepcopy(obj)
    events = obj["traceEvents"]
    first = {ph: next(e for e in events if e["ph"] == ph) for ph in "XiCM"}
    if change == "no-array":
        return {"events": events}
    if change == "not-json-object":
        return "traceEvents"
    if change == "unit":
        obj["displayTimeUnit"] = "s"
    elif change == "x-without-dur":
        del first["X"]["dur"]
    elif change == "negative-dur":
        first["X"]["dur"] = -1
    elif change == "string-ts":
        first["i"]["ts"] = "12"
    elif change == "string-tid":
        first["X"]["tid"] = "vcpu0"
    elif change == "bool-pid":
        first["C"]["pid"] = True
    elif change == "scope":
        first["i"]["s"] = "x"
    elif change == "counter-text":
        first["C"]["args"] = {"npf": "many"}
    elif change == "metadata":
        first["M"]["args"] = {}
    elif change == "phase":
        first["i"]["ph"] = "?"
    elif change == "event-type":
        events.append(["not", "an", "object"])
    return obj


@pytest.mark.parametrize(
    "change",
    [
        "no-array",
        "not-json-object",
        "unit",
        "x-without-dur",
        "negative-dur",
        "string-ts",
        "string-tid",
        "bool-pid",
        "scope",
        "counter-text",
        "metadata",
        "phase",
        "event-type",
    ],
)
def test_the_checker_catches_broken_structures(
    exported: tuple[dict, TraceReader], change: str
) -> None:
    obj, _ = exported
    problems = validate_trace_event_json(_broken(obj, change))
    assert len(problems) == 1, problems


def test_the_bare_array_form_is_accepted(exported: tuple[dict, TraceReader]) -> None:
    obj, _ = exported
    assert validate_trace_event_json(obj["traceEvents"][:50]) == []


def test_export_streams(tmp_path: Path) -> None:
    """The exporter keeps one pending exit per vCPU, not the trace: memory stays flat."""
    import tracemalloc

    reader = TraceReader(write_synthetic_trace(tmp_path / "big.jsonl", 5000, seed=12))
    tracemalloc.start()
    export_perfetto(reader, tmp_path / "big.json")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < (tmp_path / "big.json").stat().st_size / 4
