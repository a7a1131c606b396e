"""The key broker: releases a secret only to a guest whose evidence satisfies a policy.

A release policy is a small TOML file the owner writes, for example::

    version = 1
    measurement = "7a1e5c26...841f"    # 96 hex digits: the launch digest to accept
    allow_debug = false                # optional; these are the defaults
    allow_migrate_ma = false
    allow_smt = true
    require_single_socket = false
    min_guest_svn = 0
    vmpl = 0
    host_data = "00...00"              # optional, 64 hex digits
    [min_tcb]                          # optional; every component must be at least this
    boot_loader = 3
    tee = 0
    snp = 8
    microcode = 115
    [min_abi]                          # optional; the ABI version the policy must demand
    major = 1
    minor = 51

Unknown keys are refused, not ignored: a misspelt "alow_debug" must not silently mean
the default. Every problem raises PolicyError naming the key.

The protection level is part of the measurement (SEV_FEATURES in the measured VMSA page,
shim.launch), so an owner requires a level by the measurement it names: ``tvmm measure
GUEST --level shim --policy-out p.toml`` writes a policy that refuses the same image
launched at snp, and the reverse. Below snp the chip does not sign reports at all, so no
policy releases to plain, sev or sev-es (VerifyFailure.SIGNING_KEY).

Release order: the nonce is consumed (one attempt per challenge), the chain's root must be
the pinned ARK, the evidence must verify against the policy with report_data bound to the
nonce and the guest key (tvmm.abi.key_release), and only then is the secret wrapped.
"""

from __future__ import annotations

import os
import threading
import tomllib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tvmm.abi.key_release import (
    IV_SIZE,
    NONCE_SIZE,
    KeyReleaseFormatError,
    WrappedSecret,
    report_data_for,
    wrap_secret_with,
)
from tvmm.abi.report import TcbVersion
from tvmm.owner.verify import (
    CertChain,
    Expectations,
    VerificationError,
    VerifyFailure,
    verify_evidence,
)

POLICY_VERSION = 1
MAX_OUTSTANDING_NONCES = 1024

_BOOLEANS = {
    "allow_debug": False,
    "allow_migrate_ma": False,
    "allow_smt": True,
    "require_single_socket": False,
}
_TOP_LEVEL = {"version", "measurement", "min_guest_svn", "vmpl", "host_data", "min_tcb", "min_abi"}
_TCB_KEYS = ("boot_loader", "tee", "snp", "microcode")


class PolicyError(ValueError):
    """The release policy cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class ReleasePolicy:
    """What evidence must show before the broker releases a secret."""

    measurement: bytes
    allow_debug: bool = False
    allow_migrate_ma: bool = False
    allow_smt: bool = True
    require_single_socket: bool = False
    min_guest_svn: int = 0
    vmpl: int = 0
    host_data: bytes | None = None
    min_tcb: TcbVersion | None = None
    min_abi: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        try:
            self.expectations(bytes(64))  # one set of validation rules, the verifier's
        except ValueError as exc:
            raise PolicyError(str(exc)) from None
        if not 0 <= self.vmpl <= 3:
            raise PolicyError("vmpl: must be 0-3")

    @classmethod
    def from_toml(cls, text: str) -> ReleasePolicy:
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"not valid TOML: {exc}") from None
        return cls.from_mapping(document)

    @classmethod
    def from_mapping(cls, document: dict[str, Any]) -> ReleasePolicy:
        unknown = sorted(set(document) - _TOP_LEVEL - set(_BOOLEANS))
        if unknown:
            raise PolicyError(f"unknown key(s): {', '.join(unknown)}")
        version = document.get("version", POLICY_VERSION)
        if type(version) is not int or version != POLICY_VERSION:
            raise PolicyError(f"version: must be {POLICY_VERSION}")
        if "measurement" not in document:
            raise PolicyError("measurement: required")
        flags = {}
        for key, default in _BOOLEANS.items():
            value = document.get(key, default)
            if type(value) is not bool:
                raise PolicyError(f"{key}: must be true or false")
            flags[key] = value
        host_data = document.get("host_data")
        return cls(
            measurement=_hex(document, "measurement", 48),
            min_guest_svn=_integer(document, "min_guest_svn", 0, 0xFFFFFFFF),
            vmpl=_integer(document, "vmpl", 0, 3),
            host_data=None if host_data is None else _hex(document, "host_data", 32),
            min_tcb=_min_tcb(document.get("min_tcb")),
            min_abi=_min_abi(document.get("min_abi")),
            **flags,
        )

    def expectations(self, report_data: bytes) -> Expectations:
        """The verifier's view of this policy, for a report that must carry ``report_data``."""
        return Expectations(
            measurement=self.measurement,
            report_data=report_data,
            host_data=self.host_data,
            allow_debug=self.allow_debug,
            allow_migrate_ma=self.allow_migrate_ma,
            allow_smt=self.allow_smt,
            require_single_socket=self.require_single_socket,
            min_abi=self.min_abi,
            min_guest_svn=self.min_guest_svn,
            vmpl=self.vmpl,
            min_tcb=self.min_tcb,
        )


