"""The guest program behind a trace: symbols for addresses and code for disassembly.

Symbols come from the trace header (what the run knew) and, when the ELF named in the
header can be found, from its symbol table; code comes from the ELF's executable sections.
An ELF whose SHA-256 differs from the header's is not used for code: disassembling a
different build at a traced RIP would show instructions that never ran.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import capstone
from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from tvmm.abi.trace_events import TraceHeader

_MODES = {"EM_X86_64": capstone.CS_MODE_64, "EM_386": capstone.CS_MODE_32}
_MAX_INSN = 15  # longest x86 instruction
_LOOKBACK = 256  # bytes before RIP we are willing to decode from a symbol start


@dataclass(frozen=True, slots=True)
class Instruction:
    address: int
    raw: bytes
    mnemonic: str
    operands: str


class GuestImage:
    """Symbolises addresses and disassembles around them; empty when nothing is known."""

    def __init__(
        self,
        symbols: list[tuple[int, int, str]],
        code: list[tuple[int, bytes]] | None = None,
        mode: int = capstone.CS_MODE_64,
        note: str = "",
    ) -> None:
        self._symbols = sorted(symbols)
        self._starts = [s[0] for s in self._symbols]
        self._code = sorted(code or [])
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, mode)
        self.note = note  # why there is no disassembly, if there is none

    @classmethod
    def load(cls, header: TraceHeader, trace_dir: Path | None = None) -> GuestImage:
        """Symbols from the header, plus code and symbols from its ELF when it is usable."""
        symbols = list(header.symbols)
        if not header.elf:
            return cls(symbols, note="the trace names no guest ELF")
        path = _find(Path(header.elf), trace_dir)
        if path is None:
            return cls(symbols, note=f"guest ELF not found: {header.elf}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            return cls(symbols, note=f"cannot read {path}: {exc.strerror}")
        if header.elf_sha256 and hashlib.sha256(data).hexdigest() != header.elf_sha256:
            return cls(symbols, note=f"{path} is not the ELF that was traced (SHA-256 differs)")
        try:
            code, elf_symbols, mode = _read_elf(path)
        except (ELFError, ValueError, OSError) as exc:
            return cls(symbols, note=f"{path}: not a usable ELF ({exc})")
        known = {s[0] for s in symbols}
        symbols += [s for s in elf_symbols if s[0] not in known]
        if mode is None:
            return cls(symbols, note=f"{path}: not an x86 ELF; no disassembly")
        return cls(symbols, code, mode)

    @property
    def has_code(self) -> bool:
        return bool(self._code)

    def symbol_at(self, addr: int) -> tuple[int, int, str] | None:
        """The symbol containing ``addr`` (a zero size counts as reaching the next one)."""
        i = bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        start, size, name = self._symbols[i]
        limit = (
            start + size
            if size
            else (self._starts[i + 1] if i + 1 < len(self._starts) else start + 1)
        )
        return (start, size, name) if addr < limit else None

    def symbolize(self, addr: int) -> str | None:
        sym = self.symbol_at(addr)
        if sym is None:
            return None
        return sym[2] if addr == sym[0] else f"{sym[2]}+{addr - sym[0]:#x}"

    def disassemble_around(self, rip: int, before: int = 5, after: int = 8) -> list[Instruction]:
        """Up to ``before`` instructions before RIP, the one at RIP, and ``after`` more.

        Decoding starts at the enclosing symbol (x86 cannot be decoded backwards); if that
        does not land on RIP, decoding starts at RIP itself.
        """
        segment = self._segment(rip)
        if segment is None:
            return []
        base, blob = segment
        sym = self.symbol_at(rip)
        start = sym[0] if sym and base <= sym[0] and rip - sym[0] <= _LOOKBACK else rip
        end = min(base + len(blob), rip + (after + 1) * _MAX_INSN)
        insns = self._decode(blob[start - base : end - base], start)
        at = next((i for i, insn in enumerate(insns) if insn.address == rip), None)
        if at is None:
            insns = self._decode(blob[rip - base : end - base], rip)
            at = 0
        window = insns[max(0, at - before) : at + after + 1]
        pad = next((n for n, i in enumerate(window) if n > before and i.mnemonic == "int3"), None)
        return window if pad is None else window[: pad + 1]  # one int3 shows the padding

    def _decode(self, code: bytes, address: int) -> list[Instruction]:
        return [
            Instruction(a, bytes(code[a - address : a - address + n]), m, o)
            for a, n, m, o in self._cs.disasm_lite(code, address)
        ]

    def _segment(self, addr: int) -> tuple[int, bytes] | None:
        for base, blob in self._code:
            if base <= addr < base + len(blob):
                return base, blob
        return None


def _find(elf: Path, trace_dir: Path | None) -> Path | None:
    candidates = [elf] if elf.is_absolute() else [*([trace_dir / elf] if trace_dir else []), elf]
    if trace_dir is not None:
        candidates.append(trace_dir / elf.name)  # the ELF copied beside the trace
    return next((p for p in candidates if p.is_file()), None)


def _read_elf(
    path: Path,
) -> tuple[list[tuple[int, bytes]], list[tuple[int, int, str]], int | None]:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        mode = _MODES.get(elf["e_machine"])
        code = [
            (s["sh_addr"], s.data())
            for s in elf.iter_sections()
            if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and s["sh_type"] == "SHT_PROGBITS"
        ]
        symtab = elf.get_section_by_name(".symtab")
        symbols = [
            (sym["st_value"], sym["st_size"], sym.name)
            for sym in (symtab.iter_symbols() if symtab is not None else ())
            if sym.name
            and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE")
            and sym["st_shndx"] != "SHN_UNDEF"
        ]
    return code, symbols, mode
