"""The node agent: a TEE (shim.platform.Platform) and the trusted management agent between
it, its host and the perimeter.

The agent is the only code that installs stream keys in the TEE (shim.management) and
it does so only on the coordinator's word (attested TLS): a key the coordinator derived
for a suspend (released again for one resume of the newest version), or a key agreed by
X25519 with the destination's attested agent for a migration.

The node's host (tvmm.host.node_service, untrusted) is a process of its own, started by
the agent with two local byte channels: on one the host makes its platform calls (the
ABI codec, served here by the TEE), on the other the agent asks it to launch, pause,
export and store, import, and carry a migration stream to the destination's host over
the node's plain "host port".  The agent imports none of the host's code, and believes
nothing the host answers that the TEE can check: which VM it paused is the TEE's freeze,
whether an incoming VM is complete is the TEE's import session, and every bundle is
checked by the TEE.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shim import management
from shim.launch import predict
from shim.platform import Platform
from tvmm.abi import launch_secret
from tvmm.abi.types import Level
from tvmm.guestimage import load_elf
from tvmm.launch_plan import plan_launch
from tvmm.perimeter import wire
from tvmm.perimeter.channel import DEFAULT_LIMITS, Limits, Server, connect
from tvmm.perimeter.checkpoint_file import Checkpoint
from tvmm.perimeter.identity import Identity, Peer, PeerRefused

PRECOPY_ROUNDS = 8
PRECOPY_STOP = 32  # pages: a round this small means stop-and-copy now
HOST_PROCESS = "tvmm.host.node_service"  # run by name: the agent imports none of it
CONSOLE_LIMIT = 64 << 10  # characters of a host's console log the agent passes on


def predicted_digest(elf: bytes, name: str, level: Level, memory: int) -> bytes:
    """The launch digest of ``elf`` launched at ``level`` with ``memory`` by the launch
    plan (what ``tvmm measure`` prints), computed without a VM."""
    with tempfile.NamedTemporaryFile(suffix=".elf", delete=False) as f:
        f.write(elf)
    try:
        image = load_elf(Path(f.name), name)
    finally:
        os.unlink(f.name)
    return predict(plan_launch(image, memory), level).digest


class HostFailed(ValueError):
    """The node's host refused a request or answered what the agent cannot use."""


@dataclass
class Hosted:
    vm: int
    frozen_stream: int | None = None


def _pdeathsig(parent: int) -> None:
    """In the host's child before exec: SIGKILL when the agent dies; an agent that died
    before the request (the child already adopted) ends the child at once."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        return
    if os.getppid() != parent:
        os._exit(1)


class HostLink:
    """The agent's end of the channels to its host process."""

    def __init__(self, bind: str, host_port: int, storage: Path, platform: Platform,
                 limits: Limits) -> None:
        self.platform = platform
        self.lock = threading.Lock()
        self.platform_lock = threading.Lock()
        p_agent, p_host = socket.socketpair()
        c_agent, c_host = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", HOST_PROCESS, "--platform-fd", str(p_host.fileno()),
             "--control-fd", str(c_host.fileno()), "--bind", bind, "--host-port",
             str(host_port), "--storage", str(storage), "--max-frame", str(wire.MAX_FRAME),
             "--part", str(wire.PART), "--deadline", repr(limits.deadline),
             "--max-pending", str(limits.max_pending), "--backoff", repr(limits.backoff),
             "--max-backoff", repr(limits.max_backoff)],
            pass_fds=(p_host.fileno(), c_host.fileno()), stdin=subprocess.DEVNULL,
            preexec_fn=functools.partial(_pdeathsig, os.getpid()))
        p_host.close()
        c_host.close()
        self.platform_sock, self.control = p_agent, c_agent
        threading.Thread(target=self._serve_platform, daemon=True).start()
        hello = wire.recv(self.control)
        self.port = _field(hello, "host_port", int)

    def _serve_platform(self) -> None:
        """The host's platform calls, into the TEE (which checks each one)."""
        while True:
            try:
                msg = wire.recv(self.platform_sock)
                if msg.op != "abi":
                    return
                with self.platform_lock:
                    out = self.platform.handle_bytes(msg.blob)
                wire.send(self.platform_sock, wire.Message("abi", {}, out))
            except (OSError, wire.WireError):
                return

    def call(self, op: str, blob: bytes = b"", **fields: object) -> wire.Message:
        with self.lock:
            wire.send(self.control, wire.Message(op, fields, blob))
            answer = wire.recv(self.control)
        if answer.op != "reply":
            raise HostFailed(f"the host answered {op} with {answer.op}")
        return answer

    def ok(self, op: str, blob: bytes = b"", **fields: object) -> wire.Message:
        answer = self.call(op, blob, **fields)
        if not answer["ok"]:
            raise HostFailed(f"{op}: {answer.fields.get('error', 'refused')}")
        return answer

    def close(self) -> None:
        for s in (self.control, self.platform_sock):
            try:
                s.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _field(answer: wire.Message, name: str, kind: type):
    value = answer.fields.get("data", {}).get(name)
    if type(value) is not kind:
        raise HostFailed(f"the host's answer lacks {name} ({kind.__name__})")
    return value


