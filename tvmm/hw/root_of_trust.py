"""A modeled manufacturer and its chips, endorsed by the SEV-SNP certificate chain shape.

    ARK  RSA-4096, self-signed            (AMD Root Key)
     └─ ASK  RSA-4096, signed by the ARK  (AMD SEV Key)
         └─ VCEK  ECDSA P-384, signed by the ASK, one per chip and TCB

Every signature is RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt, exactly as
AMD's certificates are, so one verifier handles AMD's chain and ours. The VCEK carries
AMD's extensions (arc 1.3.6.1.4.1.3704.1) encoded the way AMD's key server encodes them:
INTEGERs for the struct version and SPLs, an IA5String product name, and the raw 64-byte
chip id as the extension value (hwID).

The manufacturer's keys live as PEM files (mode 0600, unencrypted: they stand for the
vendor's signing facility, which is no part of an operator's machine) in a state
directory, created on first use from the OS's randomness (``cryptography``'s
generators).  A chip's directory models its silicon: a fused secret (``fuse``, raw random
bytes), its VCEK private key wrapped under that secret (never as a PEM or DER key), and
its monotonic counters; from the fused secret it derives sealing keys bound to a
measurement (``Chip.sealing_key``, as SNP's MSG_KEY_REQ).  Each directory is written
under a temporary name and renamed into place, so a crash never leaves half a
manufacturer and two racing processes agree on the one that won. The forms taking keys
and ``now`` explicitly are pure apart from PSS salts.

Nothing here keeps a key: a loaded Manufacturer or Chip belongs to its caller (the TEE's
``Tee`` holds its chip; a perimeter process's Identity its own), and ``public_chain``
reads only the certificates, for the owner's side.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from tvmm.abi.report import AttestationReport, TcbVersion, sign_report
from tvmm.abi.state_dir import default_state_dir
from tvmm.abi.vcek import (
    OID_BL_SPL,
    OID_HW_ID,
    OID_PRODUCT_NAME,
    OID_SNP_SPL,
    OID_SPARE_SPLS,
    OID_STRUCT_VERSION,
    OID_TEE_SPL,
    OID_UCODE_SPL,
    PRODUCT_NAME,
    PSS_SHA384,
    RSA_BITS,
    chip_id_for,
    der_ia5string,
    der_integer,
    vcek_info,
)

DEFAULT_TCB = TcbVersion(boot_loader=3, tee=0, snp=8, microcode=115)
"""The TCB of the Milan test report, so modeled chips look like that machine."""

_ORG = "tvmm (modeled manufacturer)"
FUSE_SIZE = 32
_VCEK_WRAP = b"tvmm-chip-vcek-wrap-v1"
_SEAL = b"tvmm-chip-seal-v1"
_COUNTER_NAME = re.compile(r"[0-9a-f]{32}(\.[a-z]{1,16})?")
_CHIP_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _serial(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> int:
    """A positive serial derived from the key, so issuing needs no randomness."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return int.from_bytes(hashlib.sha256(spki).digest()[:16], "big") | 1


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey,
    issuer_key: rsa.RSAPublicKey,
    now: datetime.datetime,
    path_length: int | None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(_serial(public_key))
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=25 * 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False
        )
    )


