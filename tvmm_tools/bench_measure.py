"""Benchmark: ``tvmm measure`` on a 256 MiB guest image against bare per-page SHA-384.

The image is a seeded ELF written by ``write_image`` that the real loader reads: a code
segment ending inside a page, a data segment of ``mib`` MiB of random bytes, and a bss
tail, so that file views, composed pages and zero pages are all measured.  Side by side,
interleaved, each round times

- ``sha384``: bare ``hashlib.sha384(page).digest()`` over the same page contents, held in
  memory (the honest baseline: the PAGE_INFO chain adds one small SHA-384 per page);
- ``measure``: what ``tvmm measure`` and every launch's plan compute: ``load_elf`` of the
  file, ``plan_launch``, ``predict`` (the launch digest, the VMSA page included);
- ``command``: ``tvmm measure --json`` in-process, the whole command (argument parsing,
  the ELF's own SHA-256 it prints, the JSON).

Each side is timed in CPU time (``time.process_time``: the machine is shared, and a
neighbour's burst would land on whichever side runs; the work is single-threaded and the
file is in the page cache, so CPU time is all of it).  Ratios are baseline time over tvmm
time (the throughput ratio), the median of the per-round ratios.  The target is ``ratio`` >= 0.8.  Prints one JSON line; ``--doc``
rewrites the ``bench_measure`` block of docs/performance.md with the figures.

    python -m tvmm_tools.bench_measure [--mib 256] [--rounds 6] [--doc]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import json
import os
import platform
import random
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from shim.launch import predict
from tvmm.abi.guest import PAGE_SIZE
from tvmm.abi.types import Level
from tvmm.cli import main as tvmm_main
from tvmm.guestimage import load_elf
from tvmm.launch_plan import plan_launch
from tvmm_tools.doc_block import write_block

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
TARGET_RATIO = 0.8
SEED = 0x5EB_5A9
CODE_GPA = 0x400000
CODE_BYTES = 3 * PAGE_SIZE + 1000  # ends inside a page: one composed page
BSS_PAGES = 16


@dataclass(frozen=True, slots=True)
class Image:
    """A written image: its entry, and its pages' contents in address order, in memory."""

    path: Path
    entry: int
    first_gpa: int
    contents: bytes  # every page the loader must produce, contiguous from first_gpa

    @property
    def pages(self) -> list[memoryview]:
        view = memoryview(self.contents)
        return [view[at : at + PAGE_SIZE] for at in range(0, len(view), PAGE_SIZE)]


@dataclass(frozen=True, slots=True)
class Segment:
    """A PT_LOAD segment to write: ``data`` at ``vaddr``, ``memsz`` bytes of memory."""

    vaddr: int
    data: bytes
    memsz: int
    executable: bool


