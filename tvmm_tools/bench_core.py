"""Core benchmarks: the full tvmm stack against bare Unicorn on the same guest ELF, side by
side in one run, so that the ratios hold on a noisy machine.

- compute: the compute-bound guest (guests/bench/compute.c) booted by tvmm at a level, and the
  same ELF run by a minimal bare-Unicorn loader with no tvmm code (it answers the guest's two
  hypercalls itself) — without a timer, and with the same timer quantum on both sides.
- exit round trip: timer exits every ``quantum`` instructions through the whole stack (exit
  path, view, sealing, ABI, host) against bare ``emu_start(count=quantum)`` stop/resume.
  Both loops run in this process, take turns round by round, and are timed in CPU time
  (``time.process_time``), which a busy neighbour disturbs far less than wall time.
- single-step rate: exits per second with quantum 1 at a level (the host single-steps).

Prints one JSON line; ``run()`` returns the same dict.  Rounds alternate tvmm and bare and
the median ratio is reported.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import unicorn as uc_mod
from unicorn import x86_const as X

from tvmm import guestbuild
from tvmm.abi import codec
from tvmm.abi.guest import BOOT_INFO_GPA, BOOT_MAGIC, SHARED_BASE, SHARED_SIZE
from tvmm.abi.messages import Enter, Reply
from tvmm.abi.types import ExitReason, Level
from tvmm.guestimage import GuestImage, load_elf
from tvmm.harness import launcher
from tvmm.harness.boot import boot
from tvmm.host.client import PlatformClient, bytes_transport
from tvmm.host.hypervisor import HonestHypervisor
from tvmm.link import ends, mailbox
from tvmm.machine import DEFAULT_MEMORY, make_machine

COMPUTE = guestbuild.GUESTS_DIR / "bench" / "compute.c"


def compute_image() -> GuestImage:
    return load_elf(guestbuild.build([COMPUTE]), "compute")


def bare_machine(image: GuestImage, memory: int) -> uc_mod.Uc:
    """Plain Unicorn with the ELF's pages and the boot info the runtime reads: no tvmm code."""
    uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_64)
    uc.mem_map(0, memory)
    uc.mem_write(BOOT_INFO_GPA, struct.pack("<6Q", BOOT_MAGIC, 0, memory, SHARED_BASE,
                                            SHARED_SIZE, 0))
    for page in image.pages:
        uc.mem_write(page.gpa, page.data)
    return uc


def bare_unicorn(image: GuestImage, quantum: int = 0, memory: int = DEFAULT_MEMORY) -> float:
    """Run the ELF on plain Unicorn: map, copy pages, write the boot info, loop on vmcall."""
    uc = bare_machine(image, memory)
    rip = image.entry
    start = time.perf_counter()
    while True:
        try:
            uc.emu_start(rip, 0xFFFF_FFFF_FFFF_FFFF, 0, quantum)
            rip = uc.reg_read(X.UC_X86_REG_RIP)
            continue  # the timer fired: resume
        except uc_mod.UcError:
            rip = uc.reg_read(X.UC_X86_REG_RIP)
        nr = uc.reg_read(X.UC_X86_REG_RAX)
        if nr == 0:  # HC_EXIT
            return time.perf_counter() - start
        uc.reg_write(X.UC_X86_REG_RAX, uc.reg_read(X.UC_X86_REG_RSI))  # "written" = len
        rip += 3
        uc.reg_write(X.UC_X86_REG_RIP, rip)


def tvmm_compute(level: Level, quantum: int) -> float:
    """The compute guest booted as ``tvmm boot`` does: the TEE in a process of its own;
    the time is the host's run loop (launch and process start-up excluded)."""
    report = boot(str(guestbuild.build([COMPUTE])), level, quantum=quantum)
    if report.how != "exit":
        raise RuntimeError(f"compute guest did not finish: {report.how} {report.detail}")
    return report.wall_s


