"""The sample guests: where their source is, what they do, and what their secret is.

Secrets are made by the owner side at launch and never compiled into the image (the image
is public and measured): a scored run draws them from the OS (tvmm.judge.draw_secret);
``tvmm boot`` makes a test secret from its public seed."""

from __future__ import annotations

import functools
import random
import string
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from tvmm import guestbuild, guestlinux
from tvmm.guestimage import GuestImage, GuestImageError, load_elf

SAMPLES_DIR = guestbuild.GUESTS_DIR / "samples"
VICTIMS_DIR = guestbuild.GUESTS_DIR / "victims"
SECRET_CAPACITY = 4096 - 8  # the secrets page: u64 length, then the bytes
PASSWORD_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    source: str
    summary: str
    secret_doc: str
    make_secret: Callable[[random.Random], bytes]
    expect: str  # a line the console shows on a correct run
    form: str = "bits"  # how the judge reads the secret: "bits", or "symbols" of ``alphabet``
    alphabet: str = ""
    varies: tuple[str, ...] = ()  # console lines starting so depend on the host's schedule
    linux: bool = False  # a Linux program (gcc -static), run by the personality (docs/linux.md)
    libraries: tuple[str, ...] = ()  # the static libraries it links (-l names)
    packages: tuple[str, ...] = ()  # the Debian packages that hold them
    memory: int = 0  # guest memory it needs (a Linux image's, known once built); 0: default


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
               "8 characters from [a-z0-9]", _password, "denied", "symbols",
               PASSWORD_ALPHABET),
        Sample("counter", "counter.c", "monotonic counter in private memory",
               "none (the secrets page holds the count limit, 100)", _counter_limit,
               "count=100", varies=("ticks=",)),
        Sample("kvstore", "kvstore.c", "encrypted key-value store on the block device",
               "32-byte storage key", _storage_key, "verified=40 ok"),
    )
}


def _random_bytes(size: int, rng: random.Random) -> bytes:
    return rng.getrandbits(8 * size).to_bytes(size, "little")


def _random_symbols(size: int, alphabet: str, rng: random.Random) -> bytes:
    return "".join(rng.choice(alphabet) for _ in range(size)).encode("ascii")


SETTINGS = {"secret_bytes", "description", "form", "alphabet", "varies", "linux", "libraries",
            "packages"}


