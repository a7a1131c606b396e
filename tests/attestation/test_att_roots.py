"""The built-in pinned roots are AMD's real ARKs, and pinning is by exact bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tvmm.abi.report import P384_ORDER
from tvmm.hw.root_of_trust import Chip
from tvmm.owner import roots
from tvmm.owner.verify import (
    CertChain,
    Expectations,
    VerificationError,
    VerifyFailure,
    load_chain_dir,
    load_report,
    verify_chain,
    verify_evidence,
)

# The DER SHA-256 recorded in tvmm/owner/roots/PROVENANCE.md.
FINGERPRINTS = {
    "amd-milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "amd-genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
}


@pytest.mark.parametrize("name", roots.BUILT_IN)
def test_built_in_roots_are_amds_self_signed_arks(name: str) -> None:
    ark = roots.built_in(name)
    assert roots.fingerprint(ark) == FINGERPRINTS[name]
    assert ark.subject.rfc4514_string().startswith(f"CN=ARK-{name.removeprefix('amd-').title()},")
    provenance = (Path(roots.__file__).parent / "PROVENANCE.md").read_text()
    assert FINGERPRINTS[name] in provenance


def test_real_milan_chain_is_pinned_to_the_built_in_milan_root(milan_chain: CertChain) -> None:
    pinned = roots.pinned_roots()
    assert roots.pinned_root(milan_chain.ark, pinned) == "amd-milan"
    verify_chain(pinned["amd-milan"], milan_chain.ask, milan_chain.vcek)


def test_a_root_of_ones_own_is_not_pinned(own_chain: CertChain, milan_chain: CertChain) -> None:
    pinned = {name: roots.built_in(name) for name in roots.BUILT_IN}
    with pytest.raises(VerificationError) as caught:
        roots.pinned_root(own_chain.ark, pinned)
    assert caught.value.reason == VerifyFailure.CHAIN_ARK
    with pytest.raises(VerificationError):
        roots.pinned_root(milan_chain.ask, pinned)  # a real AMD certificate, but not a root
    with pytest.raises(VerificationError):
        roots.pinned_root(milan_chain.ark, {})


def test_modeled_root_is_read_never_made(tmp_path: Path, state_dir: Path, chip: Chip) -> None:
    assert roots.modeled(tmp_path) is None and not any(tmp_path.iterdir())
    assert "tvmm" not in roots.pinned_roots(tmp_path)
    assert roots.modeled(state_dir) == chip.manufacturer.ark_cert
    assert roots.pinned_root(chip.manufacturer.ark_cert, roots.pinned_roots(state_dir)) == "tvmm"


GENOA_DIR = Path(__file__).resolve().parents[1] / "vectors" / "snp-genoa"


def test_real_genoa_evidence_verifies_under_the_built_in_genoa_root() -> None:
    """The shipped ARK-Genoa endorses a real Genoa chip: its ASK, its VCEK, its report."""
    chain = load_chain_dir(GENOA_DIR)
    raw = load_report(GENOA_DIR / "report_genoa.hex")
    pinned = roots.pinned_roots()
    assert roots.pinned_root(chain.ark, pinned) == "amd-genoa"
    report = verify_evidence(raw, pinned["amd-genoa"], chain.ask, chain.vcek,
                             Expectations(measurement=raw[0x90:0xC0]))
    assert report.version == 3 and report.signature_s <= P384_ORDER // 2  # low-s, as AMD writes
    with pytest.raises(VerificationError) as caught:  # Milan's root does not endorse it
        verify_evidence(raw, pinned["amd-milan"], chain.ask, chain.vcek, Expectations())
    assert caught.value.reason == VerifyFailure.CHAIN_ASK
