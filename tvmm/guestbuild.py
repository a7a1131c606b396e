"""Build guests from C and assembly with the system C compiler, on demand, with a cache.

Guests are freestanding x86-64: no libc, no SSE (the vCPU saves only general-purpose
registers), linked at the image base by guests/runtime/guest.ld against the runtime.
The cache key is a hash of every input (sources, headers, flags, compiler version), so a
changed line rebuilds and an unchanged tree never does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# The guests' sources: tvmm/guests is a link to the repository's guests/, so the same path
# holds in a checkout, an editable install and a wheel (which carries the files themselves).
GUESTS_DIR = (Path(__file__).resolve().parent / "guests").resolve()
INCLUDE_DIR = GUESTS_DIR / "include"
RUNTIME = (GUESTS_DIR / "runtime" / "start.S", GUESTS_DIR / "runtime" / "runtime.c")
LINKER_SCRIPT = GUESTS_DIR / "runtime" / "guest.ld"
CFLAGS = (
    "-std=gnu11", "-O2", "-ffreestanding", "-fno-builtin", "-nostdlib", "-static", "-no-pie",
    "-fno-pic", "-fno-stack-protector", "-mno-red-zone", "-mgeneral-regs-only",
    "-fno-asynchronous-unwind-tables", "-Wall", "-Wextra", "-Wl,--build-id=none",
)


class GuestBuildError(RuntimeError):
    pass


def find_compiler() -> str:
    chosen = os.environ.get("CC")
    if chosen:  # the user's choice, or an error: never quietly another compiler
        if shutil.which(chosen):
            return chosen
        raise GuestBuildError(f"CC={chosen}: no such compiler on PATH")
    for candidate in ("gcc", "cc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    raise GuestBuildError(
        "no C compiler found: install gcc (e.g. `apt-get install gcc`) or set CC"
    )


def cache_dir() -> Path:
    if os.environ.get("TVMM_CACHE_DIR"):
        return Path(os.environ["TVMM_CACHE_DIR"])
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "tvmm" / "guests"


def _compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GuestBuildError(f"cannot run the C compiler {cc}: {exc}") from None
    return out.stdout.splitlines()[0] if out.stdout else cc


def build(sources: list[Path], output: Path | None = None, *, extra_include: list[Path] = ()
          ) -> Path:
    """Compile ``sources`` with the runtime into a guest ELF; returns its path."""
    for src in sources:
        if not src.is_file():
            raise GuestBuildError(f"no such source file: {src}")
    cc = find_compiler()
    includes = [INCLUDE_DIR, *extra_include, *{s.parent for s in sources}]
    digest = build_inputs(sources, extra_include=extra_include).sources_digest.hex()[:24]
    cached = cache_dir() / f"{sources[0].stem}-{digest}.elf"
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        cmd = [cc, *CFLAGS, *[f"-I{p}" for p in includes], f"-Wl,-T,{LINKER_SCRIPT}",
               "-o", str(tmp), *map(str, RUNTIME), *map(str, sources)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise GuestBuildError(f"guest build failed:\n{proc.stderr.strip()}")
        os.replace(tmp, cached)
    if output is None:
        return cached
    output.parent.mkdir(parents=True, exist_ok=True)
    # A new file renamed over the old one, never the old one rewritten in place: images are
    # read through a mapping of their file, which a truncation under it would turn into a
    # SIGBUS in whoever has it open.
    tmp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    shutil.copyfile(cached, tmp)
    os.replace(tmp, output)
    return output


@dataclass(frozen=True)
class BuildInputs:
    """What a build depends on: a transparency claim records it (tvmm transparency claim)."""

    sources_digest: bytes  # SHA-256 over the compiler's version, flags and every input file
    compiler: str
    flags: str


def build_inputs(sources: list[Path], *, extra_include: list[Path] = ()) -> BuildInputs:
    """The build's inputs and their digest (also the cache key: same digest, same ELF)."""
    for src in sources:
        if not src.is_file():
            raise GuestBuildError(f"no such source file: {src}")
    cc = find_compiler()
    version = _compiler_version(cc)
    includes = [INCLUDE_DIR, *extra_include, *{s.parent for s in sources}]
    key = hashlib.sha256()
    key.update(version.encode())
    key.update(" ".join(CFLAGS).encode())
    for path in (*RUNTIME, LINKER_SCRIPT, *sources, *_headers(includes)):
        key.update(str(path.name).encode())
        key.update(path.read_bytes())
    return BuildInputs(key.digest(), version, " ".join(CFLAGS))


def _headers(dirs: list[Path]) -> list[Path]:
    return sorted({h for d in dirs if d.is_dir() for h in d.glob("*.h")})
