"""Attested connections: a threaded TLS server and a client, both speaking tvmm.perimeter.wire.

A connection starts with the TLS handshake (mutual), then the client sends either
``attest`` (a perimeter process: coordinator or node) or, for operators, goes straight to
requests.  An attesting client is verified (identity.verify_peer) and answered with the
server's own ``attest``, which the client verifies in turn.  Handlers see the verified
``Peer`` (or None for an operator) and decide what that peer may ask.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

from tvmm.perimeter import wire
from tvmm.perimeter.identity import Identity, Peer, PeerRefused, verify_peer

Handler = Callable[[Peer | None, wire.Message, ssl.SSLSocket], wire.Message | None]
RefusalLog = Callable[[str, str, str], None]


class Server:
    def __init__(self, identity: Identity, handler: Handler, ark_pem: bytes,
                 measurement: bytes, host: str = "127.0.0.1", port: int = 0,
                 on_refused: RefusalLog | None = None) -> None:
        self.identity = identity
        self.handler = handler
        self.ark_pem = ark_pem
        self.measurement = measurement
        self.on_refused = on_refused
        self.ctx = identity.server_context()
        self.sock = socket.create_server((host, port))
        self.address = self.sock.getsockname()[:2]
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> Server:
        self.thread.start()
        return self

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                raw, _addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        peer: Peer | None = None
        try:
            with conn:
                first = wire.recv(conn)
                if first.op == "attest":
                    try:
                        peer = verify_peer(conn, first, self.ark_pem, self.measurement)
                    except PeerRefused as exc:
                        if self.on_refused:
                            self.on_refused(str(first.fields.get("name", "?")), exc.reason,
                                            str(exc))
                        wire.send(conn, wire.reply(False, error=str(exc), reason=exc.reason))
                        return
                    wire.send(conn, self.identity.attest_message())
                    msg = wire.recv(conn)
                else:
                    msg = first
                while True:
                    try:
                        answer = self.handler(peer, msg, conn)
                    except Exception as exc:  # noqa: BLE001 - a handler bug is an error reply
                        answer = wire.reply(False, error=f"internal error: {exc!r}",
                                            reason="internal")
                    if answer is not None:
                        wire.send(conn, answer)
                    msg = wire.recv(conn)
        except (ConnectionError, OSError, ssl.SSLError):
            return
        except wire.WireError as exc:
            try:
                wire.send(conn, wire.reply(False, error=str(exc), reason="malformed"))
            except OSError:
                pass


def connect(identity: Identity, host: str, port: int, ark_pem: bytes, measurement: bytes,
            timeout: float = 60.0) -> tuple[ssl.SSLSocket, Peer]:
    """An attested connection: both sides verified, or PeerRefused."""
    raw = socket.create_connection((host, port), timeout=timeout)
    conn = identity.client_context().wrap_socket(raw)
    try:
        wire.send(conn, identity.attest_message())
        answer = wire.recv(conn)
        if answer.op == "reply":
            raise PeerRefused(answer.fields.get("reason", "refused"),
                              answer.fields.get("error", ""))
        return conn, verify_peer(conn, answer, ark_pem, measurement)
    except BaseException:
        conn.close()
        raise
