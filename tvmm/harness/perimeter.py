"""The judge's perimeter: started for an attack that asks for one, read back by the judge.

A management-interface attack (docs/attacks.md §12) plays the host operator of a
perimeter.  The judge starts that perimeter — a coordinator and the genuine nodes the
attack asks for, real processes (tvmm.operator.launcher) with the coordinator's database
in a directory of the judge's — and hands the attack only what an operator holds: the
coordinator's address, the node names and the state directory its operator credentials
come from.  What the attack does with them (its own rogue nodes, relays, requests) is its
business.

After the attack ends the judge reads the coordinator's audit log over a connection of its
own: the coordinator's attestation (chip chain to the pinned ARK, the measurement of the
perimeter's code, bound to that TLS session's key) is checked first, the log must have
verified in the coordinator (no problems: its keyed chain and sealed state hold), and
every process the judge started must still run — an attack that kills the coordinator or a
node is credited with nothing.  Each refusal in the log (``REFUSALS``) is a refusal of the
run, as the TEE's DENIED records are: "blocked".

Refusals say nothing of the requests that went through, so the judge also replays the
whole log, and the coordinator's VM listing read on the same connection just before it,
against the perimeter's invariants (tvmm.harness.perimeter_invariants: no rollback, no
clone, no VM on a node outside the perimeter, no refused stream committed).  Each breach
is the run's integrity violated: "tampered", whatever was refused besides.
"""

from __future__ import annotations

import re
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tvmm.abi.state_dir import default_state_dir
from tvmm.harness.perimeter_invariants import breaches
from tvmm.operator.client import operator_context
from tvmm.operator.launcher import LaunchError, Perimeter
from tvmm.perimeter import wire
from tvmm.perimeter.identity import PeerRefused, pinned_ark, verify_peer
from tvmm.perimeter.measure import measurement

# The coordinator's audit events that record a request it (or a node's TEE) refused.
REFUSALS = frozenset({"attestation_refused", "register_refused", "launch_refused",
                      "suspend_refused", "resume_refused", "migrate_refused", "tee_refused"})
NODE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,15}")
MAX_NODES = 4
READ_TIMEOUT_S = 60.0
_UNREADABLE = (OSError, PeerRefused, wire.WireError, KeyError, TypeError, ValueError)


@dataclass
class Reading:
    """What the judge read from its perimeter: the refusals and the breaches of its
    invariants, or why it credits none."""

    refusals: list[dict] = field(default_factory=list)
    breaches: list[str] = field(default_factory=list)  # non-empty: integrity violated
    problem: str = ""  # non-empty: the reading is not evidence (the refusals are empty)
    records: int = 0


class JudgePerimeter:
    """One run's perimeter, started on the attack's request (``offer``), read (``read``)
    and stopped (``close``) by the judge."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.per: Perimeter | None = None
        self._work: tempfile.TemporaryDirectory | None = None

    def offer(self, request: dict) -> dict:
        """Start the perimeter the attack asks for ({"nodes": [names]}); what an operator
        holds of it, or {"error": why}."""
        nodes = request.get("nodes") if isinstance(request, dict) else None
        if self.per is not None:
            return {"error": "a run gets one perimeter"}
        if not isinstance(nodes, list) or not 1 <= len(nodes) <= MAX_NODES or len(set(nodes)) \
                != len(nodes) or not all(isinstance(n, str) and NODE_NAME.fullmatch(n)
                                         for n in nodes):
            return {"error": f"nodes: 1 to {MAX_NODES} distinct names of [a-z0-9-]"}
        self._work = tempfile.TemporaryDirectory(prefix="tvmm-judge-perimeter-")
        # node storage and logs in the run's directory: never the user's perimeter's
        self.per = Perimeter(self.state_dir, die_with_parent=True, files=Path(self._work.name))
        try:
            self.per.start_coordinator(db=self._db())
            self.per.start_nodes(list(nodes))
        except LaunchError as exc:
            return {"error": f"the perimeter did not start: {exc}"}
        host, port = self.per.address
        return {"host": host, "port": port, "nodes": nodes, "state_dir": str(self.state_dir),
                "operator_files": operator_files(self.state_dir)}

    def read(self) -> Reading | None:
        """The coordinator's refusals as the judge reads them; None when no perimeter ran."""
        if self.per is None:
            return None
        per = self.per
        if per.coordinator is None:
            return Reading(problem="the perimeter did not start")
        gone = [p.name for p in _processes(per) if p.popen.poll() is not None]
        if gone:
            return self._after_a_kill(gone)
        try:
            return reading(per.address, self.state_dir)
        except _UNREADABLE as exc:
            # A process killed just before the liveness check above can still be exiting
            # then; the failed read is the first sign.  Say which one it was.
            gone = [p.name for p in _processes(per) if _ended(p.popen)]
            if gone:
                return self._after_a_kill(gone)
            return Reading(problem=f"the coordinator's audit could not be read: {exc}")

    def _after_a_kill(self, gone: list[str]) -> Reading:
        """A run that killed part of its perimeter gets no credit for refusals (the kill
        may be what stopped it), but a breach already in the log still counts: killing
        the coordinator must not hide a rollback.  The judge reads the log from the
        coordinator's database (in the judge's own directory), restarting the coordinator
        on it if that was the process killed."""
        problem = f"{', '.join(gone)} did not survive the run"
        per = self.per
        assert per is not None and per.coordinator is not None and self._work is not None
        try:
            if per.coordinator.popen.poll() is not None:
                per.start_coordinator(db=self._db())
            found = reading(per.address, self.state_dir)
        except (LaunchError, *_UNREADABLE) as exc:
            return Reading(problem=f"{problem}; its log could not be read after: {exc}")
        if found.problem:
            return Reading(problem=f"{problem}; {found.problem}", records=found.records)
        return Reading(breaches=found.breaches, problem=problem, records=found.records)

    def _db(self) -> Path:
        """The coordinator's database, in the judge's own directory for the run."""
        assert self._work is not None  # noqa: S101 - set by offer, before any start
        return Path(self._work.name) / "coordinator.db"

    def close(self) -> None:
        if self.per is not None:
            self.per.stop()
        if self._work is not None:
            self._work.cleanup()


