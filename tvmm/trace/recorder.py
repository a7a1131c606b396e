"""Writes a trace as JSON Lines plus an offset index, as it goes.

The index (``<trace>.idx``) is a flat array of little-endian u64 words, one per event line:
the low 56 bits are the byte offset of the line in the trace, the high 8 bits the event's
kind code (``events.KIND_CODES``; 0 for the header).  A reader can mmap it, filter on kinds
without parsing JSON, and read a record with one ``os.pread``; if the index is missing it
is rebuilt by scanning for newlines.

A killed run must leave a trace that holds every event up to the kill, so each line goes to
the kernel as it is emitted (one unbuffered write: the page cache outlives the process).
The index is written in batches, and always one batch behind until ``close``: an index that
ends before the trace is therefore the mark of a recorder that never finished (killed or
crashed), and the reader indexes the short tail and says where the recording stops.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from tvmm.abi.trace_events import KIND_CODES, EventKind, Position, TraceEvent, TraceHeader

INDEX_SUFFIX = ".idx"
_WORD = struct.Struct("<Q")
OFFSET_MASK = (1 << 56) - 1
INDEX_BATCH = 1024  # index words held back before one write (a reader rescans at most this)


def index_path(trace: Path) -> Path:
    return trace.with_name(trace.name + INDEX_SUFFIX)


def pack_index_word(offset: int, kind_code: int) -> bytes:
    return _WORD.pack((kind_code << 56) | (offset & OFFSET_MASK))


class TraceRecorder:
    """Appends events to a trace file; one instance per run."""

    enabled = True

    def __init__(
        self,
        path: Path | str,
        header: TraceHeader,
        *,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.path = Path(path)
        self._clock = clock  # injectable so synthetic traces and tests are reproducible
        # Unbuffered: one write per line, so a SIGKILL loses nothing already emitted.
        self._out: IO[bytes] = open(self.path, "wb", buffering=0)  # noqa: SIM115 - close()
        self._idx: IO[bytes] = open(index_path(self.path), "wb", buffering=0)  # noqa: SIM115
        self._pending = bytearray()  # index words not yet written: never empty until close
        self._offset = 0
        self._seq = 0
        self._t0 = clock()
        self._write_line(header.to_json(), 0)

    @property
    def next_seq(self) -> int:
        return self._seq

    def emit(
        self,
        kind: EventKind,
        name: str,
        *,
        inside: dict | None = None,
        outside: dict | None = None,
        icount: int | None = None,
        vcpu: int = 0,
    ) -> TraceEvent:
        event = TraceEvent(
            Position(self._seq, icount, vcpu),
            kind,
            name,
            inside,
            outside,
            self._clock() - self._t0,
        )
        self._seq += 1
        self._write_line(event.to_json(), KIND_CODES[kind])
        return event

    def _write_line(self, text: str, kind_code: int) -> None:
        data = text.encode() + b"\n"
        if len(self._pending) >= INDEX_BATCH * 8:  # written before this line's word joins
            self._idx.write(self._pending)
            self._pending.clear()
        self._pending += pack_index_word(self._offset, kind_code)
        self._out.write(data)
        self._offset += len(data)

    def close(self) -> None:
        if not self._out.closed:
            self._out.close()
            self._idx.write(self._pending)  # the whole index only now: see the docstring
            self._pending.clear()
            self._idx.close()

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
