"""Errors of the TEE, and their one mapping to ABI result codes.

    PlatformError                 a host call is refused; nothing changed
     ├── Malformed                  MALFORMED: wrong type, undecodable
     ├── BadOperand                 BAD_OPERAND: out of range, misaligned, reserved bits
     ├── BadState                   BAD_STATE: not legal in the VM's state
     ├── Denied                     DENIED: ownership table or policy said no
     ├── NoVm                       NO_VM
     ├── VmDead                     VM_DEAD
     └── EntryRefused               ENTRY_REFUSED: the shim waits for the host to fix something
    IntegrityError                sealed state failed authentication: carries no detail, so it
                                  is no oracle; the VM is killed and the reason is traced inside

Every PlatformError names the operand it refused.  Tests assert on result codes and
reason enums, never on message text.
"""

from __future__ import annotations

from tvmm.abi.types import Result


class PlatformError(Exception):
    result = Result.MALFORMED

    def __init__(self, operand: str, message: str) -> None:
        super().__init__(f"{operand}: {message}")
        self.operand = operand
        self.message = message


class Malformed(PlatformError):
    result = Result.MALFORMED


class BadOperand(PlatformError):
    result = Result.BAD_OPERAND


class BadState(PlatformError):
    result = Result.BAD_STATE


class Denied(PlatformError):
    result = Result.DENIED


class NoVm(PlatformError):
    result = Result.NO_VM


class VmDead(PlatformError):
    result = Result.VM_DEAD


class EntryRefused(PlatformError):
    result = Result.ENTRY_REFUSED


class IntegrityError(Exception):
    """Sealed state did not authenticate.  Deliberately without detail."""

    def __init__(self) -> None:
        super().__init__("sealed state failed authentication")


def result_of(exc: PlatformError) -> Result:
    return exc.result
