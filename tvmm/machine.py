"""Assembly: one modeled TEE, one host, one guest owner — wired together for a run.

This is the only place (with the CLI and tests) that holds both sides: it builds the
platform, gives the host nothing but a transport to it and a link to the guest owner, and
returns what the run produced.  The guest gets its secret one of two ways:

- ``attested`` (the default): the secrets page starts empty; the guest asks its owner,
  whose key broker releases the secret only to a report that verifies against the
  measurement the owner predicted from the image (docs/attestation.md);
- ``launch``: the SEV-style launch secret, wrapped to the platform's launch key, bound to
  the launch digest the owner predicts for the image at the level, and relayed by the
  host at ADD_PAGES; the TEE writes it into the guest only if FINALIZE measures that
  digest (what the attack judge uses).
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
from cryptography.hazmat.primitives.asymmetric import ec

import tvmm
from shim.launch import predict
from shim.levels import FEATURES
from shim.platform import Platform
from shim.policies.config import PolicyConfig
from tvmm.abi import launch_secret
from tvmm.abi.trace_events import EventKind, NullRecorder, TraceHeader
from tvmm.abi.types import Level
from tvmm.guestimage import GuestImage
from tvmm.host.client import PlatformClient, Transport, bytes_transport
from tvmm.host.devices import BlockDevice, Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor, RunResult
from tvmm.hw.root_of_trust import public_chain
from tvmm.launch_plan import plan_launch
from tvmm.owner.broker import ReleasePolicy
from tvmm.owner.endpoint import OwnerEndpoint
from tvmm.owner.ledger import LaunchLedger, LedgerError
from tvmm.owner.verify import CertChain
from tvmm.samples import Sample, resolve
from tvmm.trace.recorder import TraceRecorder

DEFAULT_MEMORY = 4 << 20
SECRET_PATHS = ("attested", "launch")


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


def trace_header(image: GuestImage | None, level: Level, seed: int | None,
                 extra: dict | None = None) -> dict:
    """The fields of a run's trace header (tvmm.abi.trace_events.TraceHeader), as data."""
    return {"guest": image.name if image else "?", "level": level.value,
            "seed": seed if seed is not None else -1, "versions": versions(),
            "elf": str(image.path) if image else None,
            "elf_sha256": image.sha256 if image else None,
            "symbols": [list(s) for s in image.symbols] if image else [],
            "extra": extra or {}}


def make_machine(*, seed: int | None = 0, trace: Path | str | None = None,
                 image: GuestImage | None = None, level: Level = Level.PLAIN,
                 policy_config: PolicyConfig | None = None, wire: bool = False,
                 extra_header: dict | None = None,
                 state_dir: Path | str | None = None) -> Machine:
    recorder: object = NullRecorder()
    if trace is not None:
        recorder = TraceRecorder(trace, TraceHeader(**trace_header(image, level, seed,
                                                                   extra_header)))
    platform = Platform(recorder=recorder, policy_config=policy_config, state_dir=state_dir)
    transport: Transport = (bytes_transport(platform.handle_bytes) if wire else platform.handle)
    return Machine(platform, PlatformClient(transport), recorder, image)


def wrap_secret(machine: Machine, secret: bytes, image: GuestImage, level: Level,
                memory: int = DEFAULT_MEMORY) -> bytes:
    """The owner's side: wrap the secret to the platform's launch key, bound to the launch
    digest it predicts for ``image`` launched at ``level`` with ``memory`` (a fresh
    ephemeral key and nonce from the OS: the run's seed is public)."""
    if not secret:
        return b""
    return launch_secret.wrap(secret, machine.platform.launch_public_key,
                              expected_measurement(image, memory, level))


def expected_measurement(image: GuestImage, memory: int = DEFAULT_MEMORY,
                         level: Level = Level.SNP) -> bytes:
    """The owner's prediction of the launch digest at ``level`` (the level is measured: its
    SEV_FEATURES are in the VMSA page): the launch plan through the pure PAGE_INFO chain,
    without booting (what ``tvmm measure`` prints)."""
    return predict(plan_launch(image, memory), level).digest


def chip_chain(state_dir: Path | str | None = None) -> CertChain:
    """The modeled chip's certificates (ARK, ASK, VCEK): public, as the vendor's key
    distribution service serves a VCEK; the chip of every Platform on ``state_dir``."""
    return CertChain(*public_chain(state_dir))


