"""UNTRUSTED: the node's host as a process of its own, beside the node agent (the TEE side).

The agent starts it (``python -m tvmm.host.node_service``) with two ends of local byte
channels (socket pairs): on the first the host makes its platform calls (ABI codec bytes,
one ``abi`` wire frame each way), on the second it serves the agent's requests — launch,
pause, export a checkpoint and store it, import one, carry a migration stream to the
destination's host, list its VMs.  It owns what a host owns: the honest hypervisor of
each VM, the "host port" where migration streams arrive, the checkpoint storage.  Nothing
it answers is believed by the agent without a check in the TEE.

It exits when the agent's end of the channel closes (the agent is gone, and with it the
TEE), and it dies with the agent (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tvmm.abi.types import Level
from tvmm.guestimage import load_elf
from tvmm.host import node_host
from tvmm.host.client import HostCallError, PlatformClient, bytes_transport
from tvmm.host.devices import Console
from tvmm.host.hypervisor import Devices
from tvmm.perimeter import wire
from tvmm.perimeter.acceptor import DEFAULT_LIMITS, Acceptor, Limits, Ticket
from tvmm.perimeter.checkpoint_file import Checkpoint

_FILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


@dataclass
class HostedVm:
    vm: int
    host: node_host.PausableHost
    runner: node_host.VmRunner | None = None


@dataclass
class Incoming:
    vm: int = 0
    state: bytes = b""
    console: str = ""
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class PlatformLink:
    """The host's end of the platform channel: one call at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def __call__(self, data: bytes) -> bytes:
        with self.lock:
            wire.send(self.sock, wire.Message("abi", {}, data))
            answer = wire.recv(self.sock)
        if answer.op != "abi":
            raise wire.WireError("op", "the agent did not answer a platform call")
        return answer.blob


