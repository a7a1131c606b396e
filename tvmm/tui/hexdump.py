"""Hex dumps of the bytes a trace carries as hex strings (host state blobs, bounce buffers)."""

from __future__ import annotations

from rich.text import Text


def hexdump(data: str | bytes, width: int = 16, limit: int = 512, ascii: bool = True) -> Text:
    """Offset, hex bytes and (if ``ascii``) printable characters, ``width`` bytes a line,
    at most ``limit`` bytes; ciphertext gains nothing from an ASCII column."""
    if isinstance(data, str):
        try:
            data = bytes.fromhex(data)
        except ValueError:
            return Text(f"(not hex: {data[:60]!r})", style="red")
    text = Text(no_wrap=True)
    shown = data[:limit]
    for off in range(0, len(shown), width):
        chunk = shown[off : off + width]
        text.append(f"{off:04x}  ", style="dim")
        text.append(" ".join(f"{b:02x}" for b in chunk).ljust(width * 3 - 1))
        if ascii:
            printable = "".join(chr(b) if 32 <= b < 127 else "·" for b in chunk)
            text.append("  " + printable, style="dim")
        text.append("\n")
    if len(data) > limit:
        text.append(f"… {len(data) - limit} more bytes\n", style="dim")
    if not data:
        text.append("(empty)", style="dim")
    text.rstrip()
    return text
