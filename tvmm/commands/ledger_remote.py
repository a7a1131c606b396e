"""The transparency commands' view of a ledger: a directory on this machine, or a ledger
process in the perimeter (``HOST:PORT``, tvmm.perimeter.ledger) reached as an operator is.

For a remote ledger the service key is not read from a file: ``ledger_key`` fetches it with
the attestation report that binds it, and checks that report against the pinned ARK and
the measurement of the perimeter code the caller runs (what an auditor reviewed)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from tvmm.abi.state_dir import default_state_dir
from tvmm.operator.client import OperatorClient, PerimeterError
from tvmm.owner.roots import modeled
from tvmm.owner.verify import (
    Expectations,
    VerificationError,
    VerifyFailure,
    load_certificate,
    verify_evidence,
)
from tvmm.perimeter import measure
from tvmm.perimeter.ledger import MAX_ENTRIES, key_report_data
from tvmm.transparency import keys
from tvmm.transparency.errors import TransparencyError
from tvmm.transparency.service import LedgerService

_DER = Encoding.DER
_ADDRESS = re.compile(r"^([A-Za-z0-9_.-]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$")


def is_remote(ledger: str) -> bool:
    return bool(_ADDRESS.match(ledger)) and not Path(ledger).exists()


@dataclass
class Remote:
    client: OperatorClient

    def call(self, op: str, blob: bytes = b"", **fields: object):
        try:
            return self.client.ok(op, blob, **fields)
        except PerimeterError as exc:
            raise TransparencyError(exc.reason, str(exc)) from None
        except OSError as exc:
            raise TransparencyError("unreachable", f"the ledger at {self.client.address[0]}:"
                                                   f"{self.client.address[1]}: {exc}") from None

    def register(self, raw: bytes) -> tuple[int, bytes]:
        answer = self.call("ledger_register", raw)
        return int(answer["data"]["index"]), answer.blob

    def head(self) -> bytes:
        return self.call("ledger_head").blob

    def consistency(self, size1: int, size2: int) -> list[bytes]:
        """The RFC 9162 proof that the tree of ``size2`` extends the tree of ``size1``."""
        path = self.call("ledger_consistency", size1=size1, size2=size2)["data"]["path"]
        try:
            return [bytes.fromhex(h) for h in path]
        except (TypeError, ValueError):
            raise TransparencyError("malformed", "the ledger's consistency proof is not "
                                                 "a list of hashes") from None

    def entries(self) -> list[bytes]:
        found: list[bytes] = []
        while True:
            batch = self.call("ledger_entries", start=len(found),
                              count=MAX_ENTRIES)["data"]["entries"]
            found += [bytes.fromhex(e) for e in batch]
            if len(batch) < MAX_ENTRIES:
                return found


def remote(ledger: str, state_dir: Path | None) -> Remote:
    host, port = _ADDRESS.match(ledger).groups()  # type: ignore[union-attr]
    state = state_dir or default_state_dir()
    try:
        return Remote(OperatorClient((host.strip("[]"), int(port)), state, timeout=60))
    except (OSError, ValueError) as exc:  # no perimeter (its transport CA) in this state
        raise TransparencyError("unreachable", f"{ledger}: no perimeter to reach it from "
                                f"in {state} ({getattr(exc, 'strerror', None) or exc}); "
                                "a perimeter ledger runs from a state directory "
                                "(tvmm transparency serve): give the same --state-dir or "
                                "TVMM_STATE_DIR") from None


def open_local(ledger: str) -> LedgerService:
    return LedgerService.open(Path(ledger))


def ledger_key(ledger: Remote, state_dir: Path | None) -> ec.EllipticCurvePublicKey:
    """The remote ledger's signing key, if its report shows it is held by the perimeter's
    measured code on a chip under the pinned (modeled) ARK; else TransparencyError."""
    answer = ledger.call("ledger_key")["data"]
    public = keys.public_from_pem(answer["key"].encode())
    ark = modeled(state_dir or default_state_dir())
    if ark is None:
        raise TransparencyError("attestation", "no modeled root of trust in the state "
                                               "directory to check the ledger against")
    try:
        sent_ark = load_certificate(answer["ark"].encode(), VerifyFailure.CHAIN_ARK)
        if sent_ark.public_bytes(_DER) != ark.public_bytes(_DER):
            raise VerificationError(VerifyFailure.CHAIN_ARK, "not the pinned ARK")
        verify_evidence(bytes.fromhex(answer["report"]), ark,
                        load_certificate(answer["ask"].encode(), VerifyFailure.CHAIN_ASK),
                        load_certificate(answer["vcek"].encode(), VerifyFailure.CHAIN_VCEK),
                        Expectations(measurement=measure.measurement(),
                                     report_data=key_report_data(public)))
    except VerificationError as exc:
        raise TransparencyError("attestation", str(exc)) from None
    except ValueError as exc:
        raise TransparencyError("attestation", f"malformed answer: {exc}") from None
    return public