class Node:
    def __init__(self, name: str, identity: Identity, ark_pem: bytes, *, host: str = "127.0.0.1",
                 port: int = 0, host_port: int = 0, storage: Path | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.name = name
        self.identity = identity
        self.ark = ark_pem
        self.measurement = identity.measurement
        self.platform = Platform()
        self.vms: dict[str, Hosted] = {}
        self.incoming: dict[int, str] = {}  # stream -> VM name, opened for import here
        self.storage = Path(storage) if storage else Path(tempfile.mkdtemp(prefix="tvmm-node-"))
        self.server = Server(identity, self.handle, ark_pem, self.measurement, host, port,
                             limits=limits)
        self.address = self.server.address
        self.host = HostLink(host, host_port, self.storage, self.platform, limits)
        self.host_address = (host, self.host.port)
        self.fault = os.environ.get("TVMM_FAULT_NODE", "")

    def start(self) -> Node:
        self.server.start()
        return self

    def close(self) -> None:
        self.server.close()
        self.host.close()

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
        except (ValueError, KeyError, OSError, PeerRefused, wire.WireError) as exc:
            return wire.reply(False, error=f"{type(exc).__name__}: {exc}", reason="node")

    def _platform_vm(self, answer: wire.Message) -> int:
        vm = _field(answer, "platform_vm", int)
        if vm not in self.platform.tee.vms:
            raise HostFailed(f"the host named VM {vm}, which the TEE does not hold")
        return vm

    def launch(self, msg: wire.Message) -> wire.Message:
        """Wrap the operator's secret to this TEE's launch key, bound to the digest the
        agent predicts for the image the coordinator sent at the asked level and memory:
        the host gets a blob that the TEE releases into that launch only."""
        secret = bytes.fromhex(msg["secret"])
        blob = b""
        if secret:
            digest = predicted_digest(msg.blob, msg["vm"], Level(msg["level"]), msg["memory"])
            blob = launch_secret.wrap(secret, self.platform.launch_public_key, digest)
        answer = self.host.ok("host_launch", msg.blob, vm=msg["vm"], level=msg["level"],
                              memory=msg["memory"], policy=msg["policy"], secret=blob.hex())
        self.vms[msg["vm"]] = Hosted(self._platform_vm(answer))
        return wire.reply(digest=_field(answer, "digest", str))

    def _pause(self, name: str) -> Hosted:
        hosted = self.vms.get(name)
        if hosted is None:
            raise KeyError(f"{name} does not run on {self.name}")
        self.host.ok("host_pause", vm=name)
        return hosted

    def suspend(self, msg: wire.Message) -> wire.Message:
        """Freeze and export under the coordinator's key; the host stores the checkpoint
        (atomically) before the answer, so that a stored checkpoint outlives this node."""
        name, epoch, stream = msg["vm"], msg["epoch"], msg["stream"]
        key = bytes.fromhex(msg["key"])
        if len(key) != 32:
            raise ValueError("a checkpoint key is 32 bytes")
        hosted = self._pause(name)
        tee = self.platform.tee
        management.open_export(tee, hosted.vm, key, stream, name, epoch)
        vm = tee.vms[hosted.vm]
        answer = self.host.call("host_export", vm=name, stream=stream, epoch=epoch,
                                level=vm.level.value, memory=vm.memory.size, policy=vm.policy)
        if not answer["ok"]:
            management.close(tee, stream)
            self.host.call("host_unpause", vm=name)
            raise HostFailed(f"export: {answer.fields.get('error', 'refused')}")
        hosted.frozen_stream = stream
        self.crash_point("suspend_after_export")
        meta = Checkpoint.from_bytes(answer.blob).meta
        if (meta["vm"], meta["epoch"]) != (name, epoch):
            raise HostFailed("the host's checkpoint names another VM or version")
        self.host.ok("host_store", vm=name, name=f"{name}.v{epoch}.ckpt")
        self.crash_point("suspend_after_store")
        return wire.reply(True, answer.blob)

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
            answer = self.host.call("host_import", msg.blob, stream=stream, level=level.value,
                                    memory=msg["memory"], policy=ckpt.meta.get("policy", 0))
            sess = management.state(tee).sessions.get(stream)
            if not answer["ok"] or sess is None or not sess.done or sess.failed:
                return wire.reply(False, error=answer.fields.get(
                    "error", "the stream is not complete"), reason="tee",
                    events=management.drain_events(tee))
            vm = sess.vm
            self.crash_point("resume_after_import")
            management.activate(tee, vm)
        finally:
            management.close(tee, stream)
        # the log is the host's (unauthenticated, bounded by the checkpoint's metadata)
        self.host.ok("host_adopt", vm=name, platform_vm=vm,
                     console=str(ckpt.meta.get("console", "")))
        self.vms[name] = Hosted(vm)
        return wire.reply(events=management.drain_events(tee))

    # -- migration -----------------------------------------------------------------------------------
    def migrate_in(self, msg: wire.Message) -> wire.Message:
        eph = X25519PrivateKey.generate()
        peer_pub = X25519PublicKey.from_public_bytes(bytes.fromhex(msg["pub"]))
        key = _session_key(eph.exchange(peer_pub), msg["vm"], msg["epoch"], msg["stream"])
        management.open_import(self.platform.tee, key, msg["stream"], msg["vm"], msg["epoch"])
        self.incoming[msg["stream"]] = msg["vm"]
        self.host.ok("host_expect", stream=msg["stream"])
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
        tee = self.platform.tee
        management.open_export(tee, hosted.vm, key, stream, name, epoch)
        relay = msg["relay"] or f"{msg['dst_host']}:{msg['dst_host_port']}"
        vm = tee.vms[hosted.vm]
        stats: dict = {"pages": 0, "bytes": 0, "rounds": 0}
        t0 = time.perf_counter()
        paused_at = None
        try:
            opened = self.host.call("host_stream_open", stream=stream, relay=relay, vm=name,
                                    level=vm.level.value, memory=vm.memory.size,
                                    policy=vm.policy)
            if not opened["ok"]:
                return wire.reply(False, reason="stream", error=opened.fields.get("error", ""))
            stats["prepare_ms"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()  # the stream's time starts here

            def pump(final: bool) -> int:
                done = self.host.ok("host_pump", vm=name, stream=stream, final=final)
                stats["bytes"] += _field(done, "bytes", int)
                stats["rounds"] += 1
                return _field(done, "bundles", int)

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
            end = self.host.call("host_stream_end", vm=name, stream=stream)
        except (OSError, wire.WireError, HostFailed) as exc:
            return wire.reply(False, error=f"stream failed: {exc}", reason="stream")
        exporter = management.state(tee).sessions[stream].worker
        stats["pages"] = getattr(exporter, "pages_sent", 0)
        stats["seconds"] = time.perf_counter() - t0
        stats["downtime_ms"] = (time.perf_counter() - paused_at) * 1000 if paused_at else 0.0
        if not end["ok"]:
            return wire.reply(False, error=end.fields.get("error", "destination refused"),
                              reason="stream", **stats)
        return wire.reply(**stats)

    def ready(self, msg: wire.Message) -> wire.Message:
        """Complete means complete in this TEE: the import session took END."""
        events = management.drain_events(self.platform.tee)
        sess = management.state(self.platform.tee).sessions.get(msg["stream"])
        if msg["stream"] not in self.incoming or sess is None or not sess.done or \
                sess.failed or not sess.vm:
            err = sess.failed if sess and sess.failed else "the stream is not complete"
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
                self.host.call("host_stop", vm=name)
                management.destroy_frozen(tee, hosted.vm)
                del self.vms[name]
            else:
                management.thaw(tee, hosted.vm)
                self.host.call("host_unpause", vm=name)
            return wire.reply(role="source")
        sess = management.state(tee).sessions.get(stream)
        if stream in self.incoming and sess is not None and sess.vm_name == name:
            del self.incoming[stream]
            vm, complete = sess.vm, sess.done and not sess.failed
            management.close(tee, stream)
            told = self.host.call("host_console", stream=stream)
            console = str(told.fields.get("data", {}).get("console", ""))
            if commit and complete and vm and management.activate(tee, vm):
                self.host.ok("host_adopt", vm=name, platform_vm=vm, console=console)
                self.vms[name] = Hosted(vm)
            elif vm:
                self.host.call("host_discard", platform_vm=vm)
            return wire.reply(role="destination")
        if hosted is not None and not commit and sess is not None and sess.vm == hosted.vm:
            management.close(tee, stream)  # abort before the freeze: the source never stopped
        return wire.reply(role="none")

    def list(self, msg: wire.Message) -> wire.Message:
        listed = self.host.ok("host_list").fields.get("data", {}).get("vms", [])
        seen = {v.get("vm"): v for v in listed if isinstance(v, dict)}
        out = []
        for name, hosted in self.vms.items():
            entry = seen.get(name, {})
            text = str(entry.get("console", ""))[-CONSOLE_LIMIT:]
            ended = entry.get("ended")
            out.append({"vm": name, "platform_vm": hosted.vm,
                        "frozen": hosted.frozen_stream is not None,
                        "ended": ended if isinstance(ended, str) else None,
                        "console_tail": text[-60:], "console": text})
        return wire.reply(vms=out)

    def wait_ended(self, name: str, timeout: int = 60) -> bool:
        """Until the VM's run ends on the host (False: the timeout passed first)."""
        answer = self.host.call("host_wait", vm=name, timeout=timeout)
        return bool(answer["ok"] and answer.fields.get("data", {}).get("ended"))


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _session_key(shared: bytes, vm: str, epoch: int, stream: int) -> bytes:
    info = f"tvmm-migrate-v1|{vm}|{epoch}|{stream}".encode()
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared)
