"""Helpers for the management-interface attacks (docs/attacks.md §12).

The attacker is the host operator: it starts the perimeter's processes on its machines
(tvmm.operator.launcher — the coordinator and nodes are real processes; the attacker
holds only their untrusted interfaces), talks to the coordinator as an operator
(tvmm.operator.client) and carries every byte between nodes.  Nothing here imports
trusted code (architecture contract).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from tvmm.abi.state_dir import default_state_dir
from tvmm.operator.client import OperatorClient, PerimeterError
from tvmm.operator.launcher import Perimeter
from tvmm_tools.attacks.base import AttackContext

COUNT = 10**9  # the counter keeps running for the whole attack


@contextmanager
def perimeter(nodes: tuple[str, ...] = ("n1", "n2"), rogue: tuple[str, ...] = ()):
    state = default_state_dir()
    work = Path(tempfile.mkdtemp(prefix="tvmm-attack-"))  # storage and logs of this run
    per = Perimeter(state, die_with_parent=True, files=work)
    try:
        per.start_coordinator(db=work / "coordinator.db")
        per.start_nodes(list(nodes))
        if rogue:
            per.start_nodes(list(rogue), rogue=True)
        yield per, OperatorClient(per.address, state)
    finally:
        per.stop()
        shutil.rmtree(work, ignore_errors=True)


def launch_counter(ctx: AttackContext, op: OperatorClient, node: str = "n1") -> str:
    return op.launch(ctx.image.path.read_bytes(), "counter", node, ctx.level.value,
                     ctx.memory, COUNT.to_bytes(8, "little"))


def audit_has(op: OperatorClient, event: str, **match: object) -> bool:
    for rec in op.audit()["records"]:
        if rec["event"] == event and all(str(rec["detail"].get(k)) == str(v) if v != "*"
                                         else k in rec["detail"] for k, v in match.items()):
            return True
    return False


def vm_row(op: OperatorClient, vm: str) -> dict:
    return next(v for v in op.vms() if v["name"] == vm)


def refusal(call: Callable[[], object]) -> str:
    """Run one management operation the attack expects the perimeter to refuse: the
    refusal's reason, or "" when it went through."""
    try:
        call()
    except PerimeterError as exc:
        return exc.reason
    return ""
