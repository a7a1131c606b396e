"""The perimeter's invariants, checked by the judge from the coordinator's own records.

A refusal in the audit log says the perimeter refused one request; it says nothing of the
requests that went through.  An attack that has one trivial request refused and then
achieves a real breach must not score "blocked", so the judge replays the whole verified
log (every VM's life as the coordinator decided it) and names every decision that breaks
what the perimeter promises:

- a resume is of the VM's newest version, and only of a suspended VM (no rollback);
- one checkpoint is resumed at most once (a failed resume gives it back), and a VM
  identity is placed on one node at a time (no clone);
- every node a VM is launched, resumed or migrated onto was, at that moment, registered
  with the perimeter's own measurement (no VM outside the perimeter);
- a migration commits only a stream its destination TEE did not refuse, from the node
  the VM ran on, at a newer version (no replayed or forged stream accepted);
- the coordinator's state (its VM listing, read before the log) holds no VM, version or
  node the log never recorded.

Each breach is one line; any breach makes the run's integrity violated ("tampered"),
whatever else was refused.  Pure functions over records: the caller reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_PREFIX = 16  # hex digits of a node's measurement the log must carry to count


@dataclass
class _Vm:
    state: str = "launching"
    node: str | None = None
    version: int = 1  # the newest version the coordinator committed (suspend or migration)
    consumed: set[int] = field(default_factory=set)  # checkpoint versions resumed
    migration: dict | None = None  # the open one: {src, dst, epoch, refused}


@dataclass
class Replay:
    """The log replayed: each VM's state as its records leave it, and the breaches."""

    measurement: str  # hex of the perimeter's measurement (node_registered logs a prefix)
    members: dict[str, bool] = field(default_factory=dict)  # node -> genuine measurement
    vms: dict[str, _Vm] = field(default_factory=dict)
    breaches: list[str] = field(default_factory=list)

    def breach(self, rec: dict, what: str) -> None:
        self.breaches.append(f"#{rec.get('seq', '?')} {rec['event']}: {what}")

    def placed(self, rec: dict, vm: str, node: object) -> None:
        if not self.members.get(str(node), False):
            self.breach(rec, f"{vm} placed on {node}, not a node of the perimeter then")

    def vm(self, rec: dict, name: str) -> _Vm:
        if name not in self.vms:
            self.breach(rec, f"{name} was never launched")
            self.vms[name] = _Vm(state="unknown")
        return self.vms[name]

    def step(self, rec: dict) -> None:
        event, d = rec["event"], rec.get("detail") or {}
        if event == "node_registered":
            logged = str(d.get("measurement", ""))  # a prefix of the node's measurement
            self.members[str(d.get("node"))] = len(logged) >= MIN_PREFIX and \
                self.measurement.startswith(logged)
            return
        name = str(d.get("vm", ""))
        if event == "launch":
            if name in self.vms:
                self.breach(rec, f"{name} launched a second time")
            self.placed(rec, name, d.get("node"))
            self.vms[name] = _Vm(node=str(d.get("node")))
        elif event == "launched":
            self.vm(rec, name).state = "running"
        elif event == "launch_failed":
            self.vm(rec, name).state = "failed"
        elif event == "suspend_prepare":
            self.vm(rec, name).state = "suspending"
        elif event == "suspend_failed":
            self.vm(rec, name).state = "running"
        elif event == "suspended":
            self._suspended(rec, name, int(d.get("version", 0)))
        elif event == "vm_lost":
            vm = self.vm(rec, name)
            vm.state, vm.node = "lost", None
        elif event == "resume_authorized":
            self._authorized(rec, name, str(d.get("node")), int(d.get("version", 0)))
        elif event == "resumed":
            vm = self.vm(rec, name)
            if vm.state != "resuming" or vm.node != str(d.get("node")):
                self.breach(rec, f"{name} resumed on {d.get('node')} without an "
                                 "authorised resume there")
            vm.state, vm.node = "running", str(d.get("node"))
        elif event == "resume_failed":
            vm = self.vm(rec, name)
            vm.consumed.discard(int(d.get("version", 0)))
            vm.state, vm.node = "suspended", None
        elif event == "migrate_prepare":
            vm = self.vm(rec, name)
            vm.state = "migrating"
            vm.migration = {"src": d.get("src"), "dst": d.get("dst"),
                            "epoch": int(d.get("epoch", 0)), "refused": False}
        elif event == "tee_refused":
            self._tee_refused(d)
        elif event == "migrate_commit":
            self._committed(rec, name, d)
        elif event == "migrate_abort":
            vm = self.vm(rec, name)
            vm.state, vm.migration = "running", None

    def _suspended(self, rec: dict, name: str, version: int) -> None:
        vm = self.vm(rec, name)
        if version <= vm.version:
            self.breach(rec, f"{name} checkpoint version {version} is not newer than "
                             f"version {vm.version}")
        vm.state, vm.node, vm.version = "suspended", None, max(vm.version, version)

    def _authorized(self, rec: dict, name: str, node: str, version: int) -> None:
        vm = self.vm(rec, name)
        self.placed(rec, name, node)
        if version < vm.version:
            self.breach(rec, f"{name} resumed from version {version}, older than its "
                             f"newest version {vm.version} (rollback)")
        elif version > vm.version:
            self.breach(rec, f"{name} resumed from version {version}, which was never "
                             "committed")
        if vm.state != "suspended":
            self.breach(rec, f"{name} resumed on {node} while {vm.state}"
                             f"{' on ' + vm.node if vm.node else ''} (clone)")
        elif version in vm.consumed:
            self.breach(rec, f"{name} checkpoint version {version} resumed a second time "
                             "(clone)")
        vm.consumed.add(version)
        vm.state, vm.node = "resuming", node

    def _tee_refused(self, d: dict) -> None:
        tee = d.get("tee") if isinstance(d.get("tee"), dict) else {}
        vm = self.vms.get(str(tee.get("vm", "")))
        if vm is not None and vm.migration is not None and \
                str(d.get("node")) == str(vm.migration["dst"]):
            vm.migration["refused"] = True

    def _committed(self, rec: dict, name: str, d: dict) -> None:
        vm = self.vm(rec, name)
        dst, epoch, open_ = str(d.get("dst")), int(d.get("epoch", 0)), vm.migration
        self.placed(rec, name, dst)
        if open_ is None or vm.state != "migrating" or str(open_["dst"]) != dst or \
                open_["epoch"] != epoch:
            self.breach(rec, f"{name} migration to {dst} committed without its prepare")
        elif open_["refused"]:
            self.breach(rec, f"{name} migration to {dst} committed a stream its "
                             "destination TEE refused")
        if open_ is not None and vm.node is not None and str(open_["src"]) != vm.node:
            self.breach(rec, f"{name} migrated from {open_['src']}, but it ran on {vm.node}")
        if epoch <= vm.version:
            self.breach(rec, f"{name} migrated at version {epoch}, not newer than "
                             f"{vm.version}")
        vm.state, vm.node, vm.migration = "running", dst, None
        vm.version = max(vm.version, epoch)


def breaches(records: list[dict], measurement: str, vms: list[dict] | None = None
             ) -> list[str]:
    """Every breach of the perimeter's invariants in ``records`` (the coordinator's audit
    log, in order) and in ``vms`` (its VM listing, read before the log, or None);
    ``measurement``: the hex of the perimeter's measurement."""
    replay = Replay(measurement)
    for rec in sorted(records, key=lambda r: r.get("seq", 0)):
        replay.step(rec)
    for row in vms or []:
        name = str(row.get("name"))
        known = replay.vms.get(name)
        if known is None:
            replay.breaches.append(f"listing: {name} is in the coordinator's state but "
                                   "never in its log")
            continue
        if int(row.get("version") or 0) > known.version:
            replay.breaches.append(f"listing: {name} is at version {row.get('version')}, "
                                   f"newer than any its log records ({known.version})")
        if row.get("state") == "running" and \
                not replay.members.get(str(row.get("node")), False):
            replay.breaches.append(f"listing: {name} runs on {row.get('node')}, not a node "
                                   "of the perimeter")
    return replay.breaches
