"""The listener of every perimeter port (the coordinator's and a node agent's TLS ports,
a node host's port): it must outlive what strangers do.  An accept error (EMFILE, a
connection reset before it was accepted) is waited out with a back-off, never the end of
the listener; a connection that has not proven itself (its handshake and first message)
within ``Limits.deadline`` is closed, and so is the oldest of them when more than
``Limits.max_pending`` wait at once.  Imports nothing of ours: the trusted channel and the
untrusted node host both listen with it.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Out of descriptors or buffers: closing a waiting stranger frees one, then try again.
_SHORT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass(frozen=True)
class Limits:
    """What a stranger may hold of a listener.  ``deadline`` (seconds): for the handshake
    and the first message together, and an unattested peer's wait between requests;
    ``max_pending``: connections at once that have not yet sent their first message;
    ``backoff``: the first wait after an accept error (doubling up to ``max_backoff``)."""

    deadline: float = 60.0
    max_pending: int = 64
    backoff: float = 0.01
    max_backoff: float = 1.0


DEFAULT_LIMITS = Limits()

class Ticket:
    """One accepted connection while it has not proven itself (handshake and first
    message): the acceptor closes it at its deadline or to make room."""

    def __init__(self, acceptor: Acceptor, sock: socket.socket, deadline: float) -> None:
        self._acceptor = acceptor
        self.sock = sock
        self.deadline = deadline

    def wrap(self, ctx: ssl.SSLContext) -> ssl.SSLSocket:
        """The TLS socket (handshake still to do: ``do_handshake``, under the deadline)."""
        with self._acceptor.lock:
            if self.sock.fileno() < 0:
                raise ConnectionError("closed before its handshake")
            conn = ctx.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
            self.sock = conn  # the same descriptor: what the deadline shuts down now
        return conn

    def admitted(self) -> None:
        """It spoke in time: no deadline from now on."""
        self._acceptor._drop(self)


class Acceptor:
    """Accepts on ``sock`` for ever (until ``close``) and serves each connection on its
    own thread with ``serve(ticket)``; the acceptor closes the socket afterwards."""

    def __init__(self, sock: socket.socket, serve: Callable[[Ticket], None],
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.sock = sock
        self.serve = serve
        self.limits = limits
        self.lock = threading.Lock()
        self.pending: list[Ticket] = []  # oldest first
        self.errors = 0  # accept errors waited out (for tests and the curious)
        self._stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Acceptor:
        self.thread.start()
        return self

    def close(self) -> None:
        self._stopped.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _loop(self) -> None:
        backoff = self.limits.backoff
        while not self._stopped.is_set():
            wait = self._expire()
            try:
                self.sock.settimeout(wait)
                raw, _addr = self.sock.accept()
            except TimeoutError:
                continue  # a deadline is due
            except OSError as exc:
                if self._stopped.is_set():
                    return
                self.errors += 1
                if exc.errno in _SHORT_OF_RESOURCES:
                    self._evict_oldest()
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, self.limits.max_backoff)
                continue
            backoff = self.limits.backoff
            raw.settimeout(None)
            ticket = Ticket(self, raw, time.monotonic() + self.limits.deadline)
            with self.lock:
                self.pending.append(ticket)
                crowd = len(self.pending) > self.limits.max_pending
            if crowd:
                self._evict_oldest()
            try:
                threading.Thread(target=self._run, args=(ticket,), daemon=True).start()
            except RuntimeError:  # no thread to be had: the connection is dropped
                self._drop(ticket)
                raw.close()

    def _run(self, ticket: Ticket) -> None:
        try:
            self.serve(ticket)
        except Exception:  # noqa: BLE001, S110 - a stranger's connection ends, the listener stays
            pass
        finally:
            self._drop(ticket)  # first: the deadline must never touch a closed descriptor
            ticket.sock.close()

    def _drop(self, ticket: Ticket) -> None:
        with self.lock:
            if ticket in self.pending:
                self.pending.remove(ticket)

    def _shut(self, ticket: Ticket) -> None:
        """Close a waiting connection (lock held): its thread's read ends, it cleans up."""
        self.pending.remove(ticket)
        try:
            socket.socket.shutdown(ticket.sock, socket.SHUT_RDWR)  # the descriptor, not TLS
        except OSError:
            pass

    def _evict_oldest(self) -> None:
        with self.lock:
            if self.pending:
                self._shut(self.pending[0])

    def _expire(self) -> float | None:
        """Close the connections past their deadline; seconds until the next one is due."""
        now = time.monotonic()
        with self.lock:
            for ticket in [t for t in self.pending if t.deadline <= now]:
                self._shut(ticket)
            if not self.pending:
                return None
            return max(0.0, self.pending[0].deadline - now) + 0.001
