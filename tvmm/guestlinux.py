"""A Linux program as a guest image: the personality (guests/libos) with a root file system.

Public-image side, like tvmm.guestbuild: everything here is measured at launch, so the owner
rebuilds the same bytes and predicts the digest (``tvmm measure --program``).  The image is
the personality's ELF with one more PT_LOAD segment, read-only at ROOTFS_BASE, holding the
root file system: the program, the ``--file`` files, the directories they need, and the
program's argument and environment vectors (measured too: the host cannot change what the
program is asked to do).  Format: guests/libos/libos.h (struct rfs_header, rfs_entry).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from tvmm import guestbuild
from tvmm.guestimage import GuestImage

LIBOS_DIR = guestbuild.GUESTS_DIR / "libos"
LIBOS_SOURCES = tuple(LIBOS_DIR / name for name in
                      ("libos.c", "entry.S", "fs.c", "mm.c", "syscalls.c"))
PAGE = 0x1000
PROG_BASE = 0x400000
ROOTFS_BASE = 0x2000000  # mirrors libos.h: programs load in [PROG_BASE, ROOTFS_BASE)
RFS_MAGIC = 0x3153464F53554E4C  # "LNUSOFS1"
_HEADER = struct.Struct("<QQIIIIQ")
_ENTRY = struct.Struct("<QQQII")
S_IFDIR, S_IFREG = 0o040000, 0o100000
DEFAULT_HEAP = 32 << 20  # the mmap area and the program's stack, after the root file system
MAX_MEMORY = 1 << 30  # the largest guest memory CREATE_VM accepts
ENVIRONMENT = ("PATH=/bin", "HOME=/", "PWD=/")
DIRECTORIES = ("/", "/bin", "/dev", "/tmp", "/run", "/run/secrets")


LOG_PREFIX = "tvmm-linux: "  # the personality's own console lines (tvmm run: stderr)
# Its line at the program's end (guests/libos/syscalls.c, report_unsupported).
_UNSUPPORTED = re.compile(r"^tvmm-linux: unsupported system calls made: (\d+) \((.*)\)$",
                          re.MULTILINE)
_ITEM = re.compile(r"^(\w+) (\d+)$")


def unsupported_calls(console: str) -> dict[str, int] | None:
    """The calls the personality answered -ENOSYS, from its line at the program's end:
    ``{"total": N, name: count, ...}`` (names that did not fit the line are in the total
    only), or None when the program made none (or did not end by exit or kill)."""
    found = _UNSUPPORTED.findall(console)
    if not found:
        return None
    total, items = found[-1]
    counts = {"total": int(total)}
    for item in items.split(", "):
        if (m := _ITEM.match(item)) is not None:
            counts[m[1]] = counts.get(m[1], 0) + int(m[2])
    return counts


class LinuxImageError(ValueError):
    """A program or file the Linux personality cannot run: one line for the user."""


@dataclass(frozen=True, slots=True)
class FileSpec:
    host: Path
    guest: str

    @classmethod
    def parse(cls, text: str) -> FileSpec:
        host, sep, guest = text.rpartition(":")
        if not sep or not host or not guest:
            raise LinuxImageError(f"--file {text}: expected HOST:GUEST (e.g. in.bin:/data/in)")
        if not guest.startswith("/"):
            raise LinuxImageError(f"--file {text}: the guest path must be absolute")
        path = Path(host)
        if not path.is_file():
            raise LinuxImageError(f"--file {text}: no such file {host}")
        return cls(path, str(PurePosixPath(guest)))


def check_program(path: Path) -> None:
    """One clear line unless ``path`` is a static x86-64 Linux executable (or static-pie)
    whose segments fit below the root file system."""
    try:
        with open(path, "rb") as f:
            head = f.read(5)
            if head[:4] != b"\x7fELF":
                raise LinuxImageError(f"{path}: not an ELF executable")
            if head[4] == 1:
                raise LinuxImageError(f"{path}: a 32-bit ELF: build for x86-64")
            f.seek(0)
            elf = ELFFile(f)
            if elf.get_machine_arch() != "x64":
                raise LinuxImageError(f"{path}: not an x86-64 ELF ({elf.get_machine_arch()})")
            if elf["e_type"] not in ("ET_EXEC", "ET_DYN"):
                raise LinuxImageError(f"{path}: not an executable ({elf['e_type']})")
            bias = PROG_BASE if elf["e_type"] == "ET_DYN" else 0
            loads = []
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_INTERP":
                    raise LinuxImageError(f"{path}: dynamically linked: build with -static")
                if seg["p_type"] == "PT_LOAD" and seg["p_memsz"]:
                    loads.append((seg["p_vaddr"] + bias, seg["p_memsz"]))
    except OSError as exc:
        raise LinuxImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ELFError, KeyError, ValueError, struct.error) as exc:
        if isinstance(exc, LinuxImageError):
            raise
        raise LinuxImageError(f"{path}: not a readable ELF file: {exc}") from None
    if not loads:
        raise LinuxImageError(f"{path}: nothing to load")
    for vaddr, memsz in loads:
        if vaddr < PROG_BASE or vaddr + memsz > ROOTFS_BASE:
            raise LinuxImageError(
                f"{path}: a segment at {vaddr:#x} lies outside the program area "
                f"{PROG_BASE:#x}-{ROOTFS_BASE:#x}")


def symbolize(program: Path, rip: int) -> str | None:
    """``rip`` as function+offset in ``program``'s symbol table (a static-pie program is
    loaded at PROG_BASE), "the Linux personality" inside it, or None."""
    if rip < PROG_BASE:
        return "in the Linux personality"
    try:
        with open(program, "rb") as f:
            elf = ELFFile(f)
            at = rip - (PROG_BASE if elf["e_type"] == "ET_DYN" else 0)
            symtab = elf.get_section_by_name(".symtab")
            for sym in symtab.iter_symbols() if symtab is not None else ():
                start, size = sym["st_value"], sym["st_size"]
                if sym["st_info"]["type"] == "STT_FUNC" and start <= at < start + size:
                    return sym.name if at == start else f"{sym.name}+{at - start:#x}"
    except (OSError, ELFError, KeyError, ValueError):
        return None
    return None


def pack_rootfs(program: Path, args: list[str], files: list[FileSpec]) -> bytes:
    """The root file system image, as the personality reads it at ROOTFS_BASE."""
    guest_program = f"/bin/{program.name}"
    contents: dict[str, bytes | None] = {d: None for d in DIRECTORIES}
    contents[guest_program] = program.read_bytes()
    for spec in files:
        try:
            contents[spec.guest] = spec.host.read_bytes()
        except OSError as exc:
            raise LinuxImageError(f"--file {spec.host}: {exc.strerror or exc}") from None
    for path in list(contents):  # every parent of a file is a directory
        for parent in PurePosixPath(path).parents:
            if contents.get(str(parent), None) is not None:
                raise LinuxImageError(f"{parent} is a file and a directory")
            contents.setdefault(str(parent), None)
    names = sorted(contents)
    argv = [guest_program, *args]
    strings = bytearray()
    offsets: dict[str, int] = {}

    def string(text: str) -> int:
        if text not in offsets:
            offsets[text] = len(strings)
            strings.extend(text.encode() + b"\0")
        return offsets[text]

    for text in (*names, *argv, *ENVIRONMENT):
        if "\0" in text:
            raise LinuxImageError(f"{text!r}: a NUL byte in a path or argument")
        string(text)
    vectors_at = _HEADER.size + _ENTRY.size * len(names)
    strings_at = vectors_at + 8 * (len(argv) + len(ENVIRONMENT))
    data_at = _align(strings_at + len(strings), 64)
    entries, data = bytearray(), bytearray()
    for name in names:
        blob = contents[name]
        offset = data_at + len(data)
        mode = S_IFDIR | 0o755 if blob is None else S_IFREG | 0o755
        entries += _ENTRY.pack(strings_at + offsets[name], offset, len(blob or b""), mode, 0)
        if blob:
            data += blob
            data += bytes(_align(len(data), 64) - len(data))
    vectors = b"".join(struct.pack("<Q", strings_at + offsets[t]) for t in (*argv, *ENVIRONMENT))
    size = data_at + len(data)
    header = _HEADER.pack(RFS_MAGIC, size, len(names), names.index(guest_program), len(argv),
                          len(ENVIRONMENT), vectors_at)
    image = header + entries + vectors + strings
    return bytes(image + bytes(data_at - len(image)) + data)


@dataclass(frozen=True, slots=True)
class ProgramMap:
    """Where the program of a Linux image lies once the personality has loaded it: its
    function symbols and its code and data pages (guest physical, identity mapped)."""

    symbols: tuple[tuple[int, int, str], ...]
    code: tuple[int, ...]  # executable pages that hold a function
    data: tuple[int, ...]  # its other loaded pages (read-only data, data, bss)


def program_map(image: GuestImage) -> ProgramMap | None:
    """The program inside a Linux image, read from its public root file system as any
    reader of the image can (None for an image without one)."""
    rootfs = _bytes_at(image, ROOTFS_BASE, _HEADER.size)
    if rootfs is None:
        return None
    magic, size, count, program, *_ = _HEADER.unpack(rootfs)
    if magic != RFS_MAGIC or not 0 <= program < count:
        return None
    entry = _bytes_at(image, ROOTFS_BASE + _HEADER.size + _ENTRY.size * program, _ENTRY.size)
    if entry is None:
        return None
    _name, offset, length, _mode, _pad = _ENTRY.unpack(entry)
    blob = _bytes_at(image, ROOTFS_BASE + offset, length)
    if blob is None:
        return None
    try:
        elf = ELFFile(io.BytesIO(blob))
        bias = PROG_BASE if elf["e_type"] == "ET_DYN" else 0
        code, data = set(), set()
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_memsz"]:
                start = (seg["p_vaddr"] + bias) & ~(PAGE - 1)
                pages = range(start, seg["p_vaddr"] + bias + seg["p_memsz"], PAGE)
                (code if seg["p_flags"] & 1 else data).update(pages)
        symtab = elf.get_section_by_name(".symtab")
        symbols = tuple(sorted(
            (sym["st_value"] + bias, sym["st_size"], sym.name)
            for sym in (symtab.iter_symbols() if symtab is not None else ())
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"]))
    except (ELFError, KeyError, ValueError, struct.error):
        return None
    held = {p for start, n, _ in symbols for p in range(start & ~(PAGE - 1), start + max(n, 1),
                                                        PAGE)}
    return ProgramMap(symbols, tuple(sorted(code & held)), tuple(sorted(data - code)))


def _bytes_at(image: GuestImage, gpa: int, length: int) -> bytes | None:
    """``length`` bytes of the image at ``gpa`` (None where the image has none)."""
    out = bytearray()
    for chunk in image.chunks:
        end = chunk.gpa + len(chunk.data)
        at = gpa + len(out)
        if chunk.gpa <= at < end:
            out += bytes(chunk.data[at - chunk.gpa : at - chunk.gpa + length - len(out)])
        if len(out) == length:
            return bytes(out)
    return None


def memory_for(rootfs_size: int, heap: int = DEFAULT_HEAP) -> int:
    """Guest memory for a root file system of ``rootfs_size`` bytes: it is measured (the
    initial RSP), so the owner computes it the same way."""
    memory = ROOTFS_BASE + _align(rootfs_size, 2 << 20) + _align(heap, 2 << 20)
    if memory > MAX_MEMORY:
        raise LinuxImageError(
            f"the files need {memory >> 20} MiB of guest memory; at most {MAX_MEMORY >> 20}")
    return memory


@dataclass(frozen=True, slots=True)
class LinuxImage:
    path: Path  # the ELF to launch: the personality with the root file system
    memory: int
    rootfs_size: int


def build(program: Path | str, args: list[str] = (), files: list[FileSpec] = (),
          heap: int = DEFAULT_HEAP) -> LinuxImage:
    """The launchable image for ``program args`` with ``files``, in the build cache."""
    program = Path(program)
    if not program.is_file():
        raise LinuxImageError(f"no such program: {program}")
    check_program(program)
    rootfs = pack_rootfs(program, list(args), list(files))
    memory = memory_for(len(rootfs), heap)
    libos = guestbuild.build(list(LIBOS_SOURCES))
    key = hashlib.sha256(libos.read_bytes() + rootfs).hexdigest()[:24]
    out = guestbuild.cache_dir() / f"linux-{program.name}-{key}.elf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}-{threading.get_ident()}")
        tmp.write_bytes(with_segment(libos.read_bytes(), rootfs, ROOTFS_BASE))
        os.replace(tmp, out)
    return LinuxImage(out, memory, len(rootfs))


PROGRAM_CFLAGS = ("-static", "-O2")


def build_program(source: Path, libraries: tuple[str, ...] = (), packages: tuple[str, ...] = ()
                  ) -> Path:
    """``source`` built as a static Linux program (``gcc -static``) against the system's
    static ``libraries`` (``gcrypt`` for libgcrypt.a), in the build cache: the key hashes
    the compiler's version, the flags, the source and every library archive, so a library
    update rebuilds.  A missing archive is one line naming ``packages`` to install."""
    if not source.is_file():
        raise LinuxImageError(f"no such source file: {source}")
    cc = guestbuild.find_compiler()
    key = hashlib.sha256()
    key.update(guestbuild._compiler_version(cc).encode())
    key.update(" ".join((*PROGRAM_CFLAGS, *libraries)).encode())
    key.update(source.read_bytes())
    for lib in libraries:
        archive = _archive(cc, lib)
        if archive is None:
            need = " ".join(packages) or f"the static lib{lib}"
            raise LinuxImageError(f"{source.name}: lib{lib}.a not found: install {need} "
                                  f"(apt-get install {need})")
        key.update(archive.read_bytes())
    out = guestbuild.cache_dir() / f"prog-{source.stem}-{key.hexdigest()[:24]}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}-{threading.get_ident()}")
        cmd = [cc, *PROGRAM_CFLAGS, "-o", str(tmp), str(source), *[f"-l{x}" for x in libraries]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise LinuxImageError(f"{source.name}: build failed:\n{proc.stderr.strip()}")
        os.replace(tmp, out)
    return out


def _archive(cc: str, lib: str) -> Path | None:
    """Where the compiler finds ``lib<lib>.a``, or None."""
    proc = subprocess.run([cc, f"-print-file-name=lib{lib}.a"], capture_output=True, text=True)
    path = Path(proc.stdout.strip())
    return path if proc.returncode == 0 and path.is_absolute() and path.is_file() else None


def with_segment(elf: bytes, data: bytes, vaddr: int) -> bytes:
    """``elf`` with ``data`` appended as one more read-only PT_LOAD at ``vaddr``: the data
    goes page-aligned after the file, the program headers (old ones, then the new one)
    after it, and the ELF header points at them.  Sections stay where they were."""
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    old = elf[phoff : phoff + phentsize * phnum]
    data_at = _align(len(elf), PAGE)
    table_at = _align(data_at + len(data), 8)
    phdr = struct.pack("<IIQQQQQQ", 1, 4, data_at, vaddr, vaddr, len(data), len(data), PAGE)
    out = bytearray(elf)
    out += bytes(data_at - len(out)) + data + bytes(table_at - data_at - len(data))
    out += old + phdr
    struct.pack_into("<Q", out, 0x20, table_at)
    struct.pack_into("<H", out, 0x38, phnum + 1)
    return bytes(out)


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to