@dataclass(frozen=True)
class Manufacturer:
    """The modeled vendor: its root (ARK) and intermediate (ASK) keys and certificates."""

    ark_key: rsa.RSAPrivateKey
    ask_key: rsa.RSAPrivateKey
    ark_cert: x509.Certificate
    ask_cert: x509.Certificate

    @classmethod
    def create(
        cls,
        ark_key: rsa.RSAPrivateKey,
        ask_key: rsa.RSAPrivateKey,
        *,
        now: datetime.datetime,
        product: str = PRODUCT_NAME,
    ) -> Manufacturer:
        """Issue the ARK (self-signed) and ASK certificates for the given keys."""
        ark_name, ask_name = _name(f"ARK-{product}"), _name(f"SEV-{product}")
        ark_pub = ark_key.public_key()
        ark_cert = _ca_builder(ark_name, ark_name, ark_pub, ark_pub, now, None).sign(
            ark_key, hashes.SHA384(), rsa_padding=PSS_SHA384
        )
        ask_cert = _ca_builder(ask_name, ark_name, ask_key.public_key(), ark_pub, now, 0).sign(
            ark_key, hashes.SHA384(), rsa_padding=PSS_SHA384
        )
        return cls(ark_key, ask_key, ark_cert, ask_cert)

    @classmethod
    def load_or_create(cls, state_dir: Path | str | None = None) -> Manufacturer:
        """Load ``<state>/root_of_trust``, generating fresh RSA-4096 keys on first use."""
        directory = _state(state_dir) / "root_of_trust"
        if not directory.exists():

            def populate(tmp: Path) -> None:
                made = cls.create(_new_rsa(), _new_rsa(), now=_now())
                _write_key(tmp / "ark_key.pem", made.ark_key)
                _write_key(tmp / "ask_key.pem", made.ask_key)
                _write_cert(tmp / "ark.pem", made.ark_cert)
                _write_cert(tmp / "ask.pem", made.ask_cert)

            _create_dir_atomically(directory, populate)
        # Our own files: cryptography's RSA private-key validation (about 1 s per key) is
        # skipped; the pair check below still ties each key to its certificate.
        loaded = cls(
            ark_key=_read_key(directory / "ark_key.pem", rsa.RSAPrivateKey, trusted=True),
            ask_key=_read_key(directory / "ask_key.pem", rsa.RSAPrivateKey, trusted=True),
            ark_cert=_read_cert(directory / "ark.pem"),
            ask_cert=_read_cert(directory / "ask.pem"),
        )
        _check_pair(loaded.ark_cert, loaded.ark_key, directory / "ark.pem")
        _check_pair(loaded.ask_cert, loaded.ask_key, directory / "ask.pem")
        return loaded

    def issue_vcek(
        self,
        chip_public_key: ec.EllipticCurvePublicKey,
        tcb: TcbVersion,
        *,
        now: datetime.datetime,
        product: str = PRODUCT_NAME,
    ) -> x509.Certificate:
        """Endorse a chip key for one TCB, with AMD's VCEK extensions, signed by the ASK."""
        extensions = [
            (OID_STRUCT_VERSION, der_integer(0)),
            (OID_PRODUCT_NAME, der_ia5string(product)),
            (OID_BL_SPL, der_integer(tcb.boot_loader)),
            (OID_TEE_SPL, der_integer(tcb.tee)),
            *((oid, der_integer(0)) for oid in OID_SPARE_SPLS),
            (OID_SNP_SPL, der_integer(tcb.snp)),
            (OID_UCODE_SPL, der_integer(tcb.microcode)),
            (OID_HW_ID, chip_id_for(chip_public_key)),
        ]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VCEK"))
            .issuer_name(self.ask_cert.subject)
            .public_key(chip_public_key)
            .serial_number(_serial(chip_public_key))
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=7 * 365))
        )
        for oid, value in extensions:
            builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
        return builder.sign(self.ask_key, hashes.SHA384(), rsa_padding=PSS_SHA384)


