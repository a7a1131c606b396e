"""The judge reads a perimeter attack's refusals itself (tvmm.harness.perimeter).

The management-interface attacks (checkpoint rollback, clone, rogue migration, stream
replay) score "blocked" in the matrix rows (tests/attacks/test_att_matrix.py), each from
the coordinator's audit log as the judge read it.  Here, the other side: an attack that
only says it was blocked, or asks for a perimeter and has nothing refused, scores ✗; one
whose request was refused and audited, but which then kills the coordinator, is credited
with nothing; a reading that does not come from an attested coordinator is no reading.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tvmm.abi.state_dir import default_state_dir
from tvmm.abi.types import Level
from tvmm.harness.judge import run_attack
from tvmm.harness.perimeter import JudgePerimeter, read_audit, reading
from tvmm.judge import judge
from tvmm.machine import DEFAULT_MEMORY
from tvmm.operator.client import OperatorClient, PerimeterError
from tvmm.operator.launcher import Perimeter
from tvmm.perimeter.coordinator import Coordinator
from tvmm.perimeter.identity import Identity, PeerRefused, pinned_ark
from tvmm.samples import resolve
from tvmm_tools.attacks.base import Outcome, outcome_to_data

ATTACKS = '''
import os
import signal
from pathlib import Path

from tvmm.operator.client import OperatorClient, PerimeterError
from tvmm_tools.attacks.base import Attack, Outcome


def operator(ctx):
    offered = ctx.perimeter(["n1"])
    return OperatorClient((offered["host"], offered["port"]), Path(offered["state_dir"]))


def coordinator_pid():
    """The judge's coordinator: a child of the judge (this process's parent)."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getppid() and b"tvmm.perimeter.service" in argv \\
                and b"coordinator" in argv:
            return int(entry.name)
    raise RuntimeError("no coordinator")


class ClaimsBlocked(Attack):
    name = "claims-blocked"
    summary = "asks for a perimeter, has nothing refused, says it was blocked"
    victims = ("counter",)
    kind = "integrity"

    def run(self, ctx):
        nodes = [n["name"] for n in operator(ctx).nodes()]
        return Outcome(notes={"blocked": True, "detail": f"nodes {nodes}; blocked, it says"})


class KillsCoordinator(Attack):
    name = "kills-coordinator"
    summary = "has a request refused, then kills the coordinator"
    victims = ("counter",)
    kind = "integrity"

    def run(self, ctx):
        op = operator(ctx)
        try:
            op.launch(b"", "counter", "nowhere")
            refused = ""
        except PerimeterError as exc:
            refused = exc.reason
        audited = any(r["event"] == "launch_refused" for r in op.audit()["records"])
        os.kill(coordinator_pid(), signal.SIGKILL)
        return Outcome(notes={"detail": f"refused: {refused}; audited: {audited}"})
'''


@pytest.fixture(scope="module")
def attack_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("perimeter-attacks") / "perimeter_attacks.py"
    path.write_text(ATTACKS)
    return path


def test_saying_blocked_with_nothing_refused_scores_nothing(attack_file: Path):
    verdict = run_attack("claims-blocked", "?", "counter", Level.SHIM, file=attack_file)
    assert "nodes ['n1']" in verdict.detail  # it did get a perimeter, and used it
    reading = verdict.evidence["perimeter"]
    assert reading["problem"] == "" and reading["audit_records"] > 0 and not reading["refusals"]
    assert reading["breaches"] == []  # a genuine perimeter: nothing went through wrongly
    assert verdict.cell == "✗" and not verdict.blocked


def test_a_refusal_is_not_credited_once_the_coordinator_is_killed(attack_file: Path):
    verdict = run_attack("kills-coordinator", "?", "counter", Level.SHIM, file=attack_file)
    assert verdict.detail == "refused: not_in_perimeter; audited: True", verdict.detail
    reading = verdict.evidence["perimeter"]
    assert "coordinator did not survive" in reading["problem"]
    # the judge still read the log (a restarted coordinator on its database): a breach
    # there would count; this run has none, and its refusal is not credited
    assert reading["audit_records"] > 0 and reading["breaches"] == []
    assert verdict.cell == "✗" and not verdict.blocked


def test_the_judge_reads_refusals_only_from_an_attested_coordinator():
    fence = JudgePerimeter()
    try:
        assert "error" in fence.offer({"nodes": ["../n1"]}) and fence.per is None
        offered = fence.offer({"nodes": ["n1"]})
        assert "error" in fence.offer({"nodes": ["n2"]})  # one perimeter per run
        assert fence.read().refusals == []
        op = OperatorClient((offered["host"], offered["port"]), Path(offered["state_dir"]))
        with pytest.raises(PerimeterError):
            op.launch(b"", "counter", "nowhere")
        assert [r["event"] for r in fence.read().refusals] == ["launch_refused"]
        node = fence.per.nodes["n1"].info
        with pytest.raises((PeerRefused, ValueError)):  # a node is not the coordinator
            read_audit((node["host"], node["port"]), fence.state_dir)
        fence.per.nodes["n1"].popen.kill()
        fence.per.nodes["n1"].popen.wait()
        gone = fence.read()
        assert gone.refusals == [] and "n1 did not survive" in gone.problem
    finally:
        fence.close()


class Forgetful(Coordinator):
    """A test double: a coordinator whose resume checks only that the checkpoint exists
    (its rollback and clone checks removed), running the perimeter's code otherwise."""

    @staticmethod
    def _resume_refusal(vm: str, epoch: int, row: tuple | None, ck: tuple | None
                        ) -> tuple[str, str]:
        reason, message = Coordinator._resume_refusal(vm, epoch, row, ck)
        return (reason, message) if reason == "unknown" else ("", "")


def test_a_rollback_that_goes_through_beside_a_refusal_scores_tampered(tmp_path: Path):
    """End to end on real nodes: the weakened coordinator resumes an older checkpoint, and
    a launch onto no node is refused in the same run; the judge's reading of its verified
    log names the rollback, and the verdict is "tampered", not "blocked"."""
    state = default_state_dir()
    coordinator = Forgetful(tmp_path / "coordinator.db",
                            Identity.create("forgetful", "coordinator", state),
                            pinned_ark(state)).start()
    nodes = Perimeter(state, die_with_parent=True, joins=coordinator.address,
                      files=tmp_path)
    try:
        nodes.start_nodes(["n1", "n2"])
        op = OperatorClient(coordinator.address, state)
        image, _ = resolve("counter")
        vm = op.launch(image.path.read_bytes(), "counter", "n1", "shim", DEFAULT_MEMORY,
                       (10**9).to_bytes(8, "little"))
        old = op.suspend(vm)
        op.resume(old, "n2")
        op.suspend(vm)  # version 3: the old checkpoint is stale
        with pytest.raises(PerimeterError):
            op.launch(b"", "counter", "nowhere")  # the trivial refusal
        assert op.resume(old, "n1")["version"] == 2  # the rollback goes through
        read = reading(coordinator.address, state)
    finally:
        nodes.stop()
        coordinator.close()
    assert read.problem == "" and [r["event"] for r in read.refusals] == ["launch_refused"]
    assert any("(rollback)" in b for b in read.breaches), read.breaches
    verdict = judge("checkpoint-rollback", "integrity", "counter", Level.SHIM, b"\x01" * 8,
                    outcome_to_data(Outcome(notes={"detail": "old checkpoint RESUMED"})),
                    [], 1.0, perimeter=read)
    assert verdict.cell == "tampered" and verdict.blocked
