"""Reads a trace without loading it: the header is checked once, records are fetched by offset.

A run can leave millions of events and the viewer shows a screenful, so the reader keeps two
compact columns — line offsets (``array('Q')``) and kind codes (``array('B')``) — taken from
the ``.idx`` file the recorder wrote, or rebuilt by scanning the mmapped trace for newlines
(as Textualize/toolong does) when the index is missing or stale.  An event is parsed only
when asked for, from one ``os.pread``.  Every way a file can be unusable ends in one
``TraceError`` whose ``reason`` names it; corruption inside a record is found when the record
is read, so a damaged trace can still be browsed up to the damage.
"""

from __future__ import annotations

import itertools
import json
import mmap
import os
import re
import stat
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from tvmm.abi.trace_events import (
    CODE_KINDS,
    FORMAT,
    FORMAT_VERSION,
    KIND_CODES,
    EventKind,
    Position,
    TraceEvent,
    TraceHeader,
)
from tvmm.trace.recorder import index_path

_NL = 0x0A
_KIND_KEY = b'"kind":"'
_KIND_BY_NAME: dict[bytes, int] = {k.value.encode(): code for k, code in KIND_CODES.items()}
_LINE_KIND = re.compile(  # the recorder's fixed key order: seq, icount, vcpu, kind; one
    rb'\n\{"seq":-?\d+,"icount":(?:-?\d+|null),"vcpu":-?\d+,"kind":"([a-z_]+)"|\n'  # per \n
)
_CODE_OF_NAME: dict[bytes, int] = {b"": 0, **_KIND_BY_NAME}
_HEADER_START = b'{"kind":"header",'  # how the recorder starts every trace
_HEAD = 160  # bytes of a line searched for its kind before falling back to parsing it
_CHUNK = 64 << 20  # rebuild scans this much, then lets the kernel drop the scanned pages
_SAMPLES = 32  # index entries cross-checked against the trace when the index is opened


class TraceErrorReason(StrEnum):
    """Why a trace cannot be used; tests and the viewer branch on this, never on text."""

    MISSING_FILE = "missing_file"
    UNREADABLE = "unreadable"
    EMPTY_FILE = "empty_file"
    NOT_A_TRACE = "not_a_trace"
    UNSUPPORTED_VERSION = "unsupported_version"
    TRUNCATED = "truncated"
    CORRUPT_LINE = "corrupt_line"
    INDEX_MISMATCH = "index_mismatch"