class NodeHost:
    def __init__(self, platform: socket.socket, control: socket.socket, bind: str,
                 host_port: int, storage: Path, limits: Limits = DEFAULT_LIMITS) -> None:
        self.client = PlatformClient(bytes_transport(PlatformLink(platform)))
        self.control = control
        self.storage = storage
        self.vms: dict[str, HostedVm] = {}
        self.imported: dict[int, tuple[bytes, str]] = {}  # platform vm -> (state, console)
        self.exported: dict[str, bytes] = {}  # vm -> the checkpoint file not yet stored
        self.expected: dict[int, Incoming] = {}
        self.streams: dict[int, socket.socket] = {}
        self.host_sock = socket.create_server((bind, host_port))
        self.host_acceptor: Acceptor | None = None
        self.limits = limits
        self.fault = os.environ.get("TVMM_FAULT_NODE", "")

    def crash_point(self, name: str) -> None:
        """The node's machine dies here: its agent (the TEE) and this host with it."""
        if self.fault == name:
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    def start_port(self) -> NodeHost:
        """Serve the host port: migration streams arrive there from other nodes' hosts."""
        self.host_acceptor = Acceptor(self.host_sock, self._incoming, self.limits).start()
        return self

    def close_port(self) -> None:
        if self.host_acceptor is not None:
            self.host_acceptor.close()
        else:
            self.host_sock.close()

    def serve(self) -> None:
        """The agent's requests, one at a time, until the agent is gone."""
        wire.send(self.control, wire.reply(host_port=self.host_sock.getsockname()[1]))
        while True:
            try:
                msg = wire.recv(self.control)
            except (OSError, wire.WireError):
                return  # the agent is gone
            handler = getattr(self, "do_" + msg.op.removeprefix("host_"), None)
            if not msg.op.startswith("host_") or handler is None:
                answer = wire.reply(False, error=f"{msg.op} is not a host request")
            else:
                try:
                    answer = handler(msg)
                except (HostCallError, KeyError, ValueError, OSError, wire.WireError) as exc:
                    answer = wire.reply(False, error=f"{type(exc).__name__}: {exc}")
            wire.send(self.control, answer)

    # -- running VMs ---------------------------------------------------------------------------------
    def _run(self, name: str, vm: int, host: node_host.PausableHost) -> None:
        hosted = HostedVm(vm, host)
        hosted.runner = node_host.VmRunner(host).start()
        self.vms[name] = hosted

    def do_launch(self, msg: wire.Message) -> wire.Message:
        with tempfile.NamedTemporaryFile(suffix=".elf", delete=False) as f:
            f.write(msg.blob)
        try:
            image = load_elf(Path(f.name), msg["vm"])
        finally:
            os.unlink(f.name)
        host = node_host.PausableHost(self.client, Devices())
        digest = host.launch(image, Level(msg["level"]), msg["memory"],
                             secret_blob=bytes.fromhex(msg["secret"]), policy=msg["policy"])
        self._run(msg["vm"], host.vm, host)
        return wire.reply(digest=digest.hex(), platform_vm=host.vm)

    def do_pause(self, msg: wire.Message) -> wire.Message:
        host = self.vms[msg["vm"]].host
        if not host.pause():
            host.resume()
            return wire.reply(False, error=f"{msg['vm']} did not stop within the timeout")
        return wire.reply()

    def do_unpause(self, msg: wire.Message) -> wire.Message:
        self.vms[msg["vm"]].host.resume()
        return wire.reply()

    def do_stop(self, msg: wire.Message) -> wire.Message:
        hosted = self.vms.pop(msg["vm"], None)
        if hosted is not None:
            hosted.host.stop()
        return wire.reply()

    def do_adopt(self, msg: wire.Message) -> wire.Message:
        """Run an imported VM (resumed, or migrated in) under a fresh honest host that
        carries the VM's console log on."""
        state, _ = self.imported.pop(msg["platform_vm"])
        host = node_host.PausableHost(self.client, Devices(Console()))
        host.devices.console.write(msg["console"].encode())
        host.vm, host.state = msg["platform_vm"], state
        self._run(msg["vm"], msg["platform_vm"], host)
        return wire.reply()

    def do_discard(self, msg: wire.Message) -> wire.Message:
        self.imported.pop(msg["platform_vm"], None)
        try:
            self.client.destroy(msg["platform_vm"])
        except HostCallError:
            pass
        return wire.reply()

    def do_list(self, msg: wire.Message) -> wire.Message:
        return wire.reply(vms=[{"vm": name, "ended": h.runner.ended if h.runner else None,
                                "console": node_host.console_tail(
                                    h.host.devices.console.text)}
                               for name, h in self.vms.items()])

    def do_wait(self, msg: wire.Message) -> wire.Message:
        hosted = self.vms[msg["vm"]]
        ended = hosted.runner is not None and hosted.runner.done.wait(msg["timeout"])
        return wire.reply(ended=bool(ended))

    # -- checkpoints ---------------------------------------------------------------------------------
    def do_export(self, msg: wire.Message) -> wire.Message:
        hosted = self.vms[msg["vm"]]
        bundles = list(node_host.export_round(self.client, hosted.vm, msg["stream"], True))
        data = Checkpoint({"vm": msg["vm"], "epoch": msg["epoch"], "level": msg["level"],
                           "memory": msg["memory"], "policy": msg["policy"],
                           "console": node_host.console_tail(
                               hosted.host.devices.console.text)}, bundles).to_bytes()
        self.exported[msg["vm"]] = data
        return wire.reply(True, data)

    def do_store(self, msg: wire.Message) -> wire.Message:
        if not _FILE_NAME.fullmatch(msg["name"]) or msg["name"].startswith("."):
            return wire.reply(False, error="not a checkpoint file name")
        node_host.store_checkpoint(self.storage / msg["name"], self.exported.pop(msg["vm"]))
        return wire.reply()

    def do_import(self, msg: wire.Message) -> wire.Message:
        ckpt = Checkpoint.from_bytes(msg.blob)
        vm, state = node_host.import_stream(self.client, msg["stream"], Level(msg["level"]),
                                            msg["memory"], ckpt.bundles, msg["policy"])
        self.imported[vm] = (state, "")
        return wire.reply(platform_vm=vm)

    # -- migration, source side ----------------------------------------------------------------------
    def do_stream_open(self, msg: wire.Message) -> wire.Message:
        host, port = msg["relay"].rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=120)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire.send(s, wire.Message("stream_begin", {
            "stream": msg["stream"], "vm": msg["vm"], "level": msg["level"],
            "memory": msg["memory"], "policy": msg["policy"]}))
        ready = wire.recv(s)  # the destination has prepared the empty VM
        if ready.op != "reply" or not ready["ok"]:
            s.close()
            return wire.reply(False, error=f"destination host: "
                              f"{ready.fields.get('error', ready.op)}")
        self.streams[msg["stream"]] = s
        return wire.reply()

    def do_pump(self, msg: wire.Message) -> wire.Message:
        s = self.streams[msg["stream"]]
        n = size = 0
        try:
            for bundle in node_host.export_round(self.client, self.vms[msg["vm"]].vm,
                                                 msg["stream"], msg["final"]):
                wire.send(s, wire.Message("bundle", {}, bundle))
                size += len(bundle)
                n += 1
        except (OSError, wire.WireError, HostCallError):
            self.streams.pop(msg["stream"]).close()
            raise
        return wire.reply(bundles=n, bytes=size)

    def do_stream_end(self, msg: wire.Message) -> wire.Message:
        s = self.streams.pop(msg["stream"])
        with s:
            wire.send(s, wire.Message("stream_end", {"console": node_host.console_tail(
                self.vms[msg["vm"]].host.devices.console.text)}))
            done = wire.recv(s)
        if not done.fields.get("ok"):
            return wire.reply(False, error=f"destination refused: {done.fields.get('error')}")
        return wire.reply()

    # -- migration, destination side -----------------------------------------------------------------
    def do_expect(self, msg: wire.Message) -> wire.Message:
        self.expected[msg["stream"]] = Incoming()
        return wire.reply()

    def do_console(self, msg: wire.Message) -> wire.Message:
        """The console log that came with a stream (forgotten once asked)."""
        inc = self.expected.pop(msg["stream"], None)
        if inc is not None and inc.vm:
            self.imported[inc.vm] = (inc.state, inc.console)
        return wire.reply(console=inc.console if inc else "",
                          error=inc.error if inc else "no such stream")

    def _incoming(self, ticket: Ticket) -> None:
        """stream_begin (within the listener's deadline) → the empty VM is created (its
        memory backed) and the source told to go on → bundles into IMPORT_VM →
        stream_end → the outcome.  The acceptor closes the connection."""
        conn = ticket.sock
        try:
            begin = wire.recv(conn)
            if begin.op != "stream_begin":
                raise wire.WireError("op", "expected stream_begin")
            stream = begin["stream"]
            inc = self.expected.get(stream)
            if inc is None:
                wire.send(conn, wire.reply(False, error="no migration expected for "
                                           f"stream {stream}"))
                return
            ticket.admitted()  # a stream its agent expects: no deadline from now on
            try:
                vm = node_host.create_for_import(self.client, Level(begin["level"]),
                                                 begin["memory"], begin["policy"])
            except HostCallError as exc:
                inc.error = str(exc)
                inc.done.set()
                wire.send(conn, wire.reply(False, error=inc.error))
                return
            wire.send(conn, wire.reply())  # ready: the source may start the stream
            error = ""
            while True:
                msg = wire.recv(conn)
                if msg.op == "stream_end":
                    inc.console = msg["console"]
                    break
                if msg.op != "bundle" or error:
                    continue
                try:
                    reply = node_host.import_bundle(self.client, vm, stream, msg.blob)
                except HostCallError as exc:
                    error = str(exc)
                    continue
                if reply.value:
                    inc.vm, inc.state = vm, reply.data
            if not error and not inc.vm:
                error = "the stream ended without END"
            inc.error = error
            inc.done.set()
            self.crash_point("migrate_dst_after_import")
            wire.send(conn, wire.reply(not error, error=error))
        except (OSError, wire.WireError, ValueError, HostCallError):
            return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tvmm.host.node_service")
    p.add_argument("--platform-fd", type=int, required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--host-port", type=int, default=0)
    p.add_argument("--storage", type=Path, required=True)
    p.add_argument("--max-frame", type=int, default=wire.MAX_FRAME)
    p.add_argument("--part", type=int, default=wire.PART)
    p.add_argument("--deadline", type=float, default=DEFAULT_LIMITS.deadline)
    p.add_argument("--max-pending", type=int, default=DEFAULT_LIMITS.max_pending)
    p.add_argument("--backoff", type=float, default=DEFAULT_LIMITS.backoff)
    p.add_argument("--max-backoff", type=float, default=DEFAULT_LIMITS.max_backoff)
    args = p.parse_args(argv)
    wire.MAX_FRAME, wire.PART = args.max_frame, args.part  # the agent's channel limits
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    host = NodeHost(socket.socket(fileno=args.platform_fd),
                    socket.socket(fileno=args.control_fd), args.bind, args.host_port,
                    args.storage, Limits(args.deadline, args.max_pending, args.backoff,
                                         args.max_backoff))
    host.start_port().serve()
    host.close_port()
    for hosted in host.vms.values():
        hosted.host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
