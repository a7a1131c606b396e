"""Exports a trace as Chrome/Perfetto trace-event JSON, and checks such JSON.

Perfetto (ui.perfetto.dev) and chrome://tracing open the JSON object format described in
Google's "Trace Event Format" document.  Mapping: one process (pid 1) for the VM; one
thread track per vCPU (tid = vCPU) on which every exit is a complete slice (``"ph":"X"``)
lasting until the next event of that vCPU, with the inside facts and the outside view (what
the host saw) in its args; the host's attack actions on their own track;
policy decisions, injections, I/O, hypercalls and the rest as thread-scoped instants
(``"ph":"i"``); a counter (``"ph":"C"``) of exits so far per exit reason; metadata events
naming the process and threads.  The exporter streams: it holds one pending exit per vCPU,
never the whole trace.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import IO, Any

from tvmm.abi.trace_events import EventKind, TraceEvent
from tvmm.trace.reader import TraceReader

PID = 1
ATTACKER_TID = 1000  # a track of its own: attack actions are the host's, not a vCPU's
_PHASES = set("BEXiIbneCMsftPONDRcTpv")
_METADATA = {
    "process_name",
    "process_labels",
    "process_sort_index",
    "thread_name",
    "thread_sort_index",
}


def export_perfetto(reader: TraceReader, out_path: Path | str) -> int:
    """Write ``reader``'s trace as trace-event JSON to ``out_path``; return the event count."""
    header = reader.header
    with open(out_path, "w", encoding="utf-8") as out:
        other = {
            "guest": header.guest,
            "level": header.level,
            "seed": header.seed,
            "source": str(reader.path),
        }
        out.write(f'{{"displayTimeUnit":"ns","otherData":{_dump(other)},"traceEvents":[\n')
        sink = _Sink(out)
        sink.write(_meta("process_name", None, f"tvmm {header.guest} @ {header.level}"))
        _stream(reader, sink)
        out.write("\n]}\n")
    return sink.count


def _stream(reader: TraceReader, sink: _Sink) -> None:
    pending: dict[int, TraceEvent] = {}  # the open exit slice of each vCPU
    exits: Counter[str] = Counter()
    tracks: set[int] = set()
    last_ns = 0
    for event in reader.iter_events():
        tid = ATTACKER_TID if event.kind is EventKind.ATTACK else event.pos.vcpu
        if tid not in tracks:
            tracks.add(tid)
            name = "host (attacker)" if tid == ATTACKER_TID else f"vCPU {tid}"
            sink.write(_meta("thread_name", tid, name))
            sink.write(_meta("thread_sort_index", tid, tid))
        if tid != ATTACKER_TID and (open_exit := pending.pop(tid, None)) is not None:
            sink.write(_slice(open_exit, event.t_ns))
        last_ns = max(last_ns, event.t_ns)
        if event.kind is EventKind.EXIT:
            pending[tid] = event
            exits[event.name] += 1
            sink.write(
                {"name": "exits", "ph": "C", "ts": _us(event.t_ns), "pid": PID, "args": dict(exits)}
            )
        else:
            sink.write(_instant(event, tid))
    for open_exit in pending.values():
        sink.write(_slice(open_exit, last_ns))


def _slice(event: TraceEvent, end_ns: int) -> dict[str, Any]:
    inside = event.inside or {}
    args: dict[str, Any] = {"seq": event.pos.seq}
    if isinstance(inside.get("rip"), int):
        args["rip"] = hex(inside["rip"])
    for key in ("symbol", "retired"):
        if inside.get(key) is not None:
            args[key] = inside[key]
    if isinstance(inside.get("fault_gpa"), int):
        args["fault_gpa"] = hex(inside["fault_gpa"])
    if event.pos.icount is not None:
        args["icount"] = event.pos.icount
    if event.outside is not None:
        args["outside"] = event.outside  # what the host saw: reason, level, fields, state
    return {
        "name": event.name,
        "cat": "exit",
        "ph": "X",
        "ts": _us(event.t_ns),
        "dur": _us(max(0, end_ns - event.t_ns)),
        "pid": PID,
        "tid": event.pos.vcpu,
        "args": args,
    }


