"""Keys come from the OS, inside the component that owns them (docs/threat-model.md, the
key table): a run's seed is public, so nothing secret may follow from it, and no key may
sit where any code in the process can reach it through a module global."""

from __future__ import annotations

import random
import re
import sys
import types
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from cryptography.hazmat.primitives.ciphers import CipherContext
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shim.platform import Platform
from tvmm.abi import launch_secret
from tvmm.abi.guest import SHARED_BASE
from tvmm.abi.key_release import KeyReleaseFormatError, UnwrapError, WrappedSecret, unwrap
from tvmm.abi.messages import CreateVm
from tvmm.abi.types import Level
from tvmm.hw.vmsa import VMSA_SIZE
from tvmm.machine import DEFAULT_MEMORY, boot, make_machine, owner_endpoint, wrap_secret
from tvmm.owner.endpoint import OwnerEndpoint
from tvmm.samples import SAMPLES, build_sample

SEED = 0  # the CLI's default: public
_TESTS = Path(__file__).resolve().parents[1]
SHARED_SIZE = 0x10000


class Relay:
    """What a host relaying the owner's answers keeps: every answer's bytes."""

    def __init__(self, owner: OwnerEndpoint) -> None:
        self.owner, self.answers = owner, []

    def __getattr__(self, name: str):
        return getattr(self.owner, name)

    def __call__(self, message: bytes) -> bytes:
        answer = self.owner(message)
        self.answers.append(answer)
        return answer


def _attested_run(image) -> Relay:
    secret = SAMPLES["modexp"].make_secret(random.Random(SEED))
    relay = Relay(owner_endpoint(image, secret))
    result = boot("modexp", Level.SNP, seed=SEED, owner=relay)  # type: ignore[arg-type]
    assert result.how == "exit" and result.key_release["released"]
    return relay


def _seed_derived_keys(seed: int) -> list[ec.EllipticCurvePrivateKey]:
    """Every P-384 key a host could derive from the seed the way the TEE once did
    (random.Random(seed) and the attestation stream seed ^ 0xA77E57, first draws)."""
    keys = []
    for stream in (seed, seed ^ 0xA77E57, seed ^ 0x4E4E):
        for skipped in range(3):
            rng = random.Random(stream)
            for _ in range(skipped):
                rng.randbytes(32)
            keys.append(ec.derive_private_key(rng.getrandbits(383) | 1, ec.SECP384R1()))
    return keys


@pytest.fixture(scope="module")
def modexp():
    return build_sample("modexp")


def test_the_guest_key_differs_between_two_runs_with_the_same_seed(modexp):
    first, second = _attested_run(modexp), _attested_run(modexp)
    assert first.releases[0].guest_key != second.releases[0].guest_key
    assert first.releases[0].nonce != second.releases[0].nonce


def test_the_tees_keys_differ_between_two_platforms(modexp):
    platforms = [Platform(), Platform()]
    launch = [p.launch_public_key.public_numbers() for p in platforms]
    assert launch[0] != launch[1]
    vms = []
    for platform in platforms:
        reply = platform.handle(CreateVm(Level.SHIM, DEFAULT_MEMORY, SHARED_BASE, SHARED_SIZE))
        vms.append(platform.vm(reply.value))
    page, state, nonce = bytes(4096), bytes(64), bytes(12)
    memory = [vm.memory.mee.encrypt_page(0x200000, page) for vm in vms]
    save_area = [vm.vmsa_cipher.encrypt(bytes(VMSA_SIZE)) for vm in vms]
    sealed = [vm.sealer.seal_with_nonce(state, 1, 0, 1, nonce) for vm in vms]
    assert memory[0] != memory[1] and save_area[0] != save_area[1] and sealed[0] != sealed[1]
    chips = [p.chip for p in platforms]  # the chip's identity is persistent: one VCEK
    assert chips[0].vcek_cert == chips[1].vcek_cert


def test_policy_draws_differ_between_two_vms():
    draws = []
    for platform in (Platform(), Platform()):
        reply = platform.handle(CreateVm(Level.SHIM, DEFAULT_MEMORY, SHARED_BASE, SHARED_SIZE))
        step = platform.vm(reply.value).policies.step
        draws.append([step.quantum(1)[0] for _ in range(16)])
    assert draws[0] != draws[1]


def test_a_launch_secret_does_not_open_with_keys_derived_from_the_seed(modexp):
    machine = make_machine(seed=SEED, image=modexp, level=Level.SNP)
    blob = wrap_secret(machine, b"the owner's launch secret", modexp, Level.SNP)
    assert launch_secret.unwrap(blob, machine.platform.tee.launch_key).secret == (
        b"the owner's launch secret")  # the TEE opens it
    for key in _seed_derived_keys(SEED):
        with pytest.raises(launch_secret.LaunchSecretError):
            launch_secret.unwrap(blob, key)
    machine.close()


