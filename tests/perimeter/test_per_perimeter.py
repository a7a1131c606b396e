"""The perimeter end to end: coordinator and nodes in-process (real TLS on loopback, one
test), and as separate processes through the CLI (one test)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tvmm.cli import main as cli
from tvmm.host import node_host
from tvmm.operator.client import OperatorClient, PerimeterError
from tvmm.operator.launcher import ROGUE_FILE, Perimeter
from tvmm.perimeter import measure, wire
from tvmm.perimeter.checkpoint_file import Checkpoint
from tvmm.perimeter.coordinator import Coordinator, checkpoint_meta
from tvmm.perimeter.identity import Identity, pinned_ark
from tvmm.perimeter.node import Node
from tvmm.perimeter.store import Store
from tvmm.samples import VICTIMS_DIR, build_sample


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("perimeter-state")


def _counts(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"count=(\d+)", text)]


def _console(node: Node) -> str:
    """The console log of the one VM on ``node``, as its agent lists it."""
    (listed,) = node.list(wire.Message("node_list", {}))["data"]["vms"]
    return listed["console"]


def _measured_from(root: Path) -> str:
    """The measurement a process started from the code tree ``root`` takes."""
    out = subprocess.run([sys.executable, "-c", "from tvmm.perimeter import measure; "
                          "print(measure.measurement().hex())"], cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def test_measurement_is_of_the_code_loaded(tmp_path: Path) -> None:
    """One changed line of trusted code, or of code of ours it imports from outside the
    trusted trees (the owner's verifier), changes the measurement; code no perimeter
    process loads does not."""
    root = tmp_path / "tree"
    for tree in ("tvmm", "shim"):
        shutil.copytree(measure.ROOT / tree, root / tree,
                        ignore=shutil.ignore_patterns("__pycache__"))
    before = _measured_from(root)
    assert before == measure.measurement().hex()
    for rel, measured in (("shim/exit_path.py", True), ("tvmm/owner/verify.py", True),
                          ("tvmm/cli.py", False)):
        path = root / rel
        text = path.read_text()
        path.write_text(text.replace("\n", "  # changed\n", 1))
        assert (_measured_from(root) != before) == measured, rel
        path.write_text(text)


def test_a_perimeter_process_loads_only_measured_code() -> None:
    code = ("import sys; from tvmm.perimeter import service, measure; measure.load(); "
            "print(','.join(measure.unmeasured_loaded()))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(measure.ROOT)})
    assert out.stdout.strip() == ""
    assert "tvmm.owner.verify" in measure.measured_names()  # identity imports it
    # the node's host runs apart (tvmm.host.node_service): none of it is in the agent
    assert not [m for m in measure.measured_names() if m.startswith("tvmm.host")]


def test_a_node_with_one_changed_line_is_refused(state: Path, tmp_path: Path) -> None:
    with Perimeter(state) as per:
        per.start_coordinator(db=tmp_path / "c.db")
        (rogue,) = per.start_nodes(["rogue"], rogue=True)
        tree = per.trees[0]
        assert (tree / ROGUE_FILE).read_text() != (measure.ROOT / ROGUE_FILE).read_text()
        assert rogue.info["registered"] is False and "measurement" in rogue.info["error"]
        audit = OperatorClient(per.address, state).audit()
        refused = [r for r in audit["records"] if r["event"] == "attestation_refused"]
        assert refused and refused[0]["detail"]["reason"] == "measurement"


def test_in_process_perimeter(state: Path, tmp_path: Path) -> None:
    ark = pinned_ark(state)
    cident = Identity.create("c", "coordinator", state)
    coord = Coordinator(tmp_path / "c.db", cident, ark)
    coord.start()
    nodes = [Node(f"n{i}", Identity.create(f"n{i}", "node", state), ark).start()
             for i in (1, 2, 3)]
    try:
        for n in nodes:
            n.register(coord.address)
        op = OperatorClient(coord.address, state)
        image = build_sample("counter").path.read_bytes()
        vm = op.launch(image, "counter", "n1", "shim", 4 << 20, (2000).to_bytes(8, "little"))
        ckpt = op.suspend(vm)
        assert op.resume(ckpt, "n2")["version"] == 2
        stats = op.migrate(vm, "n3", live=True)
        assert stats["node"] == "n3" and stats["rounds"] >= 2
        with pytest.raises(PerimeterError) as exc:
            op.resume(ckpt, "n1")
        assert exc.value.reason == "rollback"
        with pytest.raises(PerimeterError) as exc:
            op.migrate(vm, "n9", live=False)
        assert exc.value.reason == "not_in_perimeter"
        assert nodes[2].wait_ended(vm, 60)
        text = _console(nodes[2])
        assert _counts(text) == list(range(1, 2001))  # no gap, no repeat
        assert not nodes[0].vms and not nodes[1].vms  # the sources are gone
        audit = op.audit()
        assert audit["problems"] == []
        events = [r["event"] for r in audit["records"]]
        for e in ("suspended", "resumed", "migrate_commit",
                  "resume_refused", "migrate_refused"):
            assert e in events
    finally:
        for n in nodes:
            n.close()
        coord.close()
    store = Store(tmp_path / "c.db", cident.chip, cident.measurement)  # reopened: it verifies
    assert store.check() == [] and len(store.audit_records()) >= 10
    store.close()


def test_cli_processes(state: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["--state-dir", str(state), "--json"]

    def run(*argv: str) -> dict:
        code = cli([*argv, *common])
        out = capsys.readouterr().out
        assert code == 0, out
        return json.loads(out)

    up = run("perimeter", "up", "--nodes", "3")
    pids = [p["pid"] for p in up["processes"]]
    assert len(set(pids)) == 4
    try:
        vm = run("vm", "launch", "counter", "--node", "n1", "--count", "100000000")["vm"]
        ck = tmp_path / "ckpt.bin"
        run("vm", "suspend", vm, "--out", str(ck))
        assert run("vm", "resume", str(ck), "--node", "n2")["node"] == "n2"
        moved = run("vm", "migrate", vm, "--to", "n3", "--live")
        assert moved["node"] == "n3" and moved["downtime_ms"] >= 0
        listed = run("vm", "list")["vms"]
        assert [(v["name"], v["node"], v["version"]) for v in listed] == [(vm, "n3", 3)]
        # a guest by path whose secret is declared beside it (guests/victims) launches too
        assert run("vm", "launch", str(VICTIMS_DIR / "scan.c"), "--node", "n1")["vm"]
        assert cli(["vm", "resume", str(ck), "--node", "n1", *common]) == 1
        assert json.loads(capsys.readouterr().out)["reason"] == "rollback"
    finally:
        assert cli(["perimeter", "down", *common]) == 0
        capsys.readouterr()
    # the processes are this test's children: each must exit (reaped, not leaked)
    import os
    import threading

    def reap() -> None:
        for pid in pids:
            os.waitpid(pid, 0)

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    reaper.join(timeout=30)
    assert not reaper.is_alive(), "a perimeter process did not exit"


def test_a_decision_acts_only_on_its_own_stream(state: Path, tmp_path: Path) -> None:
    """A decision re-sent after a coordinator restart names an older stream: it must not
    thaw (or destroy) the copy a later suspend froze."""
    node = Node("n1", Identity.create("n1", "node", state), pinned_ark(state),
                storage=tmp_path).start()
    try:
        image = build_sample("counter").path.read_bytes()
        node.launch(wire.Message("node_launch", {"vm": "c-1", "level": "shim",
                                                 "memory": 4 << 20, "secret": "", "policy": 0},
                                 image))
        answer = node.suspend(wire.Message("node_suspend", {"vm": "c-1", "epoch": 2,
                                                            "stream": 41, "key": "ab" * 32}))
        assert answer["ok"] and (tmp_path / "c-1.v2.ckpt").read_bytes() == answer.blob

        def frozen() -> bool:
            return node.list(wire.Message("node_list", {}))["data"]["vms"][0]["frozen"]

        for commit in (False, True):  # another stream's decision: nothing happens
            stale = node.finish(wire.Message("node_finish", {"vm": "c-1", "stream": 40,
                                                             "commit": commit}))
            assert stale["data"]["role"] == "none" and frozen()
        thawed = node.finish(wire.Message("node_finish", {"vm": "c-1", "stream": 41,
                                                          "commit": False}))
        assert thawed["data"]["role"] == "source" and not frozen()
        with pytest.raises(ValueError):  # a key of the wrong size never reaches the TEE
            node.suspend(wire.Message("node_suspend", {"vm": "c-1", "epoch": 3,
                                                       "stream": 42, "key": "ab" * 16}))
        assert not frozen()
    finally:
        node.close()


def test_a_long_console_log_travels_as_its_tail(state: Path, tmp_path: Path) -> None:
    """The host's log rides in the checkpoint's metadata, a stream's end and a node's
    listing; a guest that printed for long must not make the checkpoint unreadable.  The
    long log reaches the host the way any log does: with a VM it resumes (the metadata
    is the host's, unauthenticated: here it says the VM printed 40,000 lines)."""
    node = Node("n1", Identity.create("n1", "node", state), pinned_ark(state),
                storage=tmp_path).start()
    try:
        node.launch(wire.Message("node_launch", {"vm": "c-1", "level": "shim",
                                                 "memory": 4 << 20, "secret": "", "policy": 0},
                                 build_sample("counter").path.read_bytes()))
        key = "cd" * 32
        first = node.suspend(wire.Message("node_suspend", {"vm": "c-1", "epoch": 2,
                                                           "stream": 7, "key": key}))
        node.finish(wire.Message("node_finish", {"vm": "c-1", "stream": 7, "commit": True}))
        ckpt = Checkpoint.from_bytes(first.blob)
        log = "".join(f"line {i}\n" for i in range(40_000))  # ~430 KB
        long = Checkpoint({**ckpt.meta, "console": log}, ckpt.bundles).to_bytes()
        assert node.resume(wire.Message("node_resume", {
            "vm": "c-1", "epoch": 2, "stream": 7, "key": key, "level": "shim",
            "memory": 4 << 20}, long))["ok"]
        answer = node.suspend(wire.Message("node_suspend", {"vm": "c-1", "epoch": 3,
                                                            "stream": 8, "key": key}))
        meta = checkpoint_meta(answer.blob)  # what the coordinator reads before a resume
        assert meta["vm"] == "c-1" and len(meta["console"]) <= node_host.CONSOLE_TAIL
        assert meta["console"].startswith("line ")  # cut at a line start
        assert "line 39999\n" in meta["console"]  # the end (the guest may print on after it)
        assert Checkpoint.from_bytes(answer.blob).meta == meta
        assert _console(node) == meta["console"]
    finally:
        node.close()


def test_a_checkpoint_larger_than_a_frame_part_travels_split(
        state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Node → coordinator → operator and back: every hop splits the checkpoint into "part"
    frames (PART and the frame limit made small here; nodes split at 32 MiB under a
    64 MiB frame, so a dense guest of any size fits), and the guest counts on across
    suspend/resume without a gap or a repeat."""
    monkeypatch.setattr(wire, "PART", 16 << 10)
    monkeypatch.setattr(wire, "MAX_FRAME", 64 << 10)  # a whole checkpoint would not pass
    ark = pinned_ark(state)
    coord = Coordinator(tmp_path / "c.db", Identity.create("c", "coordinator", state), ark)
    coord.start()
    nodes = [Node(f"n{i}", Identity.create(f"n{i}", "node", state), ark).start()
             for i in (1, 2)]
    try:
        for n in nodes:
            n.register(coord.address)
        op = OperatorClient(coord.address, state)
        image = build_sample("counter").path.read_bytes()
        vm = op.launch(image, "counter", "n1", "shim", 4 << 20, (3000).to_bytes(8, "little"))
        ckpt = op.suspend(vm)
        assert len(ckpt) > 4 * wire.PART  # several parts on every hop
        assert checkpoint_meta(ckpt)["vm"] == vm
        assert op.resume(ckpt, "n2")["version"] == 2
        assert nodes[1].wait_ended(vm, 60)
        assert _counts(_console(nodes[1])) == list(range(1, 3001))
        assert op.audit()["problems"] == []
    finally:
        for n in nodes:
            n.close()
        coord.close()
