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
policy releases to plain, sev or sev-es (VerifyFailure.SIGNING_KEY); there the secret goes
as a launch secret, bound to the digest the owner predicts (``launch_secret``).

A launch budget bounds how often the secret is released, whatever the host does::

    launches = 3                       # at most 3 releases ...
    window_s = 3600                    # ... in any 3600 s (default 3600 when launches is set)

The broker counts releases in its LaunchLedger (tvmm.owner.ledger: the owner's persistent
audit log), so a restarted broker still knows; a policy with a budget needs a ledger.

Release order: the nonce is consumed (one attempt per challenge), the chain's root must be
the pinned ARK, the evidence must verify against the policy with report_data bound to the
nonce and the guest key (tvmm.abi.key_release), the secret is wrapped, and only if the
ledger admits the release within the budget (and records it) is the wrapped secret
handed out.  Every refusal is recorded in the ledger with its reason.
"""

from __future__ import annotations

import os
import threading
import tomllib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tvmm.abi import launch_secret as launch_secret_format
from tvmm.abi.guest import REPORT_SIZE
from tvmm.abi.key_release import (
    IV_SIZE,
    NONCE_SIZE,
    KeyReleaseFormatError,
    WrappedSecret,
    report_data_for,
    wrap_secret_with,
)
from tvmm.abi.report import TcbVersion
from tvmm.owner.by_receipt import KEYS, ReceiptPolicy
from tvmm.owner.ledger import AuditRecord, BudgetState, LaunchBudget, LaunchLedger, LedgerError
from tvmm.owner.verify import (
    CertChain,
    Expectations,
    VerificationError,
    VerifyFailure,
    verify_evidence,
)
from tvmm.transparency.errors import TransparencyError

POLICY_VERSION = 1
MAX_OUTSTANDING_NONCES = 1024
DEFAULT_WINDOW_S = 3600
MEASUREMENT_OFFSET = 0x90  # in the ATTESTATION_REPORT

_BOOLEANS = {
    "allow_debug": False,
    "allow_migrate_ma": False,
    "allow_smt": True,
    "require_single_socket": False,
}
_TOP_LEVEL = {"version", "measurement", "min_guest_svn", "vmpl", "host_data", "min_tcb", "min_abi",
              "launches", "window_s", "transparency"}
_TCB_KEYS = ("boot_loader", "tee", "snp", "microcode")


class PolicyError(ValueError):
    """The release policy cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class ReleasePolicy:
    """What evidence must show before the broker releases a secret."""

    measurement: bytes | None  # the launch digest to accept, or None with ``transparency``
    allow_debug: bool = False
    allow_migrate_ma: bool = False
    allow_smt: bool = True
    require_single_socket: bool = False
    min_guest_svn: int = 0
    vmpl: int = 0
    host_data: bytes | None = None
    min_tcb: TcbVersion | None = None
    min_abi: tuple[int, int] | None = None
    budget: LaunchBudget | None = None  # launches per window; None: no bound
    # Release to any build registered under this policy (tvmm.owner.by_receipt) instead
    # of one pinned measurement
    transparency: ReceiptPolicy | None = None

    def __post_init__(self) -> None:
        if (self.measurement is None) == (self.transparency is None):
            raise PolicyError("measurement: give either measurement or [transparency]")
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
        if "measurement" not in document and "transparency" not in document:
            raise PolicyError("measurement: required (or a [transparency] table)")
        receipts = None
        if "transparency" in document:
            try:
                receipts = ReceiptPolicy.from_mapping(
                    _table(document["transparency"], "transparency", KEYS))
            except ValueError as exc:
                raise PolicyError(str(exc)) from None
        flags = {}
        for key, default in _BOOLEANS.items():
            value = document.get(key, default)
            if type(value) is not bool:
                raise PolicyError(f"{key}: must be true or false")
            flags[key] = value
        host_data = document.get("host_data")
        if "window_s" in document and "launches" not in document:
            raise PolicyError("window_s: given without launches")
        budget = None
        if "launches" in document:
            try:
                budget = LaunchBudget(document["launches"],
                                      document.get("window_s", DEFAULT_WINDOW_S))
            except ValueError as exc:
                raise PolicyError(str(exc)) from None
        return cls(
            measurement=_hex(document, "measurement", 48) if "measurement" in document else None,
            transparency=receipts,
            min_guest_svn=_integer(document, "min_guest_svn", 0, 0xFFFFFFFF),
            vmpl=_integer(document, "vmpl", 0, 3),
            host_data=None if host_data is None else _hex(document, "host_data", 32),
            min_tcb=_min_tcb(document.get("min_tcb")),
            min_abi=_min_abi(document.get("min_abi")),
            budget=budget,
            **flags,
        )

    def expectations(self, report_data: bytes, measurement: bytes | None = None
                     ) -> Expectations:
        """The verifier's view of this policy, for a report that must carry ``report_data``
        (and ``measurement``, under a transparency policy: the registered build's)."""
        return Expectations(
            measurement=self.measurement if measurement is None else measurement,
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
    """Hands out nonces and releases secrets against one policy and one pinned ARK, within
    the policy's launch budget, counted and audited in ``ledger`` (the owner's state)."""

    def __init__(self, policy: ReleasePolicy,
                 trust_anchor_ark: x509.Certificate | Callable[[], x509.Certificate],
                 ledger: LaunchLedger | None = None) -> None:
        """``trust_anchor_ark`` is the pinned ARK, or a function that gives it, called
        when the first evidence arrives (a broker that only issues launch secrets never
        needs it)."""
        if policy.budget is not None and ledger is None:
            raise PolicyError("launches: a launch budget needs a ledger to count in")
        self._policy = policy
        self._anchor_source = trust_anchor_ark
        self._anchor: x509.Certificate | None = None
        self._ledger = ledger
        self._released = 0  # without a ledger: this broker's releases, for budget_state
        self._outstanding: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def policy(self) -> ReleasePolicy:
        return self._policy

    @property
    def ledger(self) -> LaunchLedger | None:
        return self._ledger

    def budget_state(self, now: float) -> BudgetState:
        """Launches used and left at ``now`` (LedgerError if the ledger is unusable)."""
        if self._ledger is None:
            return BudgetState(None, None, self._released, None, None)
        return self._ledger.state(self._policy.budget, now)

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
        now: float,
        presented: bytes = b"",
    ) -> WrappedSecret:
        """Verify the evidence, then wrap ``secret`` to ``guest_public_key``.  Under a
        transparency policy ``presented`` is the host's statement-and-receipt bundle."""
        return self.release_with(
            report_bytes,
            chain,
            nonce,
            guest_public_key,
            secret,
            now=now,
            ephemeral_key=ec.generate_private_key(ec.SECP384R1()),
            iv=os.urandom(IV_SIZE),
            presented=presented,
        )

    def release_with(
        self,
        report_bytes: bytes,
        chain: CertChain,
        nonce: bytes,
        guest_public_key: bytes,
        secret: bytes,
        *,
        now: float,
        ephemeral_key: ec.EllipticCurvePrivateKey,
        iv: bytes,
        presented: bytes = b"",
    ) -> WrappedSecret:
        """release with the wrapping randomness given, for known-answer tests."""
        claimed = _claimed_measurement(report_bytes)
        try:
            with self._lock:
                issued = isinstance(nonce, bytes) and nonce in self._outstanding
                if issued:
                    del self._outstanding[nonce]  # consumed by this attempt, whatever its outcome
            if not issued:
                raise VerificationError(VerifyFailure.NONCE,
                                        "nonce was not issued or already used")
            anchor = self._pinned_ark()
            der = serialization.Encoding.DER
            if chain.ark.public_bytes(der) != anchor.public_bytes(der):
                raise VerificationError(VerifyFailure.CHAIN_ARK,
                                        "chain root is not the pinned ARK")
            try:
                report_data = report_data_for(nonce, guest_public_key)
            except KeyReleaseFormatError as exc:
                raise VerificationError(VerifyFailure.MALFORMED, str(exc)) from None
            measurement = self._policy.measurement
            if self._policy.transparency is not None:
                try:
                    measurement = self._policy.transparency.admit(presented).launch_digest
                except TransparencyError as exc:
                    raise VerificationError(VerifyFailure.TRANSPARENCY, str(exc)) from None
            report = verify_evidence(
                report_bytes,
                anchor,
                chain.ask,
                chain.vcek,
                self._policy.expectations(report_data, measurement),
            )
            try:
                wrapped = wrap_secret_with(secret, guest_public_key, nonce, report.measurement,
                                           ephemeral_key=ephemeral_key, iv=iv)
            except KeyReleaseFormatError as exc:
                raise VerificationError(VerifyFailure.MALFORMED, str(exc)) from None
        except VerificationError as exc:
            self._refuse(AuditRecord(now, _hex_of(nonce), claimed, "attested", False,
                                     exc.reason.value))
            raise
        self._admit(AuditRecord(now, nonce.hex(), report.measurement.hex(), "attested", True))
        return wrapped

    def launch_secret(self, secret: bytes, platform_key: ec.EllipticCurvePublicKey, now: float,
                      launch_digest: bytes, *,
                      ephemeral_key: ec.EllipticCurvePrivateKey | None = None,
                      nonce: bytes | None = None) -> bytes:
        """A launch secret for one launch (tvmm.abi.launch_secret), within the budget,
        bound to ``launch_digest``: the digest the owner predicts for its image at the
        level it launches at (``tvmm measure``).

        Nothing is verified here: below snp there is no signed report.  The TEE checks
        instead: it writes the secret into the guest only if FINALIZE measures
        ``launch_digest`` (another image or level is refused and gets nothing), and it
        opens each blob once (shim.launch); so each launch needs the owner again, and each
        counts here as a release (path "launch", with the bound digest)."""
        nonce = nonce if nonce is not None else os.urandom(launch_secret_format.NONCE)
        try:
            blob = launch_secret_format.wrap(secret, platform_key, launch_digest,
                                             ephemeral=ephemeral_key, nonce=nonce)
        except launch_secret_format.LaunchSecretError as exc:
            raise VerificationError(VerifyFailure.MALFORMED, str(exc)) from None
        self._admit(AuditRecord(now, nonce.hex(), launch_digest.hex(), "launch", True))
        return blob

    def refuse_malformed(self, now: float) -> None:
        """Audit a message that is no request at all (the endpoint answers "malformed")."""
        self._refuse(AuditRecord(now, "", "", "attested", False, VerifyFailure.MALFORMED.value))

    def _pinned_ark(self) -> x509.Certificate:
        if self._anchor is None:
            source = self._anchor_source
            self._anchor = source if isinstance(source, x509.Certificate) else source()
        return self._anchor

    def _admit(self, record: AuditRecord) -> None:
        if self._ledger is None:
            self._released += 1
            return
        try:
            refused = self._ledger.admit(self._policy.budget, record)
        except LedgerError as exc:
            raise VerificationError(VerifyFailure.LEDGER, str(exc)) from None
        if refused == VerifyFailure.NONCE.value:
            raise VerificationError(VerifyFailure.NONCE, "the ledger shows a release to this "
                                    "nonce already")
        if refused:
            budget = self._policy.budget
            assert budget is not None
            raise VerificationError(VerifyFailure.LAUNCH_BUDGET,
                                    f"{budget.launches} launches per {budget.window_s} s "
                                    "already released")

    def _refuse(self, record: AuditRecord) -> None:
        if self._ledger is None:
            return
        try:
            self._ledger.refuse(record)
        except LedgerError as exc:
            raise VerificationError(VerifyFailure.LEDGER, str(exc)) from None


def _claimed_measurement(report: bytes) -> str:
    """The measurement a report claims (unverified; for the audit of a refusal)."""
    if isinstance(report, bytes) and len(report) == REPORT_SIZE:
        return report[MEASUREMENT_OFFSET : MEASUREMENT_OFFSET + 48].hex()
    return ""


def _hex_of(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else ""


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