def load_policy(path: Path | str) -> ReleasePolicy:
    """Read and parse a TOML release policy file."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path} is not UTF-8 text") from None
    return ReleasePolicy.from_toml(text)


class KeyBroker:
    """Hands out nonces and releases secrets against one policy and one pinned ARK."""

    def __init__(self, policy: ReleasePolicy, trust_anchor_ark: x509.Certificate) -> None:
        self._policy = policy
        self._anchor = trust_anchor_ark
        self._anchor_der = trust_anchor_ark.public_bytes(serialization.Encoding.DER)
        self._outstanding: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def policy(self) -> ReleasePolicy:
        return self._policy

    def challenge(self) -> bytes:
        """A fresh 32-byte nonce for one release attempt."""
        return self.challenge_with(os.urandom(NONCE_SIZE))

    def challenge_with(self, nonce: bytes) -> bytes:
        """challenge with the nonce given, for known-answer tests. Oldest nonces expire
        once more than MAX_OUTSTANDING_NONCES are waiting."""
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        with self._lock:
            self._outstanding[nonce] = None
            while len(self._outstanding) > MAX_OUTSTANDING_NONCES:
                self._outstanding.popitem(last=False)
        return nonce

    def release(
        self,
        report_bytes: bytes,
        chain: CertChain,
        nonce: bytes,
        guest_public_key: bytes,
        secret: bytes,
    ) -> WrappedSecret:
        """Verify the evidence, then wrap ``secret`` to ``guest_public_key``."""
        return self.release_with(
            report_bytes,
            chain,
            nonce,
            guest_public_key,
            secret,
            ephemeral_key=ec.generate_private_key(ec.SECP384R1()),
            iv=os.urandom(IV_SIZE),
        )

    def release_with(
        self,
        report_bytes: bytes,
        chain: CertChain,
        nonce: bytes,
        guest_public_key: bytes,
        secret: bytes,
        *,
        ephemeral_key: ec.EllipticCurvePrivateKey,
        iv: bytes,
    ) -> WrappedSecret:
        """release with the wrapping randomness given, for known-answer tests."""
        with self._lock:
            issued = isinstance(nonce, bytes) and nonce in self._outstanding
            if issued:
                del self._outstanding[nonce]  # consumed by this attempt, whatever its outcome
        if not issued:
            raise VerificationError(VerifyFailure.NONCE, "nonce was not issued or already used")
        if chain.ark.public_bytes(serialization.Encoding.DER) != self._anchor_der:
            raise VerificationError(VerifyFailure.CHAIN_ARK, "chain root is not the pinned ARK")
        try:
            report_data = report_data_for(nonce, guest_public_key)
        except KeyReleaseFormatError as exc:
            raise VerificationError(VerifyFailure.MALFORMED, str(exc)) from None
        report = verify_evidence(
            report_bytes,
            self._anchor,
            chain.ask,
            chain.vcek,
            self._policy.expectations(report_data),
        )
        return wrap_secret_with(
            secret, guest_public_key, nonce, report.measurement, ephemeral_key=ephemeral_key, iv=iv
        )


def _hex(document: dict[str, Any], key: str, size: int) -> bytes:
    value = document[key]
    if not isinstance(value, str):
        raise PolicyError(f"{key}: must be a string of {2 * size} hex digits")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise PolicyError(f"{key}: not hexadecimal") from None
    if len(raw) != size:
        raise PolicyError(f"{key}: must be {size} bytes ({2 * size} hex digits), got {len(raw)}")
    return raw


def _integer(document: dict[str, Any], key: str, low: int, high: int, where: str = "") -> int:
    value = document.get(key, low)
    if type(value) is not int or not low <= value <= high:
        raise PolicyError(f"{where}{key}: must be an integer in [{low}, {high}]")
    return value


def _table(value: object, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PolicyError(f"{key}: must be a table")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise PolicyError(f"{key}: unknown key(s): {', '.join(unknown)}")
    return value


def _min_tcb(value: object) -> TcbVersion | None:
    if value is None:
        return None
    table = _table(value, "min_tcb", _TCB_KEYS)
    return TcbVersion(**{name: _integer(table, name, 0, 0xFF, "min_tcb.") for name in _TCB_KEYS})


def _min_abi(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    table = _table(value, "min_abi", ("major", "minor"))
    return (
        _integer(table, "major", 0, 0xFF, "min_abi."),
        _integer(table, "minor", 0, 0xFF, "min_abi."),
    )
