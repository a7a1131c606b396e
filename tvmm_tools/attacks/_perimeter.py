"""Helpers for the management-interface attacks (docs/attacks.md §12).

The attacker is the host operator of a perimeter the judge starts for the run
(AttackContext.perimeter: a coordinator and the genuine nodes asked for, real processes).
It holds what an operator holds — the coordinator's address and the operator credentials
of the state directory — talks to the coordinator as an operator (tvmm.operator.client),
starts any rogue node of its own on its machines (tvmm.operator.launcher) and carries
every byte between nodes.  What it reports of refusals is not evidence: the judge reads
the coordinator's audit log itself.  Nothing here imports trusted code (architecture
contract).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tvmm.operator.client import OperatorClient, PerimeterError
from tvmm.operator.launcher import Perimeter
from tvmm_tools.attacks.base import AttackContext, Outcome, not_applicable

COUNT = 10**9  # the counter keeps running for the whole attack


class NoPerimeter(RuntimeError):
    """The judge offered no perimeter (or it did not start)."""


def without_perimeter(ctx: AttackContext) -> Outcome | None:
    """``n/a`` for a run that offers no perimeter, else None."""
    if ctx.perimeter is None:
        return not_applicable("this run offers no perimeter to manage")
    return None


@contextmanager
def perimeter(ctx: AttackContext, nodes: tuple[str, ...] = ("n1", "n2"),
              rogue: tuple[str, ...] = ()) -> Iterator[tuple[Perimeter, OperatorClient]]:
    """The judge's perimeter with the genuine ``nodes``, and the attacker's own ``rogue``
    nodes (modified trusted code) started here and joined to its coordinator."""
    if ctx.perimeter is None:
        raise NoPerimeter("this run offers no perimeter")
    offered = ctx.perimeter(list(nodes))
    if "error" in offered:
        raise NoPerimeter(str(offered["error"]))
    state, address = Path(offered["state_dir"]), (str(offered["host"]), int(offered["port"]))
    work = Path(tempfile.mkdtemp(prefix="tvmm-attack-"))  # its rogue nodes' storage, logs
    own = Perimeter(state, die_with_parent=True, joins=address, files=work)
    try:
        if rogue:
            own.start_nodes(list(rogue), rogue=True)
        yield own, OperatorClient(address, state)
    finally:
        own.stop()
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