def write_elf(path: Path, entry: int, segments: list[Segment]) -> None:
    """Write a static x86-64 ELF (ET_EXEC, no sections) with these PT_LOAD segments, each
    at a file offset congruent to its address modulo the page size, as linkers do."""
    header = struct.pack(
        "<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01".ljust(16, b"\0"),
        2, 62, 1, entry, 64, 0, 0, 64, 56, len(segments), 64, 0, 0,
    )  # ET_EXEC, EM_X86_64, the program headers right after this header
    offsets, cursor = [], 64 + 56 * len(segments)
    for seg in segments:
        cursor = ((cursor + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) + seg.vaddr % PAGE_SIZE
        offsets.append(cursor)
        cursor += len(seg.data)
    with open(path, "wb") as f:
        f.write(header)
        for seg, offset in zip(segments, offsets, strict=True):
            flags = 5 if seg.executable else 6  # R+X or R+W
            f.write(struct.pack("<IIQQQQQQ", 1, flags, offset, seg.vaddr, seg.vaddr,
                                len(seg.data), seg.memsz, PAGE_SIZE))
        for seg, offset in zip(segments, offsets, strict=True):
            f.seek(offset)
            f.write(seg.data)


def write_image(path: Path, mib: int, seed: int = SEED) -> Image:
    """Write the benchmark's image: code (RX) ending inside a page, then ``mib`` MiB of
    seeded data (RW) and a bss tail; return it with the contents the loader must give."""
    rng = random.Random(seed)
    code = rng.randbytes(CODE_BYTES)
    data = b"".join(rng.randbytes(1 << 20) for _ in range(mib))
    code_pages = -(-CODE_BYTES // PAGE_SIZE)
    data_gpa = CODE_GPA + code_pages * PAGE_SIZE
    write_elf(path, CODE_GPA, [
        Segment(CODE_GPA, code, len(code), True),
        Segment(data_gpa, data, len(data) + BSS_PAGES * PAGE_SIZE, False),
    ])
    contents = b"".join((
        code.ljust(code_pages * PAGE_SIZE, b"\0"), data, bytes(BSS_PAGES * PAGE_SIZE)
    ))
    return Image(path, CODE_GPA, CODE_GPA, contents)


def memory_for(image: Image) -> int:
    """Guest memory that holds the image (the initial RSP, measured, is its top)."""
    end = image.first_gpa + len(image.contents)
    return 1 << (end - 1).bit_length()


def _time_sha384(pages: list[memoryview]) -> float:
    sha384 = hashlib.sha384
    start = time.process_time()
    for page in pages:
        sha384(page).digest()
    return time.process_time() - start


def measure(path: Path, memory: int) -> bytes:
    """The launch digest, as ``tvmm measure`` computes it (at its default level, snp)."""
    return predict(plan_launch(load_elf(path), memory), Level.SNP).digest


def _time_measure(path: Path, memory: int) -> tuple[float, bytes]:
    start = time.process_time()
    digest = measure(path, memory)
    return time.process_time() - start, digest


def _time_command(path: Path, memory: int) -> tuple[float, str]:
    out = io.StringIO()
    start = time.process_time()
    with contextlib.redirect_stdout(out):
        code = tvmm_main(["measure", str(path), "--json", "--memory", hex(memory)])
    elapsed = time.process_time() - start
    if code != 0:
        raise RuntimeError(f"tvmm measure exited with {code}")
    return elapsed, json.loads(out.getvalue())["measurement"]


def _median_ratio(baseline: list[float], measured: list[float]) -> float:
    return round(statistics.median(b / m for b, m in zip(baseline, measured, strict=True)), 3)


def run(mib: int = 256, rounds: int = 6, seed: int = SEED) -> dict:
    """Write the image, then time the three sides interleaved, ``rounds`` times each."""
    with tempfile.TemporaryDirectory(prefix="tvmm-bench-measure-") as tmp:
        image = write_image(Path(tmp) / "image.elf", mib, seed)
        memory = memory_for(image)
        pages = image.pages
        baseline: list[float] = []
        measured: list[float] = []
        command: list[float] = []
        digests: set[str] = set()
        gc.disable()  # as timeit does: collector pauses would land on whichever loop runs
        try:
            for _ in range(rounds):
                baseline.append(_time_sha384(pages))
                elapsed, digest = _time_measure(image.path, memory)
                measured.append(elapsed)
                digests.add(digest.hex())
                elapsed, printed = _time_command(image.path, memory)
                command.append(elapsed)
                digests.add(printed)
                gc.collect()
        finally:
            gc.enable()
    if len(digests) != 1:
        raise RuntimeError(f"the digest changed between runs: {sorted(digests)}")
    size_mib = len(image.contents) / 2**20
    return {
        "bench": "launch_measurement",
        "image_mib": round(size_mib, 2),
        "pages": len(pages),
        "rounds": rounds,
        "sha384_s": round(sum(baseline), 2),
        "measure_s": round(sum(measured), 2),
        "sha384_mib_s": round(size_mib / min(baseline), 1),
        "measure_mib_s": round(size_mib / min(measured), 1),
        "command_mib_s": round(size_mib / min(command), 1),
        "ratio": _median_ratio(baseline, measured),
        "ratio_command": _median_ratio(baseline, command),
        "round_ratios": [round(b / m, 3) for b, m in zip(baseline, measured, strict=True)],
        "target_ratio": TARGET_RATIO,
        "digest": digests.pop(),
    }


def doc_block(result: dict) -> str:
    """The figures as docs/performance.md shows them."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    met = "met" if result["ratio"] >= TARGET_RATIO else "**missed**"
    return "\n".join([
        f"Written by `python -m tvmm_tools.bench_measure --doc` ({result['image_mib']} MiB image, "
        f"{result['pages']:,} pages, {result['rounds']} rounds; {_cpu()}, "
        f"Python {platform.python_version()}, load average {load:.1f} at the end):",
        "",
        "| side | best MiB/s | ratio to bare SHA-384 (median of rounds) |",
        "| --- | ---: | ---: |",
        f"| bare SHA-384 of the pages | {result['sha384_mib_s']} | 1 |",
        f"| measure: `load_elf` + `plan_launch` + `predict` | {result['measure_mib_s']} | "
        f"**{result['ratio']}** |",
        f"| the whole `tvmm measure --json` command | {result['command_mib_s']} | "
        f"{result['ratio_command']} |",
        "",
        f"Per-round ratios of measure: {', '.join(map(str, result['round_ratios']))}. "
        f"Target ratio ≥ {TARGET_RATIO}: {met}.",
    ])


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--doc", action="store_true", help=f"rewrite the block in {DOC}")
    args = parser.parse_args(argv)
    result = run(args.mib, args.rounds, args.seed)
    print(json.dumps(result))
    if args.doc:
        write_block(DOC, "bench_measure", doc_block(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
