"""The TEE as a process of its own: the modeled machine behind a byte pipe.

Assembly, as tvmm.machine is: it builds the Platform (shim, tvmm.hw) and the trace
recorder, and serves nothing but bytes.

``python -m tvmm.harness.tee_server FD PARENT`` is started by the harness (tvmm.harness.launcher),
whose pid is PARENT (the TEE dies with it: tvmm.link.lifetime), with one socket, its control link, and whatever descriptors the host's link needs.  The first
control frame configures the TEE (JSON: policy settings, state directory, trace, the
host link's spec, the attack's note pipe); the answer carries the public launch key.

Then the TEE serves the host's link until the host closes it or dies: every frame is a
platform request in the ABI codec, answered by ``Platform.handle_bytes`` — bytes in, bytes
out, nothing else of the TEE reachable.  A frame over the link's limit gets a MALFORMED
reply naming "frame".  With a trace on, the TEE writes it (inside and outside views), and
takes the attack's notes of its own actions from their pipe before each request, so they
land in order with the calls they precede.

When the host is gone, the control link (the judge's alone) asks for the TEE's records of
every VM the run created — detections and kills, kept after DESTROY — has events written
(the run's end, a verdict) and closes the trace.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shim.platform import Platform
from shim.policies.config import from_mapping
from shim.vm import Vm
from tvmm.abi import codec
from tvmm.abi.messages import Reply
from tvmm.abi.trace_events import EventKind, NullRecorder, TraceHeader
from tvmm.abi.types import Result
from tvmm.link import ends, privsep
from tvmm.link.errors import FrameError, LinkError, PeerGone
from tvmm.link.frames import LENGTH, recv_frame, send_frame
from tvmm.link.lifetime import end_with_parent
from tvmm.trace.recorder import TraceRecorder

NOTE_LIMIT = 1 << 20
NOTE_PIPE_SIZE = 1 << 20


def vm_record(vm: Vm) -> dict:
    """What the judge may learn of a VM, as the TEE itself saw it: its policy violations,
    the host requests it refused, how it ended (the guest's exit status), the launch
    digest, what the guest wrote to its console and the input it received."""
    violations = getattr(vm.policies, "violations", None) or []
    io = vm.io
    return {
        "id": vm.id, "level": vm.level.value, "state": vm.state.name,
        "violations": [{"exit_seq": v.exit_seq, "policy": str(v.policy), "why": str(v.why),
                        "response": str(v.response)} for v in violations],
        "kill_reason": int(vm.kill_reason) if vm.kill_reason is not None else None,
        "seq": vm.vcpus[0].seq, "end_detail": vm.end_detail,
        "exit_status": vm.exit_status, "launch_digest": vm.launch_digest.hex(),
        "console": io.console.decode("utf-8", errors="replace"), "console_cut": io.console_cut,
        "inputs": [line.hex() for line in io.inputs], "refusals": list(io.refusals),
        "secret_sha256": io.secret_sha256,
    }


class NotePipe:
    """The attack's notes of its own actions: length-prefixed JSON frames on a pipe."""

    def __init__(self, fd: int, recorder: object) -> None:
        self.fd = fd
        self.recorder = recorder
        self.pending = bytearray()
        os.set_blocking(fd, False)

    def drain(self, *, to_end: bool = False) -> None:
        if to_end:
            os.set_blocking(self.fd, True)
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.pending += chunk
        self._emit()

    def _emit(self) -> None:
        buf = self.pending
        while len(buf) >= LENGTH.size:
            (n,) = LENGTH.unpack_from(buf)
            if n > NOTE_LIMIT:
                self.recorder.emit(EventKind.ATTACK, "malformed note",
                                   outside={"why": f"a note of {n} bytes"})
                buf.clear()
                return
            if len(buf) < LENGTH.size + n:
                return
            raw = bytes(buf[LENGTH.size : LENGTH.size + n])
            del buf[: LENGTH.size + n]
            try:
                note = json.loads(raw)
                action, outside = note["action"], note["outside"]
                if not isinstance(action, str) or not isinstance(outside, dict):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self.recorder.emit(EventKind.ATTACK, "malformed note",
                                   outside={"why": "not a note"})
                continue
            self.recorder.emit(EventKind.ATTACK, action, outside=outside)


class TeeServer:
    def __init__(self, config: dict) -> None:
        policy = config.get("policy")
        self.recorder: object = NullRecorder()
        if config.get("trace"):
            self.recorder = TraceRecorder(config["trace"], TraceHeader(**config["header"]))
        self.platform = Platform(recorder=self.recorder,
                                 policy_config=from_mapping(policy) if policy else None,
                                 state_dir=config.get("state_dir"))
        self.host = ends.server(config["host"])
        notes = config.get("notes_fd")
        self.notes = NotePipe(notes, self.recorder) if notes is not None else None
        self.records: dict[int, dict] = {}  # VMs the run created and destroyed
        self._live: dict[int, Vm] = {}

    def serve_host(self) -> None:
        host, platform, tee, notes = self.host, self.platform, self.platform.tee, self.notes
        malformed = codec.encode(Reply(Result.MALFORMED, operand="frame"))
        next_id, count = tee.next_id, len(tee.vms)
        while True:
            try:
                request = host.recv()
            except FrameError:
                reply = malformed
            except PeerGone:
                break
            else:
                if notes is not None:
                    notes.drain()
                reply = platform.handle_bytes(request)
            if tee.next_id != next_id or len(tee.vms) != count:
                self._track()
                next_id, count = tee.next_id, len(tee.vms)
            try:
                host.send(reply)
            except LinkError:
                break
        host.close()
        if notes is not None:
            notes.drain(to_end=True)

    def _track(self) -> None:
        vms = self.platform.tee.vms
        for vm_id, vm in vms.items():
            self._live.setdefault(vm_id, vm)
        for vm_id in [i for i in self._live if i not in vms]:
            self.records[vm_id] = vm_record(self._live.pop(vm_id))

    def all_records(self) -> list[dict]:
        self._track()
        live = {i: vm_record(vm) for i, vm in self._live.items()}
        return [{**self.records, **live}[i] for i in sorted({*self.records, *live})]

    def control(self, request: dict) -> dict:
        op = request.get("op")
        if op == "records":
            return {"ok": True, "vms": self.all_records()}
        if op == "emit":
            self.recorder.emit(EventKind(request["kind"]), request["name"],
                               inside=request.get("inside"), outside=request.get("outside"))
            return {"ok": True}
        return {"ok": False, "error": f"unknown control request {op!r}"}

    def close(self) -> None:
        self.recorder.close()


def _not_dumpable() -> None:
    """No core dumps, and no /proc/PID/mem for other processes of the same user (root and
    CAP_SYS_PTRACE still can: the model runs every party as one user).  Best effort: a
    system without prctl runs the TEE all the same."""
    try:
        privsep.make_undumpable()
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    end_with_parent(int(argv[1]))
    _not_dumpable()
    control = socket.socket(fileno=int(argv[0]))
    try:
        config = json.loads(recv_frame(control))
        server = TeeServer(config)
    except (LinkError, ValueError, KeyError, TypeError, OSError) as exc:
        try:
            send_frame(control, json.dumps({"ok": False, "error": str(exc)}).encode())
        except LinkError:
            pass
        return 2
    pem = server.platform.launch_public_key.public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    send_frame(control, json.dumps({"ok": True, "launch_public_key": pem.decode(),
                                    "pid": os.getpid()}).encode())
    try:
        server.serve_host()
        while True:
            try:
                request = json.loads(recv_frame(control))
            except (LinkError, ValueError):
                break
            if not isinstance(request, dict):
                send_frame(control, json.dumps({"ok": False, "error": "not a request"}).encode())
                continue
            if request.get("op") == "close":
                server.close()
                send_frame(control, b'{"ok": true}')
                return 0
            send_frame(control, json.dumps(server.control(request)).encode())
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tvmm.harness.tee_server CONTROL_FD PARENT_PID "
                 "(started by tvmm.harness)")
    try:
        sys.exit(main(sys.argv[1:]))
    except PeerGone:  # the launcher has gone (Ctrl-C, a crash): nothing left to serve
        sys.exit(1)
