"""The boundary: the TEE in a process of its own, reached only through a byte link.

The links (shared-memory mailbox, framed socket) carry any frame up to their limit, refuse
a bigger one with an error on either end, and turn a dead peer into PeerGone instead of a
hang.  The TEE's server answers a frame it cannot read with MALFORMED ("frame").  Every
sample boots at every level across the boundary with the console it has in-process.
"""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvmm.abi import codec
from tvmm.abi.messages import CreateVm, Reply
from tvmm.abi.types import Level, Result
from tvmm.harness.boot import boot as boot_across
from tvmm.link import ends, frames, mailbox
from tvmm.link.errors import FrameError, PeerGone
from tvmm.machine import boot as boot_in_process
from tvmm.samples import SAMPLES


def _pair(kind: str, capacity: int = 1 << 16):
    client_spec, server_spec, _fds = ends.specs(kind, capacity)
    pair = ends.client(client_spec), ends.server(server_spec)
    if kind == "mailbox":
        os.close(client_spec["memory"])  # both ends have mapped it
    return pair


def _echo(server, count: int) -> threading.Thread:
    def run() -> None:
        for _ in range(count):
            server.send(server.recv()[::-1])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("kind", ends.KINDS)
@settings(max_examples=25, deadline=None)
@given(data=st.lists(st.binary(max_size=3000), min_size=1, max_size=5))
def test_a_link_carries_any_frame_up_to_its_limit(kind, data):
    client, server = _pair(kind)
    thread = _echo(server, len(data))
    try:
        for frame in data:
            assert client.call(frame) == frame[::-1]
        thread.join(5)
    finally:
        client.close()
        server.close()


def test_a_mailbox_between_two_processes_answers_every_call_once():
    """100,000 numbered calls to an echo server in another process: each reply is its own
    call's (a sequence number read half-written once made a side take a frame twice)."""
    client_spec, server_spec, fds = ends.specs("mailbox", 4096)
    pid = os.fork()
    if pid == 0:  # the server
        try:
            for fd in (client_spec["bell_in"], client_spec["bell_out"]):
                os.close(fd)
            server = ends.server(server_spec)
            while True:
                server.send(server.recv())
        finally:
            os._exit(0)
    for fd in (server_spec["bell_in"], server_spec["bell_out"]):
        os.close(fd)
    client = ends.client(client_spec)
    os.close(fds[0])
    try:
        bad = [i for i in range(100_000) if client.call(i.to_bytes(4, "little")) !=
               i.to_bytes(4, "little")]
    finally:
        client.close()
        os.waitpid(pid, 0)
    assert bad == []


@pytest.mark.parametrize("kind", ends.KINDS)
def test_an_oversized_frame_is_refused_and_the_link_goes_on(kind):
    client, server = _pair(kind, capacity=1024)
    thread = _echo(server, 1)
    with pytest.raises(FrameError):
        client.call(bytes(1025))  # refused before anything is sent
    assert client.call(b"abc") == b"cba"
    thread.join(5)
    client.close()
    server.close()


