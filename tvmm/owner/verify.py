"""The guest owner's verifier: is this report from a genuine chip, running what we expect?

Checks run in a fixed order and stop at the first failure:

1. the chain: ARK self-signed, ASK signed by the ARK, VCEK signed by the ASK (RSA-4096
   keys for ARK and ASK, P-384 for the VCEK, RSASSA-PSS SHA-384 salt 48 throughout);
2. the report: well-formed, signed by the VCEK over bytes [0, 0x2A0), low-s (one
   encoding: the (r, n - s) twin of a signature is refused);
3. the binding: the VCEK certifies exactly the report's reported_tcb and chip_id;
4. the owner's expectations: measurement, report data, policy, VMPL, TCB minimum.

Every refusal raises VerificationError whose ``reason`` (a VerifyFailure) is what callers
and tests branch on; the message is for people. The caller chooses the ARK: pass a
pinned root (tvmm.owner.roots: AMD's or the modeled manufacturer's), never one taken from
the evidence.
"""

from __future__ import annotations

import hmac
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from tvmm.abi.report import (
    P384_ORDER,
    SIGNED_SIZE,
    SIGNING_KEY_NONE,
    SIGNING_KEY_VCEK,
    AttestationReport,
    ReportFormatError,
    TcbVersion,
    parse,
)
from tvmm.abi.vcek import PSS_SHA384, RSA_BITS, vcek_info


class VerifyFailure(Enum):
    """Why evidence was refused."""

    MALFORMED = "malformed"  # the report bytes do not decode
    CHAIN_ARK = "chain_ark"  # the root is unusable, not self-signed, or not the pinned one
    CHAIN_ASK = "chain_ask"  # the intermediate is unusable or not signed by the ARK
    CHAIN_VCEK = "chain_vcek"  # the chip certificate is unusable or not signed by the ASK
    SIGNATURE = "signature"  # the report is not signed by the VCEK
    SIGNING_KEY = "signing_key"  # the report says it was signed by a key other than a VCEK
    TCB_MISMATCH = "tcb_mismatch"  # the VCEK is for another TCB than reported_tcb
    CHIP_ID_MISMATCH = "chip_id_mismatch"  # the VCEK is for another chip than chip_id
    MEASUREMENT = "measurement"
    REPORT_DATA = "report_data"
    HOST_DATA = "host_data"
    POLICY_DEBUG = "policy_debug"
    POLICY_MIGRATE_MA = "policy_migrate_ma"
    POLICY_SMT = "policy_smt"
    POLICY_SINGLE_SOCKET = "policy_single_socket"
    POLICY_ABI = "policy_abi"
    VMPL = "vmpl"
    GUEST_SVN = "guest_svn"
    TCB_TOO_OLD = "tcb_too_old"
    NONCE = "nonce"  # the key broker did not issue this nonce, or it was already used
    LAUNCH_BUDGET = "launch_budget"  # (broker) the secret's launches in this window are used up
    LEDGER = "ledger"  # (broker) its launch ledger is unreadable, tampered or missing
    TRANSPARENCY = "transparency"  # (broker) no valid statement and receipt for the build


class VerificationError(Exception):
    """Evidence refused; ``reason`` says which check failed."""

    def __init__(self, reason: VerifyFailure, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.detail = message


@dataclass(frozen=True)
class CertChain:
    """The three certificates that endorse a chip key."""

    ark: x509.Certificate
    ask: x509.Certificate
    vcek: x509.Certificate


@dataclass(frozen=True)
class Expectations:
    """What the owner requires of a verified report; None means "not checked"."""

    measurement: bytes | None = None
    report_data: bytes | None = None
    host_data: bytes | None = None
    allow_debug: bool = False
    allow_migrate_ma: bool = False
    allow_smt: bool = True
    require_single_socket: bool = False
    min_abi: tuple[int, int] | None = None  # (major, minor) the policy must demand at least
    min_guest_svn: int = 0
    vmpl: int | None = 0
    min_tcb: TcbVersion | None = None

    def __post_init__(self) -> None:
        for name, size in (("measurement", 48), ("report_data", 64), ("host_data", 32)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, bytes) or len(value) != size):
                raise ValueError(f"expected {name} must be {size} bytes")


# RSASSA-PSS(SHA-384, MGF1-SHA-384, salt 48) as the outer signatureAlgorithm. AMD writes
# the default trailerField explicitly; cryptography omits it. Both mean the same scheme.
_PSS_SHA384_ALGIDS = frozenset(
    bytes.fromhex(
        "30"
        + length
        + "06092a864886f70d01010a30"
        + inner
        + "a00f300d06096086480165030402020500"
        + "a11c301a06092a864886f70d010108300d06096086480165030402020500"
        + "a203020130"
        + trailer
    )
    for length, inner, trailer in (("46", "39", "a303020101"), ("41", "34", ""))
)


