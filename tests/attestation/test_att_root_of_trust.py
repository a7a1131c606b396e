"""The modeled manufacturer: chain shape, AMD's VCEK extension encoding, persistence."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from tvmm.abi.report import TcbVersion
from tvmm.abi.state_dir import default_state_dir
from tvmm.abi.vcek import (
    OID_BL_SPL,
    OID_HW_ID,
    OID_PRODUCT_NAME,
    OID_SNP_SPL,
    OID_UCODE_SPL,
    PRODUCT_NAME,
    PSS_SHA384,
    chip_id_for,
    der_integer,
    parse_der_integer,
    vcek_info,
)
from tvmm.hw.root_of_trust import Chip, Manufacturer
from tvmm.owner.verify import CertChain


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes:
    return cert.extensions.get_extension_for_oid(oid).value.value  # type: ignore[attr-defined]


def test_chain_shape(manufacturer: Manufacturer, chip: Chip) -> None:
    ark, ask, vcek = manufacturer.ark_cert, manufacturer.ask_cert, chip.vcek_cert
    for cert in (ark, ask):
        assert isinstance(cert.public_key(), rsa.RSAPublicKey)
        assert cert.public_key().key_size == 4096
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(vcek.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(vcek.public_key().curve, ec.SECP384R1)
    assert ark.issuer == ark.subject and ask.issuer == ark.subject and vcek.issuer == ask.subject
    for cert, signer in ((ark, ark), (ask, ark), (vcek, ask)):
        assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
        signer.public_key().verify(
            cert.signature, cert.tbs_certificate_bytes, PSS_SHA384, hashes.SHA384()
        )


def test_vcek_extensions_are_encoded_like_amds(chip: Chip, milan_chain: CertChain) -> None:
    ours, amd = chip.vcek_cert, milan_chain.vcek
    for oid in (OID_BL_SPL, OID_SNP_SPL, OID_UCODE_SPL):
        assert _ext(ours, oid)[0] == _ext(amd, oid)[0] == 0x02  # INTEGER
    assert _ext(ours, OID_PRODUCT_NAME) == b"\x16\x0a" + PRODUCT_NAME.encode()
    assert _ext(amd, OID_PRODUCT_NAME) == b"\x16\x08Milan-B0"
    assert len(_ext(amd, OID_HW_ID)) == len(_ext(ours, OID_HW_ID)) == 64  # raw, not wrapped
    assert [e.oid for e in ours.extensions] == [e.oid for e in amd.extensions]
    info = vcek_info(ours)
    assert info.tcb == chip.tcb == TcbVersion(3, 0, 8, 115)
    assert info.hw_id == chip.chip_id
    assert info.product_name == PRODUCT_NAME


def test_milan_vcek_info(milan_chain: CertChain, milan_report: bytes) -> None:
    info = vcek_info(milan_chain.vcek)
    assert info.product_name == "Milan-B0"
    assert info.struct_version == 0
    assert info.tcb == TcbVersion(boot_loader=3, tee=0, snp=8, microcode=0x73)
    assert info.hw_id == milan_report[0x1A0:0x1E0]


def test_chip_id_is_sha512_of_spki(chip: Chip) -> None:
    spki = chip.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert chip.chip_id == hashlib.sha512(spki).digest() == chip_id_for(chip.key.public_key())
    assert len(chip.chip_id) == 64


def test_state_persists_with_private_modes(state_dir: Path, manufacturer: Manufacturer) -> None:
    again = Manufacturer.load_or_create(state_dir)
    assert again.ark_cert == manufacturer.ark_cert and again.ask_cert == manufacturer.ask_cert
    Chip.load_or_create(state_dir, manufacturer, "chip-a")
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"ark.pem", "ark_key.pem", "ask.pem", "fuse",
                                       "vcek_key.sealed"}
    assert not any(p.name == "vcek_key.pem" for p in files)  # the chip key is never in clear
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [p for p in state_dir.rglob("*") if p.is_dir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


def test_chip_reload_and_new_tcb(state_dir: Path, manufacturer: Manufacturer) -> None:
    first = Chip.load_or_create(state_dir, manufacturer, "chip-tcb")
    same = Chip.load_or_create(state_dir, manufacturer, "chip-tcb")
    assert same.chip_id == first.chip_id and same.vcek_cert == first.vcek_cert
    newer = TcbVersion(boot_loader=3, tee=0, snp=9, microcode=0xD1)
    updated = Chip.load_or_create(state_dir, manufacturer, "chip-tcb", tcb=newer)
    assert updated.chip_id == first.chip_id and updated.tcb == newer
    assert vcek_info(updated.vcek_cert).tcb == newer
    assert Chip.load_or_create(state_dir, manufacturer, "chip-tcb").tcb == newer


@pytest.mark.parametrize("name", ["", "../escape", ".hidden", "a/b", "x" * 65])
def test_chip_names_are_checked(state_dir: Path, manufacturer: Manufacturer, name: str) -> None:
    with pytest.raises(ValueError):
        Chip.load_or_create(state_dir, manufacturer, name)


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TVMM_STATE_DIR", str(tmp_path))
    assert default_state_dir() == tmp_path
    monkeypatch.delenv("TVMM_STATE_DIR")
    assert default_state_dir() == Path.home() / ".local" / "state" / "tvmm"


def test_der_integer_matches_amd_bytes() -> None:
    assert der_integer(0) == bytes.fromhex("020100")
    assert der_integer(0x73) == bytes.fromhex("020173")
    assert der_integer(0x80) == bytes.fromhex("02020080")
    assert der_integer(0xD1) == bytes.fromhex("020200d1")


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.integers(0, 2**63))
def test_der_integer_round_trip(value: int) -> None:
    assert parse_der_integer(der_integer(value)) == value


@pytest.mark.parametrize("raw", ["0201", "020300", "0201ff", "040100", "02020001", ""])
def test_parse_der_integer_is_strict(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_der_integer(bytes.fromhex(raw))
