"""The attacker's profiling: its own launches of the public image with secrets it chose,
traced by the same host that traces the victim, and the targets read from the image.

Targets come from the public ELF alone: its code pages (executable pages holding a
function) and its data pages (the image's other pages); the trigger is the secrets page
at its public GPA, whose first read marks where the secret starts to matter.  A profiling
run launches the image at ``plain`` with an empty secrets page and writes the chosen
secret into it (the host may write a plain VM's memory), so the guest reads it as it
would the owner's.  Profiles depend only on the public image and the attacker's secrets,
so they are kept on disk (``$TVMM_CACHE_DIR/profiles``), as an attacker profiles a binary
once; a cached profile costs the attack no exits.  Profiling VMs are destroyed and never
handed to the judge.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
from collections.abc import Callable, Hashable
from pathlib import Path

from tvmm.abi.guest import PAGE_SIZE, SECRETS_GPA
from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import ExitReason, Field, Level, Result
from tvmm.guestimage import GuestImage
from tvmm.guestlinux import ROOTFS_BASE, program_map
from tvmm.host.hypervisor import HonestHypervisor
from tvmm_tools.attacks._decode import Stepping, fault_page, is_console_write, is_input_read
from tvmm_tools.attacks._learn import profile_secrets
from tvmm_tools.attacks.base import AttackContext

MAX_EVENTS = 20_000
LIVELOCK = 256  # faults alternating between two adjacent code pages: one straddling instruction
PROFILE_VERSION = 3  # bump when the tracer's events change


def code_pages(image: GuestImage) -> list[int]:
    """Executable pages that hold a function of the image — and of the program inside a
    Linux image, read from its public root file system (where the personality loads it)."""
    pages = {p.gpa for p in image.pages if p.executable}
    found = set()
    for start, size, _name in image.symbols:
        for page in range(start & ~(PAGE_SIZE - 1), start + max(size, 1), PAGE_SIZE):
            if page in pages:
                found.add(page)
    program = program_map(image)
    return sorted(found | set(program.code if program else ()))


def data_pages(image: GuestImage) -> list[int]:
    """The image's pages that are not executable (read-only data, data, bss); in a Linux
    image the program's data pages instead of its root file system (which the
    personality reads only to load the program and files)."""
    program = program_map(image)
    if program is None:
        return sorted(p.gpa for p in image.pages if not p.executable)
    return sorted({p.gpa for p in image.pages if not p.executable and p.gpa < ROOTFS_BASE}
                  | set(program.data))


def declared_secret_bytes(guest: str) -> int:
    """The size of the victim's secret as its owner declares it publicly (a sample's
    documented form, or ``secret_bytes`` in the ``.toml`` beside a guest's source); the
    secret itself is never read.  0 when the guest declares none."""
    from tvmm.samples import SAMPLES, VICTIMS, declared

    sample = SAMPLES.get(guest) or VICTIMS.get(guest)
    if sample is None and Path(guest).suffix in (".c", ".S", ".s") and Path(guest).is_file():
        sample = declared(Path(guest))
    if sample is None:
        return 0
    return len(sample.make_secret(random.Random(0)))  # its size: a draw of our own


class Tracer(HonestHypervisor):
    """Traces the victim from the first read of its secrets page to its first console
    write (the result is out).

    ``code`` pages are tracked one at a time (the one executing stays mapped: every call
    or return between them faults), ``data`` pages on every access (the faulting page is
    mapped for one instruction, then unmapped again).  With ``step`` the host
    single-steps in between: each event then carries the instructions retired since the
    previous one, or — with ``rip`` where the exit shows RIP — every step is an event, its
    RIP.  An entry the platform refuses (a fault rule) maps everything and stops tracing."""

    def __init__(self, *args, code: list[int], data: list[int], step: bool = False,
                 rip: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.code, self.data = (([], []) if rip else (code, data))
        self.code_set, self.data_set = set(self.code), set(self.data)
        self.current: tuple[int, ...] = ()  # the code page (or pair) mapped while tracing
        self.units: dict[int, tuple[int, ...]] = {}  # page -> the pair it is mapped with
        self.alternation: tuple[int, int, int] = (0, 0, 0)  # (page, page before, times)
        self.step, self.rip = step, rip
        self.events: list[Hashable] = []
        self.state_ = "armed"  # armed -> tracing -> done
        self.strict: set[int] = set()
        self.counted = 0
        self.refused = 0
        self.finished = False  # the result was written while traced
        self.steps = Stepping()  # what each armed single step really retired

    def start(self) -> None:
        self.client.unmap(self.vm, SECRETS_GPA)

    def enter(self) -> Reply:
        tracing = self.state_ == "tracing"
        self.quantum = 1 if tracing and (self.step or self.strict) else 0
        reply = super().enter()
        if reply.result == Result.ENTRY_REFUSED and tracing:
            self.refused += 1
            self._stop()
            self.quantum = 0
            reply = super().enter()
        return reply

    def _event(self, what: Hashable) -> None:
        """One event; with counts, the instructions retired since the previous event go
        to that one (the time spent on the page it entered)."""
        self._close()
        self.events.append((what, 0) if self.step and not self.rip else what)
        if len(self.events) >= MAX_EVENTS:
            self._stop()

    def _note_alternation(self, page: int) -> None:
        """An instruction that straddles two code pages faults on each in turn for ever
        while only one is mapped: after LIVELOCK faults alternating between two adjacent
        pages and nothing else, the two are mapped together from then on (one unit)."""
        last, before, times = self.alternation
        if page == before and abs(page - last) == PAGE_SIZE:
            times += 1
        else:
            times = 0
        self.alternation = (page, last, times)
        if times >= LIVELOCK:
            pair = (min(page, last), max(page, last))
            self.units[page] = self.units[last] = pair
            self.alternation = (0, 0, 0)

    def _close(self) -> None:
        if self.step and not self.rip and self.events:
            self.events[-1] = (self.events[-1][0], self.counted)
        self.counted = 0

    def on_exit(self, rec: ExitRecord) -> bool:
        page = fault_page(rec) if rec.reason == ExitReason.NPF else None
        if self.state_ == "armed" and page == SECRETS_GPA:
            self.client.map(self.vm, SECRETS_GPA)
            self.state_ = "tracing"
            for p in self.code + self.data:
                self.client.unmap(self.vm, p)
            return True
        if self.state_ != "tracing":
            return super().on_exit(rec)
        if page in self.code_set:
            self._event(page)
            self._note_alternation(page)
            unit = self.units.get(page, (page,))
            for p in unit:
                self.client.map(self.vm, p)
            for p in self.current:
                if p not in unit:
                    self.client.unmap(self.vm, p)  # the others are unmapped already
            self.current = unit
            return True
        if page in self.data_set:
            self._event(page)
            self.client.map(self.vm, page)
            self.strict.add(page)
            return True
        if rec.reason == ExitReason.TIMER:
            retired = rec.get(Field.RETIRED)
            if self.step:
                self.steps.note(1, rec)
            for p in self.strict:
                self.client.unmap(self.vm, p)
            self.strict.clear()
            if self.step:
                self.counted += retired if retired is not None else self.quantum
                if self.rip and rec.get(Field.RIP) is not None:
                    self._event(rec.get(Field.RIP))
        elif is_console_write(rec):
            self.finished = True
            self._stop()
        return super().on_exit(rec)

    def _stop(self) -> None:
        if self.state_ == "tracing":
            self._close()
            self.state_ = "done"
            for p in self.code + self.data:
                self.client.map(self.vm, p)
            self.strict.clear()


def trace_victim(ctx: AttackContext, make: Callable[..., Tracer], max_exits: int) -> Tracer:
    host = make()
    ctx.launch(host)
    host.start()
    ctx.record("trace", level=ctx.level.value)
    host.run(max_exits=max_exits)
    return host


def own_launch(ctx: AttackContext, host: HonestHypervisor, secret: bytes) -> None:
    """Launch the public image on ``host`` at plain, the attacker's own VM, its secrets
    page holding ``secret`` (written by the host, as a plain VM's memory may be)."""
    host.launch(ctx.image, Level.PLAIN, ctx.memory, secret_blob=b"")
    page = struct.pack("<Q", len(secret)) + secret
    ctx.client.write_page(host.vm, SECRETS_GPA, page.ljust(PAGE_SIZE, b"\0"))


def own_trace(ctx: AttackContext, make: Callable[..., Tracer], secret: bytes,
              max_exits: int) -> tuple[list[Hashable], int]:
    """The trace of the attacker's own copy at plain holding ``secret``; (events, exits)."""
    host = make()
    own_launch(ctx, host, secret)
    host.start()
    host.run(max_exits=max_exits)
    events, exits = host.events, sum(host.exits.values())
    host.destroy()  # the attacker's own VM: not the victim, not for the judge
    return events, exits


def profiles(ctx: AttackContext, kind: str, make: Callable[..., Tracer], nbytes: int,
             max_exits: int) -> tuple[list[tuple[bytes, list[Hashable]]], int]:
    """The tracer's profiling runs (``kind`` names its settings) on profile_secrets."""
    return cached_profiles(ctx, kind, profile_secrets(nbytes),
                           lambda secret: own_trace(ctx, make, secret, max_exits))


def cached_profiles(ctx: AttackContext, kind: str, secrets: list[tuple[str, bytes]],
                    trace_own: Callable[[bytes], tuple[list, int]]
                    ) -> tuple[list[tuple[bytes, list]], int]:
    """``trace_own(secret)`` for each chosen secret, from the cache when this image was
    profiled so before; (profiles, exits spent now)."""
    from tvmm.guestbuild import cache_dir

    chosen = "|".join(s.hex() for _label, s in secrets)
    key = hashlib.sha256(f"{PROFILE_VERSION}|{ctx.image.sha256}|{kind}|{chosen}".encode())
    path = cache_dir() / "profiles" / f"{key.hexdigest()[:32]}.json"
    try:
        data = json.loads(path.read_text())
        return [(bytes.fromhex(s), [_event(e) for e in t]) for s, t in data], 0
    except (OSError, ValueError, TypeError):
        pass
    out, spent = [], 0
    for _label, secret in secrets:
        events, exits = trace_own(secret)
        out.append((secret, events))
        spent += exits
    ctx.record("profiled", kind=kind, runs=len(out), exits=spent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{random.getrandbits(32):08x}.tmp")
    tmp.write_text(json.dumps([(s.hex(), t) for s, t in out]))
    tmp.replace(path)
    return out, spent


def _event(e: object) -> Hashable:
    """An event as it was before JSON: lists back to tuples, nested ones too."""
    return tuple(_event(x) for x in e) if isinstance(e, list) else e  # type: ignore[return-value]


class _InputProbe(HonestHypervisor):
    """Runs until the guest first asks for input (True) or writes to the console."""

    asked: bool | None = None

    def on_exit(self, rec: ExitRecord) -> bool:
        if is_input_read(rec):
            self.asked = True
            return False
        if is_console_write(rec):
            self.asked = False
            return False
        return super().on_exit(rec)


def asks_for_input(ctx: AttackContext, max_exits: int = 2_000) -> bool:
    """Whether the public image, launched by the attacker at plain with an all-zeros
    secret of the declared size, asks for an input line before it writes anything."""
    host = ctx.host(_InputProbe)
    own_launch(ctx, host, bytes(max(1, declared_secret_bytes(ctx.guest))))
    host.run(max_exits=max_exits)
    host.destroy()
    return bool(host.asked)
