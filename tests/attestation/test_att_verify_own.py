"""The verifier on our modeled chain: genuine evidence passes, each forgery fails for its reason."""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from tvmm.abi.report import (
    SIGNED_SIZE,
    AttestationReport,
    GuestPolicy,
    TcbVersion,
    parse,
    sign_report,
)
from tvmm.abi.vcek import PSS_SHA384
from tvmm.hw.root_of_trust import Chip, Manufacturer
from tvmm.owner.verify import (
    CertChain,
    Expectations,
    VerificationError,
    VerifyFailure,
    load_chain_dir,
    verify_chain,
    verify_evidence,
    verify_report,
)

MakeReport = Callable[..., AttestationReport]


def reason_of(
    report: bytes, chain: CertChain, expectations: Expectations | None = None, **kw: object
) -> VerifyFailure | None:
    try:
        verify_evidence(
            report, chain.ark, chain.ask, chain.vcek, expectations or Expectations(), **kw
        )
    except VerificationError as exc:
        return exc.reason
    return None


def test_own_evidence_verifies(
    own_report: bytes, own_chain: CertChain, chip: Chip, expected_measurement: bytes
) -> None:
    report = verify_evidence(
        own_report,
        own_chain.ark,
        own_chain.ask,
        own_chain.vcek,
        Expectations(
            measurement=expected_measurement,
            report_data=bytes(range(64)),
            min_tcb=TcbVersion(3, 0, 8, 115),
            min_abi=(1, 51),
            allow_smt=True,
        ),
    )
    assert report.chip_id == chip.chip_id
    assert report.reported_tcb == chip.tcb


def test_written_chain_loads_back(tmp_path: Path, chip: Chip, own_report: bytes) -> None:
    chain = load_chain_dir(chip.write_chain(tmp_path / "evidence"))
    assert reason_of(own_report, chain) is None


def test_signed_area_mutations_are_refused(own_report: bytes, own_chain: CertChain) -> None:
    offsets = sorted(random.Random(2024).sample(range(SIGNED_SIZE), 64) + [0x90, 0x1A0, 0x180])
    for offset in offsets:
        damaged = bytearray(own_report)
        damaged[offset] ^= 0x10
        assert reason_of(bytes(damaged), own_chain) in (
            VerifyFailure.SIGNATURE,
            VerifyFailure.MALFORMED,
        ), hex(offset)


def test_report_signed_by_another_chip(
    other_chip: Chip, own_chain: CertChain, make_report: MakeReport
) -> None:
    forged = other_chip.sign_report(make_report())
    assert reason_of(forged, own_chain) == VerifyFailure.SIGNATURE


def test_vcek_of_another_chip(
    other_chip: Chip, chip: Chip, own_chain: CertChain, make_report
) -> None:
    """A genuine report presented with another (genuine) chip's VCEK."""
    report = chip.sign_report(make_report())
    chain = CertChain(own_chain.ark, own_chain.ask, other_chip.vcek_cert)
    assert reason_of(report, chain) == VerifyFailure.SIGNATURE


def test_binding_to_the_vcek(chip: Chip, own_chain: CertChain, make_report: MakeReport) -> None:
    """Signed by the right key but claiming another TCB or chip id: the VCEK disagrees."""
    other_tcb = sign_report(
        make_report(chip_id=chip.chip_id, reported_tcb=TcbVersion(3, 0, 9, 115)), chip.key
    )
    assert reason_of(other_tcb, own_chain) == VerifyFailure.TCB_MISMATCH
    other_id = sign_report(make_report(chip_id=bytes(64), reported_tcb=chip.tcb), chip.key)
    assert reason_of(other_id, own_chain) == VerifyFailure.CHIP_ID_MISMATCH


def test_signing_key_other_than_vcek(
    chip: Chip, own_chain: CertChain, make_report: MakeReport
) -> None:
    vlek_signed = chip.sign_report(make_report(flags=1 << 2))
    assert reason_of(vlek_signed, own_chain) == VerifyFailure.SIGNING_KEY


def test_debug_policy(chip: Chip, own_chain: CertChain, make_report: MakeReport) -> None:
    debug = chip.sign_report(make_report(policy=GuestPolicy(debug=True)))
    assert reason_of(debug, own_chain) == VerifyFailure.POLICY_DEBUG
    assert reason_of(debug, own_chain, Expectations(allow_debug=True)) is None
    migratable = chip.sign_report(make_report(policy=GuestPolicy(migrate_ma=True)))
    assert reason_of(migratable, own_chain) == VerifyFailure.POLICY_MIGRATE_MA