def timer_exits(enter, host: HonestHypervisor, state: bytes, exits: int) -> Reply:
    """Enter (``enter(state)`` returns the reply) until ``exits`` timer exits, serving any
    other exit through ``host``; the last timer exit's reply (its state enters next)."""
    timer, done = ExitReason.TIMER, 0
    while done < exits:
        reply = enter(state)
        rec = reply.exit
        if rec is None:
            raise RuntimeError(f"entry refused: {reply.result.name} {reply.operand}")
        state = rec.state
        if rec.reason != timer:
            if rec.reason in (ExitReason.SHUTDOWN, ExitReason.FAULT, ExitReason.KILLED) \
                    or not host.on_exit(rec):
                raise RuntimeError(f"the compute guest stopped: {rec.reason.name}")
            continue
        done += 1
    return reply


def bare_stops(uc, rip: int, quantum: int, exits: int) -> int:
    """Bare Unicorn's stop/resume ``exits`` times from ``rip``; the RIP to resume at."""
    for _ in range(exits):
        uc.emu_start(rip, 0xFFFF_FFFF_FFFF_FFFF, 0, quantum)
        rip = uc.reg_read(X.UC_X86_REG_RIP)
    return rip


def round_trip(level: Level, quantum: int, exits: int, rounds: int = 1,
               wire: bool = False) -> tuple[float, float]:
    """(seconds per timer exit through tvmm, seconds per bare stop/resume), the medians of
    ``rounds`` rounds of ``exits`` each, tvmm and bare taking turns so that both see the
    same machine.  ``wire``: every request and reply through the ABI codec, as across the
    process boundary, still in one process."""
    image = compute_image()
    machine = make_machine(seed=0, image=image, level=level)
    host = HonestHypervisor(machine.client, quantum=quantum)
    host.launch(image, level, DEFAULT_MEMORY)
    handle, vm = machine.platform.handle, host.vm
    if wire:
        handle = bytes_transport(machine.platform.handle_bytes)
    state = b""
    uc = bare_machine(image, DEFAULT_MEMORY)
    bare_rip = image.entry

    def through_tvmm() -> float:
        nonlocal state
        start = time.process_time()
        state = timer_exits(lambda st: handle(Enter(vm, 0, quantum, st)), host, state,
                            exits).exit.state
        return (time.process_time() - start) / exits

    def bare() -> float:
        nonlocal bare_rip
        start = time.process_time()
        bare_rip = bare_stops(uc, bare_rip, quantum, exits)
        return (time.process_time() - start) / exits

    pairs = [(through_tvmm(), bare()) for _ in range(rounds)]
    machine.close()
    return (statistics.median(t for t, _ in pairs), statistics.median(b for _, b in pairs))


def _echo_server(link: str, size: int) -> tuple[object, int]:
    """A process that answers every frame with ``size`` bytes over the same link as the
    TEE's, with nothing of tvmm behind it: the bare transport."""
    client_spec, server_spec, fds = ends.specs(link)
    pid = os.fork()
    if pid == 0:
        try:
            for fd in set(_link_fds(client_spec)) - set(_link_fds(server_spec)):
                os.close(fd)
            server = ends.server(server_spec)
            answer = bytes(size)
            while True:
                server.recv()
                server.send(answer)
        except BaseException:  # noqa: BLE001 - the peer is gone: the benchmark is over
            pass
        finally:
            os._exit(0)
    client = ends.client(client_spec)
    for fd in set(_link_fds(server_spec)) - set(_link_fds(client_spec)):
        os.close(fd)
    return client, pid


def _link_fds(spec: dict) -> list[int]:
    return [spec[k] for k in ("memory", "bell_in", "bell_out", "fd") if k in spec]