def _instant(event: TraceEvent, tid: int) -> dict[str, Any]:
    args: dict[str, Any] = {"seq": event.pos.seq}
    if event.inside is not None:
        args["inside"] = event.inside
    if event.outside is not None:
        args["outside"] = event.outside
    return {
        "name": event.name,
        "cat": event.kind.value,
        "ph": "i",
        "s": "t",
        "ts": _us(event.t_ns),
        "pid": PID,
        "tid": tid,
        "args": args,
    }


def _meta(name: str, tid: int | None, value: str | int) -> dict[str, Any]:
    key = "sort_index" if name.endswith("sort_index") else "name"
    event: dict[str, Any] = {"name": name, "ph": "M", "pid": PID, "args": {key: value}}
    if tid is not None:
        event["tid"] = tid
    return event


def _us(ns: int) -> float:
    return ns / 1000


def _dump(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class _Sink:
    """Writes array elements one at a time, with the commas between them."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.count = 0

    def write(self, event: dict[str, Any]) -> None:
        self.out.write(("," if self.count else "") + _dump(event) + "\n")
        self.count += 1


# -- checking ------------------------------------------------------------------------------


def validate_trace_event_json(obj: Any, *, max_errors: int = 50) -> list[str]:
    """Problems that would stop a trace-event consumer reading ``obj``; empty when valid.

    Checks the structure of the JSON object format (a ``traceEvents`` array; the bare
    array form is accepted too) and, per event, the keys its phase requires with their
    types: numeric ``ts`` and ``dur``, integer ``pid`` and ``tid``, instant scopes,
    numeric counter values, metadata arguments.
    """
    if isinstance(obj, list):
        events = obj
    elif isinstance(obj, dict):
        events = obj.get("traceEvents")
        if not isinstance(events, list):
            return ["the top-level object has no 'traceEvents' array"]
        unit = obj.get("displayTimeUnit", "ms")
        if unit not in ("ms", "ns"):
            return [f"displayTimeUnit must be 'ms' or 'ns', not {unit!r}"]
    else:
        return ["a trace is a JSON object with 'traceEvents' or a JSON array"]
    errors: list[str] = []
    for i, event in enumerate(events):
        for problem in _event_problems(event):
            errors.append(f"traceEvents[{i}]: {problem}")
            if len(errors) >= max_errors:
                return errors
    return errors


def _event_problems(event: Any) -> list[str]:
    if not isinstance(event, dict):
        return ["an event must be a JSON object"]
    ph = event.get("ph")
    if not isinstance(ph, str) or ph not in _PHASES:
        return [f"unknown phase {ph!r}"]
    problems: list[str] = []
    if not isinstance(event.get("name"), str) and ph != "E":
        problems.append(f"'{ph}' event needs a string 'name'")
    if not _is_int(event.get("pid")):
        problems.append("'pid' must be an integer")
    needs_tid = (
        ph in "XBE"
        or (ph in "iI" and event.get("s", "t") == "t")
        or (ph == "M" and str(event.get("name", "")).startswith("thread_"))
    )
    if (needs_tid or "tid" in event) and not _is_int(event.get("tid")):
        problems.append("'tid' must be an integer")
    if ph != "M" and not _is_number(event.get("ts")):
        problems.append("'ts' must be a number (microseconds)")
    if "args" in event and not isinstance(event["args"], dict):
        problems.append("'args' must be an object")
    if ph == "X" and not (_is_number(event.get("dur")) and event["dur"] >= 0):
        problems.append("'X' event needs a non-negative numeric 'dur'")
    if ph in "iI" and event.get("s", "t") not in ("g", "p", "t"):
        problems.append(f"instant scope 's' must be 'g', 'p' or 't', not {event.get('s')!r}")
    if ph == "C":
        args = event.get("args")
        if not isinstance(args, dict) or not args:
            problems.append("'C' event needs 'args' with the counter values")
        elif not all(_is_number(v) for v in args.values()):
            problems.append("counter values in 'args' must be numbers")
    if ph == "M":
        name, args = event.get("name"), event.get("args")
        if name not in _METADATA:
            problems.append(f"unknown metadata event {name!r}")
        elif not isinstance(args, dict):
            problems.append("metadata event needs 'args'")
        elif name.endswith("_name") and not isinstance(args.get("name"), str):
            problems.append(f"'{name}' needs a string args.name")
        elif name.endswith("sort_index") and not _is_int(args.get("sort_index")):
            problems.append(f"'{name}' needs an integer args.sort_index")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
