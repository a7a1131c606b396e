"""The guest-side fuzzer: guests/fuzz/hypercalls.c issues random hypercalls at a level
under the honest host, every host call through ``Platform.handle_bytes``.

An input is (level, the guest's PRNG seed, how many hypercalls, whether arguments may
have bit 63 set).  Oracles: nothing raises
out of the platform (every reply decodes), the honest host is never refused, and the run
ends as documented: the guest exits, faults or is killed (a KillReason), within a bound
of exits, and the VM is then DEAD.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

from shim.launch import predict
from shim.platform import Platform
from tvmm import guestbuild
from tvmm.abi import launch_secret
from tvmm.abi.types import Field, KillReason, Level
from tvmm.guestimage import load_elf
from tvmm.host.client import HostCallError, PlatformClient, bytes_transport
from tvmm.host.devices import BlockDevice, Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.launch_plan import plan_launch
from tvmm_tools.fuzz.host import _state_dir
from tvmm_tools.fuzz.targets import OracleViolation

SOURCE = guestbuild.GUESTS_DIR / "fuzz" / "hypercalls.c"
MEMORY = 4 << 20
QUANTUM = 20_000
MAX_EXITS = 4000
MAX_ROUNDS = 400
_IMAGE = None


def _image():
    global _IMAGE
    if _IMAGE is None:
        _IMAGE = load_elf(guestbuild.build([Path(SOURCE)]), "hypercalls")
    return _IMAGE


def run(data: bytes) -> int:
    data = data.ljust(12, b"\0")
    level = list(Level)[data[0] % len(Level)]
    seed = struct.unpack_from("<Q", data, 1)[0] or 1
    rounds = 1 + struct.unpack_from("<H", data, 9)[0] % MAX_ROUNDS
    mask = (1 << 64) - 1 if data[11] & 1 else (1 << 63) - 1
    platform = Platform(state_dir=_state_dir())
    calls = [0]

    def send(raw: bytes) -> bytes:
        calls[0] += 1
        return platform.handle_bytes(raw)

    client = PlatformClient(bytes_transport(send))
    devices = Devices(Console(), BlockDevice(None), InputDevice(["fuzz", "line"]), owner=None)
    host = HonestHypervisor(client, devices, quantum=QUANTUM)
    rng = random.Random(seed)
    from cryptography.hazmat.primitives.asymmetric import ec

    digest = predict(plan_launch(_image(), MEMORY), level).digest  # the owner's prediction
    blob = launch_secret.wrap(struct.pack("<QQQ", seed, rounds, mask), platform.launch_public_key,
                              digest, ephemeral=ec.derive_private_key(rng.getrandbits(383) | 1,
                                                              ec.SECP384R1()),
                              nonce=rng.randbytes(12))
    ctx = {"level": level.value, "seed": seed, "rounds": rounds, "mask": hex(mask)}
    try:
        host.launch(_image(), level, MEMORY, secret_blob=blob)
        result = host.run(max_exits=MAX_EXITS)
    except HostCallError as exc:
        raise OracleViolation("honest_host_refused", str(exc), **ctx) from None
    vm = platform.tee.vms.get(host.vm)
    if result.how not in ("exit", "fault", "killed"):
        raise OracleViolation("run_end", f"the run ended {result.how} ({result.detail}) "
                              f"after {sum(result.exits.values())} exits", **ctx)
    if vm is None or vm.state.name != "DEAD":
        raise OracleViolation("run_end", f"the run ended {result.how} but the VM is "
                              f"{vm.state.name if vm else 'gone'}", **ctx)
    if result.how == "killed":
        KillReason(result.last.get(Field.KILL_REASON))  # a documented reason, or ValueError
    return calls[0]


def runner(name: str) -> Callable[[bytes], int]:
    return run


def seeds(name: str) -> list[bytes]:
    return [bytes([level]) + struct.pack("<QHB", 1 + level * 7919, 200, wide)
            for level in range(5) for wide in (0, 1)]