def test_a_released_secret_does_not_open_with_keys_derived_from_the_seed(modexp):
    relay = _attested_run(modexp)
    release = relay.releases[0]
    wrapped = WrappedSecret.from_bytes(next(a for a in relay.answers if a.startswith(b"TVKR")))
    measurement = relay.policy.measurement
    for key in _seed_derived_keys(SEED):
        with pytest.raises((UnwrapError, KeyReleaseFormatError)):
            unwrap(wrapped, key, release.nonce, measurement)


# -- no key in a module global ---------------------------------------------------------------
_KEY_TYPES = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, x25519.X25519PrivateKey,
              AESGCM, CipherContext)
_PEM = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\s*[A-Za-z0-9+/=]{16}")


def _is_test(module: types.ModuleType) -> bool:
    """Test modules keep known-answer keys (public test vectors) on purpose."""
    return Path(getattr(module, "__file__", None) or "/").resolve().is_relative_to(_TESTS)


def keys_reachable_from_modules(secrets: list[bytes]) -> list[str]:
    """Paths from a module global to a private key object, a PEM private key, or one of
    ``secrets``, through containers, instance and class dictionaries, slots and closures
    (modules are roots, never walked through)."""
    found: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[object, str]] = [
        (vars(module), name) for name, module in list(sys.modules.items())
        if isinstance(module, types.ModuleType) and not _is_test(module)]
    while stack:
        obj, path = stack.pop()
        if id(obj) in seen or isinstance(obj, types.ModuleType):
            continue
        seen.add(id(obj))
        if isinstance(obj, _KEY_TYPES):
            found.append(f"{path}: {type(obj).__name__}")
            continue
        if isinstance(obj, (bytes, bytearray, str)):
            data = obj.encode("latin-1", "replace") if isinstance(obj, str) else bytes(obj)
            if _PEM.search(data) or any(s in data for s in secrets):
                found.append(f"{path}: key bytes")
            continue
        if isinstance(obj, dict):
            stack.extend((v, f"{path}[{k!r}]") for k, v in list(obj.items()))
            stack.extend((k, f"{path}.key") for k in list(obj) if not isinstance(k, str))
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend((v, f"{path}[]") for v in list(obj))
        elif isinstance(obj, types.FunctionType):
            stack.extend((c.cell_contents, f"{path}.<closure>") for c in obj.__closure__ or ()
                         if c.cell_contents is not None)
            stack.extend((v, f"{path}.{k}") for k, v in vars(obj).items())
        elif isinstance(obj, type):
            if obj.__module__.split(".")[0] in ("tvmm", "shim", "tvmm_tools", "tests"):
                stack.extend((v, f"{path}.{k}") for k, v in list(vars(obj).items()))
        elif type(obj).__module__.split(".")[0] in ("tvmm", "shim", "tvmm_tools", "tests",
                                                    "functools", "random", "collections"):
            if hasattr(obj, "__dict__"):
                stack.extend((v, f"{path}.{k}") for k, v in list(vars(obj).items()))
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if hasattr(obj, slot):
                        stack.append((getattr(obj, slot), f"{path}.{slot}"))
    return found


def _secrets_of(platform: Platform) -> list[bytes]:
    def scalar(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_numbers().private_value.to_bytes(48, "big")

    secrets = [scalar(platform.tee.launch_key), scalar(platform.chip.key)]
    secrets += [vm.memory.mee._key for vm in platform.tee.vms.values() if vm.memory.mee]
    return secrets


def test_no_private_key_is_reachable_from_a_module_global(modexp):
    _attested_run(modexp)  # the chip's keys loaded, a guest key pair made and used
    machine = make_machine(seed=SEED, image=modexp, level=Level.SHIM)
    machine.platform.handle(CreateVm(Level.SHIM, DEFAULT_MEMORY, SHARED_BASE, SHARED_SIZE))
    assert keys_reachable_from_modules(_secrets_of(machine.platform)) == []
    machine.close()


def test_the_walk_finds_a_key_left_in_a_module_global(monkeypatch):
    platform = Platform()
    platform.handle(CreateVm(Level.SNP, DEFAULT_MEMORY, SHARED_BASE, SHARED_SIZE))
    secrets = _secrets_of(platform)
    module = sys.modules["tvmm.machine"]
    for planted in ({"cache": [platform.chip]}, platform.tee.launch_key, secrets[-1]):
        monkeypatch.setattr(module, "_PLANTED", planted, raising=False)
        assert keys_reachable_from_modules(secrets), planted
        monkeypatch.delattr(module, "_PLANTED")