@dataclass(frozen=True)
class Chip:
    """One modeled processor: its signing key (the VCEK) and the certificate endorsing it."""

    name: str
    key: ec.EllipticCurvePrivateKey
    vcek_cert: x509.Certificate
    manufacturer: Manufacturer
    tcb: TcbVersion
    home: Path | None = None  # its directory (fused secret, counters); None: not stored

    @property
    def chip_id(self) -> bytes:
        return chip_id_for(self.key.public_key())

    @classmethod
    def create(
        cls,
        manufacturer: Manufacturer,
        name: str,
        key: ec.EllipticCurvePrivateKey,
        tcb: TcbVersion = DEFAULT_TCB,
        *,
        now: datetime.datetime,
    ) -> Chip:
        """A chip with the given key, endorsed by ``manufacturer`` for ``tcb``."""
        _check_chip_name(name)
        cert = manufacturer.issue_vcek(key.public_key(), tcb, now=now)
        return cls(name, key, cert, manufacturer, tcb)

    @classmethod
    def load_or_create(
        cls,
        state_dir: Path | str | None,
        manufacturer: Manufacturer,
        name: str,
        *,
        tcb: TcbVersion | None = None,
    ) -> Chip:
        """Load ``<state>/chips/<name>``, creating the chip on first use.

        ``tcb`` (default: the stored one, or DEFAULT_TCB for a new chip) different from
        the stored VCEK's makes the manufacturer issue a new VCEK certificate, as AMD's
        key server does after a firmware update; the chip key stays the same.
        """
        _check_chip_name(name)
        directory = _state(state_dir) / "chips" / name
        if not directory.exists():
            directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

            def populate(tmp: Path) -> None:
                made = cls.create(manufacturer, name, _new_ec(), tcb or DEFAULT_TCB, now=_now())
                _write_fused(tmp, made.key)
                _write_cert(tmp / "vcek.pem", made.vcek_cert)

            _create_dir_atomically(directory, populate)
        legacy = directory / "vcek_key.pem"
        if legacy.exists():  # a chip made when the key was kept in clear: wrap it now
            _write_fused(directory, _read_key(legacy, ec.EllipticCurvePrivateKey))
            legacy.unlink()
        key = _read_fused(directory)
        cert = _read_cert(directory / "vcek.pem")
        _check_pair(cert, key, directory / "vcek.pem")
        stored_tcb = vcek_info(cert).tcb
        if cert.issuer != manufacturer.ask_cert.subject or not _signed_by(cert, manufacturer):
            raise ValueError(f"{directory / 'vcek.pem'} was not issued by this manufacturer")
        if tcb is not None and tcb != stored_tcb:
            cert = manufacturer.issue_vcek(key.public_key(), tcb, now=_now())
            _replace_file(directory / "vcek.pem", cert.public_bytes(serialization.Encoding.PEM))
            stored_tcb = tcb
        return cls(name, key, cert, manufacturer, stored_tcb, directory)

    def sign_report(self, report: AttestationReport, *, deterministic: bool = False) -> bytes:
        """Sign ``report`` as this chip's PSP would: it stamps its own chip_id and
        reported_tcb (the two fields its VCEK certifies) and signs the rest as given."""
        stamped = replace(report, chip_id=self.chip_id, reported_tcb=self.tcb)
        return sign_report(stamped, self.key, deterministic=deterministic)

    def sealing_key(self, measurement: bytes, purpose: str) -> bytes:
        """A 32-byte key only this chip derives, and only for code with ``measurement``
        (SNP's MSG_KEY_REQ with the measurement selected): HKDF-SHA384 over the fused
        secret.  Other code, or the same code on another chip, gets another key."""
        info = _SEAL + b"|" + measurement + b"|" + purpose.encode()
        return HKDF(hashes.SHA384(), 32, salt=None, info=info).derive(
            _read_fuse(self._home()))

    def _home(self) -> Path:
        if self.home is None:
            raise ValueError(f"chip {self.name} has no stored state (made with Chip.create)")
        return self.home

    def new_counter(self) -> str:
        """Define a fresh monotonic counter (as a TPM's NV_DefineSpace), value 0: its id."""
        name = os.urandom(16).hex()
        self.define_counter(name)
        return name

    def define_counter(self, name: str) -> MonotonicCounter:
        """The counter ``name``, defined at 0 if the chip has none of that name."""
        counter = self.counter(name)
        if not counter.path.exists():
            counter._write(0)
        return counter

    def counter(self, name: str) -> MonotonicCounter:
        if not isinstance(name, str) or not _COUNTER_NAME.fullmatch(name):
            raise ValueError(f"counter name {name!r} must match {_COUNTER_NAME.pattern}")
        directory = self._home() / "counters"
        directory.mkdir(mode=0o700, exist_ok=True)
        return MonotonicCounter(directory / name)

    def write_chain(self, directory: Path | str) -> Path:
        """Write ark.pem, ask.pem and vcek.pem, the files an owner's verifier loads."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        for file_name, cert in (
            ("ark.pem", self.manufacturer.ark_cert),
            ("ask.pem", self.manufacturer.ask_cert),
            ("vcek.pem", self.vcek_cert),
        ):
            _replace_file(target / file_name, cert.public_bytes(serialization.Encoding.PEM))
        return target


class CounterError(Exception):
    """A monotonic counter was asked to go back, or its stored value is unreadable."""


@dataclass(frozen=True)
class MonotonicCounter:
    """One monotonic counter of the chip (as a TPM NV counter): a small file only this
    module writes, whole or not at all, fsync'd before ``increment`` returns."""

    path: Path

    def read(self) -> int:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise CounterError(f"the chip has no counter {self.path.name}") from None
        if len(data) != 8:
            raise CounterError(f"counter {self.path.name} is unreadable")
        return int.from_bytes(data, "big")

    def _write(self, value: int) -> None:
        _replace_file(self.path, value.to_bytes(8, "big"))

    def increment(self) -> int:
        value = self.read() + 1
        self._write(value)
        return value


