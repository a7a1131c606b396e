"""One line per event: the vocabulary of the event list.

Each kind gets the few facts a researcher scans for (an exit's RIP and fault address, a
policy's reason, whether an interrupt was delivered); every key is optional, because
producers differ and a viewer must not fail on a trace it does not fully understand.
"""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text

from tvmm.abi.trace_events import EventKind, Position, TraceEvent
from tvmm.trace.stats import Verdict

KIND_STYLES: dict[EventKind, str] = {
    EventKind.EXIT: "cyan",
    EventKind.HYPERCALL: "blue",
    EventKind.POLICY: "bold yellow",
    EventKind.INJECT: "magenta",
    EventKind.IO: "green",
    EventKind.MGMT: "bright_blue",
    EventKind.ATTACK: "bold red",
    EventKind.CONSOLE: "white",
    EventKind.VERDICT: "bold reverse red",
    EventKind.END: "bold",
}


def row_text(event: TraceEvent, delta: int | None = None) -> Text:
    """The list row: seq, time, vCPU, kind, name, summary; ``delta`` is an exit's
    instructions retired since the same vCPU's previous exit (``exit_chain``)."""
    t_ms = event.t_ns / 1e6
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{event.pos.seq:>8} ", style="dim")
    text.append(f"{t_ms:>11.3f} ", style="dim")
    text.append(f"{event.pos.vcpu:>2} ")
    text.append(f"{event.kind.value:<9} ", style=KIND_STYLES.get(event.kind, ""))
    text.append(f"{event.name[:18]:<18} ", style="bold")
    text.append(summary(event, delta))
    return text


def error_row_text(line: int, message: str) -> Text:
    return Text(
        f"{'':>8} {'':>11} {'':>2} unreadable line {line}: {message}",
        style="red",
        no_wrap=True,
        overflow="ellipsis",
    )


def summary(event: TraceEvent, delta: int | None = None) -> str:
    """The one-line gist of an event; missing keys are skipped, never an error."""
    inside = event.inside or {}
    outside = event.outside or {}
    if event.kind is EventKind.EXIT:
        return _exit(inside, outside, delta)
    if event.kind is EventKind.MGMT and event.name == "create_vm":
        return _create_vm(inside)
    handler = _SUMMARIES.get(event.kind)
    return handler(inside, outside) if handler else compact(inside or outside)


def _create_vm(inside: dict) -> str:
    head = f"━━ VM {inside.get('vm', '?')} created at {inside.get('level', '?')}"
    if isinstance(inside.get("memory"), int):
        head += f", {inside['memory'] >> 20} MiB"
    return head + " ━━"


def _exit(inside: dict, outside: dict, delta: int | None = None) -> str:
    parts = []
    if isinstance(inside.get("rip"), int):
        parts.append(f"rip {inside['rip']:#x}")
    if inside.get("symbol"):
        parts.append(str(inside["symbol"]))
    if isinstance(inside.get("fault_gpa"), int):
        parts.append(f"gpa {inside['fault_gpa']:#x}")
    if delta is not None:
        parts.append(f"+{delta} insn" + ("" if delta == 1 else "s"))
    if not parts and outside:
        parts.append("host: " + compact(outside.get("fields") or outside))
    return "  ".join(parts)


def _policy(inside: dict, outside: dict) -> str:
    head = str(inside.get("policy", ""))
    reason = str(inside.get("reason", ""))
    return f"{head}: {reason}" if head and reason else head or reason or compact(inside)


def _inject(inside: dict, outside: dict) -> str:
    vector = inside.get("vector", outside.get("vector"))
    delivered = inside.get("delivered")
    state = {True: "delivered", False: "not delivered", None: "?"}.get(delivered, str(delivered))
    vec = f"vector {vector:#x}" if isinstance(vector, int) else "vector ?"
    why = inside.get("why")
    return f"{vec} {state}" + (f" — {why}" if why else "")


def _io(inside: dict, outside: dict) -> str:
    parts = [str(inside.get(k)) for k in ("device", "op") if inside.get(k) is not None]
    length = inside.get("len", outside.get("len"))
    if length is not None:
        parts.append(f"{length} B")
    if outside.get("slot") is not None:
        parts.append(f"slot {outside['slot']}")
    return " ".join(parts)


def _console(inside: dict, outside: dict) -> str:
    return repr(str(inside.get("text", "")).rstrip("\n"))[1:-1]


def _attack(inside: dict, outside: dict) -> str:
    return compact(outside or inside)


def _verdict(inside: dict, outside: dict) -> str:
    head = f"{inside.get('attack', '?')} @ {inside.get('level', '?')}"
    verdict = Verdict.from_event(TraceEvent(Position(0), EventKind.VERDICT, "", inside))
    if verdict.bits_correct is not None:
        n = "?" if verdict.n is None else f"{verdict.n:g}"
        head += f": {verdict.bits_correct:g}/{n} bits"
    if verdict.leaked_bits is not None:
        head += f", leaked {verdict.leaked_bits:g}"
    detected = inside.get("detected")
    if detected is not None:
        head += ", detected" if detected else ", undetected"
    return head


def _end(inside: dict, outside: dict) -> str:
    parts = [str(inside.get("how", "?"))]
    if inside.get("status") is not None:
        parts.append(f"status {inside['status']}")
    if isinstance(inside.get("instructions"), int):
        parts.append(f"{inside['instructions']:,} instructions")
    if isinstance(inside.get("exits"), dict):
        parts.append(f"{sum(v for v in inside['exits'].values() if isinstance(v, int)):,} exits")
    return ", ".join(parts)


_SUMMARIES = {
    EventKind.POLICY: _policy,
    EventKind.INJECT: _inject,
    EventKind.IO: _io,
    EventKind.CONSOLE: _console,
    EventKind.ATTACK: _attack,
    EventKind.VERDICT: _verdict,
    EventKind.END: _end,
}


def compact(obj: Any, limit: int = 120) -> str:
    """``key=value`` pairs, addresses in hex, long values cut: a dict in one short line."""
    if not isinstance(obj, dict):
        return _value(obj, False, limit)
    text = " ".join(f"{k}={_value(v, is_address_key(k), 40)}" for k, v in obj.items())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_address_key(key: object) -> bool:
    """Whether a key names an address-like value, best read in hex (rip, gpa, slot, …)."""
    return bool(_ADDRESS_KEY.search(str(key)))


_ADDRESS_KEY = re.compile(
    r"rip|gpa|gva|addr|slot|page|vector|exit_code|exit_info|flags|^cr\d|^r[sb]p$|base|mask", re.I
)


def format_value(v: Any, key: object = "", *, limit: int = 200) -> str:
    """A value for a detail view: integers in hex when ``key`` names an address."""
    return _value(v, is_address_key(key), limit)


def _value(v: Any, hex_ints: bool, limit: int) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:#x}" if hex_ints else str(v)
    if isinstance(v, list):
        items = ",".join(_value(x, hex_ints, limit) for x in v[:8])
        return "[" + items + (",…" if len(v) > 8 else "") + "]"
    if isinstance(v, dict):
        return "{" + compact(v, limit) + "}"
    s = str(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"
