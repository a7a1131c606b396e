"""Key release: policy files, the report_data binding, wrapping, and the broker end to end."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from tvmm.abi.key_release import (
    KeyReleaseFormatError,
    UnwrapError,
    WrappedSecret,
    encode_public_key,
    report_data_for,
    unwrap,
    wrap_secret,
    wrap_secret_with,
)
from tvmm.abi.report import AttestationReport, GuestPolicy, TcbVersion
from tvmm.hw.root_of_trust import Chip
from tvmm.owner.broker import KeyBroker, PolicyError, ReleasePolicy, load_policy
from tvmm.owner.verify import CertChain, VerificationError, VerifyFailure

MEASUREMENT = bytes.fromhex("11" * 48)
POLICY_TOML = f"""
version = 1
measurement = "{MEASUREMENT.hex()}"
allow_debug = false
vmpl = 0

[min_tcb]
boot_loader = 3
tee = 0
snp = 8
microcode = 115

[min_abi]
major = 1
minor = 51
"""
GUEST_KEY = ec.derive_private_key(0xC0FFEE_1234, ec.SECP384R1())
EPHEMERAL_KEY = ec.derive_private_key(0xE9_4E_3E_4A_1, ec.SECP384R1())
NONCE = bytes(range(32))
IV = bytes(range(100, 112))
NOW = 1_800_000_000.0  # the broker decides at an explicit time

MakeReport = Callable[..., AttestationReport]


def guest_point(key: ec.EllipticCurvePrivateKey = GUEST_KEY) -> bytes:
    return encode_public_key(key.public_key())


# --- the policy file -------------------------------------------------------------------


def test_policy_file_parses() -> None:
    policy = ReleasePolicy.from_toml(POLICY_TOML)
    assert policy.measurement == MEASUREMENT
    assert policy.min_tcb == TcbVersion(3, 0, 8, 115)
    assert policy.min_abi == (1, 51)
    assert policy.allow_debug is False and policy.allow_smt is True
    expectations = policy.expectations(bytes(64))
    assert expectations.measurement == MEASUREMENT and expectations.report_data == bytes(64)


def test_minimal_policy_uses_safe_defaults() -> None:
    policy = ReleasePolicy.from_toml(f'measurement = "{MEASUREMENT.hex()}"')
    assert (policy.allow_debug, policy.allow_migrate_ma, policy.vmpl) == (False, False, 0)
    assert policy.min_tcb is None and policy.host_data is None


@pytest.mark.parametrize(
    "text",
    [
        "",  # no measurement
        "measurement = [",  # not TOML
        'measurement = "abc"',
        f'measurement = "{"11" * 47}"',
        f'measurement = "{"zz" * 48}"',
        "measurement = 5",
        f'measurement = "{MEASUREMENT.hex()}"\nalow_debug = true',  # misspelt key
        f'measurement = "{MEASUREMENT.hex()}"\nallow_debug = 1',
        f'measurement = "{MEASUREMENT.hex()}"\nversion = 2',
        f'measurement = "{MEASUREMENT.hex()}"\nvmpl = 4',
        f'measurement = "{MEASUREMENT.hex()}"\nmin_tcb = 3',
        f'measurement = "{MEASUREMENT.hex()}"\n[min_tcb]\nsnp = 256',
        f'measurement = "{MEASUREMENT.hex()}"\n[min_tcb]\nfirmware = 1',
        f'measurement = "{MEASUREMENT.hex()}"\n[min_abi]\nmajor = "1"',
        f'measurement = "{MEASUREMENT.hex()}"\nhost_data = "00"',
    ],
)
def test_bad_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        ReleasePolicy.from_toml(text)


def test_load_policy(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(POLICY_TOML)
    assert load_policy(tmp_path / "p.toml") == ReleasePolicy.from_toml(POLICY_TOML)
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError):
        load_policy(tmp_path / "bad.toml")


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.text(max_size=300))
def test_random_text_parses_or_fails_clearly(text: str) -> None:
    try:
        ReleasePolicy.from_toml(text)
    except PolicyError as exc:
        assert str(exc)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-5, 300),
    st.text(alphabet="0123456789abcdefxyz", max_size=100),
    st.just(MEASUREMENT.hex()),
)
toml_keys = st.sampled_from(
    [
        "version",
        "measurement",
        "allow_debug",
        "allow_smt",
        "vmpl",
        "min_guest_svn",
        "host_data",
        "x",
    ]
)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    st.dictionaries(toml_keys, toml_scalars, max_size=6),
    st.dictionaries(
        st.sampled_from(["boot_loader", "tee", "snp", "microcode", "bogus"]),
        toml_scalars,
        max_size=5,
    ),
)
def test_structured_random_policies_parse_or_fail_clearly(top: dict, tcb: dict) -> None:
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    if tcb:
        lines.append("[min_tcb]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in tcb.items()]
    try:
        policy = ReleasePolicy.from_toml("\n".join(lines))
    except PolicyError as exc:
        assert str(exc)
    else:
        assert len(policy.measurement) == 48


# --- binding and wrapping --------------------------------------------------------------


def test_report_data_binding() -> None:
    point = guest_point()
    assert len(point) == 97 and point[0] == 4
    expected = hashlib.sha384(NONCE + point).digest() + bytes(16)
    assert report_data_for(NONCE, point) == expected
    with pytest.raises(KeyReleaseFormatError):
        report_data_for(NONCE[:31], point)
    with pytest.raises(KeyReleaseFormatError):
        report_data_for(NONCE, b"\x04" + bytes(96))  # not on the curve


def test_wrap_known_answer() -> None:
    """The same construction written out with the primitives, independently."""
    secret = b"disk key: correct horse battery staple"
    wrapped = wrap_secret_with(
        secret, guest_point(), NONCE, MEASUREMENT, ephemeral_key=EPHEMERAL_KEY, iv=IV
    )
    shared = EPHEMERAL_KEY.exchange(ec.ECDH(), GUEST_KEY.public_key())
    key = HKDF(hashes.SHA384(), 32, salt=NONCE, info=b"tvmm key release v1").derive(shared)
    expected_ct = AESGCM(key).encrypt(IV, secret, MEASUREMENT)
    assert wrapped.ciphertext == expected_ct
    assert wrapped.ephemeral_public_key == EPHEMERAL_KEY.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    blob = wrapped.to_bytes()
    assert blob[:5] == b"TVKR\x01"
    assert blob[5:102] == wrapped.ephemeral_public_key
    assert blob[102:114] == IV
    assert int.from_bytes(blob[114:118], "big") == len(expected_ct) == len(secret) + 16
    assert blob[118:] == expected_ct
    assert unwrap(WrappedSecret.from_bytes(blob), GUEST_KEY, NONCE, MEASUREMENT) == secret


def test_unwrap_refuses_any_other_context() -> None:
    wrapped = wrap_secret(b"s3cret", guest_point(), NONCE, MEASUREMENT)
    assert unwrap(wrapped, GUEST_KEY, NONCE, MEASUREMENT) == b"s3cret"
    other_key = ec.derive_private_key(99, ec.SECP384R1())
    for key, nonce, measurement in (
        (other_key, NONCE, MEASUREMENT),
        (GUEST_KEY, bytes(32), MEASUREMENT),
        (GUEST_KEY, NONCE, bytes(48)),
    ):
        with pytest.raises(UnwrapError):
            unwrap(wrapped, key, nonce, measurement)
    blob = bytearray(wrapped.to_bytes())
    blob[-1] ^= 1
    with pytest.raises(UnwrapError):
        unwrap(WrappedSecret.from_bytes(bytes(blob)), GUEST_KEY, NONCE, MEASUREMENT)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(max_size=300))
def test_wrapped_secret_codec_is_strict(data: bytes) -> None:
    try:
        wrapped = WrappedSecret.from_bytes(data)
    except KeyReleaseFormatError:
        return
    assert wrapped.to_bytes() == data


def test_wrapped_secret_codec_edges() -> None:
    blob = wrap_secret_with(
        b"x", guest_point(), NONCE, MEASUREMENT, ephemeral_key=EPHEMERAL_KEY, iv=IV
    ).to_bytes()
    for bad in (
        blob[:-1],
        blob + b"\x00",
        b"TVKX" + blob[4:],
        blob[:4] + b"\x02" + blob[5:],
        blob[:5] + b"\x04" + bytes(96) + blob[102:],
    ):
        with pytest.raises(KeyReleaseFormatError):
            WrappedSecret.from_bytes(bad)


# --- the broker, end to end ------------------------------------------------------------


@pytest.fixture()
def broker(own_chain: CertChain) -> KeyBroker:
    return KeyBroker(ReleasePolicy.from_toml(POLICY_TOML), own_chain.ark)


def guest_evidence(chip: Chip, make_report: MakeReport, nonce: bytes, **overrides: object) -> bytes:
    """What the guest does: bind nonce and its key into REPORT_DATA, ask the chip to sign."""
    fields = {"report_data": report_data_for(nonce, guest_point()), **overrides}
    return chip.sign_report(make_report(**fields))


def release_reason(broker: KeyBroker, *args: object) -> VerifyFailure | None:
    try:
        broker.release(*args, now=NOW)
    except VerificationError as exc:
        return exc.reason
    return None


def test_release_end_to_end(
    broker: KeyBroker, chip: Chip, own_chain: CertChain, make_report
) -> None:
    nonce = broker.challenge()
    evidence = guest_evidence(chip, make_report, nonce)
    wrapped = broker.release(evidence, own_chain, nonce, guest_point(), b"the volume key",
                             now=NOW)
    received = WrappedSecret.from_bytes(wrapped.to_bytes())  # through the untrusted host
    assert unwrap(received, GUEST_KEY, nonce, MEASUREMENT) == b"the volume key"


def test_release_with_fixed_randomness_is_reproducible(
    broker: KeyBroker, chip: Chip, own_chain: CertChain, make_report
) -> None:
    nonce = broker.challenge_with(NONCE)
    evidence = guest_evidence(chip, make_report, nonce)
    wrapped = broker.release_with(
        evidence, own_chain, nonce, guest_point(), b"k", now=NOW, ephemeral_key=EPHEMERAL_KEY,
        iv=IV)
    assert wrapped == wrap_secret_with(
        b"k", guest_point(), NONCE, MEASUREMENT, ephemeral_key=EPHEMERAL_KEY, iv=IV
    )


def test_wrong_measurement_is_refused(
    broker: KeyBroker, chip: Chip, own_chain: CertChain, make_report
) -> None:
    nonce = broker.challenge()
    evidence = guest_evidence(chip, make_report, nonce, measurement=b"\x22" * 48)
    reason = release_reason(broker, evidence, own_chain, nonce, guest_point(), b"s")
    assert reason == VerifyFailure.MEASUREMENT


def test_debug_guest_is_refused(
    broker: KeyBroker, chip: Chip, own_chain: CertChain, make_report: MakeReport
) -> None:
    nonce = broker.challenge()
    policy = GuestPolicy(abi_major=1, abi_minor=51, debug=True)
    evidence = guest_evidence(chip, make_report, nonce, policy=policy)
    reason = release_reason(broker, evidence, own_chain, nonce, guest_point(), b"s")
    assert reason == VerifyFailure.POLICY_DEBUG


def test_nonce_must_be_fresh_and_bound(
    broker: KeyBroker, chip: Chip, own_chain: CertChain, make_report
) -> None:
    bound, other = broker.challenge(), broker.challenge()
    evidence = guest_evidence(chip, make_report, bound)
    # The report binds nonce `bound`; asking with another issued nonce fails the binding.
    assert release_reason(broker, evidence, own_chain, other, guest_point(), b"s") == (
        VerifyFailure.REPORT_DATA
    )
    # A nonce the broker never issued.
    assert release_reason(broker, evidence, own_chain, bytes(32), guest_point(), b"s") == (
        VerifyFailure.NONCE
    )
    # The bound nonce works once, and only once.
    assert release_reason(broker, evidence, own_chain, bound, guest_point(), b"s") is None
    assert release_reason(broker, evidence, own_chain, bound, guest_point(), b"s") == (
        VerifyFailure.NONCE
    )


def test_key_not_bound_in_report_is_refused(
    broker: KeyBroker, chip: Chip, own_chain: CertChain, make_report
) -> None:
    nonce = broker.challenge()
    evidence = guest_evidence(chip, make_report, nonce)
    attacker = guest_point(ec.derive_private_key(4242, ec.SECP384R1()))
    assert release_reason(broker, evidence, own_chain, nonce, attacker, b"s") == (
        VerifyFailure.REPORT_DATA
    )


def test_chain_must_end_at_the_pinned_root(
    broker: KeyBroker, chip: Chip, own_chain: CertChain, milan_chain: CertChain, make_report
) -> None:
    nonce = broker.challenge()
    evidence = guest_evidence(chip, make_report, nonce)
    chain = CertChain(milan_chain.ark, own_chain.ask, own_chain.vcek)
    assert release_reason(broker, evidence, chain, nonce, guest_point(), b"s") == (
        VerifyFailure.CHAIN_ARK
    )


def test_outstanding_nonces_are_bounded(broker: KeyBroker) -> None:
    first = broker.challenge()
    for _ in range(1024):
        broker.challenge()
    assert release_reason(broker, b"", None, first, guest_point(), b"s") == VerifyFailure.NONCE
