"""The two views of one event, side by side: inside (what the TEE saw) and outside (what the
host got), plus the register diff and the code around RIP.

The point of the pairing is comparison: the fault address the TEE knew against the one the
host was given, the register file against the bytes the host received for it, the
bounce-buffer contents against the slot the host saw.  Every key is optional.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tvmm.abi.trace_events import EventKind, TraceEvent
from tvmm.tui import host_learned
from tvmm.tui.event_text import KIND_STYLES, format_value
from tvmm.tui.guest_image import GuestImage
from tvmm.tui.hexdump import HexDump, hexdump
from tvmm.tui.registers import Change, RegisterTable, diff_table, registers_of

STATE_MEANING = {
    "plain": "plaintext register file",
    "sev": "plaintext register file (SEV does not encrypt registers)",
    "sev-es": "deterministic ciphertext (same value, same bytes)",
    "snp": "deterministic ciphertext (same value, same bytes)",
    "shim": "AEAD blob (fresh nonce per seal)",
}


def title(event: TraceEvent) -> Text:
    text = Text()
    text.append(f"#{event.pos.seq} ", style="bold")
    text.append(f"{event.kind.value} ", style=KIND_STYLES.get(event.kind, ""))
    text.append(f"{event.name}", style="bold")
    text.append(f"   vCPU {event.pos.vcpu}", style="dim")
    if event.pos.icount is not None:
        text.append(f"   icount {event.pos.icount:,}", style="dim")
    text.append(f"   t {event.t_ns / 1e6:.6f} ms", style="dim")
    return text


def inside_view(
    event: TraceEvent, image: GuestImage, changed: set[str], delta: int | None = None
) -> RenderableType:
    inside = dict(event.inside or {})
    if not inside:
        return Text("(no inside view recorded)", style="dim")
    parts: list[RenderableType] = []
    facts = _kv()
    rip = inside.pop("rip", None)
    symbol = inside.pop("symbol", None)
    if isinstance(rip, int):
        facts.add_row("rip", f"{rip:#x}  {symbol or image.symbolize(rip) or ''}")
    gpa = inside.pop("fault_gpa", None)
    if isinstance(gpa, int):
        facts.add_row("fault gpa", f"{gpa:#x}  (page {gpa >> 12:#x}, offset {gpa & 0xFFF:#x})")
    if delta is not None:
        facts.add_row("since prev exit", f"{delta:,} instruction" + ("" if delta == 1 else "s"))
    regs = registers_of(inside)
    inside.pop("regs", None)
    data = inside.pop("data", None) if event.kind is EventKind.IO else None
    for key, value in inside.items():
        facts.add_row(key, format_value(value, key))
    parts.append(facts)
    if regs:
        parts += [Text("registers", style="bold dim"), RegisterTable(regs, changed)]
    if isinstance(data, str):
        parts += [
            Text("bounce buffer (inside)", style="bold dim"),
            hexdump(data, width=12, limit=240),
        ]
    return Group(*parts)


def outside_view(event: TraceEvent, level: str, delta: int | None = None) -> RenderableType:
    """What the host got, and what it learned from it (``host_learned``: every number in
    the outside view against what the TEE knew; ``delta`` is the instructions retired
    since the vCPU's previous exit)."""
    outside = dict(event.outside or {})
    if not outside:
        return Text("(the host got nothing for this event)", style="dim")
    parts: list[RenderableType] = []
    facts = _kv()
    fields = outside.pop("fields", None)
    state = outside.pop("state", None)
    level = str(outside.pop("level", level))
    for key, value in outside.items():
        facts.add_row(key, format_value(value, key))
    parts.append(facts)
    if isinstance(fields, dict):
        table = _kv()
        for key, value in fields.items():
            table.add_row(key, format_value(value, key))
        parts += [Text("exit fields", style="bold dim"), table]
    found = host_learned.findings(event.inside, event.outside, delta)
    compare = _compare(event, found)
    if compare is not None:
        parts.append(compare)
    learned = _learned(found)
    if learned is not None:
        parts.append(learned)
    if isinstance(state, str):
        meaning = STATE_MEANING.get(level, f"register state at level {level}")
        parts += [
            Text(f"state: {len(state) // 2} bytes, {meaning}", style="bold dim"),
            *_decoded(event, state, level),
            HexDump(state, limit=192, ascii=False),
        ]
    return Group(*parts)


_EXPOSURE_STYLE = {
    host_learned.Exposure.EXACT: "red",
    host_learned.Exposure.PAGE: "yellow",
    host_learned.Exposure.COARSENED: "yellow",
}


def _compare(event: TraceEvent, found: list[host_learned.Finding]) -> Text | None:
    """The fault address the TEE knew next to the most the host got of it, from any field."""
    gpa = (event.inside or {}).get("fault_gpa")
    if not isinstance(gpa, int) or isinstance(gpa, bool):
        return None
    text = Text("fault address: TEE ", style="bold")
    text.append(f"{gpa:#x}")
    text.append(" → host ", style="bold")
    best = host_learned.fault_exposure(found)
    if best is None:
        text.append("hidden", style="green")
        text.append(" (no outside field relates to it)", style="dim")
        return text
    label = {
        host_learned.Exposure.EXACT: "exact",
        host_learned.Exposure.PAGE: "page only",
        host_learned.Exposure.COARSENED: "coarsened",
    }[best.exposure]
    text.append(f"{best.given:#x} ({label}: {best.key}, {best.how})",
                style=_EXPOSURE_STYLE[best.exposure])
    return text


def _learned(found: list[host_learned.Finding]) -> RenderableType | None:
    """Every other relation found: RIP, instruction counts, register values in fields;
    one line each, wrapped rather than cut in a narrow pane."""
    rest = [f for f in found if f.fact != "fault address"]
    if not rest:
        return None
    lines: list[RenderableType] = [Text("the host learned", style="bold dim")]
    for f in rest:
        given = str(f.given) if f.fact in host_learned.COUNTS else f"{f.given:#x}"
        line = Text(f"{f.fact} ", style="bold")
        line.append(f"← {f.key} = {given} ({f.how})", style=_EXPOSURE_STYLE[f.exposure])
        lines.append(line)
    return Group(*lines)


def _decoded(event: TraceEvent, state: str, level: str) -> list[Text]:
    """Where the blob is the register file in plaintext (plain, sev), say how much of it
    the host can read; the count comes from the blob and this exit's registers, so a
    level that leaks registers is shown whatever its name."""
    counted = host_learned.registers_in_clear(event.inside, state)
    if counted is None:
        return []
    same, total = counted
    if not same and level not in ("plain", "sev"):
        return []
    style = "red" if same else "green"
    return [Text(f"host reads {same} of {total} registers in clear", style=style)]


def diff_view(changes: list[Change] | None, previous: TraceEvent | None) -> RenderableType:
    if previous is None:
        return Text("first exit of this vCPU (nothing to compare)", style="dim")
    head = Text(f"since #{previous.pos.seq} ({previous.name})", style="bold dim")
    if not changes:
        return Group(head, Text("no register changed", style="dim"))
    return Group(head, diff_table(changes))


def disassembly_view(image: GuestImage, rip: int | None) -> RenderableType:
    if rip is None:
        return Text("no RIP for this event", style="dim")
    if not image.has_code:
        return Text(image.note or "no guest code available", style="dim")
    insns = image.disassemble_around(rip)
    if not insns:
        return Text(f"{rip:#x} is outside the guest ELF's code", style="dim")
    table = Table.grid(padding=(0, 1))
    for _ in range(4):
        table.add_column()
    for insn in insns:
        here = insn.address == rip
        symbol = image.symbol_at(insn.address)
        if symbol and symbol[0] == insn.address:
            table.add_row("", Text(f"<{symbol[2]}>:", style="bold blue"), "", "")
        style = "bold reverse" if here else ""
        table.add_row(
            Text("→" if here else " ", style="bold yellow"),
            Text(f"{insn.address:#x}", style="dim" if not here else style),
            Text(insn.raw.hex(), style="dim"),
            Text(f"{insn.mnemonic} {insn.operands}", style=style),
        )
    return table


def _kv() -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    return table
