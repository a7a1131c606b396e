"""Tampered checkpoints (issue 16, findings 2 and 3; mutant d): a node refuses one without
leaving its TEE session open, so the genuine checkpoint resumes after it; the coordinator
audits an unparseable one and refuses an older version as a rollback."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from shim import management
from tvmm.perimeter import wire
from tvmm.perimeter.checkpoint_file import MAGIC, CheckpointFormatError
from tvmm.perimeter.coordinator import Coordinator, Refused
from tvmm.perimeter.identity import Identity, pinned_ark
from tvmm.perimeter.node import Node
from tvmm.samples import build_sample

KEY = "ab" * 32
STREAM = 41


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("resume-state")


def _tamper_policy(ckpt: bytes) -> bytes:
    (n,) = struct.unpack_from("<I", ckpt, 4)
    meta = json.loads(ckpt[8 : 8 + n])
    raw = json.dumps({**meta, "policy": "x"}).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + ckpt[8 + n :]


def _resume_msg(blob: bytes) -> wire.Message:
    return wire.Message("node_resume", {"vm": "c-1", "epoch": 2, "stream": STREAM,
                                        "key": KEY, "level": "shim", "memory": 4 << 20}, blob)


@pytest.mark.parametrize("tamper", ["policy", "import_crash"])
def test_a_refused_checkpoint_leaves_no_session_behind(
        state: Path, tmp_path: Path, tamper: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tampered, then genuine, on the same node: the genuine one resumes (before, the
    tampered one's TEE session stayed open and the genuine one failed "stream exists")."""
    node = Node("n1", Identity.create("n1", "node", state), pinned_ark(state),
                storage=tmp_path).start()
    try:
        node.launch(wire.Message("node_launch", {"vm": "c-1", "level": "shim",
                                                 "memory": 4 << 20, "secret": "",
                                                 "policy": 0},
                                 build_sample("counter").path.read_bytes()))
        suspended = node.suspend(wire.Message("node_suspend", {
            "vm": "c-1", "epoch": 2, "stream": STREAM, "key": KEY}))
        assert node.finish(wire.Message("node_finish", {"vm": "c-1", "stream": STREAM,
                                                        "commit": True}))["ok"]
        genuine = suspended.blob
        if tamper == "policy":
            with pytest.raises(CheckpointFormatError) as exc:
                node.resume(_resume_msg(_tamper_policy(genuine)))
            assert exc.value.field == "meta.policy"
        else:  # the host's import fails in a way nobody planned for (its channel breaks)
            with monkeypatch.context() as patch:
                call = node.host.call

                def crash(op: str, *args, **kwargs):
                    if op == "host_import":
                        raise OSError("the host's pump broke")
                    return call(op, *args, **kwargs)
                patch.setattr(node.host, "call", crash)
                with pytest.raises(OSError):
                    node.resume(_resume_msg(genuine))
        assert STREAM not in management.state(node.platform.tee).sessions
        assert node.resume(_resume_msg(genuine))["ok"]
        assert node.wait_ended("c-1", 60)
        (listed,) = node.list(wire.Message("node_list", {}))["data"]["vms"]
        assert re.findall(r"count=(\d+)", listed["console"])
    finally:
        node.close()


@pytest.fixture
def coordinator(state: Path, tmp_path: Path):
    coord = Coordinator(tmp_path / "c.db", Identity.create("c", "coordinator", state),
                        pinned_ark(state))
    yield coord
    coord.close()


def _refused(coord: Coordinator, ckpt: bytes) -> tuple[str, dict]:
    with pytest.raises(Refused) as exc:
        coord.resume("n1", ckpt)
    record = coord.store.audit_records()[-1]
    assert record["event"] == "resume_refused"
    return exc.value.reason, record["detail"]


@pytest.mark.parametrize("blob", [b"", b"TVCK", b"garbage", MAGIC + b"\x05\0\0\0[[[[[",
                                  MAGIC + b"\x0c\0\0\0{\"vm\": 1e9}"])
def test_an_unparseable_checkpoint_is_refused_and_audited(coordinator: Coordinator,
                                                          blob: bytes) -> None:
    reason, detail = _refused(coordinator, blob)
    assert reason == detail["reason"] == "malformed" and detail["field"]
    assert coordinator.store.check() == []


def _ckpt(vm: str, epoch: int) -> bytes:
    raw = json.dumps({"vm": vm, "epoch": epoch, "level": "shim", "memory": 4096}).encode()
    return MAGIC + struct.pack("<I", len(raw)) + raw + struct.pack("<I", 1) + b"x"


@pytest.mark.parametrize("consumed", [1, 0])
def test_an_older_version_is_refused_as_a_rollback(coordinator: Coordinator,
                                                   consumed: int) -> None:
    """Version 2 of a VM now suspended at version 3.  Whether or not version 2 was
    resumed, the reason is rollback (without the rollback check a resumed one is
    refused as a clone, and one never resumed would be authorised)."""
    with coordinator.store.txn() as db:
        db.execute("INSERT INTO nodes VALUES ('n1','127.0.0.1',1,2,'b','chip','m',0)")
        db.execute("INSERT INTO vms VALUES ('c-1','counter','shim',4096,NULL,'suspended',3)")
        db.execute("INSERT INTO checkpoints VALUES ('c-1',2,7,?,'committed')", (consumed,))
        db.execute("INSERT INTO checkpoints VALUES ('c-1',3,8,0,'committed')")
    reason, detail = _refused(coordinator, _ckpt("c-1", 2))
    assert reason == detail["reason"] == "rollback"
    assert coordinator.store.query("SELECT state FROM vms")[0][0] == "suspended"
