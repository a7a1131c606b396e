"""Fault injection: SIGKILL the source, the destination or the coordinator at a random
point of a migration or of suspend/resume, recover, and check the invariants.

    python -m tvmm_tools.fault_injection --trials 20 --seed 1

Each trial starts a fresh perimeter (coordinator + n1, n2 as processes), launches the
counter guest on n1, and runs one operation with one process told (TVMM_FAULT_NODE /
TVMM_FAULT_COORDINATOR) to kill itself with SIGKILL at one named point.  Then it
restarts what died (the coordinator recovers: every migration left in prepare is
committed if the destination holds the complete VM, else aborted and the source thawed;
a suspend the node never answered is aborted if the node still holds the VM; a restarted
node re-registers with a new TEE, its running VMs are marked lost and a suspend it had
not answered commits the checkpoint prepared for it) and checks:

* at most one runnable copy of the VM exists, and exactly one unless the killed source
  held the VM's only copy in its memory: frozen for a migration's final round
  (migrate_after_freeze_begin) or exported but not yet stored by its host
  (suspend_after_export) — a machine crash, not a protocol failure; the trial reports it
  as "lost".  A source killed once its host stored the checkpoint (suspend_after_store)
  must not lose the VM: the coordinator recorded the checkpoint's key before the export,
  and the operator resumes the stored file;
* the surviving copy counts on without a gap or a repeat up to N (its console, carried
  across nodes, is contiguous; it starts at 1 unless the killed source host took the
  start of the log with it — the guest's state was not lost, the host's log was);
* the coordinator's database is consistent (its seal and counter, the keyed audit chain,
  one place per VM, versions), as the coordinator reports it.

One JSON line per trial and a summary; exit status 1 if any invariant failed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tvmm.abi.state_dir import default_state_dir
from tvmm.operator.client import OperatorClient, PerimeterError
from tvmm.operator.launcher import Perimeter
from tvmm.perimeter import measure, wire
from tvmm.perimeter.channel import connect
from tvmm.perimeter.identity import Identity, pinned_ark
from tvmm.samples import build_sample

POINTS = {
    "migrate": [("coordinator", "migrate_after_prepare"), ("coordinator", "migrate_after_stream"),
                ("coordinator", "migrate_after_decision"), ("src", "migrate_after_freeze_begin"),
                ("src", "migrate_after_stream"), ("dst", "migrate_dst_after_import")],
    "suspend-resume": [("coordinator", "suspend_before_commit"),
                       ("coordinator", "suspend_after_commit"),
                       ("coordinator", "resume_after_authorize"),
                       ("src", "suspend_after_export"), ("src", "suspend_after_store"),
                       ("dst", "resume_after_import")],
}
COUNT = 1500


def _node_vms(auditor: Identity, ark: bytes, info: dict) -> list[dict]:
    try:
        conn, _ = connect(auditor, info["host"], info["port"], ark, auditor.measurement, 20)
    except OSError:
        return []
    with conn:
        return wire.call(conn, wire.Message("node_list", {}))["data"]["vms"]


def trial(state: Path, image: bytes, op_kind: str, who: str, point: str, auditor: Identity,
          ark: bytes) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tvmm-fault-"))
    db = work / "c.db"
    per = Perimeter(state, die_with_parent=True, files=work)  # storage and logs: this trial's
    env_for = {"coordinator": {"TVMM_FAULT_COORDINATOR": point},
               "src": {"TVMM_FAULT_NODE": point}, "dst": {"TVMM_FAULT_NODE": point}}
    out = {"op": op_kind, "killed": who, "point": point}
    try:
        per.start_coordinator(db=db, env=env_for.get("coordinator") if who == "coordinator"
                              else None)
        per.start_nodes(["n1", "n2"], env={"n1": env_for["src"] if who == "src" else {},
                                           "n2": env_for["dst"] if who == "dst" else {}})
        op = OperatorClient(per.address, state, timeout=60)
        vm = op.launch(image, "counter", "n1", "shim", 4 << 20, COUNT.to_bytes(8, "little"))
        try:
            if op_kind == "migrate":
                op.migrate(vm, "n2", live=True)
            else:
                ck = op.suspend(vm)
                op.resume(ck, "n2")
            out["op_result"] = "ok"
        except (PerimeterError, OSError, wire.WireError) as exc:
            out["op_result"] = f"failed: {exc}"[:120]
        procs = {"coordinator": per.coordinator, "src": per.nodes["n1"], "dst": per.nodes["n2"]}
        victim = procs[who]
        try:  # a process that reached its crash point is dying: wait for it
            victim.popen.wait(timeout=5 if out["op_result"] != "ok" else 0.5)
        except subprocess.TimeoutExpired:
            pass
        died = victim.popen.poll() is not None
        out["died"] = died
        if died:  # recovery: restart what was killed
            if who == "coordinator":
                per.start_coordinator(db=db)
            else:
                per.start_node("n1" if who == "src" else "n2")
        if op_kind == "suspend-resume" and out["op_result"] != "ok":
            op = OperatorClient(per.address, state, timeout=60)
            row = next((v for v in op.vms() if v["name"] == vm), None)
            stored = sorted(per.storage("n1").glob(f"{vm}.v*.ckpt"))
            if row and row["state"] == "suspended" and stored:
                try:  # the operator retries the resume from the host's stored copy
                    op.resume(stored[-1].read_bytes(), "n2")
                    out["retried"] = True
                except PerimeterError as exc:
                    out["retried"] = f"refused: {exc}"
        holders = []
        for name in ("n1", "n2"):
            for v in _node_vms(auditor, ark, per.nodes[name].info):
                if v["vm"] == vm and v["ended"] != "stopped" and not v.get("frozen"):
                    holders.append((name, v))
        out["copies"] = [h[0] for h in holders]
        problems = []
        if len(holders) > 1:
            problems.append(f"{len(holders)} copies run")
        lost_ok = died and who == "src" and point.startswith(("migrate_after_freeze",
                                                              "suspend_after_export"))
        if not holders and not lost_ok:
            # the newest committed checkpoint may be all that is left: resume it
            problems.append("no copy runs")
        for _name, v in holders:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and v["ended"] is None:
                v = next(x for x in _node_vms(auditor, ark, per.nodes[_name].info)
                         if x["vm"] == vm)
                if v["ended"] is None:
                    time.sleep(0.05)
            nums = [int(x) for x in re.findall(r"count=(\d+)", v["console"])]
            # the console log is the host's (untrusted, lost with a killed source host):
            # what it shows must be contiguous and reach the end; from 1 unless partial
            if not nums or nums != list(range(nums[0], nums[0] + len(nums))) \
                    or nums[-1] != COUNT:
                problems.append(f"counter went wrong: {nums[:3]}…{nums[-3:]}")
            out["console_from"] = nums[0] if nums else None
        problems += OperatorClient(per.address, state, timeout=60).audit()["problems"]
        out["lost"] = not holders
        out["problems"] = problems
        out["ok"] = not problems
    finally:
        per.stop()
        shutil.rmtree(work, ignore_errors=True)
    return out


def run_trial(state: Path, op_kind: str, who: str, point: str) -> dict:
    """One trial with a fresh perimeter; a harness error fails it."""
    measure.measurement.cache_clear()  # the tree may have changed: measure it again
    try:
        image = build_sample("counter").path.read_bytes()
        auditor = Identity.create("auditor", "coordinator", state)
        return trial(state, image, op_kind, who, point, auditor, pinned_ark(state))
    except Exception as exc:  # noqa: BLE001 - a harness error fails the trial
        return {"op": op_kind, "killed": who, "point": point, "ok": False,
                "problems": [f"{type(exc).__name__}: {exc}"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--state-dir", type=Path, default=None)
    args = p.parse_args(argv)
    state = args.state_dir or default_state_dir()
    rng = random.Random(args.seed)
    failures = 0
    for _ in range(args.trials):
        op_kind = rng.choice(sorted(POINTS))
        who, point = rng.choice(POINTS[op_kind])
        result = run_trial(state, op_kind, who, point)
        failures += not result["ok"]
        print(json.dumps(result), flush=True)
    print(json.dumps({"trials": args.trials, "failures": failures, "seed": args.seed}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