def _processes(per: Perimeter) -> tuple:
    """The processes the judge started: the coordinator and the genuine nodes."""
    return (per.coordinator, *per.nodes.values())


def _ended(popen: subprocess.Popen, grace_s: float = 2.0) -> bool:
    try:
        popen.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        return False
    return True


OPERATOR_FILES = ("perimeter_ca/ca.pem", "perimeter_ca/ca_key.pem")


def operator_files(state_dir: Path) -> dict[str, str]:
    """What an operator holds of the perimeter's state directory (the transport CA, which
    proves nothing), as text: a separated host cannot read the directory itself."""
    return {rel: (state_dir / rel).read_text() for rel in OPERATOR_FILES
            if (state_dir / rel).is_file()}


def reading(address: tuple[str, int], state_dir: Path) -> Reading:
    """The judge's reading of the attested coordinator at ``address``: its refusals and
    the breaches of the perimeter's invariants in its verified log and VM listing."""
    records, problems, vms = read_audit(address, state_dir)
    if problems:
        return Reading(problem=f"the coordinator's log does not verify: {problems[0]}",
                       records=len(records))
    refusals = [{**r["detail"], "event": r["event"]} for r in records
                if r["event"] in REFUSALS]
    return Reading(refusals=refusals, breaches=breaches(records, measurement().hex(), vms),
                   records=len(records))


def read_audit(address: tuple[str, int], state_dir: Path
               ) -> tuple[list[dict], list[str], list[dict]]:
    """(the audit records, the problems the coordinator found in its own log, its VM
    listing: asked first, so the log covers every state it shows), over one connection
    whose far end has proved it is a coordinator running the perimeter's code on a chip of
    the pinned manufacturer; PeerRefused when it has not."""
    raw = socket.create_connection(address, timeout=READ_TIMEOUT_S)
    with operator_context(state_dir).wrap_socket(raw) as conn:
        wire.send(conn, wire.Message("evidence"))
        peer = verify_peer(conn, wire.recv(conn), pinned_ark(state_dir), measurement())
        if peer.role != "coordinator":
            raise PeerRefused("role", f"{peer.name} is a {peer.role}, not the coordinator")
        listing = wire.call(conn, wire.Message("vms", {}))
        answer = wire.call(conn, wire.Message("audit", {"limit": 0}))
    if not answer["ok"]:
        raise ValueError(answer.fields.get("error", "refused"))
    problems = [str(p) for p in answer["data"]["problems"]]
    if not listing["ok"] and not problems:  # a refused state: its audit names why
        raise ValueError(listing.fields.get("error", "refused"))
    vms = list(listing["data"]["vms"]) if listing["ok"] else []
    return list(answer["data"]["records"]), problems, vms
