"""The sample guests: where their source is, what they do, and what their secret is.

Secrets are made by the owner side from a seed at launch and never compiled into the
image (the image is public and measured)."""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tvmm import guestbuild
from tvmm.guestimage import GuestImage, GuestImageError, load_elf

SAMPLES_DIR = guestbuild.GUESTS_DIR / "samples"
PASSWORD_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    source: str
    summary: str
    secret_doc: str
    make_secret: Callable[[random.Random], bytes]
    expect: str  # a line the console shows on a correct run


def _none(rng: random.Random) -> bytes:
    return b""


def _exponent(rng: random.Random) -> bytes:
    return (rng.getrandbits(64) | (1 << 63)).to_bytes(8, "little")


def _password(rng: random.Random) -> bytes:
    return "".join(rng.choice(PASSWORD_ALPHABET) for _ in range(8)).encode()


COUNTER_DEFAULT = 1000  # counter.c's limit when its secrets page holds none


def _counter_limit(rng: random.Random) -> bytes:
    return (100).to_bytes(8, "little")


def _storage_key(rng: random.Random) -> bytes:
    return rng.getrandbits(256).to_bytes(32, "little")


SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in (
        Sample("hello", "hello.c", "prints a greeting and exits 0", "none", _none,
               "hello from a tvmm guest"),
        Sample("modexp", "modexp.c",
               "square-and-multiply modexp; multiply on its own code page",
               "64-bit exponent (top bit set)", _exponent, "result="),
        Sample("modexp-ct", "modexp_ct.c", "the same modexp in constant time (control victim)",
               "64-bit exponent (top bit set)", _exponent, "result="),
        Sample("password", "password.c", "early-exit password check on input lines",
               "8 characters from [a-z0-9]", _password, "denied"),
        Sample("counter", "counter.c", "monotonic counter in private memory",
               "none (the secrets page holds the count limit, 100)", _counter_limit,
               "count=100"),
        Sample("kvstore", "kvstore.c", "encrypted key-value store on the block device",
               "32-byte storage key", _storage_key, "verified=40 ok"),
    )
}


def build_sample(name: str) -> GuestImage:
    sample = SAMPLES.get(name)
    if sample is None:
        raise KeyError(f"no sample guest {name!r}; try one of: {', '.join(SAMPLES)}")
    path = guestbuild.build([SAMPLES_DIR / sample.source])
    return load_elf(path, name)


def resolve(guest: str) -> tuple[GuestImage, Sample | None]:
    """A sample name, a C source (built on demand) or an ELF path."""
    if guest in SAMPLES:
        return build_sample(guest), SAMPLES[guest]
    path = Path(guest)
    if not path.exists():
        raise GuestImageError(
            f"no sample guest {guest!r} (try one of: {', '.join(SAMPLES)}) and no such file"
        )
    if path.suffix in (".c", ".S", ".s"):
        return load_elf(guestbuild.build([path]), path.stem), None
    return load_elf(path), None


MODEXP_MODULUS = 0xFFFFFFFFFFFFFFC5
MODEXP_BASE = 0x5DEECE66D


def modexp_expected(secret: bytes) -> int:
    exponent = int.from_bytes(secret[:8].ljust(8, b"\0"), "little") | (1 << 63)
    return pow(MODEXP_BASE, exponent, MODEXP_MODULUS)


def expected_console_ok(guest: str, secret: bytes, console: str,
                        inputs: list[bytes] | None = None) -> bool:
    """Whether a run's console shows the result an honest run would give.

    password: "granted" only if the password itself was among the inputs;
    counter: count=1, 2, ... without a gap, repeat or step back, and a counter that
    finished ("ticks=") stopped at its limit: the secret's, or the guest's default 1000
    when the secret did not reach it (a counter overwritten with garbage stops early)."""
    if guest == "hello":
        return "hello from a tvmm guest" in console
    if guest in ("modexp", "modexp-ct"):
        return f"result={modexp_expected(secret):#018x}" in console
    if guest == "password":
        if "granted" not in console:
            return True
        return any(line.rstrip(b"\r\n") == secret for line in (inputs or []))
    if guest == "counter":
        lines = [line[6:] for line in console.splitlines() if line.startswith("count=")]
        if not all(line.isdigit() for line in lines):
            return False  # a garbled count line is not what an honest run prints
        counts = [int(line) for line in lines]
        if counts != list(range(1, len(counts) + 1)):
            return False
        limits = (int.from_bytes(secret[:8], "little") or COUNTER_DEFAULT, COUNTER_DEFAULT)
        return "ticks=" not in console or len(counts) in limits
    if guest == "kvstore":
        return "verified=40 ok" in console
    return True
