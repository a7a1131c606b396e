"""DESTROY(vm): tear the VM down; its memory and keys are gone.  Legal in every state.
Results: OK, MALFORMED, NO_VM."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shim.vm import Vm
from tvmm.abi.messages import Destroy, Reply
from tvmm.abi.types import Result

if TYPE_CHECKING:
    from shim.platform import Tee


def handle(tee: Tee, vm: Vm, req: Destroy) -> Reply:
    tee.forget(vm.id)
    return Reply(Result.OK)
