"""Hex dumps of the bytes a trace carries as hex strings (host state blobs, bounce buffers)."""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

_WIDTHS = (16, 12, 8, 4, 2, 1)  # bytes per row, the widest that fits is used


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


class HexDump:
    """A hex dump that picks its bytes per row from the width it is given, so a narrow
    pane shows fewer bytes a row instead of cutting rows off at its edge."""

    def __init__(self, data: str | bytes, limit: int = 512, ascii: bool = True) -> None:
        self.data, self.limit, self.ascii = data, limit, ascii

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield hexdump(self.data, row_width(options.max_width, self.ascii), self.limit, self.ascii)


def row_width(columns: int, ascii: bool) -> int:
    """Bytes per row that fit in ``columns``: offset (6), 3 per byte, ASCII (2 + 1 per byte)."""
    for width in _WIDTHS:
        if 6 + 3 * width - 1 + (2 + width if ascii else 0) <= columns:
            return width
    return 1
