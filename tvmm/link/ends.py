"""Opening a link's end from its spec (plain data a launcher hands a child process).

A spec is ``{"kind": "mailbox", ...}`` (tvmm.link.mailbox.MailboxFds) or
``{"kind": "socket", "fd": n, "limit": bytes}``; every descriptor in it is inherited.
"""

from __future__ import annotations

import socket

from tvmm.link import frames, mailbox

KINDS = ("mailbox", "socket")


def socket_specs(limit: int = frames.DEFAULT_LIMIT) -> tuple[dict, dict, tuple[int, int]]:
    """(client spec, server spec, both descriptors) of a fresh socketpair."""
    a, b = socket.socketpair()
    for s in (a, b):
        s.set_inheritable(True)
    fa, fb = a.detach(), b.detach()
    return ({"kind": "socket", "fd": fa, "limit": limit},
            {"kind": "socket", "fd": fb, "limit": limit}, (fa, fb))


def specs(kind: str, capacity: int = mailbox.DEFAULT_CAPACITY
          ) -> tuple[dict, dict, tuple[int, ...]]:
    """(client spec, server spec, every descriptor) of a fresh link of ``kind``."""
    if kind == "mailbox":
        fds = mailbox.create(capacity)
        return fds.client_spec(), fds.server_spec(), fds.all()
    if kind == "socket":
        return socket_specs(capacity)
    raise ValueError(f"link kind {kind!r} is not one of {KINDS}")


def client(spec: dict) -> mailbox.MailboxClient | frames.SocketClient:
    if spec["kind"] == "mailbox":
        return mailbox.MailboxClient(spec)
    return frames.SocketClient(socket.socket(fileno=spec["fd"]), spec["limit"])


def server(spec: dict) -> mailbox.MailboxServer | frames.SocketServer:
    if spec["kind"] == "mailbox":
        return mailbox.MailboxServer(spec)
    return frames.SocketServer(socket.socket(fileno=spec["fd"]), spec["limit"])
