"""The SEV-SNP ATTESTATION_REPORT: one codec for the 0x4A0-byte structure the chip signs.

Layout per the AMD SEV-SNP ABI specification, table "ATTESTATION_REPORT Structure"
(report versions 2 and 3, as Milan firmware emits them); integers are little-endian and
every reserved byte must be zero. The chip signs bytes [0, 0x2A0) with ECDSA P-384 /
SHA-384 and stores r and s as 72-byte little-endian integers at 0x2A0 and 0x2E8.

Decoding is strict and happens once: ``parse`` turns untrusted bytes into a frozen
AttestationReport or raises ReportFormatError naming the offending field. ``parse``
does not check the signature; that is the verifier's job (tvmm.owner.verify).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields, replace

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
SUPPORTED_VERSIONS = (2, 3)
SIGNATURE_COMPONENT_SIZE = 72
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973",
    16,
)
"""n, the order of the P-384 group (SEC 2): (r, s) and (r, n - s) verify alike, so the chip
writes the low one, s <= n // 2, and the verifier accepts no other (docs/attestation.md)."""

# (field name, struct code); names starting with "_reserved" must be zero on the wire.
_LAYOUT: tuple[tuple[str, str], ...] = (
    ("version", "I"),
    ("guest_svn", "I"),
    ("policy", "Q"),
    ("family_id", "16s"),
    ("image_id", "16s"),
    ("vmpl", "I"),
    ("signature_algo", "I"),
    ("current_tcb", "Q"),
    ("platform_info", "Q"),
    ("flags", "I"),
    ("_reserved_04c", "I"),
    ("report_data", "64s"),
    ("measurement", "48s"),
    ("host_data", "32s"),
    ("id_key_digest", "48s"),
    ("author_key_digest", "48s"),
    ("report_id", "32s"),
    ("report_id_ma", "32s"),
    ("reported_tcb", "Q"),
    ("cpuid_fam_id", "B"),
    ("cpuid_mod_id", "B"),
    ("cpuid_step", "B"),
    ("_reserved_18b", "21s"),
    ("chip_id", "64s"),
    ("committed_tcb", "Q"),
    ("current_build", "B"),
    ("current_minor", "B"),
    ("current_major", "B"),
    ("_reserved_1eb", "B"),
    ("committed_build", "B"),
    ("committed_minor", "B"),
    ("committed_major", "B"),
    ("_reserved_1ef", "B"),
    ("launch_tcb", "Q"),
    ("_reserved_1f8", "168s"),
    ("signature_r", "72s"),
    ("signature_s", "72s"),
    ("_reserved_330", "368s"),
)

_STRUCT = struct.Struct("<" + "".join(code for _, code in _LAYOUT))
assert _STRUCT.size == REPORT_SIZE, "ATTESTATION_REPORT must be 0x4A0 bytes"


def _offsets() -> dict[str, int]:
    result, at = {}, 0
    for name, code in _LAYOUT:
        result[name] = at
        at += struct.calcsize("<" + code)
    return result


OFFSETS: dict[str, int] = _offsets()
"""Byte offset of every field, for documentation, tests and mutation tooling."""

assert (OFFSETS["report_data"], OFFSETS["measurement"], OFFSETS["host_data"]) == (
    0x50,
    0x90,
    0xC0,
)
assert (OFFSETS["reported_tcb"], OFFSETS["chip_id"], OFFSETS["launch_tcb"]) == (
    0x180,
    0x1A0,
    0x1F0,
)
assert (OFFSETS["signature_r"], OFFSETS["signature_s"]) == (SIGNED_SIZE, 0x2E8)

_RESERVED = tuple(name for name, _ in _LAYOUT if name.startswith("_reserved"))