def test_malformed_report(own_report: bytes, own_chain: CertChain) -> None:
    assert reason_of(own_report[:-1], own_chain) == VerifyFailure.MALFORMED
    assert reason_of(b"", own_chain) == VerifyFailure.MALFORMED


def test_validity_window(own_report: bytes, own_chain: CertChain) -> None:
    issued = own_chain.vcek.not_valid_before_utc
    assert reason_of(own_report, own_chain, at=issued + datetime.timedelta(days=1)) is None
    assert reason_of(own_report, own_chain, at=issued - datetime.timedelta(days=1)) in (
        VerifyFailure.CHAIN_ARK,
        VerifyFailure.CHAIN_ASK,
        VerifyFailure.CHAIN_VCEK,
    )
    late = own_chain.vcek.not_valid_after_utc + datetime.timedelta(days=1)
    assert reason_of(own_report, own_chain, at=late) == VerifyFailure.CHAIN_VCEK


def _rogue_ca(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey
) -> x509.Certificate:
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signer, hashes.SHA384(), rsa_padding=PSS_SHA384)
    )


@pytest.fixture(scope="module")
def rogue_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rogue_and_weak_links(
    manufacturer: Manufacturer,
    chip: Chip,
    own_chain: CertChain,
    rogue_key: rsa.RSAPrivateKey,
    own_report: bytes,
) -> None:
    ark, ask = manufacturer.ark_cert, manufacturer.ask_cert
    # An ASK with the right name but the attacker's (and too small) key, self-signed.
    weak_ask = _rogue_ca(ask.subject, ark.subject, rogue_key, rogue_key)
    assert (
        reason_of(own_report, CertChain(ark, weak_ask, chip.vcek_cert)) == VerifyFailure.CHAIN_ASK
    )
    # A root that is not self-consistent: the ARK's name, signed by another key.
    fake_root = _rogue_ca(ark.subject, ark.subject, manufacturer.ark_key, rogue_key)
    assert (
        reason_of(own_report, CertChain(fake_root, ask, chip.vcek_cert)) == VerifyFailure.CHAIN_ARK
    )
    # A VCEK for the chip key, signed with PKCS#1 v1.5 by the real ASK: wrong scheme.
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    v15 = (
        x509.CertificateBuilder()
        .subject_name(chip.vcek_cert.subject)
        .issuer_name(ask.subject)
        .public_key(chip.key.public_key())
        .serial_number(9)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(manufacturer.ask_key, hashes.SHA384(), rsa_padding=padding.PKCS1v15())
    )
    assert reason_of(own_report, CertChain(ark, ask, v15)) == VerifyFailure.CHAIN_VCEK
    # A VCEK holding an RSA key.
    rsa_vcek = _rogue_ca(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VCEK")]),
        ask.subject,
        rogue_key,
        manufacturer.ask_key,
    )
    assert reason_of(own_report, CertChain(ark, ask, rsa_vcek)) == VerifyFailure.CHAIN_VCEK


def test_milan_and_own_chains_do_not_mix(
    milan_chain: CertChain, own_chain: CertChain, own_report: bytes, milan_report: bytes
) -> None:
    assert reason_of(own_report, CertChain(milan_chain.ark, own_chain.ask, own_chain.vcek)) == (
        VerifyFailure.CHAIN_ASK
    )
    with pytest.raises(VerificationError) as info:
        verify_chain(own_chain.ark, milan_chain.ask, milan_chain.vcek)
    assert info.value.reason == VerifyFailure.CHAIN_ASK
    with pytest.raises(VerificationError) as info:
        verify_report(milan_report, own_chain.vcek)
    assert info.value.reason == VerifyFailure.SIGNATURE


def test_deterministic_signing_is_reproducible(chip: Chip, make_report: MakeReport) -> None:
    report = make_report()
    first = chip.sign_report(report, deterministic=True)
    assert first == chip.sign_report(report, deterministic=True)
    assert parse(first).chip_id == chip.chip_id
    assert chip.sign_report(report) != chip.sign_report(report)  # random ECDSA nonces
    assert isinstance(chip.key, ec.EllipticCurvePrivateKey)
