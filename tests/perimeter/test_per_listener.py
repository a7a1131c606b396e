"""Listeners outlive what strangers do to them (issue 16, finding 1): an accept error is
waited out, connections that never finish their handshake and first message are closed at
the deadline, and the oldest of too many waiting ones makes room.  Every wait here is
bounded by the test's own deadline parameters (``Limits``) and socket timeouts."""

from __future__ import annotations

import errno
import socket
import ssl
import struct
from pathlib import Path

import pytest

from tvmm.host.node_service import NodeHost
from tvmm.operator.client import OperatorClient, operator_context
from tvmm.perimeter import wire
from tvmm.perimeter.channel import Limits, Server
from tvmm.perimeter.identity import Identity, pinned_ark
from tvmm.perimeter.node import Node

BOUND = 10.0  # the longest any step of these tests may wait (seconds)


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("listener-state")


class FlakyListener:
    """A listening socket whose first accepts fail as a loaded kernel's do."""

    def __init__(self, sock: socket.socket, errors: list[int]) -> None:
        self._sock = sock
        self.errors = [OSError(e, "injected") for e in errors]

    def accept(self):
        if self.errors:
            raise self.errors.pop(0)
        return self._sock.accept()

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def _server(state: Path, limits: Limits) -> Server:
    ident = Identity.create("c", "coordinator", state)
    return Server(ident, lambda peer, msg, conn: wire.reply(op=msg.op), pinned_ark(state),
                  ident.measurement, limits=limits)


def _ask(state: Path, server: Server) -> wire.Message:
    return OperatorClient(server.address, state, timeout=BOUND).request("nodes")


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the other side closed (within BOUND); False if it keeps it open."""
    sock.settimeout(BOUND)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _idle(address: tuple[str, int], n: int) -> list[socket.socket]:
    return [socket.create_connection(address, timeout=BOUND) for _ in range(n)]


def test_server_keeps_serving_after_accept_errors(state: Path) -> None:
    server = _server(state, Limits(backoff=0.001, max_backoff=0.01))
    server.sock = FlakyListener(server.sock, [errno.EMFILE, errno.ECONNABORTED,
                                              errno.ENOBUFS])
    server.start()
    try:
        assert _ask(state, server)["data"]["op"] == "nodes"
        assert server.acceptor.errors == 3
    finally:
        server.close()


def test_idle_and_silent_connections_are_closed_at_the_deadline(state: Path) -> None:
    server = _server(state, Limits(deadline=0.3)).start()
    try:
        idle = _idle(server.address, 8)  # never start TLS
        ctx = operator_context(state)
        silent = ctx.wrap_socket(socket.create_connection(server.address, timeout=BOUND))
        trickle = ctx.wrap_socket(socket.create_connection(server.address, timeout=BOUND))
        trickle.sendall(struct.pack("<I", 100) + b"\x10")  # half a frame, then nothing
        assert all(_closed_by_peer(s) for s in idle)
        for tls in (silent, trickle):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                wire.recv(tls)
        assert _ask(state, server)["ok"]  # and it serves on
        assert not server.acceptor.pending
    finally:
        server.close()


def test_the_oldest_waiting_connection_makes_room(state: Path) -> None:
    server = _server(state, Limits(deadline=BOUND * 6, max_pending=4)).start()
    try:
        idle = _idle(server.address, 6)
        assert _closed_by_peer(idle[0]) and _closed_by_peer(idle[1])
        assert _ask(state, server)["ok"]  # in time: it closed the oldest (idle[2]) to wait
        assert _closed_by_peer(idle[2])
        assert len(server.acceptor.pending) == 3  # idle[3:] wait for their deadline
    finally:
        server.close()


def test_a_malformed_request_is_answered(state: Path) -> None:
    server = _server(state, Limits(deadline=BOUND)).start()
    try:
        conn = operator_context(state).wrap_socket(
            socket.create_connection(server.address, timeout=BOUND))
        body = struct.pack("<I", 5) + b"{nope"
        conn.sendall(struct.pack("<I", len(body)) + body)
        answer = wire.recv(conn)
        assert answer.op == "reply" and answer.fields["reason"] == "malformed"
        conn.close()
    finally:
        server.close()


def _node(state: Path, limits: Limits) -> Node:
    return Node("n1", Identity.create("n1", "node", state), pinned_ark(state), limits=limits)


def _host_port_answers(address: tuple[str, int]) -> bool:
    with socket.create_connection(address, timeout=BOUND) as s:
        wire.send(s, wire.Message("stream_begin", {"stream": 5, "vm": "x", "level": "shim",
                                                   "memory": 4096, "policy": 0}))
        answer = wire.recv(s)
        return answer.op == "reply" and not answer["ok"]  # no migration expected: refused


def test_node_host_port_keeps_serving_after_accept_errors(tmp_path: Path) -> None:
    """The host port is the node's host's (a process of its own): its listener, here in
    this process with the two channels to an agent that never speaks."""
    agent_ends = [socket.socketpair() for _ in range(2)]
    host = NodeHost(agent_ends[0][1], agent_ends[1][1], "127.0.0.1", 0, tmp_path,
                    Limits(backoff=0.001, max_backoff=0.01))
    host.host_sock = FlakyListener(host.host_sock, [errno.EMFILE, errno.ENFILE])
    host.start_port()
    try:
        assert _host_port_answers(host.host_sock.getsockname()[:2])
        assert host.host_acceptor is not None and host.host_acceptor.errors == 2
    finally:
        host.close_port()
        for pair in agent_ends:
            for s in pair:
                s.close()


def test_node_host_port_closes_idle_connections(state: Path) -> None:
    node = _node(state, Limits(deadline=0.3, max_pending=4)).start()
    try:
        idle = _idle(node.host_address, 6)
        assert all(_closed_by_peer(s) for s in idle)
        assert _host_port_answers(node.host_address)
        idle = _idle(node.address, 3)  # the agent's TLS port too
        assert all(_closed_by_peer(s) for s in idle)
    finally:
        node.close()