def test_a_forged_length_in_shared_memory_is_a_frame_error_for_the_server():
    client, server = _pair("mailbox", capacity=1024)
    client.w[mailbox.REQ_LEN // 4] = 1 << 30  # the host scribbles on shared memory
    client.sent += 1
    client.q[mailbox.REQ_SEQ // 8] = client.sent
    with pytest.raises(FrameError):
        server.recv()
    client.close()
    server.close()


class _Clock:
    """A stand-in for the mailbox's ``time``: each look at the clock is counted, and the
    peer's answer may arrive at the first one (as if while spinning)."""

    def __init__(self, on_first_look=None) -> None:
        self.looks = 0
        self.on_first_look = on_first_look

    def perf_counter(self) -> float:
        self.looks += 1
        if self.looks == 1 and self.on_first_look is not None:
            self.on_first_look()
        return float(self.looks) * 1e-9  # never past a deadline


def _waited(client, server, monkeypatch, *, peer_asleep: bool) -> tuple[_Clock, list]:
    """The client sends with the server's sleep flag up or down, then waits for the
    answer; which way it waited (spin: looks at the clock; sleep: ``_sleep``)."""
    slept: list = []
    clock = _Clock(on_first_look=lambda: server.send(b"answer"))

    def sleep(seen: int) -> None:
        slept.append(seen)
        server.send(b"answer")

    monkeypatch.setattr(mailbox, "time", clock)
    monkeypatch.setattr(client, "_sleep", sleep)
    server.w[server._my_sleep] = int(peer_asleep)  # as the server's _sleep raises it
    client._put(b"request")
    assert server.recv() == b"request"
    server.w[server._my_sleep] = 0
    assert client._take() == b"answer"
    return clock, slept


def test_a_mailbox_end_spins_for_a_peer_that_is_awake(monkeypatch):
    client, server = _pair("mailbox")
    client.crowded = True  # spins even then: the peer is awake
    clock, slept = _waited(client, server, monkeypatch, peer_asleep=False)
    assert (client.rang, clock.looks, slept) == (0, 1, [])  # answered while spinning
    client.close()
    server.close()


def test_a_mailbox_end_that_woke_its_peer_sleeps_at_once(monkeypatch):
    """The peer was asleep: it needs a core before it can answer, so this end does not
    spin on one (and it rang the peer's doorbell, which the peer's sleep reads away)."""
    client, server = _pair("mailbox")
    client.crowded = True  # every core taken (the machine's own count is not the test's)
    clock, slept = _waited(client, server, monkeypatch, peer_asleep=True)
    assert (client.rang, clock.looks, slept) == (1, 0, [0])
    assert os.read(server.bell_in, 16) == b"\1"
    client.close()
    server.close()


def test_a_mailbox_end_with_a_core_to_spare_spins_after_waking_its_peer(monkeypatch):
    """Not crowded: the woken peer gets a core of its own, so this end spins for the
    answer (else two ends that each find the other asleep pay two wake-ups a round trip),
    even when its last waits outlasted the spin."""
    client, server = _pair("mailbox")
    client.crowded, client.misses = False, mailbox.MISSES
    clock, slept = _waited(client, server, monkeypatch, peer_asleep=True)
    assert (client.rang, clock.looks, slept) == (1, 1, [])
    client.close()
    server.close()


@pytest.mark.parametrize(("loadavg", "expected"), [
    (b"0.10 0.11 0.05 1/215 3338\n", False),  # this process alone
    (b"6.21 4.46 2.45 9/230 20690\n", True),  # more runnable than any test machine's cores
    (b"garbage\n", True),  # unknown: the cautious way
])
def test_the_mailbox_reads_how_crowded_the_machine_is(tmp_path, monkeypatch, loadavg, expected):
    path = tmp_path / "loadavg"
    path.write_bytes(loadavg)
    monkeypatch.setattr(mailbox, "LOADAVG", str(path))
    monkeypatch.setattr(mailbox, "CORES", 2)
    assert mailbox.crowded() is expected


def test_an_oversized_frame_on_a_socket_is_read_away():
    a, b = socket.socketpair()
    a.sendall(struct.pack("<I", 5000) + bytes(5000) + struct.pack("<I", 2) + b"ok")
    with pytest.raises(FrameError):
        frames.recv_frame(b, limit=4096)
    assert frames.recv_frame(b, limit=4096) == b"ok"


@pytest.mark.parametrize("kind", ends.KINDS)
def test_a_dead_peer_is_peer_gone_not_a_hang(kind):
    client_spec, server_spec, fds = ends.specs(kind, 1024)
    client = ends.client(client_spec)
    server_side = {server_spec.get(k) for k in ("bell_in", "bell_out", "fd")} - {None}
    for fd in server_side:  # the server's process is gone: its descriptors are closed
        os.close(fd)
    if kind == "mailbox":
        os.close(server_spec["memory"])
    with pytest.raises(PeerGone):
        client.call(b"anyone?")
    client.close()


@pytest.mark.parametrize("kind", ends.KINDS)
def test_the_tee_server_answers_what_it_cannot_read_with_malformed(kind, tmp_path):
    from tvmm.harness.tee_server import TeeServer

    client_spec, server_spec, _fds = ends.specs(kind, 4096)
    server = TeeServer({"host": server_spec})
    thread = threading.Thread(target=server.serve_host, daemon=True)
    thread.start()
    client = ends.client(client_spec)
    if kind == "mailbox":
        os.close(client_spec["memory"])
    try:
        if kind == "mailbox":  # a length over the capacity, forged in shared memory
            client.w[mailbox.REQ_LEN // 4] = 1 << 20
            client.sent += 1
            client.q[mailbox.REQ_SEQ // 8] = client.sent
            reply = codec.decode(client._take())
        else:
            client.sock.sendall(struct.pack("<I", 5000) + bytes(5000))
            reply = codec.decode(frames.recv_frame(client.sock))
        assert reply == Reply(Result.MALFORMED, operand="frame")
        assert codec.decode(client.call(b"\xff" * 40)).result == Result.MALFORMED
        ok = codec.decode(client.call(codec.encode(CreateVm(Level.PLAIN, 1 << 20, 0, 0))))
        assert ok.result in (Result.OK, Result.BAD_OPERAND)  # answered, still serving
    finally:
        client.close()
        thread.join(5)
    assert not thread.is_alive()  # the host's end closed: the server stopped serving


@pytest.mark.parametrize("level", [lv.value for lv in Level])
@pytest.mark.parametrize("guest", list(SAMPLES))
def test_every_sample_boots_across_the_boundary_as_in_process(guest, level):
    across = boot_across(guest, Level(level), seed=3)
    alone = boot_in_process(guest, Level(level), seed=3)
    assert (across.how, across.status, across.console) == (alone.how, alone.status,
                                                           alone.console)
    assert across.exits == alone.exits and across.launch_digest == alone.launch_digest
    assert across.key_release == alone.key_release


def test_the_socket_link_boots_the_same_and_the_launch_secret_crosses():
    across = boot_across("modexp", Level.SNP, seed=4, link="socket", secret_path="launch")
    alone = boot_in_process("modexp", Level.SNP, seed=4, secret_path="launch")
    assert across.console == alone.console and across.status == 0


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    with open(path) as f:
        return [int(p) for p in f.read().split()]


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_ctrl_c_ends_a_guest_that_never_exits(tmp_path):
    """A guest in a loop with no timer never hands the TEE's process back to Python, so it
    cannot see Ctrl-C: the launcher ends it.  One line, status 130, no process left over."""
    import signal
    import subprocess
    import sys
    import time

    spin = tmp_path / "spin.c"
    spin.write_text('#include "tvmm.h"\nint main(void) { volatile u64 x = 0; for (;;) x++; '
                    'return 0; }\n')
    proc = subprocess.Popen([sys.executable, "-m", "tvmm", "boot", str(spin), "--level",
                             "shim"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            # as in a terminal: a shell running tests in the background
                            # starts them with Ctrl-C ignored, and Python keeps that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2:  # the TEE's process and the host's are up
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    children = _children(proc.pid)
    tee = next(c for c in children if b"tee_server" in open(f"/proc/{c}/cmdline", "rb").read())
    while _cpu_seconds(tee) < 1.0:  # ... and the guest has been spinning for a while
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip() == "tvmm: interrupted"
    for child in children:
        assert not os.path.exists(f"/proc/{child}") or open(f"/proc/{child}/stat").read(
        ).split()[2] == "Z"


def test_a_guest_that_never_exits_stops_at_its_time_limit(tmp_path, capsys):
    """``tvmm boot`` has a default run limit (--time-limit): a guest in ``for (;;)`` ends by
    itself with one clear line, and its trace holds every event up to the stop."""
    from tvmm.cli import main
    from tvmm.commands.boot import DEFAULT_TIME_LIMIT
    from tvmm.trace.reader import TraceReader

    assert 0 < DEFAULT_TIME_LIMIT <= 120
    spin = tmp_path / "spin.c"
    spin.write_text('#include "tvmm.h"\nint main(void) { puts("spinning\\n"); '
                    'volatile u64 x = 0; for (;;) x++; return 0; }\n')
    trace = tmp_path / "spin.jsonl"
    code = main(["boot", str(spin), "--level", "shim", "--time-limit", "1.5",
                 "--trace", str(trace)])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 3
    assert "spinning" in out
    assert "ended time limit (still running after 1.5 s: stopped (--time-limit" in out
    with TraceReader(trace) as reader:
        assert reader.unfinished and len(reader) > 0
