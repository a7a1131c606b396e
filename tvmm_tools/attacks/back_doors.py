"""Back doors at run time: what a host that imports nothing trusted can still reach in its
own process — the regression attack for the process boundary (tvmm.harness).

The import contracts keep trusted code out of the host's source; they say nothing about the
running process.  Run next to the platform (tvmm.judge.run_attack, unit tests only), each
probe below finds the victim's secret; across the boundary each must find nothing:

- transport: the client's transport, followed through ``__self__``, closures, ``__globals__``
  and attributes (in-process: the Platform, its VMs, guest RAM);
- owner:     the link to the owner, followed the same way (in-process: the key broker's
  endpoint, which holds the secret);
- modules:   every module's globals through ``sys.modules``;
- gc:        every object the collector tracks (``gc.get_objects()``), and what each holds;
- frames:    the locals of every frame up the call stack (in-process: the judge's);
- memory:    the process's own readable memory (``/proc/self/mem``), searched for CPython
  bytes objects of the secret's length (ctypes gives the type's address).

The victim is modexp: it prints g^e mod p, so a candidate exponent is checked against the
printed result (tvmm.samples.modexp_expected, public) — a probe either has the secret or
has nothing.
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import re
import struct
import sys
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from tvmm.abi.guest import PAGE_SIZE, SECRETS_GPA
from tvmm.samples import modexp_expected
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome

SECRET_LEN = 8  # modexp's exponent: public (the binary says so)
WALK_LIMIT = 300_000
SCAN_LIMIT = 3 << 30  # bytes of memory read at most
_FOLLOW = ("__self__", "__func__", "__closure__", "__globals__", "__wrapped__",
           "cell_contents", "f_locals", "f_back")


def _windows(data: bytes) -> Iterator[bytes]:
    for at in range(0, len(data) - SECRET_LEN + 1, SECRET_LEN):
        yield data[at : at + SECRET_LEN]


def _holds(obj: object) -> Iterator[bytes]:
    """Candidates an object carries itself: short bytes, or guest RAM's secrets page."""
    if isinstance(obj, (bytes, bytearray)) and len(obj) == SECRET_LEN:
        yield bytes(obj)
    elif isinstance(obj, mmap.mmap):
        try:
            if len(obj) >= SECRETS_GPA + PAGE_SIZE:
                yield from _windows(obj[SECRETS_GPA : SECRETS_GPA + PAGE_SIZE])
        except (ValueError, OSError):
            pass


def walk(roots: Iterable[object], limit: int = WALK_LIMIT) -> Iterator[bytes]:
    """Everything reachable from ``roots`` by attributes, slots, containers, closures,
    globals and bound methods, breadth first, up to ``limit`` objects."""
    seen: set[int] = set()
    queue = deque(roots)
    while queue and len(seen) < limit:
        obj = queue.popleft()
        if id(obj) in seen or obj is None:
            continue
        seen.add(id(obj))
        yield from _holds(obj)
        if isinstance(obj, (str, int, float, bytes, bytearray, mmap.mmap, type)):
            continue
        if isinstance(obj, dict):
            queue.extend(obj.values())
            continue
        if isinstance(obj, (list, tuple, set, frozenset, deque)):
            queue.extend(obj)
            continue
        if isinstance(obj, types.ModuleType):
            queue.extend(vars(obj).values())
            continue
        for name in _FOLLOW:
            try:
                queue.append(getattr(obj, name))
            except Exception:  # noqa: BLE001, S112 - a probe takes what it can get
                continue
        try:
            queue.extend(vars(obj).values())
        except TypeError:
            pass
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                try:
                    queue.append(getattr(obj, name))
                except Exception:  # noqa: BLE001, S112
                    continue


def from_gc() -> Iterator[bytes]:
    for obj in gc.get_objects():
        yield from _holds(obj)
        if isinstance(obj, dict):
            held: Iterable[object] = obj.values()
        elif isinstance(obj, (list, tuple)):
            held = obj
        else:
            held = getattr(obj, "__dict__", {}).values()
        for item in held:
            yield from _holds(item)


def from_frames() -> Iterator[bytes]:
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            yield from _holds(value)
        frame = frame.f_back


def _anonymous_regions() -> list[tuple[int, int]]:
    """Readable private memory where CPython keeps objects (the heap, anonymous mappings),
    smallest first, so that a process holding a few huge mappings (guest RAM of many VMs)
    still has its object arenas read within ``SCAN_LIMIT``."""
    regions = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            name = fields[5] if len(fields) > 5 else ""
            if fields[1].startswith("r") and name in ("", "[heap]", "[stack]"):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                regions.append((lo, hi))
    return sorted(regions, key=lambda r: r[1] - r[0])


def from_memory() -> Iterator[bytes]:
    """CPython bytes objects of the secret's length anywhere in this process's readable
    memory: the type pointer (ctypes: the address of PyBytes_Type) and the size mark
    each one; the data follows the hash."""
    bytes_type = ctypes.addressof(ctypes.c_char.from_address(id(bytes)))
    mark = struct.pack("<QQ", bytes_type, SECRET_LEN)
    chunk, overlap = 64 << 20, 24 + SECRET_LEN
    read = 0
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        for lo, hi in _anonymous_regions():
            if read + (hi - lo) > SCAN_LIMIT:
                continue
            read += hi - lo
            for at in range(lo, hi, chunk):
                try:
                    mem.seek(at)
                    data = mem.read(min(chunk + overlap, hi - at))
                except (OSError, ValueError, OverflowError):
                    break
                found = data.find(mark)
                while 0 <= found < chunk:
                    start = found + 24
                    yield data[start : start + SECRET_LEN]
                    found = data.find(mark, found + 8)


class BackDoors(Attack):
    name = "back-doors"
    summary = ("run-time back doors of the host's own process: the transport's objects, the "
               "owner link, sys.modules, gc, frames, /proc/self/mem")
    victims = ("modexp",)
    kind = "confidentiality"
    published = ("none: a model's artefact — what the process boundary (docs/architecture.md, "
                 "Processes) takes away from the host")

    def run(self, ctx: AttackContext) -> Outcome:
        host = ctx.host()
        ctx.launch(host)
        result = host.run()
        found = re.search(r"result=(0x[0-9a-f]+)", host.devices.console.text)
        printed = int(found.group(1), 16) if found else None
        probes: dict[str, Callable[[], Iterable[bytes]]] = {
            "transport": lambda: walk([ctx.client]),
            "owner": lambda: walk([ctx.owner]) if ctx.owner is not None else (),
            "modules": lambda: walk(list(sys.modules.values())),
            "gc": from_gc,
            "frames": from_frames,
            "memory": from_memory,
        }
        got: dict[str, bool] = {}
        guess = None
        for name, probe in probes.items():
            hit = _first(probe(), printed)
            got[name] = hit is not None
            ctx.record("probe", probe=name, found=got[name])
            guess = guess or hit
        opened = [n for n, ok in got.items() if ok]
        return Outcome(guess=guess, hosts=[host], exits=sum(result.exits.values()), notes={
            "probes": got, "printed": printed is not None,
            "detail": ("secret found through " + ", ".join(opened)) if opened
            else "no probe reached the secret"})


def _first(candidates: Iterable[bytes], printed: int | None) -> bytes | None:
    if printed is None:
        return None
    tried: set[bytes] = set()
    for c in candidates:
        if c in tried:
            continue
        tried.add(c)
        if modexp_expected(c) == printed:
            return c
    return None
