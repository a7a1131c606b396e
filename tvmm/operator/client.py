"""UNTRUSTED: the operator's client of the coordinator (the CLI and the attacks use it).

The operator is not part of the perimeter: it gets a transport certificate (from the
perimeter's transport CA, which proves nothing) and sends requests; the coordinator
decides and audits.  It never imports tvmm.hw or shim (architecture contract).
"""

from __future__ import annotations

import datetime
import socket
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tvmm.perimeter import wire


class PerimeterError(RuntimeError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def operator_context(state_dir: Path) -> ssl.SSLContext:
    ca_dir = Path(state_dir) / "perimeter_ca"
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca_key.pem").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "operator")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cadata=ca_cert.public_bytes(serialization.Encoding.PEM)
                                     .decode())
    ctx.check_hostname = False
    with tempfile.TemporaryDirectory() as tmp:
        c, k = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        ctx.load_cert_chain(c, k)
    return ctx


class OperatorClient:
    def __init__(self, address: tuple[str, int], state_dir: Path,
                 timeout: float = 600.0) -> None:
        self.address = address
        self.ctx = operator_context(state_dir)
        self.timeout = timeout

    def request(self, op: str, blob: bytes = b"", **fields: object) -> wire.Message:
        raw = socket.create_connection(self.address, timeout=self.timeout)
        with self.ctx.wrap_socket(raw) as conn:
            answer = wire.call(conn, wire.Message(op, dict(fields), blob))
        return answer

    def ok(self, op: str, blob: bytes = b"", **fields: object) -> wire.Message:
        answer = self.request(op, blob, **fields)
        if not answer["ok"]:
            raise PerimeterError(answer.fields.get("reason", "refused"),
                                 answer.fields.get("error", "refused"))
        return answer

    # -- the operations ----------------------------------------------------------------------------
    def launch(self, image: bytes, guest: str, node: str, level: str = "shim",
               memory: int = 4 << 20, secret: bytes = b"") -> str:
        return self.ok("launch", image, guest=guest, node=node, level=level, memory=memory,
                       secret=secret.hex())["data"]["vm"]

    def suspend(self, vm: str) -> bytes:
        return self.ok("suspend", vm=vm).blob

    def resume(self, checkpoint: bytes, node: str) -> dict:
        return self.ok("resume", checkpoint, node=node)["data"]

    def migrate(self, vm: str, to: str, live: bool = True, relay: str = "") -> dict:
        return self.ok("migrate", vm=vm, to=to, live=live, relay=relay)["data"]

    def vms(self) -> list[dict]:
        return self.ok("vms")["data"]["vms"]

    def console(self, vm: str) -> dict:
        """{vm, node, ended, console}: the console log of a running VM."""
        return self.ok("console", vm=vm)["data"]

    def nodes(self) -> list[dict]:
        return self.ok("nodes")["data"]["nodes"]

    def audit(self, limit: int = 0) -> dict:
        return self.ok("audit", limit=limit)["data"]