def cpu_s(pid: int) -> float:
    """CPU seconds a process has used so far (``/proc/PID/schedstat``: nanoseconds)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def boundary_round_trip(level: Level, quantum: int, exits: int, rounds: int,
                        link: str = "mailbox") -> dict:
    """Timer exits with the TEE in its own process (this process the host, as an attack
    is), bare Unicorn stop/resume, and the bare round trip of the same link to a process
    that only echoes a reply of the same size — taking turns, wall time, medians.  Also
    the CPU time each side of the boundary spends per exit (this process, the host; the
    TEE's), which a busy machine disturbs far less than the wall time: it says what an
    exit costs, where the wall time says how long it waited for a core."""
    image = compute_image()
    tee = launcher.start_tee(link=link)
    client = PlatformClient(bytes_transport(tee.end.call))
    host = HonestHypervisor(client, quantum=quantum)
    host.launch(image, level, DEFAULT_MEMORY)
    vm = host.vm
    state = b""
    sizes: list[tuple[int, int]] = []
    cpu: list[tuple[float, float]] = []
    uc = bare_machine(image, DEFAULT_MEMORY)
    bare_rip = image.entry

    def across() -> float:
        nonlocal state
        host0, tee0 = time.process_time(), cpu_s(tee.tee.pid)
        start = time.perf_counter()
        reply = timer_exits(lambda st: client.enter(vm, quantum, st), host, state, exits)
        wall = time.perf_counter() - start
        cpu.append(((time.process_time() - host0) / exits, (cpu_s(tee.tee.pid) - tee0) / exits))
        state = reply.exit.state
        if not sizes:
            sizes.append((len(codec.encode(Enter(vm, 0, quantum, state))),
                          len(codec.encode(reply))))
        return wall / exits

    def bare() -> float:
        nonlocal bare_rip
        start = time.perf_counter()
        bare_rip = bare_stops(uc, bare_rip, quantum, exits)
        return (time.perf_counter() - start) / exits

    first = across()
    request_size, reply_size = sizes[0]
    echo, pid = _echo_server(link, reply_size)
    request = bytes(request_size)

    def transport() -> float:
        start = time.perf_counter()
        for _ in range(exits):
            echo.call(request)
        return (time.perf_counter() - start) / exits

    try:
        triples = [(first if i == 0 else across(), bare(), transport()) for i in range(rounds)]
    finally:
        echo.close()
        os.waitpid(pid, 0)
        tee.close()
    a, b, t = (statistics.median(x[i] for x in triples) for i in range(3))
    return {"quantum": quantum, "link": link, "across_us": round(a * 1e6, 2),
            "bare_us": round(b * 1e6, 2), "transport_us": round(t * 1e6, 2),
            "cost_vs_bare_plus_transport": round(a / (b + t), 2),
            "exits_per_s": round(1 / a),
            "host_cpu_us": round(statistics.median(h for h, _ in cpu) * 1e6, 2),
            "tee_cpu_us": round(statistics.median(t for _, t in cpu) * 1e6, 2),
            "rounds": [[round(x * 1e6, 2) for x in r]
                                                    for r in triples]}


# Callgrind's client requests, for marking the phases of a counted run (compiled at run
# time against valgrind's own header: the requests are special instruction sequences).
_MARKS_C = """#include <valgrind/callgrind.h>
void tvmm_count_from_zero(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void tvmm_count_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); CALLGRIND_STOP_INSTRUMENTATION; }
int tvmm_emu_start_stub(void *uc, unsigned long begin, unsigned long until,
                        unsigned long timeout, unsigned long count) { return 0; }
"""
COUNT_EXITS = 2000
PHASES = ("loop", "host", "mailbox")


def instructions_per_exit(level: Level, quantum: int, exits: int = COUNT_EXITS) -> dict:
    """Instructions per exit on each side of the boundary, counted by callgrind (exact and
    the same on a loaded machine, where CPU time is not): this module's ``--phases`` run
    under ``valgrind --tool=callgrind``, each phase between client requests.

    - ``loop``: ``exits`` timer exits in one process through the ABI codec — the host's
      request encoded, ``Platform.handle_bytes``, the reply decoded, the host's loop —
      with libunicorn's ``uc_emu_start`` a C no-op (the guest does not move, so the count
      cannot move with its phase; emulation is bare Unicorn's own cost, the baseline);
    - ``host``: the host's share alone, the same loop answered with a canned reply;
    - ``mailbox``: one mailbox round trip's copies and numbers, both ends in one process.

    The TEE's side is loop − host + one mailbox end, the host's host + the other end.
    Needs valgrind with its headers and a C compiler."""
    for tool in ("valgrind", "gcc"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"counting instructions needs {tool}")
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_marks(Path(tmp))
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={tmp}/cg.%p", sys.executable, "-m",
             "tvmm_tools.bench_core", "--phases", level.value, str(quantum), str(exits),
             str(lib)], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"the counted run failed: {out.stderr[-2000:]}")
        counts: dict[str, int] = {}
        for dump in Path(tmp).glob("cg.*.*"):
            text = dump.read_text(errors="replace")
            name = re.search(r"^desc: Trigger: Client Request: (\S+)", text, re.M)
            total = re.search(r"^totals: (\d+)", text, re.M)
            if name and total:
                counts[name.group(1)] = int(total.group(1))
    if set(counts) != set(PHASES):
        raise RuntimeError(f"the counted run dumped {sorted(counts)}, not {list(PHASES)}")
    loop, host = counts["loop"] / exits, counts["host"] / exits
    end = counts["mailbox"] / exits / 2
    return {"level": level.value, "quantum": quantum, "exits": exits,
            "tee": round(loop - host + end), "host": round(host + end),
            "mailbox_end": round(end), "loop_in_one_process": round(loop)}


def build_marks(directory: Path) -> Path:
    """The client-request library (needs gcc and valgrind's headers)."""
    source, lib = directory / "marks.c", directory / "marks.so"
    source.write_text(_MARKS_C)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(source)],
                   check=True, capture_output=True)
    return lib