class TraceError(Exception):
    """A trace file (or its index) that cannot be read as asked; ``line`` is 0 for the header."""

    def __init__(self, reason: TraceErrorReason, message: str, *, line: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


def scan_lines(buf: Any, start: int = 0, end: int | None = None) -> tuple[array, array, int]:
    """Offsets and kind codes of the whole lines in ``buf[start:end]``, and where to go on.

    A pure function of a buffer range, so it can run in a worker thread and a big file can
    be scanned in chunks: ``start`` must be a line start; a line longer than the range is
    taken whole; the third value is the start of the first line not scanned.  Kinds come
    from one regex pass over the range (a C loop); only lines the regex cannot read fall
    back to ``kind_code_of_line``.
    """
    size = len(buf)
    end = size if end is None else min(end, size)
    offsets: array = array("Q")
    append, find, newline = offsets.append, buf.find, b"\n"
    pos = start
    while pos < end:
        append(pos)
        pos = find(newline, pos) + 1
        if not pos:  # a last line without its newline
            pos = size
            break
    # One entry per newline before stop - 1, i.e. per line after the first one scanned.
    names = _LINE_KIND.findall(buf, max(start - 1, 0), max(pos - 1, 0))
    if start == 0:
        names.insert(0, b"")  # the header
    kinds = array("B", map(_CODE_OF_NAME.get, names[: len(offsets)], itertools.repeat(0)))
    stop = pos
    column = kinds.tobytes()
    i = column.find(0)
    while i >= 0:  # lines not in the recorder's key order (and the header, which stays 0)
        off = offsets[i]
        if off:
            line_end = buf.find(b"\n", off, stop)
            kinds[i] = kind_code_of_line(buf, off, stop if line_end < 0 else line_end)
        i = column.find(0, i + 1)
    return offsets, kinds, stop


def kind_code_of_line(buf: Any, start: int, stop: int) -> int:
    """The kind code of the event line ``buf[start:stop]``; 0 if it names no known kind."""
    head = buf[start : min(start + _HEAD, stop)]
    k = head.find(_KIND_KEY)
    if k >= 0 and head.count(b"{", 0, k) == 1:  # a top-level "kind", as the recorder writes
        q = head.find(b'"', k + len(_KIND_KEY))
        if q >= 0:
            return _KIND_BY_NAME.get(head[k + len(_KIND_KEY) : q], 0)
    try:
        obj = json.loads(buf[start:stop])
    except (ValueError, RecursionError):
        return 0
    kind = obj.get("kind") if isinstance(obj, dict) else None
    return _KIND_BY_NAME.get(kind.encode(), 0) if isinstance(kind, str) else 0


def pack_index(offsets: array, kinds: array) -> bytes:
    """The on-disk index words (see recorder.py) for every line, header included."""
    words = array("Q", offsets)
    if sys.byteorder == "big":
        words.byteswap()
    raw = bytearray(words.tobytes())
    raw[7::8] = kinds.tobytes()
    return bytes(raw)


def unpack_index(raw: bytes | mmap.mmap) -> tuple[array, array]:
    """Offsets and kind codes from index words, without a Python-level loop."""
    data = bytearray(raw)
    kinds = array("B", data[7::8])
    data[7::8] = bytes(len(kinds))
    offsets = array("Q")
    offsets.frombytes(data)
    if sys.byteorder == "big":
        offsets.byteswap()
    return offsets, kinds


def parse_header(line: bytes) -> TraceHeader:
    """The header object of line 0, checked for format, version and field types."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict) or obj.get("kind") != "header" or obj.get("format") != FORMAT:
        raise TraceError(TraceErrorReason.NOT_A_TRACE, "the first line is not a tvmm trace header")
    version = obj.get("version")
    if version != FORMAT_VERSION:
        raise TraceError(
            TraceErrorReason.UNSUPPORTED_VERSION,
            f"trace format version {version!r}; this reader knows version {FORMAT_VERSION}",
        )
    try:
        symbols = [(int(a), int(s), str(n)) for a, s, n in obj.get("symbols") or []]
        header = TraceHeader(
            guest=_typed(obj, "guest", str, "unknown"),
            level=_typed(obj, "level", str, "unknown"),
            seed=_typed(obj, "seed", int, 0),
            versions=_typed(obj, "versions", dict, {}),
            elf=_typed(obj, "elf", str, None),
            elf_sha256=_typed(obj, "elf_sha256", str, None),
            symbols=symbols,
            extra=_typed(obj, "extra", dict, {}),
        )
    except (TypeError, ValueError) as exc:
        raise TraceError(TraceErrorReason.CORRUPT_LINE, f"line 0 (header): {exc}", line=0) from None
    return header


def parse_event(line: bytes, line_no: int) -> TraceEvent:
    """One event line (without its newline); ``line_no`` only labels errors."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise TraceError(
            TraceErrorReason.CORRUPT_LINE, f"line {line_no}: not valid JSON ({exc})", line=line_no
        ) from None
    try:
        if not isinstance(obj, dict):
            raise TypeError("not a JSON object")
        icount = obj.get("icount")
        if icount is not None and not isinstance(icount, int):
            raise TypeError("icount is not an integer")
        return TraceEvent(
            Position(_typed(obj, "seq", int, line_no - 1), icount, _typed(obj, "vcpu", int, 0)),
            EventKind(obj.get("kind")),
            _typed(obj, "name", str, ""),
            _typed(obj, "inside", dict, None),
            _typed(obj, "outside", dict, None),
            _typed(obj, "t_ns", int, 0),
        )
    except (TypeError, ValueError) as exc:
        raise TraceError(
            TraceErrorReason.CORRUPT_LINE,
            f"line {line_no}: not a trace event ({exc})",
            line=line_no,
        ) from None


def _typed(obj: dict, key: str, kind: type, default: Any) -> Any:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key!r} is not {kind.__name__}")
    return value