def owner_endpoint(image: GuestImage, secret: bytes, *,
                   memory: int = DEFAULT_MEMORY, policy: ReleasePolicy | None = None,
                   nonce: bytes | None = None, state_dir: Path | str | None = None,
                   level: Level = Level.SNP, ledger: LaunchLedger | None = None,
                   launch_key: Callable[[], ec.EllipticCurvePublicKey] | None = None,
                   launch_level: Level | None = None,
                   clock: Callable[[], float] = time.time) -> OwnerEndpoint:
    """The guest owner's key broker for ``secret``: it releases only to ``image`` launched
    at ``level`` as the owner predicts its measurement (or to what ``policy`` says), on a
    chip of the modeled manufacturer, whose root (ARK) it pins; with ``launch_key`` it
    also issues launch secrets, one per launch, each bound to the digest it predicts for
    ``image`` at ``launch_level`` (default ``level``: below snp, where no report is
    signed, the attested policy's level and the launch's differ); ``ledger`` counts and
    audits releases against the policy's launch budget."""
    if policy is None:
        policy = ReleasePolicy(measurement=expected_measurement(image, memory, level))
    launch_digest = None
    if launch_key is not None:
        launch_digest = expected_measurement(image, memory, launch_level or level)
    return OwnerEndpoint(
        policy, secret,
        trust_anchor=lambda: chip_chain(state_dir).ark,
        chain=lambda: chip_chain(state_dir),
        nonce=nonce, launch_key=launch_key, launch_digest=launch_digest, ledger=ledger,
        clock=clock,
    )


def default_secret_path(level: Level) -> str:
    """How a guest at ``level`` gets its secret unless told: attested where the chip signs
    reports (from snp, where the ownership table guards the guest), else the SEV-style launch
    secret — as real SEV and SEV-ES guests get theirs, with no report to verify."""
    return "attested" if FEATURES[level].ownership else "launch"


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
    secret_path: str = "attested"
    key_release: dict | None = None  # attested: what the owner's broker did

    @property
    def mips(self) -> float | None:
        return self.retired / self.wall_s / 1e6 if self.retired and self.wall_s else None


def boot(guest: str, level: Level = Level.PLAIN, *, seed: int | None = 0,
         trace: Path | str | None = None, quantum: int = 0, memory: int = DEFAULT_MEMORY,
         policy_config: PolicyConfig | None = None, secret: bytes | None = None,
         input_lines: Iterable[str] = (), disk: Path | None = None,
         on_console: Callable[[str], None] | None = None, wire: bool = False,
         tick_vector: int | None = None, max_exits: int | None = None,
         secret_path: str | None = None, owner: OwnerEndpoint | None = None,
         release_policy: ReleasePolicy | None = None, nonce: bytes | None = None,
         state_dir: Path | str | None = None, guest_policy: int | None = None) -> BootReport:
    """Boot ``guest`` (a sample name, a C file or an ELF) at ``level`` under the honest host.

    ``secret_path`` "attested" (default) releases the secret through ``owner`` (default: a
    broker for the image's predicted measurement, or ``release_policy``); "launch" relays
    the SEV-style launch secret at ADD_PAGES instead."""
    if secret_path is None:
        secret_path = default_secret_path(level)
    if secret_path not in SECRET_PATHS:
        raise ValueError(f"secret path {secret_path!r} is not one of {SECRET_PATHS}")
    image, sample = resolve(guest)
    memory = max(memory, sample.memory) if sample else memory  # a Linux image's
    if secret is None:
        secret = sample.make_secret(random.Random(seed)) if sample else b""
    machine = make_machine(seed=seed, trace=trace, image=image, level=level,
                           policy_config=policy_config, wire=wire, state_dir=state_dir)
    if sample and sample.name == "password" and not input_lines:
        input_lines = ["guess", "letmein"]
    if secret_path == "attested" and owner is None:
        owner = owner_endpoint(image, secret, memory=memory, policy=release_policy,
                               nonce=nonce, state_dir=state_dir, level=level)
    devices = Devices(Console(on_console), BlockDevice(disk), InputDevice(input_lines),
                      owner=owner if secret_path == "attested" else None)
    host = HonestHypervisor(machine.client, devices, quantum=quantum, tick_vector=tick_vector)
    blob = wrap_secret(machine, secret, image, level, memory) if secret_path == "launch" \
        else b""
    launch_options = {} if guest_policy is None else {"policy": guest_policy}
    try:
        start = time.perf_counter()
        digest = host.launch(image, level, memory, secret_blob=blob, **launch_options)
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
        violations=violations, secret_path=secret_path,
        key_release=_key_release_summary(owner) if secret_path == "attested" else None,
    )


def _key_release_summary(owner: OwnerEndpoint | None) -> dict | None:
    if owner is None:
        return None
    last = owner.releases[-1] if owner.releases else None
    try:
        budget: dict = owner.budget().to_dict()
    except LedgerError as exc:
        budget = {"error": str(exc)}
    return {
        "expected_measurement": (owner.policy.measurement.hex() if owner.policy.measurement
                                 else None),  # None: any build registered under the policy
        "challenges": len(owner.challenges),
        "attempts": len(owner.releases),
        "released": bool(last and last.released),
        "refusal": last.reason.value if last is not None and last.reason is not None else None,
        "budget": budget,  # launches used and left (launches/left None: no budget)
    }
