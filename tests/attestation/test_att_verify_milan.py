"""The verifier on real AMD Milan evidence: accepted as is, refused after any one-byte change."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from tvmm.abi.report import REPORT_SIZE, SIGNED_SIZE, ReportFormatError, TcbVersion, parse
from tvmm.owner.verify import (
    CertChain,
    Expectations,
    VerificationError,
    VerifyFailure,
    load_certificate,
    load_chain_dir,
    load_report,
    verify_chain,
    verify_evidence,
    verify_report,
)

ROLES = {
    "ark": VerifyFailure.CHAIN_ARK,
    "ask": VerifyFailure.CHAIN_ASK,
    "vcek": VerifyFailure.CHAIN_VCEK,
}


def reason_of(call: Callable[..., object], *args: object, **kwargs: object) -> VerifyFailure | None:
    try:
        call(*args, **kwargs)
    except VerificationError as exc:
        return exc.reason
    return None


def expected_reason(damaged: bytes) -> VerifyFailure:
    """A byte change either breaks decoding (reserved bytes, impossible fields) or the
    signature; which one is decided by the codec, independently of the verifier."""
    try:
        parse(damaged)
    except ReportFormatError:
        return VerifyFailure.MALFORMED
    return VerifyFailure.SIGNATURE


def test_accepts_real_milan_evidence(milan_dir: Path, milan_report: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the serial-0 deprecation warning must not leak
        chain = load_chain_dir(milan_dir)
        report_bytes = load_report(milan_dir / "report_milan.hex")
        report = verify_evidence(
            report_bytes,
            chain.ark,
            chain.ask,
            chain.vcek,
            Expectations(
                measurement=bytes.fromhex(
                    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb424"
                    "64bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
                ),
                report_data=report_bytes[0x50:0x90],
                min_tcb=TcbVersion(boot_loader=3, tee=0, snp=8, microcode=0x73),
            ),
        )
    assert report_bytes == milan_report
    assert report.reported_tcb == TcbVersion(3, 0, 8, 0x73)


def test_every_single_byte_change_of_the_report_is_refused(
    milan_chain: CertChain, milan_report: bytes
) -> None:
    """Exhaustive over all 0x4A0 offsets: the signed area and the unsigned tail alike."""
    wrong = []
    for offset in range(REPORT_SIZE):
        damaged = bytearray(milan_report)
        damaged[offset] ^= 0x01
        got = reason_of(verify_report, bytes(damaged), milan_chain.vcek)
        if got != expected_reason(bytes(damaged)):
            wrong.append((hex(offset), got))
    assert wrong == []


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(0, SIGNED_SIZE - 1), st.integers(1, 255))
def test_signed_area_mutation_is_refused(
    milan_chain: CertChain, milan_report: bytes, offset: int, mask: int
) -> None:
    damaged = bytearray(milan_report)
    damaged[offset] ^= mask
    assert reason_of(
        verify_evidence, bytes(damaged), *_certs(milan_chain), Expectations()
    ) == expected_reason(bytes(damaged))


def _certs(chain: CertChain) -> tuple:
    return chain.ark, chain.ask, chain.vcek


def _with_damaged(chain: CertChain, role: str, offset: int, mask: int) -> CertChain | None:
    der = bytearray(getattr(chain, role).public_bytes(Encoding.DER))
    if offset >= len(der):
        return None
    der[offset] ^= mask
    certs = {name: getattr(chain, name) for name in ROLES}
    certs[role] = load_certificate(bytes(der), ROLES[role])
    return CertChain(**certs)


def _chain_then_report(chain: CertChain, report: bytes) -> None:
    verify_chain(*_certs(chain))
    verify_report(report, chain.vcek)


@pytest.mark.parametrize("role", list(ROLES))
def test_every_single_byte_change_of_a_certificate_is_refused(
    milan_chain: CertChain, milan_report: bytes, role: str
) -> None:
    size = len(getattr(milan_chain, role).public_bytes(Encoding.DER))
    wrong = []
    for offset in range(size):
        got = reason_of(
            lambda o=offset: _chain_then_report(
                _with_damaged(milan_chain, role, o, 0x01), milan_report
            )
        )
        if got != ROLES[role]:
            wrong.append((offset, got))
    assert wrong == []


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.sampled_from(list(ROLES)), st.integers(0, 1700), st.integers(1, 255))
def test_certificate_mutation_is_refused(
    milan_chain: CertChain, milan_report: bytes, role: str, offset: int, mask: int
) -> None:
    def attempt() -> None:
        damaged = _with_damaged(milan_chain, role, offset, mask)
        if damaged is not None:
            _chain_then_report(damaged, milan_report)
        else:
            raise VerificationError(ROLES[role], "offset past the end: nothing to damage")

    assert reason_of(attempt) == ROLES[role]


def test_certificates_swapped_between_roles_are_refused(milan_chain: CertChain) -> None:
    ark, ask, vcek = _certs(milan_chain)
    assert reason_of(verify_chain, ask, ask, vcek) == VerifyFailure.CHAIN_ARK
    assert reason_of(verify_chain, ark, ark, vcek) == VerifyFailure.CHAIN_ASK
    assert reason_of(verify_chain, ark, ask, ask) == VerifyFailure.CHAIN_VCEK


@pytest.mark.parametrize(
    ("expectations", "reason"),
    [
        (Expectations(measurement=bytes(48)), VerifyFailure.MEASUREMENT),
        (Expectations(report_data=bytes(64)), VerifyFailure.REPORT_DATA),
        (Expectations(host_data=b"\x01" * 32), VerifyFailure.HOST_DATA),
        (Expectations(allow_smt=False), VerifyFailure.POLICY_SMT),
        (Expectations(require_single_socket=True), VerifyFailure.POLICY_SINGLE_SOCKET),
        (Expectations(min_abi=(1, 51)), VerifyFailure.POLICY_ABI),
        (Expectations(vmpl=1), VerifyFailure.VMPL),
        (Expectations(min_guest_svn=1), VerifyFailure.GUEST_SVN),
        (Expectations(min_tcb=TcbVersion(3, 0, 8, 0x74)), VerifyFailure.TCB_TOO_OLD),
        (Expectations(min_tcb=TcbVersion(4, 0, 0, 0)), VerifyFailure.TCB_TOO_OLD),
        (Expectations(min_tcb=TcbVersion(3, 0, 8, 0x73), vmpl=None), None),
    ],
)
def test_expectations_on_milan(
    milan_chain: CertChain,
    milan_report: bytes,
    expectations: Expectations,
    reason: VerifyFailure | None,
) -> None:
    got = reason_of(verify_evidence, milan_report, *_certs(milan_chain), expectations)
    assert got == reason


def test_load_helpers_accept_every_naming(tmp_path: Path, milan_dir: Path) -> None:
    for vcek_name in ("vcek.der", "vcek_milan.der", "vcek.pem"):
        target = tmp_path / vcek_name.replace(".", "_")
        target.mkdir()
        shutil.copy(milan_dir / "ark.pem", target / "ark.pem")
        shutil.copy(milan_dir / "ask.pem", target / "ask.pem")
        der = (milan_dir / "vcek_milan.der").read_bytes()
        if vcek_name.endswith(".pem"):
            cert = load_certificate(der, VerifyFailure.CHAIN_VCEK)
            (target / vcek_name).write_bytes(cert.public_bytes(Encoding.PEM))
        else:
            (target / vcek_name).write_bytes(der)
        assert load_chain_dir(target).vcek.public_bytes(Encoding.DER) == der
    (tmp_path / "vcek_der" / "vcek_other.der").write_bytes(b"")
    with pytest.raises(ValueError):
        load_chain_dir(tmp_path / "vcek_der")
    with pytest.raises(FileNotFoundError):
        load_chain_dir(tmp_path)


def test_load_report_formats(tmp_path: Path, milan_report: bytes) -> None:
    (tmp_path / "r.bin").write_bytes(milan_report)
    text = milan_report.hex().upper()
    (tmp_path / "r.hex").write_text("\n".join(text[i : i + 64] for i in range(0, len(text), 64)))
    assert load_report(tmp_path / "r.bin") == load_report(tmp_path / "r.hex") == milan_report
    (tmp_path / "bad.hex").write_text("zz")
    assert reason_of(load_report, tmp_path / "bad.hex") == VerifyFailure.MALFORMED


def test_garbage_certificate_is_refused_with_its_role() -> None:
    for role, reason in ROLES.items():
        assert reason_of(load_certificate, b"not a certificate " + role.encode(), reason) == reason