def count_phases(level: Level, quantum: int, exits: int, marks: str) -> tuple[int, int]:
    """The phases ``instructions_per_exit`` counts (run under callgrind by it; outside
    valgrind the marks do nothing).  Returns the guest's RIP before and after the counted
    phases: equal, the guest stood still."""
    lib = ctypes.CDLL(marks)
    image = compute_image()
    machine = make_machine(seed=0, image=image, level=level)
    client = PlatformClient(bytes_transport(machine.platform.handle_bytes))
    host = HonestHypervisor(client, quantum=quantum)
    host.launch(image, level, DEFAULT_MEMORY)
    vm = host.vm

    def enter(st: bytes) -> Reply:
        return client.enter(vm, quantum, st)

    reply = timer_exits(enter, host, b"", 200)  # boots into the compute loop
    canned = codec.encode(reply)
    # The guest stands still: libunicorn's uc_emu_start swapped for a C no-op of the same
    # signature, called the same way (the Python and ctypes work around it still counts).
    machine.platform.vm(vm).vcpu._emu_start = ctypes.CFUNCTYPE(ctypes.c_int)(
        ctypes.cast(lib.tvmm_emu_start_stub, ctypes.c_void_p).value)
    state = timer_exits(enter, host, reply.exit.state, 50).exit.state
    ctx = machine.platform.vm(vm).vcpus[0]
    rip_before = ctx.rip
    canned_client = PlatformClient(bytes_transport(lambda _data: canned))
    ends_ = mailbox.create(1 << 16)
    near, far = (mailbox.MailboxClient(ends_.client_spec()),
                 mailbox.MailboxServer(ends_.server_spec()))
    request = codec.encode(Enter(vm, 0, quantum, state))

    def round_trips() -> None:
        for _ in range(exits):
            near._put(request)
            far._take()
            far._put(canned)
            near._take()

    for name, run_phase in (
            ("loop", lambda: timer_exits(enter, host, state, exits)),
            ("host", lambda: timer_exits(lambda st: canned_client.enter(vm, quantum, st),
                                         host, state, exits)),
            ("mailbox", round_trips)):
        lib.tvmm_count_from_zero()
        run_phase()
        lib.tvmm_count_dump(name.encode())
    machine.close()
    return rip_before, ctx.rip


def for_seconds(run_once: Callable[[], float], seconds: float) -> float:
    """Seconds per run of ``run_once`` (which returns its own time), run until the runs
    add up to ``seconds``: each side of a ratio is timed for seconds, not one short run."""
    total, runs = 0.0, 0
    while total < seconds:
        total += run_once()
        runs += 1
    return total / runs


