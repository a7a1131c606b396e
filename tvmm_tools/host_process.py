"""UNTRUSTED: the host's process — the honest hypervisor or an attack, and nothing else.

Started by the harness (tvmm.harness) as ``python -m tvmm_tools.host_process FD PARENT``: FD is
its message link to the launcher (the judge, for an attack), PARENT the launcher's pid (the
host dies with it: tvmm.link.lifetime).  The first frame is the job (JSON):
the spec of its link to the TEE's process, the victim's public image (its bytes: a host
separated by tvmm.link.privsep reads none of the launcher's directories), level, memory,
the owner's opaque wrapped secret, the public random stream's seed, an optional pipe for
trace notes, and what to run.  Everything the host learns afterwards comes over those
links: platform replies from the TEE, owner answers from the launcher.

Frames on the message link start with a tag byte:

    host → launcher                          launcher → host
    "O" ‖ message   for the guest's owner    "O" ‖ answer   ("X": no owner link)
    "P" ‖ JSON      a perimeter, please      "P" ‖ JSON     what an operator holds of it
    "C" ‖ text      console output (boot)    —
    "R" ‖ JSON      the result, last         —
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import traceback
from pathlib import Path

from tvmm.abi.types import Level
from tvmm.guestimage import load_elf
from tvmm.host.client import PlatformClient, bytes_transport
from tvmm.host.devices import BlockDevice, Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.link import ends
from tvmm.link.errors import LinkError, PeerGone
from tvmm.link.frames import LENGTH, recv_frame, send_frame
from tvmm.link.lifetime import end_with_parent
from tvmm_tools.attacks import load_file, registry
from tvmm_tools.attacks.base import (
    Attack,
    AttackContext,
    jsonable,
    launch_secrets_from,
    outcome_to_data,
)
from tvmm_tools.benign import BENIGN


class Launcher:
    """The message link to the launcher: owner relay, console, the result."""

    def __init__(self, sock: socket.socket, own: Path | None = None) -> None:
        self.sock = sock
        self.own = own  # this process's private directory (files handed over as bytes)

    def owner(self, message: bytes) -> bytes:
        send_frame(self.sock, b"O" + message)
        answer = recv_frame(self.sock)
        if answer[:1] != b"O":
            raise LinkError("the owner link is closed")
        return answer[1:]

    def perimeter(self, nodes: list[str]) -> dict:
        """Ask the judge for a perimeter with these genuine nodes: {host, port, nodes,
        state_dir} (what an operator holds), or {"error": why}."""
        send_frame(self.sock, b"P" + json.dumps({"nodes": nodes}).encode())
        answer = recv_frame(self.sock)
        if answer[:1] != b"P":
            raise LinkError("the perimeter request was not answered")
        offered = json.loads(answer[1:])
        files = offered.pop("operator_files", None)
        if isinstance(files, dict) and self.own is not None:
            # The operator's files, handed over: the judge's state directory may be out
            # of this process's reach (tvmm.link.privsep); this copy is the operator's own.
            state = self.own / "operator-state"
            for rel, text in files.items():
                path = state / rel
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                path.write_text(text)
            offered["state_dir"] = str(state)
        return offered

    def console(self, data: bytes) -> None:
        send_frame(self.sock, b"C" + data)  # the guest's bytes: the launcher decodes

    def result(self, data: dict) -> None:
        send_frame(self.sock, b"R" + json.dumps(data).encode())


class NoteWriter:
    """record(action, **outside): one JSON frame per note on the TEE's note pipe."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __call__(self, action: str, **outside: object) -> None:
        if self.fd is None:
            return
        body = json.dumps({"action": action, "outside": jsonable(outside)}).encode()
        os.write(self.fd, LENGTH.pack(len(body)) + body)


