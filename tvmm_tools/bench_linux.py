"""Linux program benchmark: `busybox sha256sum` of N MiB in tvmm at shim (the personality
inside the guest, the whole TEE around it) against the same binary in bare Unicorn with a
minimal syscall layer in Python (nothing of tvmm), side by side in one run.

    python -m tvmm_tools.bench_linux [--mib 16] [--write-docs]

Both sides hash the same random bytes (seeded) and must print the same digest as hashlib;
each side's figure is its run's CPU time in this process (loading and tvmm's launch
are outside it; the launch is reported beside), which a busy machine's neighbours do not
inflate.  Prints JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

import unicorn as uc_mod
from elftools.elf.elffile import ELFFile
from unicorn import x86_const as X

from tvmm import guestlinux
from tvmm.abi.types import Level
from tvmm.guestimage import load_elf
from tvmm.machine import boot
from tvmm_tools.doc_block import replace_block

BUSYBOX = Path("/bin/busybox")
DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BLOCK = "bench-linux"
MEMORY = 256 << 20
STACK_TOP = MEMORY - 0x10000
ENOSYS = 38


class BareLinux:
    """busybox on plain Unicorn: its segments at their addresses, a Linux initial stack, and
    the dozen system calls a `sha256sum FILE` makes, answered by a Python hook."""

    def __init__(self, program: Path, argv: list[str], files: dict[str, bytes]) -> None:
        self.uc = uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_64)
        uc.mem_map(0, MEMORY)
        raw = program.read_bytes()
        elf = ELFFile(open(program, "rb"))
        end, phdr = 0, 0
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD":
                data = raw[seg["p_offset"] : seg["p_offset"] + seg["p_filesz"]]
                uc.mem_write(seg["p_vaddr"], data)
                end = max(end, seg["p_vaddr"] + seg["p_memsz"])
                if seg["p_offset"] == 0:
                    phdr = seg["p_vaddr"] + elf["e_phoff"]
        self.entry = elf["e_entry"]
        self.brk = (end + 0xFFF) & ~0xFFF
        self.mmap_next = 128 << 20
        self.files = files
        self.fds: dict[int, list] = {}
        self.out = bytearray()
        self.status: int | None = None
        self.sp = self._stack(argv, phdr, elf["e_phnum"])
        uc.hook_add(uc_mod.UC_HOOK_INSN, self._syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)

    def _stack(self, argv: list[str], phdr: int, phnum: int) -> int:
        strings, ptrs = bytearray(), []
        base = STACK_TOP - 4096
        for arg in argv:
            ptrs.append(base + len(strings))
            strings += arg.encode() + b"\0"
        rnd = base + len(strings)
        strings += bytes(16)
        self.uc.mem_write(base, bytes(strings))
        aux = [3, phdr, 4, 56, 5, phnum, 6, 4096, 9, self.entry, 25, rnd, 0, 0]
        words = [len(argv), *ptrs, 0, 0, *aux]
        sp = (base - 8 * len(words) - 64) & ~15
        self.uc.mem_write(sp, struct.pack(f"<{len(words)}Q", *words))
        return sp

    def _cstr(self, addr: int) -> str:
        return bytes(self.uc.mem_read(addr, 256)).split(b"\0")[0].decode()

    def _syscall(self, uc, _data) -> None:
        nr = uc.reg_read(X.UC_X86_REG_RAX)
        a = [uc.reg_read(r) for r in (X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX,
                                      X.UC_X86_REG_R10)]
        uc.reg_write(X.UC_X86_REG_RAX, self._serve(nr, a) & 0xFFFF_FFFF_FFFF_FFFF)

    def _serve(self, nr: int, a: list[int]) -> int:  # noqa: PLR0911 - one branch a call
        uc = self.uc
        if nr == 0:  # read
            f = self.fds.get(a[0])
            if f is None:
                return -9
            chunk = f[0][f[1] : f[1] + a[2]]
            uc.mem_write(a[1], chunk)
            f[1] += len(chunk)
            return len(chunk)
        if nr == 1:  # write
            self.out += uc.mem_read(a[1], a[2])
            return a[2]
        if nr == 257:  # openat
            data = self.files.get(self._cstr(a[1]))
            if data is None:
                return -2
            fd = 3 + len(self.fds)
            self.fds[fd] = [data, 0]
            return fd
        if nr == 3:  # close
            return 0 if self.fds.pop(a[0], None) is not None else -9
        if nr in (5, 262):  # fstat, newfstatat: a regular file of its size
            target = a[1] if nr == 5 else a[2]
            f = self.fds.get(a[0])
            st = bytearray(144)
            struct.pack_into("<I", st, 24, 0o100644)
            struct.pack_into("<q", st, 48, len(f[0]) if f else 0)
            uc.mem_write(target, bytes(st))
            return 0
        if nr == 12:  # brk
            if a[0] >= self.brk:
                self.brk = a[0]
            return self.brk
        if nr == 9:  # mmap (anonymous)
            at = self.mmap_next
            self.mmap_next += (a[1] + 0xFFF) & ~0xFFF
            return at
        if nr == 158:  # arch_prctl(ARCH_SET_FS)
            uc.msr_write(0xC0000100, a[1])
            return 0
        if nr in (60, 231):  # exit, exit_group
            self.status = a[0]
            uc.emu_stop()
            return 0
        if nr == 318:  # getrandom
            uc.mem_write(a[0], bytes(a[1]))
            return a[1]
        if nr in (10, 11, 13, 14, 157, 218, 273, 302):  # mprotect, munmap, signals, ...
            return 0
        return -ENOSYS

    def run(self) -> float:
        """CPU seconds of the run (in this process: the machine's load does not count)."""
        self.uc.reg_write(X.UC_X86_REG_RSP, self.sp)
        start = time.process_time()
        self.uc.emu_start(self.entry, 0xFFFF_FFFF_FFFF_FFFF)
        return time.process_time() - start


def tvmm_shim(image: guestlinux.LinuxImage) -> tuple[str, int | None, float, float]:
    """(output, status, launch, run) of ``image`` at shim, TEE and host in this process,
    in CPU seconds."""
    from tvmm.host.hypervisor import Devices, HonestHypervisor
    from tvmm.machine import make_machine

    elf = load_elf(image.path)
    machine = make_machine(image=elf, level=Level.SHIM)
    host = HonestHypervisor(machine.client, Devices())
    start = time.process_time()
    host.launch(elf, Level.SHIM, image.memory)
    launched = time.process_time()
    result = host.run()
    ran = time.process_time()
    machine.close()
    return host.devices.console.text, result.status, launched - start, ran - launched


SYSCALLS_C = r"""#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) { long n = argc > 1 ? atol(argv[1]) : 0, s = 0;
    for (long i = 0; i < n; i++) s += syscall(SYS_getppid);
    return (int)(s & 1); }
"""


def syscall_round_trip(calls: int = 20_000) -> float:
    """CPU seconds per system call inside the guest at shim (SYSCALL, the personality's
    entry and dispatch, the jump back): a musl program making ``calls`` getppid calls
    against the same program making none, each launched and run in this process (CPU
    time: a busy machine's neighbours do not count)."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        src, prog = Path(tmp) / "sc.c", Path(tmp) / "sc"
        src.write_text(SYSCALLS_C)
        subprocess.run(["musl-gcc", "-static", "-O2", "-o", str(prog), str(src)], check=True)
        times = []
        for n in (0, calls):
            image = guestlinux.build(prog, [str(n)])
            start = time.process_time()
            report = boot(str(image.path), Level.SHIM, memory=image.memory)
            times.append(time.process_time() - start)
            if report.how != "exit" or report.status != 0:
                raise RuntimeError(f"the syscall loop ended {report.how} {report.status}")
    return (times[1] - times[0]) / calls


def startup_to_first_output() -> tuple[float, float]:
    """(launch, launch to first output) in CPU seconds for `busybox echo` at shim, TEE and
    host in this process: the host's launch (the image measured) and the run up to the
    first console write."""
    from tvmm.host.devices import Console
    from tvmm.host.hypervisor import Devices, HonestHypervisor
    from tvmm.machine import make_machine

    image = guestlinux.build(BUSYBOX, ["echo", "hello"])
    elf = load_elf(image.path)
    first: list[float] = []
    machine = make_machine(image=elf, level=Level.SHIM)
    host = HonestHypervisor(machine.client, Devices(Console(
        lambda _text: first.append(time.process_time()))))
    start = time.process_time()
    host.launch(elf, Level.SHIM, image.memory)
    launched = time.process_time()
    host.run()
    machine.close()
    return launched - start, first[0] - start


def run(mib: int = 16, seed: int = 18) -> dict:
    data = random.Random(seed).randbytes(mib << 20)
    expected = f"{hashlib.sha256(data).hexdigest()}  /data/in\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.bin"
        path.write_bytes(data)
        image = guestlinux.build(BUSYBOX, ["sha256sum", "/data/in"],
                                 [guestlinux.FileSpec(path, "/data/in")])
        bare = BareLinux(BUSYBOX, ["/bin/busybox", "sha256sum", "/data/in"],
                         {"/data/in": data})
        bare_s = bare.run()
        if bare.out.decode() != expected or bare.status != 0:
            raise RuntimeError(f"bare Unicorn printed {bytes(bare.out)!r}")
        output, status, launch_s, run_s = tvmm_shim(image)
        if output != expected or status != 0:
            raise RuntimeError(f"tvmm printed {output!r}")
    launch_s, first_s = startup_to_first_output()
    return {"program": "busybox sha256sum", "busybox_sha256":
            hashlib.sha256(BUSYBOX.read_bytes()).hexdigest(), "mib": mib,
            "syscall_round_trip_us": round(syscall_round_trip() * 1e6, 2),
            "busybox_echo_launch_ms": round(launch_s * 1e3, 1),
            "busybox_echo_first_output_ms": round(first_s * 1e3, 1),
            "bare_s": round(bare_s, 3), "tvmm_shim_run_s": round(run_s, 3),
            "tvmm_shim_launch_s": round(launch_s, 3),
            "speed_vs_bare": round(bare_s / run_s, 3),
            "load_avg_1min": round(os.getloadavg()[0], 1), "cpus": os.cpu_count()}


def markdown(r: dict) -> str:
    return (
        f"`busybox sha256sum` of {r['mib']} MiB (Debian busybox-static, SHA-256 "
        f"`{r['busybox_sha256'][:16]}…`), measured by `python -m tvmm_tools.bench_linux "
        f"--write-docs` (load average {r['load_avg_1min']} on {r['cpus']} CPUs; CPU "
        "seconds, each side in the benchmark's process):\n\n"
        "| side | CPU seconds | speed vs bare |\n|---|---|---|\n"
        f"| bare Unicorn, minimal syscall layer in Python | {r['bare_s']} | 1 |\n"
        f"| tvmm at shim (personality in the guest), run | {r['tvmm_shim_run_s']} | "
        f"{r['speed_vs_bare']} |\n"
        f"| tvmm at shim, launch (the image measured: program, personality, 16 MiB file) | "
        f"{r['tvmm_shim_launch_s']} | — |\n\n"
        f"A system call inside the guest at shim (a "
        f"musl program's `getppid`, SYSCALL to the personality and back, no exit) "
        f"**{r['syscall_round_trip_us']} µs**; `busybox echo` at shim: launch (the host's "
        f"ADD_PAGES, the image measured) {r['busybox_echo_launch_ms']} ms, first output "
        f"{r['busybox_echo_first_output_ms']} ms after the launch began (goal ≤ 50 ms).\n")


def main(argv: list[str] | None = None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    mib = int(argv[argv.index("--mib") + 1]) if "--mib" in argv else 16
    result = run(mib)
    if "--write-docs" in argv:
        DOC.write_text(replace_block(DOC.read_text(), BLOCK, markdown(result)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
