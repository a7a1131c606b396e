"""Shared fixtures for the attestation tests: the real Milan evidence and one modeled
manufacturer per session (RSA-4096 generation takes seconds, so it happens once)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tvmm.abi.report import AttestationReport, GuestPolicy, TcbVersion
from tvmm.hw.root_of_trust import Chip, Manufacturer
from tvmm.owner.verify import CertChain, load_chain_dir, load_report

FIXED_NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
EXPECTED_MEASUREMENT = bytes.fromhex("11" * 48)


MILAN_DIR = Path(__file__).resolve().parents[1] / "vectors" / "snp-milan"
"""Real AMD evidence shipped with the tests (provenance: tests/vectors/snp-milan/PROVENANCE.md)."""


@pytest.fixture(scope="session")
def milan_dir() -> Path:
    return MILAN_DIR


@pytest.fixture(scope="session")
def milan_chain(milan_dir: Path) -> CertChain:
    return load_chain_dir(milan_dir)


@pytest.fixture(scope="session")
def milan_report(milan_dir: Path) -> bytes:
    return load_report(milan_dir / "report_milan.hex")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tvmm-state")


@pytest.fixture(scope="session")
def manufacturer(state_dir: Path) -> Manufacturer:
    return Manufacturer.load_or_create(state_dir)


@pytest.fixture(scope="session")
def chip(state_dir: Path, manufacturer: Manufacturer) -> Chip:
    return Chip.load_or_create(state_dir, manufacturer, "chip-a")


@pytest.fixture(scope="session")
def other_chip(manufacturer: Manufacturer) -> Chip:
    key = ec.derive_private_key(0x5EC0_5EC0_5EC0, ec.SECP384R1())
    return Chip.create(manufacturer, "chip-b", key, now=FIXED_NOW)


@pytest.fixture(scope="session")
def own_chain(chip: Chip) -> CertChain:
    return CertChain(chip.manufacturer.ark_cert, chip.manufacturer.ask_cert, chip.vcek_cert)


def _make_report(**overrides: object) -> AttestationReport:
    """A plausible launched guest's report; the chip stamps chip_id and reported_tcb."""
    tcb = TcbVersion(boot_loader=3, tee=0, snp=8, microcode=115)
    fields: dict[str, object] = dict(
        version=2,
        policy=GuestPolicy(abi_minor=51, abi_major=1),
        measurement=EXPECTED_MEASUREMENT,
        report_data=bytes(range(64)),
        current_tcb=tcb,
        committed_tcb=tcb,
        launch_tcb=tcb,
        platform_info=1,
        report_id=bytes(range(32, 64)),
        report_id_ma=b"\xff" * 32,
        current_build=4,
        current_minor=52,
        current_major=1,
        committed_build=4,
        committed_minor=52,
        committed_major=1,
    )
    fields.update(overrides)
    return AttestationReport(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def make_report() -> Callable[..., AttestationReport]:
    """Factory for report values: make_report(measurement=..., policy=...)."""
    return _make_report


@pytest.fixture(scope="session")
def expected_measurement() -> bytes:
    return EXPECTED_MEASUREMENT


@pytest.fixture(scope="session")
def own_report(chip: Chip) -> bytes:
    return chip.sign_report(_make_report(), deterministic=True)
