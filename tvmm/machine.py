"""Assembly: one modeled TEE, one host, one guest owner — wired together for a run.

This is the only place (with the CLI and tests) that holds both sides: it builds the
platform, gives the host nothing but a transport to it, has the owner wrap the guest's
secret to the platform's launch key, and returns what the run produced.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import capstone
import cryptography
import unicorn

import tvmm
from shim.platform import Platform
from shim.policies.config import PolicyConfig
from tvmm.abi.types import Level
from tvmm.guestimage import GuestImage
from tvmm.host.client import PlatformClient, Transport, bytes_transport
from tvmm.host.devices import BlockDevice, Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor, RunResult
from tvmm.owner import launch_secret
from tvmm.samples import Sample, resolve
from tvmm.trace.events import EventKind, TraceHeader
from tvmm.trace.recorder import NullRecorder, TraceRecorder

DEFAULT_MEMORY = 4 << 20


def versions() -> dict[str, str]:
    return {
        "tvmm": tvmm.__version__,
        "unicorn": unicorn.__version__,
        "capstone": capstone.__version__,
        "cryptography": cryptography.__version__,
    }


@dataclass
class Machine:
    """A platform with a host attached; ``host`` is anything built on the client."""

    platform: Platform
    client: PlatformClient
    recorder: object
    image: GuestImage | None = None
    sample: Sample | None = None
    secret: bytes = b""
    launch_digest: bytes = b""

    def close(self) -> None:
        self.recorder.close()


def make_machine(*, seed: int | None = 0, trace: Path | str | None = None,
                 image: GuestImage | None = None, level: Level = Level.PLAIN,
                 policy_config: PolicyConfig | None = None, wire: bool = False,
                 extra_header: dict | None = None) -> Machine:
    recorder: object = NullRecorder()
    if trace is not None:
        recorder = TraceRecorder(trace, TraceHeader(
            guest=image.name if image else "?", level=level.value,
            seed=seed if seed is not None else -1, versions=versions(),
            elf=str(image.path) if image else None,
            elf_sha256=image.sha256 if image else None,
            symbols=list(image.symbols) if image else [], extra=extra_header or {}))
    platform = Platform(seed=seed, recorder=recorder, policy_config=policy_config)
    transport: Transport = (bytes_transport(platform.handle_bytes) if wire else platform.handle)
    return Machine(platform, PlatformClient(transport), recorder, image)


def wrap_secret(machine: Machine, secret: bytes, seed: int | None) -> bytes:
    """The owner's side: wrap the secret to the platform's launch key."""
    if not secret:
        return b""
    rng = random.Random(seed)
    from cryptography.hazmat.primitives.asymmetric import ec

    eph = ec.derive_private_key(rng.getrandbits(383) | 1, ec.SECP384R1())
    return launch_secret.wrap(secret, machine.platform.launch_public_key, ephemeral=eph,
                              nonce=rng.getrandbits(96).to_bytes(12, "little"))


@dataclass
class BootReport:
    guest: str
    level: str
    how: str
    status: int | None
    expected_status: int | None
    console: str
    exits: dict[str, int]
    wall_s: float
    retired: int
    entries: int
    launch_digest: str
    detail: str = ""
    violations: list[dict] = field(default_factory=list)

    @property
    def mips(self) -> float | None:
        return self.retired / self.wall_s / 1e6 if self.retired and self.wall_s else None


def boot(guest: str, level: Level = Level.PLAIN, *, seed: int | None = 0,
         trace: Path | str | None = None, quantum: int = 0, memory: int = DEFAULT_MEMORY,
         policy_config: PolicyConfig | None = None, secret: bytes | None = None,
         input_lines: Iterable[str] = (), disk: Path | None = None,
         on_console: Callable[[str], None] | None = None, wire: bool = False,
         tick_vector: int | None = None, max_exits: int | None = None) -> BootReport:
    """Boot ``guest`` (a sample name, a C file or an ELF) at ``level`` under the honest host."""
    image, sample = resolve(guest)
    if secret is None:
        secret = sample.make_secret(random.Random(seed)) if sample else b""
    machine = make_machine(seed=seed, trace=trace, image=image, level=level,
                           policy_config=policy_config, wire=wire)
    if sample and sample.name == "password" and not input_lines:
        input_lines = ["guess", "letmein"]
    devices = Devices(Console(on_console), BlockDevice(disk), InputDevice(input_lines))
    host = HonestHypervisor(machine.client, devices, quantum=quantum, tick_vector=tick_vector)
    try:
        start = time.perf_counter()
        digest = host.launch(image, level, memory, secret_blob=wrap_secret(machine, secret, seed))
        result: RunResult = host.run(max_exits=max_exits)
        wall = time.perf_counter() - start
        vm = machine.platform.tee.vms.get(host.vm)
        violations = []
        if vm is not None and vm.policies is not None:
            violations = [v.__dict__ if hasattr(v, "__dict__") else
                          {"exit_seq": v.exit_seq, "policy": v.policy, "why": v.why,
                           "response": v.response} for v in vm.policies.violations]
        machine.recorder.emit(EventKind.END, result.how, inside={
            "how": result.how, "status": result.status, "instructions": result.retired or None,
            "exits": dict(result.exits), "wall_s": wall})
    finally:
        machine.close()
    return BootReport(
        guest=image.name, level=level.value, how=result.how, status=result.status,
        expected_status=0 if sample else None, console=devices.console.text,
        exits=dict(result.exits), wall_s=result.wall_s, retired=result.retired,
        entries=result.entries, launch_digest=digest.hex(), detail=result.detail,
        violations=violations,
    )
