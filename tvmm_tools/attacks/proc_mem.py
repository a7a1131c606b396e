"""The TEE's process from outside: its memory through /proc, and the machine's tvmm state
files — the regression attack for the host's separation (tvmm.link.privsep).

A host that runs as root with every capability reads the TEE process's memory through
/proc/PID/mem (the TEE is not dumpable, but CAP_SYS_PTRACE passes that), and the files of
the modeled chip (its fused secret, its sealed VCEK key) and manufacturer.  Two probes:

- memory: every process of this run that serves the TEE (a sibling running
  tvmm.harness.tee_server, fresh or a zygote's fork), and this process itself (in-process,
  the TEE is here), scanned for the secrets page as guest RAM holds it — the secret's
  length as a u64, the secret, zeros to the page's end;
- state:  every file under the machine's tvmm state directory that opens for reading.

The victim is modexp: it prints g^e mod p, so a candidate exponent is checked against the
printed result (tvmm.samples.modexp_expected, public): a probe has the secret or nothing.
Run next to the platform (tvmm.judge.run_attack) the memory probe finds it; across the
boundary, from a separated host, both probes must find nothing.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

from tvmm.abi.guest import PAGE_SIZE
from tvmm.abi.messages import ExitRecord
from tvmm.abi.state_dir import default_state_dir
from tvmm.host.hypervisor import HonestHypervisor
from tvmm.samples import modexp_expected
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome

SECRET_LEN = 8  # modexp's exponent: public (the binary says so)
MAX_MAPPING = 1 << 30  # larger mappings are the emulator's code cache, not guest RAM
CHUNK = 4 << 20


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _parent(pid: int) -> int:
    found = re.search(r"^PPid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(found.group(1)) if found else 0


def _launcher_of(pid: int) -> int:
    """The launcher that started ``pid``: its parent, or its zygote's parent."""
    parent = _parent(pid)
    return _parent(parent) if b"tvmm.link.zygote" in _cmdline(parent) else parent


def tee_processes() -> list[int]:
    """The processes of this run (the same launcher as this one's) serving the TEE."""
    me = os.getpid()
    try:
        mine = _launcher_of(me)
    except OSError:
        return []
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if b"tee_server" in _cmdline(int(name)) and _launcher_of(int(name)) == mine:
                found.append(int(name))
        except OSError:
            continue
    return found


def secrets_pages(pid: int | str) -> Iterator[bytes]:
    """Candidates from a process's writable memory: page-aligned u64 SECRET_LEN, the
    secret, then zeros to the page's end.  OSError if its memory cannot be opened."""
    head, zeros = struct.pack("<Q", SECRET_LEN), bytes(PAGE_SIZE - 8 - SECRET_LEN)
    with open(f"/proc/{pid}/maps") as maps:
        regions = []
        for line in maps:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if fields[1].startswith("rw") and hi - lo <= MAX_MAPPING:
                regions.append((lo, hi))
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for lo, hi in regions:
            for base in range(lo, hi, CHUNK):
                try:
                    mem.seek(base)
                    data = mem.read(min(CHUNK, hi - base))
                except (OSError, ValueError, OverflowError):
                    break
                at = data.find(head)
                while at != -1:
                    end = at + 8 + SECRET_LEN
                    if (base + at) % PAGE_SIZE == 0 and data[end : at + PAGE_SIZE] == zeros:
                        yield data[at + 8 : end]
                    at = data.find(head, at + 8)


def readable_state_files(root: Path) -> list[str]:
    """Files under ``root`` this process can open and read."""
    found = []
    for top, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            try:
                with open(path, "rb") as f:
                    f.read(1)
                found.append(os.path.relpath(path, root))
            except OSError:
                continue
    return sorted(found)


class _Host(HonestHypervisor):
    """The honest host that, at the VM's first exit (its secrets page in RAM), probes."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.candidates: list[bytes] = []
        self.tees: list[int] = []
        self.denied: list[str] = []
        self.probed = False

    def on_exit(self, rec: ExitRecord) -> bool:
        if not self.probed:
            self.probed = True
            self.tees = tee_processes()
            for pid in [*self.tees, "self"]:
                try:
                    self.candidates += [c for c in secrets_pages(pid)
                                        if c not in self.candidates]
                except OSError as exc:
                    self.denied.append(f"{pid}: {exc.strerror or exc}")
        return super().on_exit(rec)


class ProcMem(Attack):
    name = "proc-mem"
    summary = ("the TEE's process from outside: its memory through /proc/PID/mem, the "
               "chip's and manufacturer's state files")
    victims = ("modexp",)
    kind = "confidentiality"
    published = ("none: a model's artefact — what the host's separation (docs/architecture.md, "
                 "Processes) takes away from a host that runs as root")

    def run(self, ctx: AttackContext) -> Outcome:
        host = ctx.host(_Host)
        ctx.launch(host)
        result = host.run()
        found = re.search(r"result=(0x[0-9a-f]+)", host.devices.console.text)
        printed = int(found.group(1), 16) if found else None
        guess = None
        if printed is not None:
            guess = next((c for c in host.candidates if modexp_expected(c) == printed), None)
        state = readable_state_files(default_state_dir())
        ctx.record("probe", tee_processes=len(host.tees), denied=len(host.denied),
                   state_files=len(state))
        detail = (f"{len(host.tees)} TEE process(es), {len(host.denied)} refused its memory; "
                  f"{len(state)} state file(s) readable")
        return Outcome(guess=guess, hosts=[host], exits=sum(result.exits.values()), notes={
            "memory": guess is not None, "state_files": state, "tee_processes": len(host.tees),
            "denied": host.denied, "printed": printed is not None, "detail": detail})