def declared(source: Path) -> Sample | None:
    """The secret a guest's owner declares in ``<name>.toml`` beside its source (None
    without one): ``secret_bytes`` (its size), optional ``form`` — "bits" (the default:
    random bytes, every bit scored) or "symbols" (each byte one character of
    ``alphabet``, scored per character) — ``description``, and ``varies``: prefixes of
    console lines whose content depends on the host's scheduling (timer ticks), left out
    when the judge compares a run with the owner's reference run (docs/guests.md)."""
    spec = source.with_suffix(".toml")
    if not spec.is_file():
        return None
    try:
        data = tomllib.loads(spec.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise GuestImageError(f"{spec}: not a readable TOML file ({exc})") from None
    unknown = set(data) - SETTINGS
    if unknown:
        raise GuestImageError(f"{spec}: unknown setting {sorted(unknown)[0]!r} "
                              f"(known: {', '.join(sorted(SETTINGS))})")
    size, description = data.get("secret_bytes"), data.get("description", "")
    form, alphabet, varies = data.get("form", "bits"), data.get("alphabet", ""), \
        data.get("varies", [])
    if type(size) is not int or not 0 <= size <= SECRET_CAPACITY:
        raise GuestImageError(f"{spec}: secret_bytes must be an integer in [0, {SECRET_CAPACITY}]")
    if not isinstance(description, str):
        raise GuestImageError(f"{spec}: description must be a string")
    if form not in ("bits", "symbols"):
        raise GuestImageError(f"{spec}: form must be \"bits\" or \"symbols\"")
    if form == "symbols" and not (isinstance(alphabet, str) and alphabet.isascii()
                                  and alphabet.isprintable() and len(alphabet) >= 2
                                  and len(set(alphabet)) == len(alphabet)):
        raise GuestImageError(f"{spec}: a secret of symbols needs an alphabet of at least 2 "
                              "distinct printable ASCII characters")
    if form == "bits" and alphabet:
        raise GuestImageError(f"{spec}: alphabet goes with form = \"symbols\"")
    if not (isinstance(varies, list) and all(isinstance(v, str) and v for v in varies)):
        raise GuestImageError(f"{spec}: varies must be a list of non-empty strings")
    linux, libraries, packages = (data.get("linux", False), data.get("libraries", []),
                                  data.get("packages", []))
    if not isinstance(linux, bool):
        raise GuestImageError(f"{spec}: linux must be true or false")
    for key, names in (("libraries", libraries), ("packages", packages)):
        if not (isinstance(names, list) and all(isinstance(n, str) and n.replace("-", "")
                                                .replace("_", "").replace(".", "").isalnum()
                                                for n in names)):
            raise GuestImageError(f"{spec}: {key} must be a list of names")
        if names and not linux:
            raise GuestImageError(f"{spec}: {key} go with linux = true")
    if form == "symbols":
        make, doc = functools.partial(_random_symbols, size, alphabet), \
            f"{size} characters from {alphabet!r}"
    else:
        make, doc = functools.partial(_random_bytes, size), f"{size} random bytes"
    return Sample(source.stem, str(source), description, doc, make, "result=", form,
                  alphabet if form == "symbols" else "", tuple(varies), linux,
                  tuple(libraries), tuple(packages))


def _victims() -> dict[str, Sample]:
    """The victim guests of guests/victims: each a C source with its declaration."""
    found = (declared(source) for source in sorted(VICTIMS_DIR.glob("*.c")))
    return {v.name: v for v in found if v is not None}


VICTIMS: dict[str, Sample] = _victims()


def build_sample(name: str) -> GuestImage:
    sample = SAMPLES.get(name) or VICTIMS.get(name)
    if sample is None:
        raise KeyError(f"no sample guest {name!r}; try one of: {', '.join(SAMPLES)}")
    return _built(sample)[0]


def _built(sample: Sample) -> tuple[GuestImage, Sample]:
    """The sample's image, and the sample with the memory its image needs."""
    source = SAMPLES_DIR / sample.source  # a victim's source is absolute
    if not sample.linux:
        return load_elf(guestbuild.build([source]), sample.name), sample
    try:
        program = guestlinux.build_program(source, sample.libraries, sample.packages)
        image = guestlinux.build(program)
    except guestlinux.LinuxImageError as exc:
        raise GuestImageError(str(exc)) from None
    return load_elf(image.path, sample.name), replace(sample, memory=image.memory)


def source_files(guest: str) -> list[Path]:
    """The C sources a sample, victim or .c guest is built from (KeyError for an ELF,
    whose sources tvmm does not know)."""
    known = SAMPLES.get(guest) or VICTIMS.get(guest)
    if known is not None:
        return [SAMPLES_DIR / known.source]
    if Path(guest).suffix in (".c", ".S", ".s"):
        return [Path(guest)]
    raise KeyError(f"{guest}: a claim needs the guest's sources (a sample name or a .c file)")


def resolve(guest: str) -> tuple[GuestImage, Sample | None]:
    """A sample or victim name, a C source (built on demand; its secret as declared beside
    it, if it is) or an ELF path."""
    known = SAMPLES.get(guest) or VICTIMS.get(guest)
    if known is not None:
        return _built(known)
    path = Path(guest)
    if not path.exists():
        raise GuestImageError(
            f"no sample guest {guest!r} (try one of: {', '.join(SAMPLES)}) and no such file"
        )
    if path.suffix in (".c", ".S", ".s"):
        sample = declared(path)
        if sample is not None and sample.linux:
            return _built(replace(sample, source=str(path.resolve())))
        return load_elf(guestbuild.build([path]), path.stem), sample
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
