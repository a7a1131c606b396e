"""Host-side devices: a console, a file-backed block device, and an input line source."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

SECTOR = 512


class Console:
    """Collects guest output and passes each write on as it arrives: as text to ``sink``,
    as the bytes themselves to ``raw_sink`` (binary output, e.g. a Linux program's)."""

    def __init__(self, sink: Callable[[str], None] | None = None,
                 raw_sink: Callable[[bytes], None] | None = None) -> None:
        self.sink = sink
        self.raw_sink = raw_sink
        self.chunks: list[str] = []

    def write(self, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        self.chunks.append(text)
        if self.sink is not None:
            self.sink(text)
        if self.raw_sink is not None:
            self.raw_sink(bytes(data))

    @property
    def text(self) -> str:
        return "".join(self.chunks)


class BlockDevice:
    """Sectors in a host file (created on first write); reads past the end give zeros."""

    def __init__(self, path: Path | None, size: int = 1 << 20) -> None:
        self.path = path
        self.size = size
        self._memory = bytearray() if path is None else None

    def read(self, sector: int, length: int) -> bytes:
        offset = sector * SECTOR
        if offset < 0 or offset + length > self.size:
            return b""
        if self._memory is not None:
            data = bytes(self._memory[offset : offset + length])
        elif self.path is not None and self.path.exists():
            with open(self.path, "rb") as f:
                f.seek(offset)
                data = f.read(length)
        else:
            data = b""
        return data.ljust(length, b"\0")

    def write(self, sector: int, data: bytes) -> int:
        offset = sector * SECTOR
        if offset < 0 or offset + len(data) > self.size:
            return -5
        if self._memory is not None:
            if len(self._memory) < offset + len(data):
                self._memory.extend(bytes(offset + len(data) - len(self._memory)))
            self._memory[offset : offset + len(data)] = data
            return len(data)
        assert self.path is not None
        mode = "r+b" if self.path.exists() else "w+b"
        with open(self.path, mode) as f:
            f.seek(offset)
            f.write(data)
        return len(data)


class InputDevice:
    """Lines of input for the guest; an empty read means end of input."""

    def __init__(self, lines: Iterable[str | bytes] = ()) -> None:
        self._lines: Iterator[str | bytes] = iter(lines)
        self.served: list[bytes] = []  # every line handed to the guest, for the judge

    def read_line(self, capacity: int) -> bytes:
        line = next(self._lines, None)
        if line is None:
            return b""
        data = line.encode() if isinstance(line, str) else line
        if not data.endswith(b"\n"):
            data += b"\n"
        self.served.append(data[:capacity])
        return data[:capacity]
