"""A guest image: an ELF file read with pyelftools into the pages that launch adds.

Public data (the image is what gets measured), used by the host to launch and by the
owner to predict the measurement; symbols are kept so that traces can name functions.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from tvmm.abi.guest import PAGE_SIZE

PF_X = 1


class GuestImageError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ImagePage:
    gpa: int
    data: bytes
    executable: bool


@dataclass(frozen=True, slots=True)
class GuestImage:
    name: str
    path: Path
    entry: int
    pages: tuple[ImagePage, ...]
    symbols: tuple[tuple[int, int, str], ...]
    sha256: str

    def runs(self) -> list[tuple[int, bytes, bool]]:
        """Contiguous runs of pages with the same executability: (gpa, data, executable)."""
        out: list[tuple[int, bytes, bool]] = []
        for page in self.pages:
            if out and out[-1][0] + len(out[-1][1]) == page.gpa and out[-1][2] == page.executable:
                gpa, data, ex = out[-1]
                out[-1] = (gpa, data + page.data, ex)
            else:
                out.append((page.gpa, page.data, page.executable))
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


def load_elf(path: Path | str, name: str | None = None) -> GuestImage:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GuestImageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        elf = ELFFile(io.BytesIO(raw))
        if elf.get_machine_arch() != "x64" or elf["e_type"] != "ET_EXEC":
            raise GuestImageError(f"{path} is not a static x86-64 executable")
        pages: dict[int, bytearray] = {}
        executable: set[int] = set()
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            vaddr, memsz, data = seg["p_vaddr"], seg["p_memsz"], seg.data()
            for gpa in range(vaddr & ~(PAGE_SIZE - 1), vaddr + memsz, PAGE_SIZE):
                pages.setdefault(gpa, bytearray(PAGE_SIZE))
                if seg["p_flags"] & PF_X:
                    executable.add(gpa)
            pos = 0
            while pos < len(data):
                addr = vaddr + pos
                page, off = addr & ~(PAGE_SIZE - 1), addr & (PAGE_SIZE - 1)
                n = min(PAGE_SIZE - off, len(data) - pos)
                pages[page][off : off + n] = data[pos : pos + n]
                pos += n
        symbols = []
        symtab = elf.get_section_by_name(".symtab")
        if symtab is not None:
            for sym in symtab.iter_symbols():
                if sym.name and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE"):
                    if sym["st_value"]:
                        symbols.append((sym["st_value"], sym["st_size"], sym.name))
        entry = elf["e_entry"]
    except (ELFError, KeyError, ValueError, IndexError) as exc:
        if isinstance(exc, GuestImageError):
            raise
        raise GuestImageError(f"{path} is not a readable ELF file: {exc}") from None
    if not pages:
        raise GuestImageError(f"{path} has nothing to load")
    return GuestImage(
        name=name or path.stem,
        path=path,
        entry=entry,
        pages=tuple(ImagePage(g, bytes(pages[g]), g in executable) for g in sorted(pages)),
        symbols=tuple(sorted(symbols)),
        sha256=hashlib.sha256(raw).hexdigest(),
    )