def load_certificate(data: bytes, role: VerifyFailure) -> x509.Certificate:
    """Parse a PEM or DER certificate; ``role`` is the reason reported if it does not parse.

    AMD's VCEKs carry serial number 0, which cryptography still accepts with a deprecation
    warning; that warning is silenced here and only here.
    """
    with _strict_warnings():
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(data)
            else:
                cert = x509.load_der_x509_certificate(data)
        except (ValueError, x509.InvalidVersion, UserWarning) as exc:
            raise VerificationError(role, f"certificate does not parse: {exc}") from None
    _decode_fully(cert, role)
    return cert


@contextmanager
def _strict_warnings() -> Iterator[None]:
    """Any decoding complaint is a refusal, except the deprecation of AMD's serial 0."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


def _decode_fully(cert: x509.Certificate, role: VerifyFailure) -> None:
    """Touch every part we use: cryptography decodes lazily, and a damaged name or
    extension would otherwise surface later as an arbitrary exception."""
    try:
        with _strict_warnings():
            cert.subject, cert.issuer, cert.extensions, cert.public_key()  # noqa: B018
            cert.tbs_certificate_bytes, cert.signature  # noqa: B018
            cert.not_valid_before_utc, cert.not_valid_after_utc  # noqa: B018
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the same thing
        raise VerificationError(role, f"certificate does not decode: {exc!r}") from None


def verify_chain(
    ark: x509.Certificate,
    ask: x509.Certificate,
    vcek: x509.Certificate,
    *,
    at: datetime | None = None,
) -> None:
    """Check ARK → ASK → VCEK; with ``at``, also that each certificate is valid then."""
    _decode_fully(ark, VerifyFailure.CHAIN_ARK)
    _decode_fully(ask, VerifyFailure.CHAIN_ASK)
    _decode_fully(vcek, VerifyFailure.CHAIN_VCEK)
    _check_rsa_ca(ark, VerifyFailure.CHAIN_ARK)
    _check_signed(ark, ark, VerifyFailure.CHAIN_ARK)
    _check_rsa_ca(ask, VerifyFailure.CHAIN_ASK)
    if ask.subject == ark.subject:
        raise VerificationError(VerifyFailure.CHAIN_ASK, "the intermediate is the root itself")
    _check_signed(ask, ark, VerifyFailure.CHAIN_ASK)
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError(VerifyFailure.CHAIN_VCEK, "VCEK key is not ECDSA P-384")
    _check_signed(vcek, ask, VerifyFailure.CHAIN_VCEK)
    if at is not None:
        for cert, reason in (
            (ark, VerifyFailure.CHAIN_ARK),
            (ask, VerifyFailure.CHAIN_ASK),
            (vcek, VerifyFailure.CHAIN_VCEK),
        ):
            if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
                raise VerificationError(reason, f"certificate not valid at {at.isoformat()}")


def verify_report(report_bytes: bytes, vcek: x509.Certificate) -> AttestationReport:
    """Decode the report, check its VCEK signature and that the VCEK is for this chip/TCB."""
    try:
        report = parse(report_bytes)
    except ReportFormatError as exc:
        raise VerificationError(VerifyFailure.MALFORMED, str(exc)) from None
    if report.signing_key == SIGNING_KEY_NONE:
        raise VerificationError(
            VerifyFailure.SIGNING_KEY, "the report is not signed (signing key 7: none)"
        )
    if report.signing_key != SIGNING_KEY_VCEK:
        raise VerificationError(
            VerifyFailure.SIGNING_KEY, f"signing key {report.signing_key} is not the VCEK (0)"
        )
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError(VerifyFailure.CHAIN_VCEK, "VCEK key is not ECDSA P-384")
    if not (0 < report.signature_r < P384_ORDER and 0 < report.signature_s <= P384_ORDER // 2):
        # (r, n - s) verifies whenever (r, s) does: accepting only s <= n/2 (what AMD's
        # chips and ours write) leaves one encoding, so no byte of a report can change.
        raise VerificationError(
            VerifyFailure.SIGNATURE, "signature (r, s) is not in range 0 < r < n, 0 < s <= n/2"
        )
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, bytes(report_bytes[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise VerificationError(VerifyFailure.SIGNATURE, "report signature is invalid") from None
    try:
        info = vcek_info(vcek)
    except ValueError as exc:
        raise VerificationError(VerifyFailure.CHAIN_VCEK, str(exc)) from None
    if info.tcb != report.reported_tcb:
        raise VerificationError(
            VerifyFailure.TCB_MISMATCH,
            f"VCEK is for TCB {info.tcb}, report says {report.reported_tcb}",
        )
    if not hmac.compare_digest(info.hw_id, report.chip_id):
        raise VerificationError(VerifyFailure.CHIP_ID_MISMATCH, "VCEK hwID is not the chip_id")
    return report


def check_expectations(report: AttestationReport, expected: Expectations) -> None:
    """Apply the owner's requirements to a report already known to be genuine."""
    fail = VerifyFailure
    for name, reason in (
        ("measurement", fail.MEASUREMENT),
        ("report_data", fail.REPORT_DATA),
        ("host_data", fail.HOST_DATA),
    ):
        want = getattr(expected, name)
        if want is not None and not hmac.compare_digest(want, getattr(report, name)):
            raise VerificationError(reason, f"{name} differs from the expected value")
    policy = report.policy
    if policy.debug and not expected.allow_debug:
        raise VerificationError(fail.POLICY_DEBUG, "policy allows debugging the guest")
    if policy.migrate_ma and not expected.allow_migrate_ma:
        raise VerificationError(fail.POLICY_MIGRATE_MA, "policy allows a migration agent")
    if policy.smt and not expected.allow_smt:
        raise VerificationError(fail.POLICY_SMT, "policy allows SMT")
    if expected.require_single_socket and not policy.single_socket:
        raise VerificationError(fail.POLICY_SINGLE_SOCKET, "policy allows several sockets")
    if expected.min_abi is not None and (policy.abi_major, policy.abi_minor) < expected.min_abi:
        raise VerificationError(
            fail.POLICY_ABI, f"policy ABI {policy.abi_major}.{policy.abi_minor} is too old"
        )
    if expected.vmpl is not None and report.vmpl != expected.vmpl:
        raise VerificationError(fail.VMPL, f"report is from VMPL{report.vmpl}")
    if report.guest_svn < expected.min_guest_svn:
        raise VerificationError(fail.GUEST_SVN, f"guest SVN {report.guest_svn} is too old")
    if expected.min_tcb is not None and not report.reported_tcb.meets(expected.min_tcb):
        raise VerificationError(
            fail.TCB_TOO_OLD, f"TCB {report.reported_tcb} is below {expected.min_tcb}"
        )