def _write_fused(directory: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """The chip's fused secret and its VCEK key wrapped under it (AES-256-GCM)."""
    fuse = directory / "fuse"
    if not fuse.exists():
        _replace_file(fuse, os.urandom(FUSE_SIZE))
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    nonce = os.urandom(12)
    _replace_file(directory / "vcek_key.sealed",
                  nonce + AESGCM(_wrap_key(directory)).encrypt(nonce, der, _VCEK_WRAP))


def _read_fused(directory: Path) -> ec.EllipticCurvePrivateKey:
    sealed = (directory / "vcek_key.sealed").read_bytes()
    der = AESGCM(_wrap_key(directory)).decrypt(sealed[:12], sealed[12:], _VCEK_WRAP)
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{directory} does not hold an EC chip key")
    return key


def _wrap_key(directory: Path) -> bytes:
    return HKDF(hashes.SHA384(), 32, salt=None, info=_VCEK_WRAP).derive(_read_fuse(directory))


def _read_fuse(directory: Path) -> bytes:
    fuse = (directory / "fuse").read_bytes()
    if len(fuse) != FUSE_SIZE:
        raise ValueError(f"{directory / 'fuse'} is not a fused secret")
    return fuse


DEFAULT_CHIP = "chip-0"


def load_chip(state_dir: Path | str | None = None, name: str = DEFAULT_CHIP) -> Chip:
    """The chip ``name`` of the state directory with its manufacturer, created on first
    use; the caller owns the keys it gets (nothing here keeps them)."""
    return Chip.load_or_create(state_dir, Manufacturer.load_or_create(state_dir), name)


def public_root(state_dir: Path | str | None = None
                ) -> tuple[x509.Certificate, x509.Certificate]:
    """(ARK, ASK) of the state directory's manufacturer: public, what a verifier pins.
    Reads the certificate files only; creates the manufacturer if there is none yet."""
    trust = _state(state_dir) / "root_of_trust"
    if not trust.is_dir():
        Manufacturer.load_or_create(state_dir)
    return _read_cert(trust / "ark.pem"), _read_cert(trust / "ask.pem")


def public_chain(state_dir: Path | str | None = None, name: str = DEFAULT_CHIP
                 ) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    """(ARK, ASK, VCEK) of chip ``name``: public, as the vendor's key server publishes a
    VCEK.  Reads the certificate files only; creates the chip if there is none yet."""
    _check_chip_name(name)
    vcek = _state(state_dir) / "chips" / name / "vcek.pem"
    if not vcek.is_file():
        load_chip(state_dir, name)
    return (*public_root(state_dir), _read_cert(vcek))


def _signed_by(cert: x509.Certificate, manufacturer: Manufacturer) -> bool:
    try:
        manufacturer.ask_cert.public_key().verify(  # type: ignore[call-arg]
            cert.signature, cert.tbs_certificate_bytes, PSS_SHA384, hashes.SHA384()
        )
    except InvalidSignature:
        return False
    return True


def _check_chip_name(name: str) -> None:
    if not isinstance(name, str) or not _CHIP_NAME.fullmatch(name):
        raise ValueError(f"chip name {name!r} must match {_CHIP_NAME.pattern}")


def _check_pair(cert: x509.Certificate, key: object, path: Path) -> None:
    if cert.public_key() != key.public_key():  # type: ignore[attr-defined]
        raise ValueError(f"{path} does not certify the key stored beside it")


def _state(state_dir: Path | str | None) -> Path:
    root = Path(state_dir) if state_dir is not None else default_state_dir()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def _new_ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _create_dir_atomically(directory: Path, populate: Callable[[Path], None]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        populate(tmp)
        try:
            os.rename(tmp, directory)
        except OSError:
            if not directory.is_dir():  # lost a race only if the winner's directory exists
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _replace_file(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    _replace_file(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _replace_file(path, cert.public_bytes(serialization.Encoding.PEM))


def _read_key(path: Path, kind: type, *, trusted: bool = False
              ) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None,
                                             unsafe_skip_rsa_key_validation=trusted)
    if not isinstance(key, kind):
        raise ValueError(f"{path} does not hold a {kind.__name__}")
    return key  # type: ignore[return-value]


def _read_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())
