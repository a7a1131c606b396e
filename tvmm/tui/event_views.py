"""The two views of one event, side by side: inside (what the TEE saw) and outside (what the
host got), plus the register diff and the code around RIP.

The point of the pairing is comparison: the fault address the TEE knew against the one the
host was given, the register file against the bytes the host received for it, the
bounce-buffer contents against the slot the host saw.  Every key is optional.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tvmm.abi.trace_events import EventKind, TraceEvent
from tvmm.tui.event_text import KIND_STYLES, format_value
from tvmm.tui.guest_image import GuestImage
from tvmm.tui.hexdump import hexdump
from tvmm.tui.registers import ORDER, Change, diff_table, register_table, registers_of

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


def inside_view(event: TraceEvent, image: GuestImage, changed: set[str]) -> RenderableType:
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
    regs = registers_of(inside)
    inside.pop("regs", None)
    data = inside.pop("data", None) if event.kind is EventKind.IO else None
    for key, value in inside.items():
        facts.add_row(key, format_value(value, key))
    parts.append(facts)
    if regs:
        parts += [Text("registers", style="bold dim"), register_table(regs, changed)]
    if isinstance(data, str):
        parts += [
            Text("bounce buffer (inside)", style="bold dim"),
            hexdump(data, width=12, limit=240),
        ]
    return Group(*parts)


def outside_view(event: TraceEvent, level: str) -> RenderableType:
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
    compare = _compare(event, fields if isinstance(fields, dict) else {})
    if compare is not None:
        parts.append(compare)
    if isinstance(state, str):
        meaning = STATE_MEANING.get(level, f"register state at level {level}")
        parts += [
            Text(f"state: {len(state) // 2} bytes, {meaning}", style="bold dim"),
            hexdump(state, limit=192, ascii=False),
            *_decoded(event, state, level),
        ]
    return Group(*parts)


def _compare(event: TraceEvent, fields: dict[str, Any]) -> Text | None:
    """The fault address the TEE knew next to the one the host was given."""
    gpa = (event.inside or {}).get("fault_gpa")
    if not isinstance(gpa, int):
        return None
    given = next(
        (fields[k] for k in ("fault_gpa", "gpa", "exit_info_2") if isinstance(fields.get(k), int)),
        None,
    )
    text = Text("fault address: TEE ", style="bold")
    text.append(f"{gpa:#x}")
    text.append(" → host ", style="bold")
    if given is None:
        text.append("hidden", style="green")
    elif given == gpa:
        text.append(f"{given:#x} (exact)", style="red")
    elif given >> 12 == gpa >> 12:
        text.append(f"{given:#x} (page only)", style="yellow")
    else:
        text.append(f"{given:#x} (coarsened)", style="green")
    return text


def _decoded(event: TraceEvent, state: str, level: str) -> list[Text]:
    """At plain and sev the blob is the register file: say how much of it the host can read."""
    regs = registers_of(event.inside)
    if level not in ("plain", "sev") or not regs or len(state) != 16 * len(ORDER):
        return []
    try:
        blob = bytes.fromhex(state)
    except ValueError:
        return []
    words = [int.from_bytes(blob[i : i + 8], "little") for i in range(0, len(blob), 8)]
    same = sum(regs.get(name) == word for name, word in zip(ORDER, words, strict=True))
    return [Text(f"host reads {same} of {len(regs)} registers in clear", style="red")]


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
