"""One encoding per signature: (r, s) verifies, its ECDSA twin (r, n - s) does not.

ECDSA accepts both; a verifier that did would let anyone change 48 bytes of an accepted
report (docs/attestation.md: "no byte of an accepted report can change"). AMD's chips
write s <= n/2 (the real Milan report here does), and so does our chip.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tvmm.abi.report import (
    OFFSETS,
    P384_ORDER,
    SIGNATURE_COMPONENT_SIZE,
    AttestationReport,
    parse,
)
from tvmm.hw.root_of_trust import Chip
from tvmm.owner.verify import (
    CertChain,
    Expectations,
    VerificationError,
    VerifyFailure,
    verify_evidence,
)

MakeReport = Callable[..., AttestationReport]


def _with_s(report: bytes, s: int) -> bytes:
    at = OFFSETS["signature_s"]
    raw = bytearray(report)
    raw[at : at + SIGNATURE_COMPONENT_SIZE] = s.to_bytes(SIGNATURE_COMPONENT_SIZE, "little")
    return bytes(raw)


def _reason(report: bytes, chain: CertChain) -> VerifyFailure | None:
    try:
        verify_evidence(report, chain.ark, chain.ask, chain.vcek, Expectations())
    except VerificationError as exc:
        return exc.reason
    return None


def test_real_milan_report_is_low_s_and_its_twin_is_refused(
    milan_chain: CertChain, milan_report: bytes
) -> None:
    s = parse(milan_report).signature_s
    assert 0 < s <= P384_ORDER // 2  # what AMD's chip wrote
    assert _reason(milan_report, milan_chain) is None
    assert _reason(_with_s(milan_report, P384_ORDER - s), milan_chain) == VerifyFailure.SIGNATURE


def test_our_chip_writes_low_s_and_the_twin_is_refused(
    chip: Chip, own_chain: CertChain, make_report: MakeReport
) -> None:
    """Twenty reports (RFC 6979, fixed inputs): about half would be high-s without the
    normalisation, so the first assertion fails on a signer that does not normalise."""
    for i in range(20):
        report = chip.sign_report(make_report(report_data=bytes([i]) * 64), deterministic=True)
        s = parse(report).signature_s
        assert 0 < s <= P384_ORDER // 2, i
        assert _reason(report, own_chain) is None
        assert _reason(_with_s(report, P384_ORDER - s), own_chain) == VerifyFailure.SIGNATURE


@pytest.mark.parametrize("s", [0, P384_ORDER, P384_ORDER + 1, (1 << 576) - 1])
def test_out_of_range_s_is_refused(own_report: bytes, own_chain: CertChain, s: int) -> None:
    assert _reason(_with_s(own_report, s), own_chain) == VerifyFailure.SIGNATURE