class TraceReader:
    """Random access to the events of one trace file; ``len()`` excludes the header."""

    def __init__(
        self,
        path: Path | str,
        *,
        rebuild_index: bool = True,
        write_index: bool = True,
        allow_truncated: bool = False,
        progress: Callable[[int, int], None] | None = None,
        preview: int | None = None,
    ) -> None:
        """``allow_truncated``: a file cut inside its last line (a crashed run) opens with
        the whole lines before the cut, and ``truncation`` says where it stops; without
        it such a file is a TRUNCATED error.  A file cut inside its header is one either way.
        A trace whose recorder never finished (its index ends early) opens whole, with
        ``unfinished`` set and ``truncation`` saying so.  ``progress(done, total)`` hears
        how far an index rebuild has got, in bytes, and may raise to stop it.
        ``preview``: open only the whole lines in the first ``preview`` bytes (at least the
        header's line), scanned without the index: a first screen for the viewer while
        the whole index is rebuilt; ``previewing`` is then True and ``len()`` counts only
        those events."""
        self.path = Path(path)
        self.truncation: str | None = None  # where a cut-short recording stops, in words
        self.index_rebuilt = False  # True when the .idx file was missing or stale
        self.index_note: str | None = None  # why it was rebuilt
        self.index_written = False  # True when a rebuilt index was saved beside the trace
        self.unfinished = False  # True when the recorder never closed (killed or crashed)
        self.previewing = preview is not None  # only the trace's first lines are indexed
        self._progress = progress  # told the bytes scanned while an index is rebuilt
        self._fd = _open_regular(self.path)
        try:
            self._size = os.fstat(self._fd).st_size
            if self._size == 0:
                raise TraceError(TraceErrorReason.EMPTY_FILE, "the file is empty")
            self._mm = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
            first_nl = self._mm.find(b"\n")
            if first_nl < 0 and _HEADER_START.startswith(self._mm[: len(_HEADER_START)]):
                raise TraceError(TraceErrorReason.TRUNCATED, "the trace ends inside its header")
            self.header = parse_header(self._mm[: self._size if first_nl < 0 else first_nl])
            cut = None
            if self._mm[self._size - 1] != _NL:
                if not allow_truncated:
                    raise TraceError(
                        TraceErrorReason.TRUNCATED,
                        f"the last line is incomplete (the file ends at byte {self._size} "
                        "without a newline): the recording was cut short",
                    )
                cut = self._size
                self._size = self._mm.rfind(b"\n") + 1  # the whole lines before the cut
            if preview is not None:
                stop = max(preview, first_nl + 1)
                self._size = self._mm.rfind(b"\n", 0, min(stop, self._size)) + 1
                self._progress = None
                offsets, kinds = self._rebuild()
                cut = None  # the lines after the preview are not looked at
            else:
                offsets, kinds = self._load_index(rebuild_index, write_index)
            if self.unfinished and cut is None:
                events = len(kinds) - 1
                where = f"after event {events - 1:,}" if events else "before its first event"
                self.truncation = (
                    f"the recording stops {where}: its recorder never finished (the run "
                    f"was killed or crashed); all {events:,} events it wrote are shown"
                )
            if cut is not None:
                events = len(kinds) - 1
                self.truncation = (
                    f"the recording was cut short: the file ends at byte {cut:,} inside the "
                    f"line after event {events - 1:,}; the {events:,} whole events before "
                    f"the cut are shown ({cut - self._size:,} bytes of a partial line left out)"
                )
        except BaseException:
            self.close()
            raise
        offsets.append(self._size)  # sentinel: line L spans offsets[L]..offsets[L + 1]
        self._offsets = offsets
        self._kinds = kinds[1:]  # one code per event; the header's code is dropped
        self._filters: dict[frozenset[int], array] = {}

    # -- the columns -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._kinds)

    @property
    def kinds(self) -> array:
        """The kind code of every event (``events.CODE_KINDS``; 0 = unreadable line)."""
        return self._kinds

    @property
    def size(self) -> int:
        return self._size

    def kind(self, i: int) -> EventKind | None:
        return CODE_KINDS.get(self._kinds[i])

    def count_by_kind(self) -> dict[EventKind, int]:
        """Events per kind, counted on the kind column alone."""
        column = self._kinds.tobytes()
        return {kind: column.count(bytes([code])) for kind, code in KIND_CODES.items()}

    def indices(self, kinds: Iterable[EventKind] | None = None) -> array:
        """Event numbers of the given kinds, in order, from the kind column (no JSON parsed)."""
        if kinds is None:
            return array("Q", range(len(self)))
        codes = frozenset(KIND_CODES[EventKind(k)] for k in kinds)
        if codes not in self._filters:
            table = bytes(1 if c in codes else 0 for c in range(256))
            mask = self._kinds.tobytes().translate(table)
            if len(self._filters) >= 16:
                self._filters.clear()
            self._filters[codes] = array("Q", itertools.compress(range(len(mask)), mask))
        return self._filters[codes]

    def event_at_offset(self, byte_offset: int) -> int:
        """The event whose line holds ``byte_offset`` (-1 for the header)."""
        return bisect_right(self._offsets, byte_offset) - 2

    def offset(self, i: int) -> int:
        """Byte offset of event ``i``'s line in the trace."""
        return self._offsets[self._line(i)]

    block_bytes = _CHUNK  # the size of a range ``blocks`` yields (tests make it small)

    def blocks(self, start: int = 0, stop: int | None = None,
               chunk: int | None = None) -> Iterator[tuple[int, int]]:
        """Byte ranges covering events ``start..stop`` about ``chunk`` bytes each, for a
        regex pass over ``buffer`` that keeps memory bounded: each range runs from the
        newline before its first line to the newline before the next range's (so a pattern
        anchored on ``\\n{`` sees every line once), and the pages of a range are released
        once the caller asks for the next one."""
        stop = len(self) if stop is None else min(stop, len(self))
        if start >= stop:
            return
        chunk = chunk or self.block_bytes
        pos = self.offset(start) - 1
        end = self.offset(stop) - 1 if stop < len(self) else self._size - 1
        while pos < end:
            nxt = self._mm.find(b"\n", min(pos + chunk, end), end + 1)
            nxt = end if nxt < 0 else nxt
            yield pos, nxt
            _release(self._mm, pos, nxt)
            pos = nxt

    @property
    def buffer(self) -> mmap.mmap:
        """The whole trace, mapped read-only, for raw searches in worker threads."""
        return self._mm

    # -- the records -------------------------------------------------------------------

    def raw(self, i: int) -> bytes:
        """Event ``i``'s JSON text as stored, checked to be exactly one line."""
        line = self._line(i)
        start, stop = self._offsets[line], self._offsets[line + 1]
        data = os.pread(self._fd, stop - start + 1, start - 1)
        if len(data) != stop - start + 1 or data[0] != _NL or data[-1] != _NL:
            raise TraceError(
                TraceErrorReason.INDEX_MISMATCH,
                f"line {line}: the index does not point at a whole line (was the file changed?)",
                line=line,
            )
        return data[1:-1]

    def event(self, i: int) -> TraceEvent:
        """Event ``i`` (0 is the first event after the header), parsed from one read."""
        line = self._line(i)
        event = parse_event(self.raw(i), line)
        if KIND_CODES[event.kind] != self._kinds[line - 1]:
            raise TraceError(
                TraceErrorReason.INDEX_MISMATCH,
                f"line {line}: the index says {CODE_KINDS.get(self._kinds[line - 1])}, "
                f"the line says {event.kind.value}",
                line=line,
            )
        return event

    def iter_events(self, start: int = 0, stop: int | None = None) -> Iterator[TraceEvent]:
        """Events ``start..stop`` in order, read sequentially (for exporters and summaries)."""
        stop = len(self) if stop is None else min(stop, len(self))
        if start >= stop:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offsets[start + 1])
            for line in range(start + 1, stop + 1):
                yield parse_event(f.readline().rstrip(b"\n"), line)

    def close(self) -> None:
        mm = getattr(self, "_mm", None)
        if mm is not None and not mm.closed:
            mm.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _line(self, i: int) -> int:
        n = len(self._kinds)
        if not -n <= i < n:
            raise IndexError(f"event {i} out of range (the trace has {n} events)")
        return (i % n) + 1

    def _load_index(self, rebuild: bool, write: bool) -> tuple[array, array]:
        idx = index_path(self.path)
        stale = "the index is missing"
        try:
            with open(idx, "rb") as f:
                if rebuild and os.fstat(f.fileno()).st_size == 0:  # killed before its
                    self.unfinished = True  # first batch of index words: scan it all
                    return self._rebuild()
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    raw = mm[: self._whole_lines_of_index(mm)] if self._size < len(self._mm) \
                        else mm
                    stale = self._check_index(raw)
                    if stale is None:
                        return unpack_index(raw)
                    if rebuild and self._check_index(raw, prefix=True) is None:
                        return self._extend(*unpack_index(raw))
        except ValueError:  # mmap of an empty file
            stale = "the index is empty"
        except OSError:
            pass
        if not rebuild:
            raise TraceError(TraceErrorReason.INDEX_MISMATCH, f"{idx}: {stale}")
        offsets, kinds = self._rebuild()
        self.index_rebuilt = True
        self.index_note = stale
        if write:
            self.index_written = _write_atomically(idx, pack_index(offsets, kinds))
        return offsets, kinds

    def _extend(self, offsets: array, kinds: array) -> tuple[array, array]:
        """An index that ends before the trace: the recorder never reached ``close`` (see
        recorder.py), so at most a batch of lines is left to scan.  The index is not
        rewritten, so every reader learns the recording was cut short."""
        self.unfinished = True
        tail_offsets, tail_kinds = self._rebuild(self._mm.find(b"\n", offsets[-1]) + 1)
        offsets.extend(tail_offsets)
        kinds.extend(tail_kinds)
        return offsets, kinds

    def _whole_lines_of_index(self, raw: mmap.mmap) -> int:
        """Bytes of a cut-short trace's index that point at whole lines: the recorder may
        have written the entry of the line the cut fell in."""
        words = len(raw) // 8
        while words > 1:
            offset = unpack_index(raw[(words - 1) * 8 : words * 8])[0][0]
            if offset < self._size:
                break
            words -= 1
        return words * 8

    def _check_index(self, raw: mmap.mmap | bytes, *, prefix: bool = False) -> str | None:
        """Why the index cannot belong to this trace, or None; O(1) spot checks.  With
        ``prefix`` an index of the trace's first lines passes too."""
        if len(raw) % 8 or len(raw) < 8:
            return "the index is not a whole number of 8-byte words"
        last = unpack_index(raw[-8:])[0][0]
        if raw[:8] != bytes(8):
            return "the first index entry is not the header"
        if last >= self._size or (
            not prefix and self._mm.find(b"\n", last) != self._size - 1
        ):
            return "the index and the trace end at different lines"
        n = len(raw) // 8
        step = max(1, (n - 1) // _SAMPLES)
        for line in [*range(1, n, step), n - 1]:
            if line == 0:
                continue
            (prev, off), codes = unpack_index(raw[(line - 1) * 8 : (line + 1) * 8])
            if not prev < off < self._size or self._mm[off - 1] != _NL:
                return f"index entry {line} is not a line start"
            stop = self._mm.find(b"\n", off)
            if codes[1] != kind_code_of_line(self._mm, off, stop):
                return f"index entry {line} has the wrong kind"
        return None

    def _rebuild(self, pos: int = 0) -> tuple[array, array]:
        """Scan the mapped trace from line start ``pos`` chunk by chunk, releasing scanned
        pages to bound RSS; ``progress(done, total)`` is told the bytes scanned after each
        chunk (it may raise to stop the scan)."""
        offsets: array = array("Q")
        kinds: array = array("B")
        while pos < self._size:
            part_offsets, part_kinds, nxt = scan_lines(
                self._mm, pos, min(pos + _CHUNK, self._size)
            )
            offsets.extend(part_offsets)
            kinds.extend(part_kinds)
            _release(self._mm, pos, nxt)
            pos = nxt
            if self._progress is not None:
                self._progress(pos, self._size)
        return offsets, kinds


def _open_regular(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise TraceError(TraceErrorReason.MISSING_FILE, "no such file") from None
    except OSError as exc:
        raise TraceError(TraceErrorReason.UNREADABLE, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TraceError(TraceErrorReason.UNREADABLE, "not a regular file")
    return fd


def _release(mm: mmap.mmap, start: int, stop: int) -> None:
    """Tell the kernel the pages of ``mm[start:stop]`` are no longer needed by this process."""
    if not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    first = start - start % mmap.PAGESIZE
    length = (stop - first) - (stop - first) % mmap.PAGESIZE
    if length > 0:
        mm.madvise(mmap.MADV_DONTNEED, first, length)


def _write_atomically(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` via a temporary file; False if the directory is read-only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True
