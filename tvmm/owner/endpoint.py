"""The guest owner's end of the key-release channel: what the host's link to the owner reaches.

The host relays bytes between the guest and this endpoint (``Devices.owner`` of
tvmm.host.hypervisor; HC_OWNER_EXCHANGE / Device.OWNER on the guest side).  Messages and
answers (constants in tvmm.abi.guest):

    guest → owner                                     owner → guest
    "TVKC"                                            nonce (32 bytes): a fresh challenge
    "TVKE" ‖ nonce (32) ‖ Q (97) ‖ report (0x4A0)     WrappedSecret ("TVKR…") on success,
                                                      "TVKX" ‖ reason (ASCII) on refusal
    anything else                                     "TVKX" ‖ "malformed"

The endpoint adds the chip's certificate chain (as an owner fetches a VCEK from the
vendor's key distribution service, by chip id and TCB) and hands everything to the
KeyBroker, whose release order is in tvmm.owner.broker.  The refusal reason is the
verifier's VerifyFailure value: the host learns it, as it would from a broker's HTTP
error; it is no oracle on the secret.  Every attempt is logged in ``releases``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from tvmm.abi.guest import (
    GUEST_KEY_SIZE,
    NONCE_SIZE,
    OWNER_CHALLENGE,
    OWNER_EVIDENCE,
    OWNER_REFUSED,
    REPORT_SIZE,
)
from tvmm.abi.key_release import KeyReleaseFormatError
from tvmm.owner.broker import KeyBroker, ReleasePolicy
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


def refusal(reason: str) -> bytes:
    return OWNER_REFUSED + reason.encode("ascii")


def parse_evidence(message: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(nonce, guest key, report) of an evidence message, or None if it is not one."""
    if len(message) != EVIDENCE_SIZE or not message.startswith(OWNER_EVIDENCE):
        return None
    at = len(OWNER_EVIDENCE)
    nonce = message[at : at + NONCE_SIZE]
    key = message[at + NONCE_SIZE : at + NONCE_SIZE + GUEST_KEY_SIZE]
    return nonce, key, message[at + NONCE_SIZE + GUEST_KEY_SIZE :]


class OwnerEndpoint:
    """Challenges and releases for one secret, against one release policy.

    ``trust_anchor`` gives the pinned ARK and ``chain`` the chip's certificates; both are
    called only when evidence arrives.  Nonces and the wrapping randomness come from the
    OS; ``nonce`` fixes the first challenge (``tvmm attest --nonce``).
    """

    def __init__(self, policy: ReleasePolicy, secret: bytes, *,
                 trust_anchor: Callable[[], x509.Certificate],
                 chain: Callable[[], CertChain],
                 nonce: bytes | None = None) -> None:
        self.policy = policy
        self._secret = secret
        self._anchor = trust_anchor
        self._chain = chain
        self._fixed_nonce = nonce
        self._broker: KeyBroker | None = None
        self.challenges: list[bytes] = []
        self.releases: list[Release] = []

    @property
    def broker(self) -> KeyBroker:
        if self._broker is None:
            self._broker = KeyBroker(self.policy, self._anchor())
        return self._broker

    def __call__(self, message: bytes) -> bytes:
        if message == OWNER_CHALLENGE:
            return self._challenge()
        evidence = parse_evidence(message)
        if evidence is None:
            return refusal("malformed")
        return self._release(*evidence)

    def _challenge(self) -> bytes:
        if self._fixed_nonce is not None and not self.challenges:
            nonce = self._fixed_nonce
        else:
            nonce = os.urandom(NONCE_SIZE)
        self.challenges.append(self.broker.challenge_with(nonce))
        return nonce

    def _release(self, nonce: bytes, guest_key: bytes, report: bytes) -> bytes:
        try:
            wrapped = self.broker.release(report, self._chain(), nonce, guest_key,
                                          self._secret)
        except VerificationError as exc:
            self.releases.append(Release(nonce, guest_key, report, False, exc.reason, str(exc)))
            return refusal(exc.reason.value)
        except KeyReleaseFormatError as exc:
            self.releases.append(Release(nonce, guest_key, report, False,
                                         VerifyFailure.MALFORMED, str(exc)))
            return refusal(VerifyFailure.MALFORMED.value)
        self.releases.append(Release(nonce, guest_key, report, True))
        return wrapped.to_bytes()
