"""A guest image: an ELF file read with pyelftools into the pages that launch adds.

Public data (the image is what gets measured), used by the host to launch and by the
owner to predict the measurement; symbols are kept so that traces can name functions.

The file is mapped, not read, and the image's pages are views of the mapping: a page that
lies wholly in one segment's file data is never copied, and a run of such pages is one
view (a chunk).  Only pages a segment covers in part, or several segments cover, are
composed in memory, one page each; pages with no file data share zeros.  Loading and
measuring thus cost the hashing of the pages and little else, at any image size (joining
a growing run once per page made a 32 MiB image take 46 s).  The mapping lives as long as
the image: the file must not be truncated in place while an image of it is in use (the
sample cache and the perimeter's copies are replaced or unlinked, never truncated).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from tvmm.abi.guest import PAGE_SIZE

PF_X = 1
MAX_IMAGE_BYTES = 1 << 30  # the largest guest memory CREATE_VM accepts
_MASK = PAGE_SIZE - 1


class GuestImageError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ImagePage:
    """One page of the image, copied out (for tools that look at single pages)."""

    gpa: int
    data: bytes
    executable: bool


@dataclass(frozen=True, slots=True)
class ImageChunk:
    """Consecutive whole pages at ``gpa`` with one source: a view of the mapped file, of
    zeros, or of a composed page.  ``data`` is a whole number of pages."""

    gpa: int
    data: memoryview | bytes
    executable: bool


@dataclass(frozen=True, slots=True)
class ImageRun:
    """Contiguous pages with the same executability, as the chunks that hold them: one
    ADD_PAGES call."""

    gpa: int
    parts: tuple[memoryview | bytes, ...]
    executable: bool

    @property
    def count(self) -> int:
        return sum(len(part) for part in self.parts) // PAGE_SIZE


@dataclass(frozen=True, slots=True)
class GuestImage:
    name: str
    path: Path
    entry: int
    chunks: tuple[ImageChunk, ...]  # in address order, not overlapping
    symbols: tuple[tuple[int, int, str], ...]
    file: bytes | mmap.mmap  # the ELF file as loaded (its identity is sha256)

    @property
    def sha256(self) -> str:
        """SHA-256 of the ELF file, computed when asked (only some outputs show it)."""
        return hashlib.sha256(self.file).hexdigest()

    @property
    def page_count(self) -> int:
        return sum(len(chunk.data) for chunk in self.chunks) // PAGE_SIZE

    @property
    def pages(self) -> tuple[ImagePage, ...]:
        """Every page, copied out: for tools; launch and measurement use ``runs``."""
        return tuple(
            ImagePage(chunk.gpa + at, bytes(chunk.data[at : at + PAGE_SIZE]), chunk.executable)
            for chunk in self.chunks
            for at in range(0, len(chunk.data), PAGE_SIZE)
        )

    def with_pages(self, pages: tuple[ImagePage, ...], name: str) -> GuestImage:
        """The same image with these pages instead (a tampered copy, say)."""
        chunks = tuple(ImageChunk(p.gpa, p.data, p.executable) for p in pages)
        return GuestImage(name, self.path, self.entry, chunks, self.symbols, self.file)

    def runs(self) -> list[ImageRun]:
        """Contiguous runs of pages with the same executability, without copying a page."""
        out: list[ImageRun] = []
        end = -1
        for chunk in self.chunks:
            if out and end == chunk.gpa and out[-1].executable == chunk.executable:
                last = out[-1]
                out[-1] = ImageRun(last.gpa, (*last.parts, chunk.data), last.executable)
            else:
                out.append(ImageRun(chunk.gpa, (chunk.data,), chunk.executable))
            end = chunk.gpa + len(chunk.data)
        return out

    def symbolize(self, addr: int) -> str | None:
        for start, size, name in self.symbols:
            if start <= addr < start + max(size, 1):
                return f"{name}+{addr - start:#x}" if addr != start else name
        return None

    def symbol(self, name: str) -> int:
        for start, _size, sym in self.symbols:
            if sym == name:
                return start
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class _Segment:
    """A PT_LOAD segment's memory range and where its file bytes are."""

    index: int
    vaddr: int
    memsz: int
    filesz: int  # bytes actually in the file (a short file gives fewer)
    offset: int
    executable: bool

    @property
    def first(self) -> int:  # first page
        return self.vaddr & ~_MASK

    @property
    def end(self) -> int:  # end of the last page
        return (self.vaddr + self.memsz + _MASK) & ~_MASK

    @property
    def whole_file_pages(self) -> tuple[int, int]:
        """[start, end) of the pages that lie wholly in the file bytes (may be empty)."""
        return (self.vaddr + _MASK) & ~_MASK, (self.vaddr + self.filesz) & ~_MASK

    @property
    def zero_from(self) -> int:
        """Start of the pages with none of the file bytes."""
        return (self.vaddr + self.filesz + _MASK) & ~_MASK if self.filesz else self.first