class ReportFormatError(ValueError):
    """Bytes or values that are not a well-formed report; ``field`` names the culprit."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"attestation report {field_name}: {problem}")
        self.field = field_name


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """A Milan TCB_VERSION: security patch levels packed into a u64.

    Byte 0 boot_loader, byte 1 tee, bytes 2-5 reserved (zero), byte 6 snp, byte 7
    microcode. TCBs are compared component by component, never as integers.
    """

    boot_loader: int = 0
    tee: int = 0
    snp: int = 0
    microcode: int = 0

    def __post_init__(self) -> None:
        for name in ("boot_loader", "tee", "snp", "microcode"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= 0xFF:
                raise ValueError(f"TCB {name} must be an integer in [0, 255], got {value!r}")

    @classmethod
    def from_u64(cls, value: int) -> TcbVersion:
        if type(value) is not int or not 0 <= value < 1 << 64:
            raise ValueError(f"TCB value {value!r} is not a u64")
        raw = value.to_bytes(8, "little")
        if any(raw[2:6]):
            raise ValueError(f"TCB {value:#018x} has non-zero reserved bytes 2-5")
        return cls(boot_loader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def to_u64(self) -> int:
        raw = bytes((self.boot_loader, self.tee, 0, 0, 0, 0, self.snp, self.microcode))
        return int.from_bytes(raw, "little")

    def meets(self, minimum: TcbVersion) -> bool:
        """True when every component is at least the one in ``minimum``."""
        return (
            self.boot_loader >= minimum.boot_loader
            and self.tee >= minimum.tee
            and self.snp >= minimum.snp
            and self.microcode >= minimum.microcode
        )


_POLICY_SMT = 1 << 16
_POLICY_RESERVED_ONE = 1 << 17
_POLICY_MIGRATE_MA = 1 << 18
_POLICY_DEBUG = 1 << 19
_POLICY_SINGLE_SOCKET = 1 << 20
_POLICY_KNOWN = (1 << 21) - 1


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """The SNP guest policy u64 the guest owner chose at launch.

    Bits 0-7 ABI minor, 8-15 ABI major, 16 SMT allowed, 17 reserved (must be one),
    18 migration agent allowed, 19 debug allowed, 20 single socket only; bits 21-63
    must be zero (later firmware defines them; we model Milan's ABI).
    """

    abi_minor: int = 0
    abi_major: int = 0
    smt: bool = True
    migrate_ma: bool = False
    debug: bool = False
    single_socket: bool = False

    def __post_init__(self) -> None:
        for name in ("abi_minor", "abi_major"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= 0xFF:
                raise ValueError(f"policy {name} must be an integer in [0, 255], got {value!r}")
        for name in ("smt", "migrate_ma", "debug", "single_socket"):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"policy {name} must be a bool")

    @classmethod
    def from_u64(cls, value: int) -> GuestPolicy:
        if type(value) is not int or not 0 <= value < 1 << 64:
            raise ValueError(f"policy value {value!r} is not a u64")
        if not value & _POLICY_RESERVED_ONE:
            raise ValueError(f"policy {value:#x} has reserved bit 17 clear (must be one)")
        if value & ~_POLICY_KNOWN:
            raise ValueError(f"policy {value:#x} sets reserved bits 21-63")
        return cls(
            abi_minor=value & 0xFF,
            abi_major=(value >> 8) & 0xFF,
            smt=bool(value & _POLICY_SMT),
            migrate_ma=bool(value & _POLICY_MIGRATE_MA),
            debug=bool(value & _POLICY_DEBUG),
            single_socket=bool(value & _POLICY_SINGLE_SOCKET),
        )

    def to_u64(self) -> int:
        return (
            self.abi_minor
            | self.abi_major << 8
            | _POLICY_RESERVED_ONE
            | (_POLICY_SMT if self.smt else 0)
            | (_POLICY_MIGRATE_MA if self.migrate_ma else 0)
            | (_POLICY_DEBUG if self.debug else 0)
            | (_POLICY_SINGLE_SOCKET if self.single_socket else 0)
        )


_FLAGS_KNOWN = 0x1F  # bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 2-4 SIGNING_KEY
SIGNING_KEY_VCEK = 0
SIGNING_KEY_NONE = 7  # the report is not signed

_TCB_FIELDS = ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")
_SIGNATURE_FIELDS = ("signature_r", "signature_s")
_DECODED = ("policy", *_TCB_FIELDS, *_SIGNATURE_FIELDS)
# Plain unsigned integers and fixed-size byte strings, with their sizes in bytes.
_INT_SIZES = {
    name: struct.calcsize("<" + code)
    for name, code in _LAYOUT
    if not code.endswith("s") and name not in _DECODED and name not in _RESERVED
}
_BYTES_SIZES = {
    name: struct.calcsize("<" + code)
    for name, code in _LAYOUT
    if code.endswith("s") and name not in _DECODED and name not in _RESERVED
}


@dataclass(frozen=True, slots=True)
class AttestationReport:
    """A decoded report. Defaults describe an unsigned version-2 report of zeros."""

    version: int = 2
    guest_svn: int = 0
    policy: GuestPolicy = field(default_factory=GuestPolicy)
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    signature_algo: int = SIGNATURE_ALGO_ECDSA_P384_SHA384
    current_tcb: TcbVersion = field(default_factory=TcbVersion)
    platform_info: int = 0
    flags: int = 0
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(48)
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = bytes(32)
    report_id_ma: bytes = bytes(32)
    reported_tcb: TcbVersion = field(default_factory=TcbVersion)
    cpuid_fam_id: int = 0
    cpuid_mod_id: int = 0
    cpuid_step: int = 0
    chip_id: bytes = bytes(64)
    committed_tcb: TcbVersion = field(default_factory=TcbVersion)
    current_build: int = 0
    current_minor: int = 0
    current_major: int = 0
    committed_build: int = 0
    committed_minor: int = 0
    committed_major: int = 0
    launch_tcb: TcbVersion = field(default_factory=TcbVersion)
    signature_r: int = 0
    signature_s: int = 0

    def __post_init__(self) -> None:
        if self.version not in SUPPORTED_VERSIONS:
            raise ReportFormatError(
                "version", f"{self.version!r} is not one of {SUPPORTED_VERSIONS}"
            )
        if self.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
            raise ReportFormatError(
                "signature_algo", f"{self.signature_algo!r} is not 1 (ECDSA P-384 with SHA-384)"
            )
        if not isinstance(self.policy, GuestPolicy):
            raise ReportFormatError("policy", "must be a GuestPolicy")
        for name in _TCB_FIELDS:
            if not isinstance(getattr(self, name), TcbVersion):
                raise ReportFormatError(name, "must be a TcbVersion")
        for name, size in _INT_SIZES.items():
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < 1 << (8 * size):
                raise ReportFormatError(name, f"{value!r} is not a {8 * size}-bit unsigned integer")
        for name, size in _BYTES_SIZES.items():
            value = getattr(self, name)
            if type(value) is not bytes or len(value) != size:
                raise ReportFormatError(name, f"must be exactly {size} bytes")
        if self.vmpl > 3:
            raise ReportFormatError("vmpl", f"{self.vmpl} is not a VMPL (0-3)")
        if self.flags & ~_FLAGS_KNOWN:
            raise ReportFormatError("flags", f"{self.flags:#x} sets reserved bits 5-31")
        if self.version < 3 and (self.cpuid_fam_id or self.cpuid_mod_id or self.cpuid_step):
            raise ReportFormatError("cpuid_fam_id", "CPUID fields are reserved before version 3")
        for name in _SIGNATURE_FIELDS:
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < 1 << (8 * SIGNATURE_COMPONENT_SIZE):
                raise ReportFormatError(name, "must be a 72-byte unsigned integer")

    @property
    def author_key_en(self) -> bool:
        return bool(self.flags & 1)

    @property
    def mask_chip_key(self) -> bool:
        return bool(self.flags & 2)

    @property
    def signing_key(self) -> int:
        """0: VCEK, 1: VLEK, 7: none."""
        return (self.flags >> 2) & 7


def parse(data: bytes) -> AttestationReport:
    """Decode exactly 0x4A0 bytes into a report; ReportFormatError on any malformation."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ReportFormatError("length", f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise ReportFormatError("length", f"{len(data)} bytes, expected {REPORT_SIZE:#x}")
    values: dict[str, object] = dict(
        zip((name for name, _ in _LAYOUT), _STRUCT.unpack(data), strict=True)
    )
    for name in _RESERVED:
        value = values.pop(name)
        if value != 0 if isinstance(value, int) else any(value):  # type: ignore[arg-type]
            raise ReportFormatError(name, f"reserved bytes at {OFFSETS[name]:#x} are not zero")
    try:
        values["policy"] = GuestPolicy.from_u64(values["policy"])  # type: ignore[arg-type]
    except ValueError as exc:
        raise ReportFormatError("policy", str(exc)) from None
    for name in _TCB_FIELDS:
        try:
            values[name] = TcbVersion.from_u64(values[name])  # type: ignore[arg-type]
        except ValueError as exc:
            raise ReportFormatError(name, str(exc)) from None
    for name in _SIGNATURE_FIELDS:
        values[name] = int.from_bytes(values[name], "little")  # type: ignore[arg-type]
    return AttestationReport(**values)  # type: ignore[arg-type]


def pack(report: AttestationReport) -> bytes:
    """Encode a report to its 0x4A0 wire bytes (reserved bytes zero); inverse of parse."""
    values: list[object] = []
    for name, code in _LAYOUT:
        if name in _RESERVED:
            values.append(0 if code in "BIQ" else b"")
        elif name == "policy":
            values.append(report.policy.to_u64())
        elif name in _TCB_FIELDS:
            values.append(getattr(report, name).to_u64())
        elif name in _SIGNATURE_FIELDS:
            values.append(getattr(report, name).to_bytes(SIGNATURE_COMPONENT_SIZE, "little"))
        else:
            values.append(getattr(report, name))
    return _STRUCT.pack(*values)


def signed_bytes(raw: bytes) -> bytes:
    """The bytes the chip signs: [0, 0x2A0) of a full 0x4A0-byte report."""
    if len(raw) != REPORT_SIZE:
        raise ReportFormatError("length", f"{len(raw)} bytes, expected {REPORT_SIZE:#x}")
    return bytes(raw[:SIGNED_SIZE])


def sign_report(
    report: AttestationReport,
    chip_key: ec.EllipticCurvePrivateKey,
    *,
    deterministic: bool = False,
) -> bytes:
    """Sign every field of ``report`` (its signature fields are ignored) with the chip key.

    All inputs are explicit: nothing here reads a clock or a counter. ECDSA draws its own
    nonce unless ``deterministic`` asks for RFC 6979 nonces, which known-answer tests use.
    The signature is written low-s (s <= n/2, as AMD's chips write theirs): its twin
    (r, n - s) is just as valid ECDSA, and the verifier refuses it so that exactly one
    encoding of a report verifies. Returns the full signed 0x4A0-byte report.
    """
    if not isinstance(chip_key, ec.EllipticCurvePrivateKey) or not isinstance(
        chip_key.curve, ec.SECP384R1
    ):
        raise TypeError("the chip key must be an ECDSA P-384 private key")
    body = pack(replace(report, signature_r=0, signature_s=0))[:SIGNED_SIZE]
    der = chip_key.sign(body, ec.ECDSA(hashes.SHA384(), deterministic_signing=deterministic))
    r, s = decode_dss_signature(der)
    s = min(s, P384_ORDER - s)
    return pack(replace(report, signature_r=r, signature_s=s))


REPORT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(AttestationReport))
"""Field names in wire order (reserved fields omitted)."""
