"""ATTESTATION_REPORT codec: layout against real Milan bytes, round trips, strict parsing."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from tvmm.abi import report as codec
from tvmm.abi.report import (
    OFFSETS,
    REPORT_SIZE,
    AttestationReport,
    GuestPolicy,
    ReportFormatError,
    TcbVersion,
    pack,
    parse,
    sign_report,
    signed_bytes,
)

MILAN_TCB = TcbVersion(boot_loader=3, tee=0, snp=8, microcode=0x73)


def test_milan_report_fields(milan_report: bytes) -> None:
    report = parse(milan_report)
    assert report.version == 2
    assert report.guest_svn == 0
    assert report.policy.to_u64() == 0x30000
    assert report.policy == GuestPolicy(abi_minor=0, abi_major=0, smt=True)
    assert report.family_id == bytes(16) and report.image_id == bytes(16)
    assert report.vmpl == 0
    assert report.signature_algo == 1
    assert report.current_tcb == MILAN_TCB
    assert report.platform_info == 1  # SMT enabled
    assert report.flags == 0 and report.signing_key == 0
    assert report.report_data.hex().startswith("d447b55d197491bf")
    assert report.measurement.hex() == (
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb424"
        "64bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    )
    assert report.host_data == bytes(32)
    assert report.report_id.hex().startswith("92b3b47d")
    assert report.report_id_ma == b"\xff" * 32
    assert report.reported_tcb == MILAN_TCB
    assert report.reported_tcb.to_u64().to_bytes(8, "little") == bytes.fromhex("0300000000000873")
    assert report.chip_id.hex().startswith("d49554ec717f4e5b")
    assert report.committed_tcb == MILAN_TCB and report.launch_tcb == MILAN_TCB
    assert (report.current_major, report.current_minor, report.current_build) == (1, 52, 4)
    assert (report.committed_major, report.committed_minor, report.committed_build) == (1, 52, 4)
    assert report.signature_r == int.from_bytes(milan_report[0x2A0:0x2E8], "little")
    assert report.signature_s == int.from_bytes(milan_report[0x2E8:0x330], "little")


def test_layout_offsets_follow_the_spec(milan_report: bytes) -> None:
    expected = {
        "version": 0x00,
        "guest_svn": 0x04,
        "policy": 0x08,
        "family_id": 0x10,
        "image_id": 0x20,
        "vmpl": 0x30,
        "signature_algo": 0x34,
        "current_tcb": 0x38,
        "platform_info": 0x40,
        "flags": 0x48,
        "report_data": 0x50,
        "measurement": 0x90,
        "host_data": 0xC0,
        "id_key_digest": 0xE0,
        "author_key_digest": 0x110,
        "report_id": 0x140,
        "report_id_ma": 0x160,
        "reported_tcb": 0x180,
        "cpuid_fam_id": 0x188,
        "chip_id": 0x1A0,
        "committed_tcb": 0x1E0,
        "current_build": 0x1E8,
        "current_minor": 0x1E9,
        "current_major": 0x1EA,
        "committed_build": 0x1EC,
        "committed_major": 0x1EE,
        "launch_tcb": 0x1F0,
        "signature_r": 0x2A0,
        "signature_s": 0x2E8,
    }
    assert {name: OFFSETS[name] for name in expected} == expected
    report = parse(milan_report)
    assert milan_report[0x90:0xC0] == report.measurement
    assert milan_report[0x1A0:0x1E0] == report.chip_id
    assert milan_report[0x50:0x90] == report.report_data


def test_milan_round_trip(milan_report: bytes) -> None:
    assert pack(parse(milan_report)) == milan_report
    assert signed_bytes(milan_report) == milan_report[:0x2A0]


byte_strings = {
    name: st.binary(min_size=size, max_size=size) for name, size in codec._BYTES_SIZES.items()
}
tcbs = st.builds(TcbVersion, *(st.integers(0, 255) for _ in range(4)))
policies = st.builds(
    GuestPolicy,
    st.integers(0, 255),
    st.integers(0, 255),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


@st.composite
def reports(draw: st.DrawFn) -> AttestationReport:
    version = draw(st.sampled_from([2, 3]))
    cpuid = st.integers(0, 255) if version == 3 else st.just(0)
    return AttestationReport(
        version=version,
        guest_svn=draw(st.integers(0, 2**32 - 1)),
        policy=draw(policies),
        vmpl=draw(st.integers(0, 3)),
        current_tcb=draw(tcbs),
        reported_tcb=draw(tcbs),
        committed_tcb=draw(tcbs),
        launch_tcb=draw(tcbs),
        platform_info=draw(st.integers(0, 2**64 - 1)),
        flags=draw(st.integers(0, 0x1F)),
        cpuid_fam_id=draw(cpuid),
        cpuid_mod_id=draw(cpuid),
        cpuid_step=draw(cpuid),
        current_build=draw(st.integers(0, 255)),
        committed_major=draw(st.integers(0, 255)),
        signature_r=draw(st.integers(0, 2**576 - 1)),
        signature_s=draw(st.integers(0, 2**384)),
        **{name: draw(strategy) for name, strategy in byte_strings.items()},
    )


@settings(max_examples=60, deadline=None, derandomize=True)
@given(reports())
def test_pack_parse_round_trip(report: AttestationReport) -> None:
    raw = pack(report)
    assert len(raw) == REPORT_SIZE
    assert parse(raw) == report
    assert pack(parse(raw)) == raw


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.binary(max_size=2 * REPORT_SIZE).filter(lambda b: len(b) != REPORT_SIZE))
def test_wrong_length_is_refused(data: bytes) -> None:
    with pytest.raises(ReportFormatError) as info:
        parse(data)
    assert info.value.field == "length"


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(0, REPORT_SIZE - 1))
def test_truncated_milan_is_refused(milan_report: bytes, size: int) -> None:
    with pytest.raises(ReportFormatError):
        parse(milan_report[:size])
    with pytest.raises(ReportFormatError):
        parse(milan_report + bytes(size + 1))


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE))
def test_random_bytes_parse_or_fail_cleanly(data: bytes) -> None:
    try:
        report = parse(data)
    except ReportFormatError as exc:
        assert exc.field  # names what is wrong
    else:
        assert pack(report) == data


@pytest.mark.parametrize(
    ("offset", "field"),
    [
        (0x00, "version"),
        (0x34, "signature_algo"),
        (0x30, "vmpl"),
        (0x0A, "policy"),  # clears reserved-must-be-one bit 17
        (0x0F, "policy"),  # sets bits 56-63
        (0x4B, "flags"),
        (0x4C, "_reserved_04c"),
        (0x184, "reported_tcb"),  # TCB reserved bytes
        (0x188, "cpuid_fam_id"),  # reserved in a version-2 report
        (0x190, "_reserved_18b"),
        (0x1EB, "_reserved_1eb"),
        (0x200, "_reserved_1f8"),
        (0x400, "_reserved_330"),
    ],
)
def test_bad_field_is_named(milan_report: bytes, offset: int, field: str) -> None:
    damaged = bytearray(milan_report)
    damaged[offset] ^= 0x02 if offset == 0x0A else 0x80
    with pytest.raises(ReportFormatError) as info:
        parse(bytes(damaged))
    assert info.value.field == field


def test_tcb_version_codec() -> None:
    assert TcbVersion.from_u64(0x7308000000000003) == MILAN_TCB
    assert MILAN_TCB.to_u64() == 0x7308000000000003
    with pytest.raises(ValueError):
        TcbVersion.from_u64(0x0000000100000000)  # a reserved byte
    with pytest.raises(ValueError):
        TcbVersion(boot_loader=256)
    assert MILAN_TCB.meets(MILAN_TCB)
    assert MILAN_TCB.meets(TcbVersion(2, 0, 8, 0x70))
    assert not MILAN_TCB.meets(TcbVersion(4, 0, 0, 0))  # componentwise, not numeric
    assert not MILAN_TCB.meets(TcbVersion(0, 0, 0, 0x74))


def test_guest_policy_codec() -> None:
    policy = GuestPolicy.from_u64(0x30000 | 0x0133 | 1 << 19 | 1 << 20)
    assert policy == GuestPolicy(
        abi_minor=0x33, abi_major=1, smt=True, debug=True, single_socket=True
    )
    assert policy.to_u64() == 0x1B0133
    assert GuestPolicy().to_u64() == 0x30000
    assert GuestPolicy(smt=False).to_u64() == 0x20000
    for bad in (0x10000, 1 << 21 | 1 << 17, 1 << 64, -1):
        with pytest.raises(ValueError):
            GuestPolicy.from_u64(bad)
    with pytest.raises(ValueError):
        GuestPolicy(abi_major=300)
    with pytest.raises(ValueError):
        GuestPolicy(debug=1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"measurement": bytes(47)},
        {"vmpl": 4},
        {"guest_svn": -1},
        {"version": 1},
        {"flags": 1 << 5},
        {"signature_r": 1 << 576},
        {"policy": 0x30000},
    ],
)
def test_invalid_values_are_refused(change: dict) -> None:
    with pytest.raises(ReportFormatError):
        dataclasses.replace(AttestationReport(), **change)


def test_sign_report_is_verifiable_independently() -> None:
    key = ec.derive_private_key(0x1234_5678_9ABC, ec.SECP384R1())
    unsigned = AttestationReport(measurement=b"\x42" * 48, report_data=b"\x07" * 64)
    raw = sign_report(unsigned, key, deterministic=True)
    assert raw == sign_report(unsigned, key, deterministic=True)  # RFC 6979: no randomness
    assert raw[:0x2A0] == pack(unsigned)[:0x2A0]
    r = int.from_bytes(raw[0x2A0:0x2E8], "little")
    s = int.from_bytes(raw[0x2E8:0x330], "little")
    key.public_key().verify(encode_dss_signature(r, s), raw[:0x2A0], ec.ECDSA(hashes.SHA384()))
    assert raw[0x330:] == bytes(REPORT_SIZE - 0x330)
    with pytest.raises(TypeError):
        sign_report(unsigned, ec.derive_private_key(5, ec.SECP256R1()))