def verify_evidence(
    report_bytes: bytes,
    ark: x509.Certificate,
    ask: x509.Certificate,
    vcek: x509.Certificate,
    expectations: Expectations,
    *,
    at: datetime | None = None,
) -> AttestationReport:
    """All checks, in order; returns the decoded report only if every one passes."""
    verify_chain(ark, ask, vcek, at=at)
    report = verify_report(report_bytes, vcek)
    check_expectations(report, expectations)
    return report


def load_chain_dir(path: Path | str) -> CertChain:
    """Load ark.pem, ask.pem and the VCEK (vcek.pem, vcek.der or a single vcek_*.der)."""
    directory = Path(path)
    candidates = [
        p
        for p in sorted(directory.glob("vcek*"))
        if p.name in ("vcek.pem", "vcek.der") or (p.name.startswith("vcek_") and p.suffix == ".der")
    ]
    if not candidates:
        raise FileNotFoundError(f"no vcek.pem, vcek.der or vcek_*.der in {directory}")
    if len(candidates) > 1:
        raise ValueError(f"several VCEK files in {directory}: {[p.name for p in candidates]}")
    return CertChain(
        ark=load_certificate((directory / "ark.pem").read_bytes(), VerifyFailure.CHAIN_ARK),
        ask=load_certificate((directory / "ask.pem").read_bytes(), VerifyFailure.CHAIN_ASK),
        vcek=load_certificate(candidates[0].read_bytes(), VerifyFailure.CHAIN_VCEK),
    )


def load_report(path: Path | str) -> bytes:
    """Read a report: hex text for ``*.hex`` (whitespace ignored), raw bytes otherwise."""
    file = Path(path)
    data = file.read_bytes()
    if file.suffix.lower() != ".hex":
        return data
    try:
        return bytes.fromhex(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerificationError(VerifyFailure.MALFORMED, f"{file} is not hex: {exc}") from None


def _check_rsa_ca(cert: x509.Certificate, reason: VerifyFailure) -> None:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != RSA_BITS:
        raise VerificationError(reason, f"key is not RSA-{RSA_BITS}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise VerificationError(reason, "no BasicConstraints: not a CA") from None
    if not constraints.ca:
        raise VerificationError(reason, "BasicConstraints says this is not a CA")


def _check_signed(cert: x509.Certificate, issuer: x509.Certificate, reason: VerifyFailure) -> None:
    """RSASSA-PSS SHA-384 salt 48 by ``issuer``, declared as such outside the signed part."""
    if cert.issuer != issuer.subject:
        raise VerificationError(reason, "issuer name is not the signer's subject")
    if not _canonical_envelope(cert):
        raise VerificationError(
            reason, "not DER-encoded with an RSASSA-PSS SHA-384 salt-48 signature algorithm"
        )
    issuer_key = issuer.public_key()
    if not isinstance(issuer_key, rsa.RSAPublicKey):
        raise VerificationError(reason, "issuer key is not RSA")
    try:
        issuer_key.verify(cert.signature, cert.tbs_certificate_bytes, PSS_SHA384, hashes.SHA384())
    except InvalidSignature:
        raise VerificationError(reason, "certificate signature is invalid") from None


def _canonical_envelope(cert: x509.Certificate) -> bool:
    """True when the certificate is exactly SEQUENCE { tbs, PSS-SHA384 algId, BIT STRING
    with no unused bits }: the parts outside the signature admit no variation at all."""
    der = cert.public_bytes(serialization.Encoding.DER)
    signature = _der_tlv(0x03, b"\x00" + cert.signature)
    return any(
        der == _der_tlv(0x30, cert.tbs_certificate_bytes + algorithm + signature)
        for algorithm in _PSS_SHA384_ALGIDS
    )


def _der_tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content