def load_elf(path: Path | str, name: str | None = None) -> GuestImage:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw: bytes | mmap.mmap = (
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            )
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise GuestImageError(f"cannot read {path}: {why}") from None
    try:
        elf = ELFFile(raw)  # an mmap is a file-like object; pyelftools reads headers only
        if elf.get_machine_arch() != "x64" or elf["e_type"] != "ET_EXEC":
            raise GuestImageError(f"{path} is not a static x86-64 executable")
        segments = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            vaddr, memsz, filesz, offset = (
                seg["p_vaddr"], seg["p_memsz"], seg["p_filesz"], seg["p_offset"]
            )
            if filesz > memsz:
                raise GuestImageError(f"{path}: a segment has more file bytes than memory")
            if vaddr + memsz > 1 << 64:
                raise GuestImageError(f"{path}: a segment ends beyond the 64-bit space")
            filesz = max(0, min(filesz, len(raw) - offset))
            segments.append(
                _Segment(len(segments), vaddr, memsz, filesz, offset, bool(seg["p_flags"] & PF_X))
            )
        symbols = []
        symtab = elf.get_section_by_name(".symtab")
        if symtab is not None:
            for sym in symtab.iter_symbols():
                if sym.name and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE"):
                    if sym["st_value"]:
                        symbols.append((sym["st_value"], sym["st_size"], sym.name))
        entry = elf["e_entry"]
    except (ELFError, KeyError, ValueError, IndexError, OSError) as exc:
        if isinstance(exc, GuestImageError):
            raise
        raise GuestImageError(f"{path} is not a readable ELF file: {exc}") from None
    if not segments:
        raise GuestImageError(f"{path} has nothing to load")
    if sum(s.end - s.first for s in segments) > MAX_IMAGE_BYTES:
        raise GuestImageError(f"{path} loads more than {MAX_IMAGE_BYTES >> 20} MiB")
    return GuestImage(
        name=name or path.stem,
        path=path,
        entry=entry,
        chunks=tuple(_chunks(memoryview(raw), segments)),
        symbols=tuple(sorted(symbols)),
        file=raw,
    )


def _chunks(raw: memoryview, segments: list[_Segment]) -> Iterator[ImageChunk]:
    """The image's pages in address order, as the fewest views the segments allow.

    The page boundaries where some segment's kind of page changes cut the address space
    into intervals; in each, every page is covered by the same segments in the same way.
    One segment's whole file pages are a view of the file, its pages without file bytes are
    zeros, and anything else (a page the segment covers in part, or a page of several
    segments) is composed page by page: zeros, then each segment's bytes in file order.
    """
    points: set[int] = set()
    for s in segments:
        points.update((s.first, s.end, *s.whole_file_pages, s.zero_from))
    cuts = sorted(points)
    starts = sorted(segments, key=lambda s: s.first)
    active: dict[int, _Segment] = {}
    nxt = 0
    for a, b in zip(cuts, cuts[1:], strict=False):
        while nxt < len(starts) and starts[nxt].first <= a:
            active[starts[nxt].index] = starts[nxt]
            nxt += 1
        for index in [i for i, s in active.items() if s.end <= a]:
            del active[index]
        if not active:
            continue
        covering = sorted(active.values(), key=lambda s: s.index)
        executable = any(s.executable for s in covering)
        if len(covering) == 1:
            s = covering[0]
            lo, hi = s.whole_file_pages
            if lo <= a and b <= hi:
                at = s.offset + a - s.vaddr
                yield ImageChunk(a, raw[at : at + b - a], executable)
                continue
            if s.zero_from <= a:
                yield ImageChunk(a, bytes(b - a), executable)
                continue
        for gpa in range(a, b, PAGE_SIZE):
            yield ImageChunk(gpa, _compose(raw, covering, gpa), executable)


def _compose(raw: memoryview, covering: list[_Segment], gpa: int) -> bytes:
    page = bytearray(PAGE_SIZE)
    for s in covering:
        lo, hi = max(gpa, s.vaddr), min(gpa + PAGE_SIZE, s.vaddr + s.filesz)
        if lo < hi:
            at = s.offset + lo - s.vaddr
            page[lo - gpa : hi - gpa] = raw[at : at + hi - lo]
    return bytes(page)