def run(rounds: int = 3, quick: bool = False,
        progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Every figure; ``progress(name, i, n)`` is told before each of the n is measured (a
    full run takes minutes, and the table comes only at the end)."""
    names = [*(f"compute_{label}_{lv.value}" for label in ("no_timer", "timer")
               for lv in (Level.PLAIN, Level.SHIM)),
             "exit_round_trip_shim", "exit_round_trip_shim_codec", "single_step_sev-es",
             *(f"exit_round_trip_shim_across_{link}" for link in launcher.LINKS),
             "single_step_sev-es_across_mailbox"]

    def step(name: str) -> str:
        if progress is not None:
            progress(name, names.index(name) + 1, len(names))
        return name

    image = compute_image()
    quantum = 100_000
    side_s = 0.5 if quick else 2.0
    results: dict = {"guest": "compute", "rounds": rounds, "seconds_per_side": side_s}
    for label, q in (("no_timer", 0), ("timer", quantum)):
        for level in (Level.PLAIN, Level.SHIM):
            key = step(f"compute_{label}_{level.value}")
            ratios, tv, bare = [], [], []
            for _ in range(rounds):
                b = for_seconds(lambda q=q: bare_unicorn(image, q), side_s)
                t = for_seconds(lambda q=q, level=level: tvmm_compute(level, q), side_s)
                bare.append(b)
                tv.append(t)
                ratios.append(b / t)
            results[key] = {
                "bare_s": round(statistics.median(bare), 4),
                "tvmm_s": round(statistics.median(tv), 4),
                "speed_vs_bare": round(statistics.median(ratios), 3),
            }
    n_exits = 1_000 if quick else 2_000
    key = step("exit_round_trip_shim")
    tv_s, bare_s = round_trip(Level.SHIM, 64, n_exits, rounds=9)
    results[key] = {
        "quantum": 64, "tvmm_us": round(tv_s * 1e6, 2), "bare_us": round(bare_s * 1e6, 2),
        "cost_vs_bare": round(tv_s / bare_s, 2),
    }
    key = step("exit_round_trip_shim_codec")
    tv_s, bare_s = round_trip(Level.SHIM, 64, n_exits, rounds=9, wire=True)
    results[key] = {
        "quantum": 64, "tvmm_us": round(tv_s * 1e6, 2), "bare_us": round(bare_s * 1e6, 2),
        "cost_vs_bare": round(tv_s / bare_s, 2),
    }
    for level in (Level.SEV_ES,):  # at shim single-stepping is refused by design
        key = step(f"single_step_{level.value}")
        tv_s, bare_s = round_trip(level, 1, n_exits, rounds=5)
        results[key] = {
            "exits_per_s": round(1 / tv_s), "bare_steps_per_s": round(1 / bare_s),
        }
    across_exits = 2_000 if quick else 10_000
    for link in launcher.LINKS:
        key = step(f"exit_round_trip_shim_across_{link}")
        results[key] = boundary_round_trip(Level.SHIM, 64, across_exits, rounds=5, link=link)
    key = step("single_step_sev-es_across_mailbox")
    results[key] = boundary_round_trip(Level.SEV_ES, 1, across_exits, rounds=5)
    return results


INSTRUCTIONS_BLOCK = "exit-instructions"
COUNTED = ((Level.SHIM, 64), (Level.SEV_ES, 1))  # the shim's timer exit; single step


def instructions_block(rows: list[dict]) -> str:
    """The doc block of ``--instructions --write-docs``."""
    lines = [f"Written by `python -m tvmm_tools.bench_core --instructions --write-docs` on "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (callgrind, "
             f"{rows[0]['exits']:,} exits a phase; instructions do not depend on the load).",
             "", "| exit | TEE side | host side | one mailbox end (in each side) |", "|---|---|---|---|"]
    for r in rows:
        what = ("timer exit at `shim`, quantum 64" if r["level"] == "shim"
                else f"single step at `{r['level']}`, quantum {r['quantum']}")
        lines.append(f"| {what} | {r['tee']:,} | {r['host']:,} | {r['mailbox_end']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    if argv[:1] == ["--phases"]:
        count_phases(Level(argv[1]), int(argv[2]), int(argv[3]), argv[4])
        return 0
    if argv[:1] == ["--instructions"]:
        rows = [instructions_per_exit(level, quantum) for level, quantum in COUNTED]
        for row in rows:
            print(json.dumps(row))
        if "--write-docs" in argv:
            from tvmm_tools.doc_block import write_block

            doc = Path(argv[argv.index("--write-docs") + 1]) if len(argv) > argv.index(
                "--write-docs") + 1 else Path("docs/performance.md")
            write_block(doc, INSTRUCTIONS_BLOCK, instructions_block(rows))
        return 0
    out = run(quick="--quick" in argv)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

