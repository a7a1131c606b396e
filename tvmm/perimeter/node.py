"""The node agent: a TEE (shim.platform.Platform), its honest host, and the trusted
management agent between them and the perimeter.

The agent is the only code that installs stream keys in the TEE (shim.management) and
it does so only on the coordinator's word (attested TLS): a fresh random key for a
suspend (handed to the coordinator, which releases it for one resume of the newest
version), or a key agreed by X25519 with the destination's attested agent for a
migration.  The host part (tvmm.host.node_host, untrusted: it shares the process, as a
node's host VMM shares its machine with the TEE, and nothing the agent trusts comes from
it) runs the VMs and moves the bundles — over the node's plain "host port" from one host
to the next.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shim import management
from shim.platform import Platform
from tvmm.abi import launch_secret
from tvmm.abi.types import Level
from tvmm.guestimage import load_elf
from tvmm.host import node_host
from tvmm.host.client import HostCallError, PlatformClient
from tvmm.host.devices import Console
from tvmm.host.hypervisor import Devices
from tvmm.perimeter import wire
from tvmm.perimeter.channel import DEFAULT_LIMITS, Acceptor, Limits, Server, Ticket, connect
from tvmm.perimeter.checkpoint_file import Checkpoint
from tvmm.perimeter.identity import Identity, Peer, PeerRefused

PRECOPY_ROUNDS = 8
PRECOPY_STOP = 32  # pages: a round this small means stop-and-copy now


@dataclass
class Hosted:
    vm: int
    host: node_host.PausableHost
    runner: node_host.VmRunner | None = None
    frozen_stream: int | None = None


@dataclass
class Incoming:
    vm: int = 0
    state: bytes = b""
    console: str = ""
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class Node:
    def __init__(self, name: str, identity: Identity, ark_pem: bytes, *, host: str = "127.0.0.1",
                 port: int = 0, host_port: int = 0, storage: Path | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.name = name
        self.identity = identity
        self.ark = ark_pem
        self.measurement = identity.measurement
        self.platform = Platform()
        lock = threading.RLock()

        def transport(request: object):
            with lock:
                return self.platform.handle(request)

        self.client = PlatformClient(transport)
        self.vms: dict[str, Hosted] = {}
        self.incoming: dict[int, Incoming] = {}
        self.storage = Path(storage) if storage else Path(tempfile.mkdtemp(prefix="tvmm-node-"))
        self.server = Server(identity, self.handle, ark_pem, self.measurement, host, port,
                             limits=limits)
        self.address = self.server.address
        self.host_sock = socket.create_server((host, host_port))
        self.host_address = self.host_sock.getsockname()[:2]
        self.host_acceptor: Acceptor | None = None
        self.limits = limits
        self.fault = os.environ.get("TVMM_FAULT_NODE", "")
        self._closed = False

    def start(self) -> Node:
        self.server.start()
        self.host_acceptor = Acceptor(self.host_sock, self._host_stream, self.limits).start()
        return self

    def close(self) -> None:
        self._closed = True
        self.server.close()
        if self.host_acceptor is not None:
            self.host_acceptor.close()
        else:
            self.host_sock.close()
        for hosted in self.vms.values():
            hosted.host.stop()

    def crash_point(self, name: str) -> None:
        if self.fault == name:
            os.kill(os.getpid(), 9)

    def register(self, coordinator: tuple[str, int], advertise: str = "127.0.0.1") -> None:
        conn, peer = connect(self.identity, coordinator[0], coordinator[1], self.ark,
                             self.measurement)
        with conn:
            if peer.role != "coordinator":
                raise PeerRefused("role", f"{peer.name} is not a coordinator")
            answer = wire.call(conn, wire.Message("register", {
                "name": self.name, "host": advertise, "port": self.address[1],
                "host_port": self.host_address[1]}))
        if not answer["ok"]:
            raise PeerRefused(answer.fields.get("reason", "refused"), answer["error"])

    # -- the agent ---------------------------------------------------------------------------------
    def handle(self, peer: Peer | None, msg: wire.Message, conn) -> wire.Message:
        if peer is None:
            return wire.reply(False, error="the agent serves attested peers only",
                              reason="not_attested")
        op = msg.op
        try:
            if peer.role == "coordinator":
                handler = {"node_launch": self.launch, "node_suspend": self.suspend,
                           "node_resume": self.resume, "node_migrate_out": self.migrate_out,
                           "node_ready": self.ready, "node_finish": self.finish,
                           "node_list": self.list}.get(op)
            elif peer.role == "node" and op == "peer_migrate_in":
                handler = self.migrate_in
            else:
                handler = None
            if handler is None:
                return wire.reply(False, error=f"{op} is not for {peer.role}s",
                                  reason="unknown")
            return handler(msg)
        except (HostCallError, ValueError, KeyError, OSError, PeerRefused) as exc:
            return wire.reply(False, error=f"{type(exc).__name__}: {exc}", reason="node")

    def _start(self, name: str, hosted: Hosted) -> None:
        hosted.runner = node_host.VmRunner(hosted.host).start()
        self.vms[name] = hosted

    def _adopt(self, name: str, vm: int, state: bytes, console: str) -> None:
        """Run an imported VM (resumed, or migrated in) under a fresh honest host that
        carries the VM's console log on."""
        host = node_host.PausableHost(self.client, Devices(Console()))
        host.devices.console.write(console.encode())
        host.vm, host.state = vm, state
        self._start(name, Hosted(vm, host))

    def launch(self, msg: wire.Message) -> wire.Message:
        with tempfile.NamedTemporaryFile(suffix=".elf", delete=False) as f:
            f.write(msg.blob)
        image = load_elf(Path(f.name), msg["vm"])
        os.unlink(f.name)
        secret = bytes.fromhex(msg["secret"])
        blob = launch_secret.wrap(secret, self.platform.launch_public_key) if secret else b""
        host = node_host.PausableHost(self.client, Devices())
        digest = host.launch(image, Level(msg["level"]), msg["memory"], secret_blob=blob,
                             policy=msg["policy"])
        self._start(msg["vm"], Hosted(host.vm, host))
        return wire.reply(digest=digest.hex())

    def _pause(self, name: str) -> Hosted:
        hosted = self.vms.get(name)
        if hosted is None:
            raise KeyError(f"{name} does not run on {self.name}")
        if not hosted.host.pause():
            hosted.host.resume()
            raise ValueError(f"{name} did not stop within the timeout")
        return hosted

    def suspend(self, msg: wire.Message) -> wire.Message:
        """Freeze and export under the coordinator's key; the host stores the checkpoint
        (atomically) before the answer, so that a stored checkpoint outlives this node."""
        name, epoch, stream = msg["vm"], msg["epoch"], msg["stream"]
        key = bytes.fromhex(msg["key"])
        if len(key) != 32:
            raise ValueError("a checkpoint key is 32 bytes")
        hosted = self._pause(name)
        management.open_export(self.platform.tee, hosted.vm, key, stream, name, epoch)
        try:
            bundles = list(node_host.export_round(self.client, hosted.vm, stream, True))
        except HostCallError:
            management.close(self.platform.tee, stream)
            hosted.host.resume()
            raise
        hosted.frozen_stream = stream
        self.crash_point("suspend_after_export")
        vm = self.platform.tee.vms[hosted.vm]
        ckpt = Checkpoint({"vm": name, "epoch": epoch, "level": vm.level.value,
                           "memory": vm.memory.size, "policy": vm.policy,
                           "console": node_host.console_tail(
                               hosted.host.devices.console.text)}, bundles)
        data = ckpt.to_bytes()
        node_host.store_checkpoint(self.storage / f"{name}.v{epoch}.ckpt", data)
        self.crash_point("suspend_after_store")
        return wire.reply(True, data)

    def resume(self, msg: wire.Message) -> wire.Message:
        """Import a checkpoint under the coordinator's key.  Everything the import needs is
        checked before the TEE session opens (the file's metadata by its parser, the level,
        the key), and the session is closed however the import ends: a session left open
        would refuse the genuine checkpoint ("stream exists") until the node restarts."""
        name, epoch, stream = msg["vm"], msg["epoch"], msg["stream"]
        ckpt = Checkpoint.from_bytes(msg.blob)
        level = Level(msg["level"])
        key = bytes.fromhex(msg["key"])
        if len(key) != 32:
            raise ValueError("a checkpoint key is 32 bytes")
        tee = self.platform.tee
        management.open_import(tee, key, stream, name, epoch)
        try:
            vm, state = node_host.import_stream(self.client, stream, level, msg["memory"],
                                                ckpt.bundles, ckpt.meta.get("policy", 0))
            self.crash_point("resume_after_import")
            management.activate(tee, vm)
        except HostCallError as exc:
            return wire.reply(False, error=str(exc), reason="tee",
                              events=management.drain_events(tee))
        finally:
            management.close(tee, stream)
        self._adopt(name, vm, state, ckpt.meta.get("console", ""))
        return wire.reply(events=management.drain_events(tee))

    # -- migration -----------------------------------------------------------------------------------
    def migrate_in(self, msg: wire.Message) -> wire.Message:
        eph = X25519PrivateKey.generate()
        peer_pub = X25519PublicKey.from_public_bytes(bytes.fromhex(msg["pub"]))
        key = _session_key(eph.exchange(peer_pub), msg["vm"], msg["epoch"], msg["stream"])
        management.open_import(self.platform.tee, key, msg["stream"], msg["vm"], msg["epoch"])
        self.incoming[msg["stream"]] = Incoming()
        return wire.reply(pub=_raw(eph.public_key()).hex())

    def migrate_out(self, msg: wire.Message) -> wire.Message:
        name, epoch, stream = msg["vm"], msg["epoch"], msg["stream"]
        hosted = self.vms.get(name)
        if hosted is None:
            raise KeyError(f"{name} does not run on {self.name}")
        conn, peer = connect(self.identity, msg["dst_host"], msg["dst_port"], self.ark,
                             self.measurement)
        with conn:
            if peer.role != "node" or peer.name != msg["dst"] or \
                    peer.binding != msg["dst_binding"]:
                raise PeerRefused("identity", f"{peer.name} is not the authorised {msg['dst']}")
            eph = X25519PrivateKey.generate()
            answer = wire.call(conn, wire.Message("peer_migrate_in", {
                "vm": name, "epoch": epoch, "stream": stream,
                "pub": _raw(eph.public_key()).hex()}))
        if not answer["ok"]:
            raise PeerRefused("destination", answer.fields.get("error", ""))
        peer_pub = X25519PublicKey.from_public_bytes(bytes.fromhex(answer["data"]["pub"]))
        key = _session_key(eph.exchange(peer_pub), name, epoch, stream)
        management.open_export(self.platform.tee, hosted.vm, key, stream, name, epoch)
        relay = msg["relay"] or f"{msg['dst_host']}:{msg['dst_host_port']}"
        rhost, rport = relay.rsplit(":", 1)
        vm = self.platform.tee.vms[hosted.vm]
        stats: dict = {"pages": 0, "bytes": 0, "rounds": 0}
        t0 = time.perf_counter()
        paused_at = None
        try:
            with socket.create_connection((rhost, int(rport)), timeout=120) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                wire.send(s, wire.Message("stream_begin", {
                    "stream": stream, "vm": name, "level": vm.level.value,
                    "memory": vm.memory.size, "policy": vm.policy}))
                ready = wire.recv(s)  # the destination has prepared the empty VM
                if ready.op != "reply" or not ready["ok"]:
                    return wire.reply(False, reason="stream", error="destination host: "
                                      f"{ready.fields.get('error', ready.op)}")
                stats["prepare_ms"] = (time.perf_counter() - t0) * 1000
                t0 = time.perf_counter()  # the stream's time starts here

                def pump(final: bool) -> int:
                    n = 0
                    for bundle in node_host.export_round(self.client, hosted.vm, stream, final):
                        wire.send(s, wire.Message("bundle", {}, bundle))
                        stats["bytes"] += len(bundle)
                        n += 1
                    stats["rounds"] += 1
                    return n

                if msg["live"]:
                    for _ in range(PRECOPY_ROUNDS):
                        if pump(False) <= PRECOPY_STOP // 256 + 1 and stats["rounds"] > 1:
                            break
                paused_at = time.perf_counter()
                self._pause(name)
                self.crash_point("migrate_after_freeze_begin")
                pump(True)
                hosted.frozen_stream = stream
                self.crash_point("migrate_after_stream")
                wire.send(s, wire.Message("stream_end",
                                          {"console": node_host.console_tail(
                                              hosted.host.devices.console.text)}))
                done = wire.recv(s)
        except (OSError, wire.WireError, HostCallError) as exc:
            return wire.reply(False, error=f"stream failed: {exc}", reason="stream")
        exporter = management.state(self.platform.tee).sessions[stream].worker
        stats["pages"] = getattr(exporter, "pages_sent", 0)
        stats["seconds"] = time.perf_counter() - t0
        stats["downtime_ms"] = (time.perf_counter() - paused_at) * 1000 if paused_at else 0.0
        if not done.fields.get("ok"):
            return wire.reply(False, error=f"destination refused: {done.fields.get('error')}",
                              reason="stream", **stats)
        return wire.reply(**stats)

    def ready(self, msg: wire.Message) -> wire.Message:
        inc = self.incoming.get(msg["stream"])
        events = management.drain_events(self.platform.tee)
        if inc is None or not inc.done.is_set() or inc.error or not inc.vm:
            err = inc.error if inc and inc.error else "the stream is not complete"
            return wire.reply(False, error=err, reason="not_ready", events=events)
        return wire.reply(events=events)

    def finish(self, msg: wire.Message) -> wire.Message:
        """The coordinator's decision about one stream: a copy this node holds for another
        stream (an older suspend, a migration decided long ago) is never touched."""
        name, stream, commit = msg["vm"], msg["stream"], msg["commit"]
        tee = self.platform.tee
        hosted = self.vms.get(name)
        if hosted is not None and hosted.frozen_stream == stream:
            hosted.frozen_stream = None
            management.close(tee, stream)
            if commit:
                hosted.host.stop()
                management.destroy_frozen(tee, hosted.vm)
                del self.vms[name]
            else:
                management.thaw(tee, hosted.vm)
                hosted.host.resume()
            return wire.reply(role="source")
        inc = self.incoming.get(stream)
        sess = management.state(tee).sessions.get(stream)
        if inc is not None and sess is not None and sess.vm_name == name:
            del self.incoming[stream]
            management.close(tee, stream)
            if commit and inc.vm and management.activate(tee, inc.vm):
                self._adopt(name, inc.vm, inc.state, inc.console)
            elif inc.vm:
                try:
                    self.client.destroy(inc.vm)
                except HostCallError:
                    pass
            return wire.reply(role="destination")
        if hosted is not None and not commit and sess is not None and sess.vm == hosted.vm:
            management.close(tee, stream)  # abort before the freeze: the source never stopped
        return wire.reply(role="none")

    def list(self, msg: wire.Message) -> wire.Message:
        out = []
        for name, hosted in self.vms.items():
            text = node_host.console_tail(hosted.host.devices.console.text)
            out.append({"vm": name, "platform_vm": hosted.vm,
                        "frozen": hosted.frozen_stream is not None,
                        "ended": hosted.runner.ended if hosted.runner else None,
                        "console_tail": text[-60:], "console": text})
        return wire.reply(vms=out)

    # -- the host port (untrusted side: it only moves bundles into IMPORT_VM) -------------------
    def _host_stream(self, ticket: Ticket) -> None:
        """stream_begin (within the listener's deadline) → the empty VM is created (its
        memory backed) and the source told to go on → bundles into IMPORT_VM →
        stream_end → the outcome.  The acceptor closes the connection."""
        conn = ticket.sock
        try:
            begin = wire.recv(conn)
            if begin.op != "stream_begin":
                raise wire.WireError("op", "expected stream_begin")
            stream = begin["stream"]
            inc = self.incoming.get(stream)
            if inc is None:
                wire.send(conn, wire.reply(False, error="no migration expected for "
                                           f"stream {stream}"))
                return
            ticket.admitted()  # a stream an agent expects: no deadline from now on
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
                try:
                    msg = wire.recv(conn)
                except ConnectionError:
                    if inc.vm and not error:
                        inc.done.set()  # END arrived: the VM is complete here
                    raise
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


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _session_key(shared: bytes, vm: str, epoch: int, stream: int) -> bytes:
    info = f"tvmm-migrate-v1|{vm}|{epoch}|{stream}".encode()
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared)
