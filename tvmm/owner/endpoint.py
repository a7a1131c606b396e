"""The guest owner's end of the key-release channel: what the host's link to the owner reaches.

The host relays bytes between the guest and this endpoint (``Devices.owner`` of
tvmm.host.hypervisor; HC_OWNER_EXCHANGE / Device.OWNER on the guest side).  Messages and
answers (constants in tvmm.abi.guest):

    guest → owner                                     owner → guest
    "TVKC"                                            nonce (32 bytes): a fresh challenge
    "TVKE" ‖ nonce (32) ‖ Q (97) ‖ report (0x4A0)     WrappedSecret ("TVKR…") on success,
                                                      "TVKX" ‖ reason (ASCII) on refusal
    … ‖ "TVKT" ‖ bundle (the host may append:      (the same; the broker checks the
      a statement and its receipt)                  bundle under a [transparency] policy)
    "TVKL" (from the host, before a launch)           a launch secret ("TVLS…") for one
                                                      launch, bound to the launch digest
                                                      the owner predicts, or "TVKX" ‖ reason
    anything else                                     "TVKX" ‖ "malformed"

The endpoint adds the chip's certificate chain (as an owner fetches a VCEK from the
vendor's key distribution service, by chip id and TCB) and hands everything to the
KeyBroker, whose release order is in tvmm.owner.broker.  The refusal reason is the
verifier's VerifyFailure value: the host learns it, as it would from a broker's HTTP
error; it is no oracle on the secret.  Every attempt is logged in ``releases``, and, with
a ledger, in the owner's persistent audit log (tvmm.owner.ledger), where the release
policy's launch budget is counted: each release, attested or launch secret, is one
launch.  The time of each decision comes from ``clock`` (tests pass their own).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tvmm.abi.guest import (
    GUEST_KEY_SIZE,
    NONCE_SIZE,
    OWNER_CHALLENGE,
    OWNER_EVIDENCE,
    OWNER_LAUNCH_SECRET,
    OWNER_RECEIPT,
    OWNER_REFUSED,
    REPORT_SIZE,
)
from tvmm.abi.launch_secret import NONCE as LAUNCH_NONCE_SIZE
from tvmm.owner.broker import KeyBroker, PolicyError, ReleasePolicy
from tvmm.owner.ledger import BudgetState, LaunchLedger
from tvmm.owner.verify import CertChain, VerificationError, VerifyFailure

EVIDENCE_SIZE = len(OWNER_EVIDENCE) + NONCE_SIZE + GUEST_KEY_SIZE + REPORT_SIZE


@dataclass(frozen=True)
class Release:
    """One evidence message and what the broker did with it."""

    nonce: bytes
    guest_key: bytes
    report: bytes
    released: bool
    reason: VerifyFailure | None = None
    detail: str = ""
    path: str = "attested"  # or "launch": a launch secret (no key, no report)


def refusal(reason: str) -> bytes:
    return OWNER_REFUSED + reason.encode("ascii")


def parse_evidence(message: bytes) -> tuple[bytes, bytes, bytes, bytes] | None:
    """(nonce, guest key, report, presented bundle or b"") of an evidence message, or None
    if it is not one."""
    if not message.startswith(OWNER_EVIDENCE) or len(message) < EVIDENCE_SIZE:
        return None
    presented = message[EVIDENCE_SIZE:]
    if presented and not presented.startswith(OWNER_RECEIPT):
        return None
    at = len(OWNER_EVIDENCE)
    nonce = message[at : at + NONCE_SIZE]
    key = message[at + NONCE_SIZE : at + NONCE_SIZE + GUEST_KEY_SIZE]
    return nonce, key, message[at + NONCE_SIZE + GUEST_KEY_SIZE : EVIDENCE_SIZE], \
        presented[len(OWNER_RECEIPT):]


class OwnerEndpoint:
    """Challenges and releases for one secret, against one release policy.

    ``trust_anchor`` gives the pinned ARK and ``chain`` the chip's certificates; both are
    called only when evidence arrives.  ``launch_key`` gives the platform's launch key,
    which the owner knows by other means (on SEV, its PDH certified by the chip); without
    it launch secrets are refused.  ``launch_digest`` is the launch digest the owner
    predicts for its image at the level the host is to launch it at: every launch secret
    is bound to it (the TEE releases it into no other launch); without it launch secrets
    are refused too.  ``ledger`` is where launches are counted and audited
    (required if the policy has a budget); ``clock`` the time of each decision.  Nonces
    and the wrapping randomness come from the OS; ``nonce`` fixes the first challenge
    (``tvmm attest --nonce``).
    """

    def __init__(self, policy: ReleasePolicy, secret: bytes, *,
                 trust_anchor: Callable[[], x509.Certificate],
                 chain: Callable[[], CertChain],
                 nonce: bytes | None = None,
                 launch_key: Callable[[], ec.EllipticCurvePublicKey] | None = None,
                 launch_digest: bytes | None = None,
                 ledger: LaunchLedger | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if policy.budget is not None and ledger is None:
            raise PolicyError("launches: a launch budget needs a ledger to count in")
        self.policy = policy
        self._secret = secret
        self._anchor = trust_anchor
        self._chain = chain
        self._fixed_nonce = nonce
        self._launch_key = launch_key
        self.launch_digest = launch_digest
        self._ledger = ledger
        self._clock = clock
        self._broker: KeyBroker | None = None
        self.challenges: list[bytes] = []
        self.releases: list[Release] = []

    @property
    def broker(self) -> KeyBroker:
        if self._broker is None:
            self._broker = KeyBroker(self.policy, self._anchor, self._ledger)
        return self._broker

    def budget(self) -> BudgetState:
        """Launches used and left now (LedgerError if the ledger is unusable)."""
        return self.broker.budget_state(self._clock())

    def __call__(self, message: bytes) -> bytes:
        if message == OWNER_CHALLENGE:
            return self._challenge()
        if message == OWNER_LAUNCH_SECRET:
            return self._launch_secret()
        evidence = parse_evidence(message)
        if evidence is None:
            try:
                self.broker.refuse_malformed(self._clock())
            except VerificationError as exc:
                return refusal(exc.reason.value)
            return refusal(VerifyFailure.MALFORMED.value)
        return self._release(*evidence)

    def _challenge(self) -> bytes:
        if self._fixed_nonce is not None and not self.challenges:
            nonce = self._fixed_nonce
        else:
            nonce = os.urandom(NONCE_SIZE)
        self.challenges.append(self.broker.challenge_with(nonce))
        return nonce

    def _release(self, nonce: bytes, guest_key: bytes, report: bytes, presented: bytes
                 ) -> bytes:
        try:
            wrapped = self.broker.release(report, self._chain(), nonce, guest_key,
                                          self._secret, now=self._clock(), presented=presented)
        except VerificationError as exc:
            self.releases.append(Release(nonce, guest_key, report, False, exc.reason, str(exc)))
            return refusal(exc.reason.value)
        self.releases.append(Release(nonce, guest_key, report, True))
        return wrapped.to_bytes()

    def _launch_secret(self) -> bytes:
        nonce = os.urandom(LAUNCH_NONCE_SIZE)
        if self._launch_key is None or self.launch_digest is None:
            self.releases.append(Release(nonce, b"", b"", False, VerifyFailure.MALFORMED,
                                         "this owner issues no launch secrets (no launch key "
                                         "or no predicted launch digest)", "launch"))
            return refusal(VerifyFailure.MALFORMED.value)
        try:
            blob = self.broker.launch_secret(self._secret, self._launch_key(), self._clock(),
                                             self.launch_digest, nonce=nonce)
        except VerificationError as exc:
            self.releases.append(Release(nonce, b"", b"", False, exc.reason, str(exc),
                                         "launch"))
            return refusal(exc.reason.value)
        self.releases.append(Release(nonce, b"", b"", True, path="launch"))
        return blob
