"""Attestation-bound TLS: who is on the other end of a perimeter connection.

Every coordinator and node process has a fresh TLS key pair and an attestation report
signed by its chip (tvmm.hw.root_of_trust.Chip) whose report_data binds that key:

    report_data = SHA-384(b"tvmm-perimeter-tls-v1" ‖ DER SubjectPublicKeyInfo) ‖ 16 zero bytes
    measurement = tvmm.perimeter.measure.measurement()  (the trusted code it loaded)

TLS is mutual (CERT_REQUIRED both ways) with certificates issued by a transport CA that
the processes of one perimeter share; that CA is *not* what we trust — anyone holding its
key can mint a certificate.  Trust comes from the ``attest`` message each side sends
right after the handshake: the verifier checks the chain to the pinned ARK, the report's
signature, the measurement against the pinned value, and that report_data is the hash of
the public key *in the certificate this TLS session was authenticated with*.  A report
replayed from another process fails the last check (it would need that process's TLS
private key); a node running other code fails the measurement.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tvmm.abi.report import AttestationReport, GuestPolicy, TcbVersion
from tvmm.abi.state_dir import default_state_dir
from tvmm.hw.root_of_trust import Chip, load_chip, public_root
from tvmm.owner.verify import (
    Expectations,
    VerificationError,
    VerifyFailure,
    load_certificate,
    verify_evidence,
)
from tvmm.perimeter import wire
from tvmm.perimeter.measure import measurement

BINDING_LABEL = b"tvmm-perimeter-tls-v1"
_PEM = serialization.Encoding.PEM


class PeerRefused(Exception):
    """The peer's attestation did not verify; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def binding(spki_der: bytes) -> bytes:
    return hashlib.sha384(BINDING_LABEL + spki_der).digest() + bytes(16)


def spki_of_cert(der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(der)
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# -- the transport CA --------------------------------------------------------------------------------
def transport_ca(state_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    directory = state_dir / "perimeter_ca"
    if not directory.exists():
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(dir=state_dir, prefix=".ca-"))
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tvmm perimeter transport")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(_now() - datetime.timedelta(days=1))
                .not_valid_after(_now() + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .sign(key, hashes.SHA256()))
        (tmp / "ca.pem").write_bytes(cert.public_bytes(_PEM))
        (tmp / "ca_key.pem").write_bytes(key.private_bytes(
            _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        try:
            os.rename(tmp, directory)
        except OSError:  # another process won the race: use its CA
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca_key.pem").read_bytes(), None)
    return cert, key  # type: ignore[return-value]


@dataclass
class Identity:
    """One process's TLS credentials and the report that binds them."""

    name: str
    role: str  # "coordinator" or "node"
    chip: Chip
    report: bytes
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    measurement: bytes

    @classmethod
    def create(cls, name: str, role: str, state_dir: Path | None = None) -> Identity:
        state_dir = Path(state_dir) if state_dir else default_state_dir()
        chip = load_chip(state_dir, f"{role}-{name}")  # this Identity holds its keys
        ca_cert, ca_key = transport_ca(state_dir)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{role} {name}")])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(_now() - datetime.timedelta(days=1))
                .not_valid_after(_now() + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("tvmm-perimeter")]),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        meas = measurement()
        tcb = chip.tcb
        report = chip.sign_report(AttestationReport(
            policy=GuestPolicy(abi_minor=51, abi_major=1), measurement=meas,
            report_data=binding(spki), current_tcb=tcb, committed_tcb=tcb, launch_tcb=tcb,
            report_id=os.urandom(32), report_id_ma=b"\xff" * 32))
        return cls(name, role, chip, report, cert.public_bytes(_PEM), key.private_bytes(
            _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            ca_cert.public_bytes(_PEM), meas)

    def attest_message(self) -> wire.Message:
        m = self.chip.manufacturer
        return wire.Message("attest", {
            "name": self.name, "role": self.role, "report": self.report.hex(),
            "ark": m.ark_cert.public_bytes(_PEM).decode(),
            "ask": m.ask_cert.public_bytes(_PEM).decode(),
            "vcek": self.chip.vcek_cert.public_bytes(_PEM).decode()})

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        ctx = ssl.create_default_context(purpose, cadata=self.ca_pem.decode())
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # ssl loads keys only from files: the one written is encrypted under a password
        # that exists only in this process's memory, so no private key touches a disk
        password = os.urandom(32).hex().encode()
        key_pem = serialization.load_pem_private_key(self.key_pem, None).private_bytes(
            _PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password))
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
            cert.write_bytes(self.cert_pem)
            key.write_bytes(key_pem)
            ctx.load_cert_chain(cert, key, password=password)
        return ctx

    def server_context(self) -> ssl.SSLContext:
        return self._context(ssl.Purpose.CLIENT_AUTH)

    def client_context(self) -> ssl.SSLContext:
        return self._context(ssl.Purpose.SERVER_AUTH)


@dataclass(frozen=True)
class Peer:
    name: str
    role: str
    binding: str  # hex of report_data: names the TLS key this peer holds
    chip_id: str
    measurement: str


def verify_peer(sock: ssl.SSLSocket, msg: wire.Message, ark_pem: bytes,
                expected_measurement: bytes) -> Peer:
    """Check a peer's ``attest`` message against the TLS session it arrived on."""
    if msg.op != "attest":
        raise PeerRefused("protocol", f"expected attest, got {msg.op}")
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise PeerRefused("certificate", "the peer presented no certificate")
    try:
        report = bytes.fromhex(msg["report"])
        ark = load_certificate(msg["ark"].encode(), VerifyFailure.CHAIN_ARK)
        ask = load_certificate(msg["ask"].encode(), VerifyFailure.CHAIN_ASK)
        vcek = load_certificate(msg["vcek"].encode(), VerifyFailure.CHAIN_VCEK)
        if ark.public_bytes(serialization.Encoding.DER) != x509.load_pem_x509_certificate(
                ark_pem).public_bytes(serialization.Encoding.DER):
            raise VerificationError(VerifyFailure.CHAIN_ARK, "not the pinned ARK")
        verified = verify_evidence(report, ark, ask, vcek, Expectations(
            measurement=expected_measurement, report_data=binding(spki_of_cert(der))))
    except VerificationError as exc:
        raise PeerRefused(exc.reason.value, str(exc)) from None
    except ValueError as exc:
        raise PeerRefused("malformed", str(exc)) from None
    return Peer(msg["name"], msg["role"], verified.report_data.hex(),
                verified.chip_id.hex()[:32], verified.measurement.hex())


def pinned_ark(state_dir: Path | None = None) -> bytes:
    ark, _ = public_root(Path(state_dir) if state_dir else default_state_dir())
    return ark.public_bytes(_PEM)


__all__ = ["Identity", "Peer", "PeerRefused", "TcbVersion", "binding", "pinned_ark",
           "verify_peer", "transport_ca"]
