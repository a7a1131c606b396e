"""The transparency ledger as a perimeter process: measured, attested, its state sealed.

The ledger's signing key is never stored: it is derived in the chip from the sealing key
for the ledger's measurement (``Chip.sealing_key``; FIPS 186-5 A.2.1 from 56 derived
bytes), so only this code on this chip signs receipts, and its public key is bound into
an attestation report (report_data = SHA-384 of the key's SubjectPublicKeyInfo) that
anyone can check against the pinned ARK and the perimeter's measurement
(``tvmm transparency ledger-key``).

Its database is the log (tvmm.transparency.log) plus a seal row: an HMAC, under a key
derived from the same sealing key, over the registration policy, the log's size and root,
and a monotonic counter of the chip that every registration advances.  A database that
does not match its seal (an edited entry, a policy with another issuer, a truncated log)
is refused as "tampered"; an older copy (its sealed counter behind the chip's) as
"rollback".  The counter moves after the commit, so a database one ahead of it (a crash
between the two) is the newest state and the counter catches up.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tvmm.abi.report import AttestationReport, GuestPolicy
from tvmm.hw.root_of_trust import Chip
from tvmm.perimeter import wire
from tvmm.perimeter.channel import Server
from tvmm.perimeter.identity import Identity, Peer
from tvmm.transparency import keys
from tvmm.transparency.errors import TransparencyError
from tvmm.transparency.log import TransparencyLog
from tvmm.transparency.service import Issuer, LedgerService

PURPOSE = "tvmm transparency ledger"
P384_ORDER = int("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
                 "581a0db248b0a77aecec196accc52973", 16)
MAX_ENTRIES = 1024  # entries per "entries" request


def key_report_data(public: ec.EllipticCurvePublicKey) -> bytes:
    """What the ledger's key report carries: SHA-384 of the key's SPKI, then 16 zeros."""
    spki = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha384(spki).digest() + bytes(16)


class SealedLedger:
    """A LedgerService whose key comes from the chip and whose database is sealed."""

    def __init__(self, path: Path, chip: Chip, measurement: bytes, name: str,
                 issuers: list[tuple[bytes, list[str]]] | None = None) -> None:
        """Open the ledger ``name`` at ``path``; a new one admits ``issuers`` (public key
        PEM, feeds), sealed with it.  Raises TransparencyError("tampered" | "rollback").

        The chip's counter is the ledger's (by name), not the database's: a ledger whose
        database went missing cannot start over with an empty log under the same key."""
        root = chip.sealing_key(measurement, PURPOSE)
        seed = HKDF(hashes.SHA384(), 56, salt=None, info=b"signing key").derive(root)
        self._mac_key = HKDF(hashes.SHA384(), 32, salt=None, info=b"state mac").derive(root)
        self.key = ec.derive_private_key(int.from_bytes(seed, "big") % (P384_ORDER - 1) + 1,
                                         ec.SECP384R1())
        self.chip = chip
        self.counter = chip.define_counter(
            hashlib.sha256(b"ledger|" + name.encode()).hexdigest()[:32])
        new = not path.exists()
        if new and self.counter.read() > 0:
            raise TransparencyError("rollback", f"ledger {name!r} has existed on this chip, "
                                                f"but its database {path} is missing (a "
                                                "new ledger needs a new name)")
        self.log = TransparencyLog(path)
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        self.db.execute("CREATE TABLE IF NOT EXISTS issuer (pem TEXT PRIMARY KEY, "
                        "feeds TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS seal (id INTEGER PRIMARY KEY "
                        "CHECK (id = 1), counter INTEGER NOT NULL, mac TEXT NOT NULL)")
        if new:
            for pem, feeds in issuers or []:
                keys.public_from_pem(pem)  # a bad key is refused before anything is sealed
                self.db.execute("INSERT INTO issuer VALUES (?, ?)",
                                (pem.decode(), "\n".join(feeds)))
            self._seal(self.counter.read() + 1)
            self.counter.increment()
        else:
            self._check()
        self.service = LedgerService(self.log, self.key, self._issuers(),
                                     on_registered=self._advance)

    def close(self) -> None:
        self.db.close()
        self.log.close()

    def _issuers(self) -> dict[bytes, Issuer]:
        found = {}
        for pem, feeds in self.db.execute("SELECT pem, feeds FROM issuer ORDER BY pem"):
            public = keys.public_from_pem(pem.encode())
            found[keys.key_id(public)] = Issuer(public, tuple(feeds.split("\n")))
        return found

    def _state(self, counter: int) -> bytes:
        issuers = list(self.db.execute("SELECT pem, feeds FROM issuer ORDER BY pem"))
        size = self.log.size
        return repr((counter, size, self.log.root(size).hex(), issuers)).encode()

    def _mac(self, counter: int) -> str:
        return hmac.new(self._mac_key, self._state(counter), "sha256").hexdigest()

    def _seal(self, counter: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO seal VALUES (1, ?, ?)",
                        (counter, self._mac(counter)))
        self.db.commit()

    def _check(self) -> None:
        row = self.db.execute("SELECT counter, mac FROM seal WHERE id = 1").fetchone()
        if row is None:
            raise TransparencyError("tampered", "the ledger's database carries no seal")
        counter, mac = row
        try:
            ours = self._mac(counter)
        except TransparencyError as exc:
            raise TransparencyError("tampered", f"the ledger's log is damaged: {exc}") from None
        if not hmac.compare_digest(ours, mac):
            raise TransparencyError("tampered", "the ledger's database does not match its "
                                                "seal (edited, truncated or re-keyed)")
        chip = self.counter.read()
        if counter == chip + 1:  # sealed, then a crash before the counter moved
            self.counter.increment()
        elif counter != chip:
            raise TransparencyError("rollback", f"the ledger's database is an older copy "
                                                f"(sealed at {counter}, the chip is at {chip})")

    def _advance(self) -> None:
        self._seal(self.counter.read() + 1)
        self.counter.increment()


class LedgerAgent:
    """Serves a SealedLedger over the perimeter's attested TLS (tvmm.perimeter.channel).
    Anyone may ask (issuers and auditors are operators, not perimeter peers): what they
    get is signed, and what they send is checked.  The ledger lives on one worker thread
    (its SQLite connections are that thread's), which also orders every request."""

    def __init__(self, open_ledger: Callable[[], SealedLedger], identity: Identity,
                 ark_pem: bytes, host: str = "127.0.0.1", port: int = 0) -> None:
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self.ledger = self.worker.submit(open_ledger).result()  # raises what opening raises
        self.identity = identity
        self.key_report = identity.chip.sign_report(AttestationReport(
            policy=GuestPolicy(abi_minor=51, abi_major=1), measurement=identity.measurement,
            report_data=key_report_data(self.ledger.key.public_key()),
            current_tcb=identity.chip.tcb, committed_tcb=identity.chip.tcb,
            launch_tcb=identity.chip.tcb, report_id=bytes(32), report_id_ma=b"\xff" * 32))
        self.server = Server(identity, self.handle, ark_pem, identity.measurement, host, port)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def start(self) -> LedgerAgent:
        self.server.start()
        return self

    def entries(self) -> int:
        return self.worker.submit(lambda: self.ledger.log.size).result()

    def close(self) -> None:
        self.server.close()
        self.worker.submit(self.ledger.close).result()
        self.worker.shutdown()

    def handle(self, peer: Peer | None, msg: wire.Message, conn: ssl.SSLSocket
               ) -> wire.Message:
        return self.worker.submit(self._answer, msg).result()

    def _answer(self, msg: wire.Message) -> wire.Message:
        service = self.ledger.service
        try:
            if msg.op == "ledger_register":
                index, receipt = service.register(msg.blob)
                return wire.reply(True, receipt, index=index)
            if msg.op == "ledger_receipt":
                return wire.reply(True, service.receipt(int(msg["index"])))
            if msg.op == "ledger_head":
                return wire.reply(True, service.sign_head(), size=service.log.size)
            if msg.op == "ledger_entries":
                start, count = int(msg["start"]), min(int(msg["count"]), MAX_ENTRIES)
                end = min(service.log.size, start + max(count, 0))
                return wire.reply(True, entries=[service.log.entry(i).hex()
                                           for i in range(max(start, 0), end)])
            if msg.op == "ledger_consistency":
                path = service.log.consistency(int(msg["size1"]), int(msg["size2"]))
                return wire.reply(True, path=[h.hex() for h in path])
            if msg.op == "ledger_key":
                m = self.identity.chip.manufacturer
                pem = Encoding.PEM
                return wire.reply(
                    True, key=keys.public_pem(self.ledger.key.public_key()).decode(),
                    report=self.key_report.hex(),
                    ark=m.ark_cert.public_bytes(pem).decode(),
                    ask=m.ask_cert.public_bytes(pem).decode(),
                    vcek=self.identity.chip.vcek_cert.public_bytes(pem).decode())
        except TransparencyError as exc:
            return wire.reply(False, error=str(exc), reason=exc.reason)
        except (KeyError, ValueError, TypeError) as exc:
            return wire.reply(False, error=f"malformed request: {exc}", reason="malformed")
        return wire.reply(False, error=f"no operation {msg.op!r}", reason="malformed")