def take_files(job: dict, own: Path) -> dict:
    """The job with the files it carries as bytes (the victim's image, its source and
    declaration, a user's attack file) written to ``own`` and named by path there, as a job naming paths reads."""
    job = dict(job)
    if job.get("image_data"):
        path = own / (Path(job["image"]).name or "guest.elf")
        path.write_bytes(base64.b64decode(job.pop("image_data")))
        job["image"] = str(path)
    for key, data_key, folder in (("guest", "guest_data", "victim"),  # source, declaration
                                  ("file", "file_data", "attack")):  # a file, its neighbours
        if job.get(data_key):
            where = own / folder
            where.mkdir()
            for name, data in job.pop(data_key).items():
                (where / Path(name).name).write_bytes(base64.b64decode(data))
            job[key] = str(where / Path(job[key]).name)
    return job


def attack_named(job: dict) -> Attack:
    """The registered attack of that name, or the one in the user's file (its first if the
    name is not there): a user's file is loaded here, never in the judge's process."""
    if job.get("file"):
        classes = load_file(job["file"])
        return next((c for c in classes if c.name == job.get("attack")), classes[0])()
    return {**registry(), **BENIGN}[job["attack"]]()


def run_boot(job: dict, client: PlatformClient, link: Launcher) -> dict:
    image = load_elf(Path(job["image"]), job["guest"])
    devices = Devices(Console(raw_sink=link.console if job.get("live") else None),
                      BlockDevice(Path(job["disk"]) if job.get("disk") else None),
                      InputDevice(job.get("input", [])),
                      owner=link.owner if job.get("owner") else None,
                      receipt=bytes.fromhex(job["receipt"]) if job.get("receipt") else None)
    host = HonestHypervisor(client, devices, quantum=job.get("quantum", 0),
                            tick_vector=job.get("tick_vector"))
    options = {} if job.get("guest_policy") is None else {"policy": job["guest_policy"]}
    digest = host.launch(image, Level(job["level"]), job["memory"],
                         secret_blob=bytes.fromhex(job.get("secret_blob", "")), **options)
    result = host.run(max_exits=job.get("max_exits"))
    return {"vm": host.vm, "how": result.how, "status": result.status,
            "exits": dict(result.exits), "wall_s": result.wall_s, "retired": result.retired,
            "entries": result.entries, "detail": result.detail, "launch_digest": digest.hex(),
            "console": devices.console.text}


def run_attack(job: dict, client: PlatformClient, link: Launcher, notes: NoteWriter) -> dict:
    attack = attack_named(job)
    receipt = bytes.fromhex(job["receipt"]) if job.get("receipt") else None
    ctx = AttackContext(
        client=client, image=load_elf(Path(job["image"]), job["guest"]), guest=job["guest"],
        level=Level(job["level"]), rng=random.Random(job["rng_seed"]), memory=job["memory"],
        secret_blob=b"", record=notes,
        devices=lambda: Devices(Console(), BlockDevice(None), InputDevice(), receipt=receipt),
        owner=link.owner, launch_secret=launch_secrets_from(link.owner, notes),
        receipt=receipt, perimeter=link.perimeter)
    return {**outcome_to_data(attack.run(ctx)), "attack": attack.name, "kind": attack.kind}


def main(argv: list[str]) -> int:
    end_with_parent(int(argv[1]))
    own = Path(tempfile.mkdtemp(prefix="tvmm-host-"))
    try:
        return serve(Launcher(socket.socket(fileno=int(argv[0])), own), own)
    finally:
        shutil.rmtree(own, ignore_errors=True)


def serve(link: Launcher, own: Path) -> int:
    job = json.loads(recv_frame(link.sock))
    notes = NoteWriter(job.get("notes_fd"))
    tee = ends.client(job["tee"])
    client = PlatformClient(bytes_transport(tee.call))
    try:
        job = take_files(job, own)
        if job["job"] == "boot":
            data = run_boot(job, client, link)
        else:
            data = run_attack(job, client, link, notes)
    except Exception as exc:  # noqa: BLE001 - an attack's crash is its result
        data = {"error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(limit=8)}
    tee.close()
    if notes.fd is not None:
        os.close(notes.fd)
    link.result(data)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tvmm_tools.host_process LINK_FD PARENT_PID "
                 "(started by tvmm.harness)")
    try:
        sys.exit(main(sys.argv[1:]))
    except PeerGone:  # the launcher has gone (Ctrl-C, a crash): nothing left to serve
        sys.exit(1)
