"""``tvmm boot`` across the boundary: the TEE in one process, the honest host in another,
the guest owner here (a third party the host reaches only by relayed messages)."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from shim.policies.config import PolicyConfig
from tvmm import guestlinux
from tvmm.abi.trace_events import EventKind
from tvmm.abi.types import Level
from tvmm.guestimage import GuestImage
from tvmm.harness import launcher
from tvmm.machine import (
    DEFAULT_MEMORY,
    SECRET_PATHS,
    BootReport,
    _key_release_summary,
    default_secret_path,
    owner_endpoint,
    trace_header,
    wrap_secret,
)
from tvmm.owner.broker import ReleasePolicy
from tvmm.owner.endpoint import OwnerEndpoint
from tvmm.samples import resolve


@dataclass(frozen=True)
class LaunchKey:
    """What the owner's wrapping needs of a platform: its public launch key."""

    launch_public_key: object


@dataclass(frozen=True)
class PublicPlatform:
    platform: LaunchKey


def wrap_to(session: launcher.Session, secret: bytes, image: GuestImage, level: Level,
            memory: int) -> bytes:
    """The owner wraps ``secret`` to the TEE process's public launch key, bound to the
    digest it predicts for ``image`` at ``level``."""
    return wrap_secret(PublicPlatform(LaunchKey(session.launch_key)), secret, image, level,
                       memory)


def boot(guest: str, level: Level = Level.PLAIN, *, seed: int | None = 0,
         trace: Path | str | None = None, quantum: int = 0, memory: int = DEFAULT_MEMORY,
         policy_config: PolicyConfig | None = None, secret: bytes | None = None,
         input_lines: Iterable[str] = (), disk: Path | None = None,
         on_console: Callable[[str], None] | None = None, link: str = launcher.DEFAULT_LINK,
         tick_vector: int | None = None, max_exits: int | None = None,
         secret_path: str | None = None, owner: OwnerEndpoint | None = None,
         release_policy: ReleasePolicy | None = None, nonce: bytes | None = None,
         state_dir: Path | str | None = None, guest_policy: int | None = None,
         receipt: bytes | None = None,
         on_output: Callable[[bytes], None] | None = None,
         time_limit: float | None = None) -> BootReport:
    """As tvmm.machine.boot, with the TEE and the host in processes of their own.
    ``receipt``: a transparency bundle the host presents with the guest's evidence;
    ``on_output`` gets each console write's bytes as the guest wrote them.  With
    ``time_limit`` (seconds of the run, launch included) a guest still running then is
    stopped: the report's ``how`` is ``time_limit``."""
    if secret_path is None:
        secret_path = default_secret_path(level)
    if secret_path not in SECRET_PATHS:
        raise ValueError(f"secret path {secret_path!r} is not one of {SECRET_PATHS}")
    image, sample = resolve(guest)
    memory = max(memory, sample.memory) if sample else memory  # a Linux image's
    if secret is None:
        secret = sample.make_secret(random.Random(seed)) if sample else b""
    if sample and sample.name == "password" and not input_lines:
        input_lines = ["guess", "letmein"]
    if secret_path == "attested" and owner is None:
        owner = owner_endpoint(image, secret, memory=memory, policy=release_policy,
                               nonce=nonce, state_dir=state_dir, level=level)
    session = launcher.start(policy_config=policy_config, state_dir=state_dir,
                             trace=trace, header=trace_header(image, level, seed),
                             link=link, separate=disk is None)  # a disk: by its path
    try:
        blob = wrap_to(session, secret, image, level, memory) if secret_path == "launch" \
            else b""
        session.start_job({
            "job": "boot", "image": str(image.path), "guest": image.name,
            "image_data": base64.b64encode(image.path.read_bytes()).decode(),
            "level": level.value, "memory": memory, "secret_blob": blob.hex(),
            "quantum": quantum, "tick_vector": tick_vector, "max_exits": max_exits,
            "input": [str(line) for line in input_lines],
            "disk": str(disk) if disk is not None else None, "live": True,
            "owner": secret_path == "attested", "guest_policy": guest_policy,
            "receipt": receipt.hex() if receipt is not None else None})
        start = time.perf_counter()
        result = session.serve(owner if secret_path == "attested" else None, on_console,
                               on_output, time_limit=time_limit)
        wall = time.perf_counter() - start
        if result is not None and result.get("how") == "time_limit":
            return _stopped(image.name, level, wall, time_limit, secret_path,
                            expected=0 if sample else None)
        if result is None or "error" in result:
            why = "the host process died" if result is None else result["error"]
            raise launcher.HarnessError(f"boot failed: {why}")
        records = {r["id"]: r for r in session.records()}
        violations = records.get(result["vm"], {}).get("violations", [])
        end = {"how": result["how"], "status": result["status"],
               "instructions": result["retired"] or None, "exits": result["exits"],
               "wall_s": wall}
        # A Linux program's calls the personality answered -ENOSYS (it counts them on
        # the console: no syscall leaves the guest), for `tvmm trace stats`.
        if (unsupported := guestlinux.unsupported_calls(result["console"])) is not None:
            end["unsupported_syscalls"] = unsupported
        session.emit(EventKind.END.value, result["how"], inside=end)
    finally:
        session.close()
    return BootReport(
        guest=image.name, level=level.value, how=result["how"], status=result["status"],
        expected_status=0 if sample else None, console=result["console"],
        exits=result["exits"], wall_s=result["wall_s"], retired=result["retired"],
        entries=result["entries"], launch_digest=result["launch_digest"],
        detail=result["detail"], violations=violations, secret_path=secret_path,
        key_release=_key_release_summary(owner) if secret_path == "attested" else None)


def _stopped(guest: str, level: Level, wall: float, limit: float, secret_path: str,
             expected: int | None) -> BootReport:
    """The report of a run ended by its time limit: the TEE was killed inside the guest,
    so there is no count of exits (its trace, if asked for, holds every event so far)."""
    return BootReport(
        guest=guest, level=level.value, how="time_limit", status=None,
        expected_status=expected, console="", exits={}, wall_s=wall, retired=0, entries=0,
        launch_digest="", secret_path=secret_path,
        detail=f"still running after {limit:g} s: stopped (--time-limit SECONDS sets the "
               "limit, 0 removes it)")
