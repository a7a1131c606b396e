"""Attested connections: a threaded TLS server and a client, both speaking tvmm.perimeter.wire.

A connection starts with the TLS handshake (mutual), then the client sends either
``attest`` (a perimeter process: coordinator or node) or, for operators, goes straight to
requests.  An attesting client is verified (identity.verify_peer) and answered with the
server's own ``attest``, which the client verifies in turn.  Handlers see the verified
``Peer`` (or None for an operator) and decide what that peer may ask.

Anyone can connect, so a listener must outlive what strangers do (``Acceptor``): an accept
error (EMFILE, a connection reset before it was accepted) is waited out with a back-off,
never the end of the listener; a connection that has not finished its handshake and
first message within ``Limits.deadline`` is closed, and so is the oldest of them when more
than ``Limits.max_pending`` wait at once (a stranger who opens many must out-pace a real
peer's handshake, milliseconds, to keep one out); an operator that goes quiet between
requests for that long is closed too.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

from tvmm.perimeter import wire
from tvmm.perimeter.acceptor import DEFAULT_LIMITS, Acceptor, Limits, Ticket
from tvmm.perimeter.identity import Identity, Peer, PeerRefused, verify_peer

Handler = Callable[[Peer | None, wire.Message, ssl.SSLSocket], wire.Message | None]
RefusalLog = Callable[[str, str, str], None]


class Server:
    def __init__(self, identity: Identity, handler: Handler, ark_pem: bytes,
                 measurement: bytes, host: str = "127.0.0.1", port: int = 0,
                 on_refused: RefusalLog | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.identity = identity
        self.handler = handler
        self.ark_pem = ark_pem
        self.measurement = measurement
        self.on_refused = on_refused
        self.limits = limits
        self.ctx = identity.server_context()
        self.sock = socket.create_server((host, port))
        self.address = self.sock.getsockname()[:2]
        self.acceptor: Acceptor | None = None

    def start(self) -> Server:
        self.acceptor = Acceptor(self.sock, self._serve, self.limits).start()
        return self

    def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
        else:
            self.sock.close()

    def _serve(self, ticket: Ticket) -> None:
        conn = ticket.wrap(self.ctx)
        try:
            conn.do_handshake()
            peer, msg = self._first(conn)
            if msg is None:
                return
            ticket.admitted()
            if peer is None:  # an operator: it may not sit idle on the connection
                conn.settimeout(self.limits.deadline)
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
        except wire.WireError as exc:  # the connection is still open: say why it ends
            try:
                wire.send(conn, wire.reply(False, error=str(exc), reason="malformed"))
            except (OSError, ssl.SSLError):
                pass

    def _first(self, conn: ssl.SSLSocket) -> tuple[Peer | None, wire.Message | None]:
        """(the verified peer or None for an operator, its first request), or (None, None)
        when an attesting peer was refused (answered, audited)."""
        first = wire.recv(conn)
        if first.op != "attest":
            return None, first
        try:
            peer = verify_peer(conn, first, self.ark_pem, self.measurement)
        except PeerRefused as exc:
            if self.on_refused:
                self.on_refused(str(first.fields.get("name", "?")), exc.reason, str(exc))
            wire.send(conn, wire.reply(False, error=str(exc), reason=exc.reason))
            return None, None
        wire.send(conn, self.identity.attest_message())
        return peer, wire.recv(conn)


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
