"""Requests and replies of the platform ABI: dataclasses, nothing else.

Requests are frozen: the TEE checks a request once and then uses it, so the host must not
be able to change it in between.  Replies and exit records are the TEE's answer and it
keeps nothing of them (the state bytes it compares later are its own copy), so they are
plain slotted dataclasses: a frozen one costs four times as much to build, and every exit
builds two.

Each request names the call it makes (``CALL``); ``REQUESTS`` maps a call to its type.
Every field is a plain int, bytes, bool or one of the ABI enums, so that the codec can
encode every message and a validator can check every field.  A request's ints are signed
64-bit (the TEE checks their range); what the TEE answers with — exit fields, sequence
numbers, a reply's value — is ``U64``: any value a 64-bit register can hold, since a
guest or the host's own register state decides many of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar

from tvmm.abi.types import Call, ExitReason, Field, InjectMode, Level, PageType, Result

U64 = Annotated[int, "u64"]  # 0 <= value < 2**64, unsigned on the wire


@dataclass(frozen=True, slots=True)
class CreateVm:
    """Create a VM at a protection level with ``memory_size`` bytes of private memory,
    of which [shared_base, shared_base + shared_size) is shared with the host."""

    CALL: ClassVar[Call] = Call.CREATE_VM
    level: Level
    memory_size: int
    shared_base: int
    shared_size: int
    policy: int = 0  # SNP guest policy bits (debug, migration, ...)


@dataclass(frozen=True, slots=True)
class AddPages:
    """Add ``count`` pages at ``gpa`` before finalize; NORMAL pages carry their contents,
    other types carry none (their contents are zeros or filled by the TEE)."""

    CALL: ClassVar[Call] = Call.ADD_PAGES
    vm: int
    gpa: int
    page_type: PageType
    count: int
    data: bytes = b""
    executable: bool = False


@dataclass(frozen=True, slots=True)
class Finalize:
    CALL: ClassVar[Call] = Call.FINALIZE
    vm: int
    entry: int  # initial RIP, measured as part of the initial vCPU state


@dataclass(frozen=True, slots=True)
class Enter:
    """Run ``vcpu`` until an exit, or until ``quantum`` guest instructions have retired
    (0: no timer).  ``state`` is the register state the host was given at the last exit."""

    CALL: ClassVar[Call] = Call.ENTER
    vm: int
    vcpu: int
    quantum: int
    state: bytes = b""


@dataclass(frozen=True, slots=True)
class Map:
    CALL: ClassVar[Call] = Call.MAP
    vm: int
    gpa: int
    count: int = 1


@dataclass(frozen=True, slots=True)
class Unmap:
    CALL: ClassVar[Call] = Call.UNMAP
    vm: int
    gpa: int
    count: int = 1


@dataclass(frozen=True, slots=True)
class Remap:
    """Point guest page ``gpa`` at the backing of page ``source`` (the host's nested page
    table is its own): swapping pages works unless the ownership table forbids it."""

    CALL: ClassVar[Call] = Call.REMAP
    vm: int
    gpa: int
    source: int


@dataclass(frozen=True, slots=True)
class ReadPage:
    CALL: ClassVar[Call] = Call.READ_PAGE
    vm: int
    gpa: int


@dataclass(frozen=True, slots=True)
class WritePage:
    CALL: ClassVar[Call] = Call.WRITE_PAGE
    vm: int
    gpa: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Inject:
    """Ask for an interrupt on ``vcpu``: injected as an event, or posted as a virtual
    interrupt the CPU delivers once the guest can take it (``mode``; a doorbell at the
    shim level either way)."""

    CALL: ClassVar[Call] = Call.INJECT
    vm: int
    vcpu: int
    vector: int
    mode: InjectMode = InjectMode.EVENT


@dataclass(frozen=True, slots=True)
class CompleteIo:
    """Answer the guest's pending request: ``value`` goes back as its result."""

    CALL: ClassVar[Call] = Call.COMPLETE_IO
    vm: int
    vcpu: int
    value: int


@dataclass(frozen=True, slots=True)
class Destroy:
    CALL: ClassVar[Call] = Call.DESTROY
    vm: int


@dataclass(frozen=True, slots=True)
class DropWrites:
    """Discard the guest's stores that are still in the cache (INVD on dirty lines, as
    CacheWarp does): the model's write-back buffer reverts them.  The reply carries no
    count, so it is no oracle on how much the guest wrote."""

    CALL: ClassVar[Call] = Call.DROP_WRITES
    vm: int


@dataclass(frozen=True, slots=True)
class ExportVm:
    """Management: the next bundle of the VM's checkpoint stream ``stream`` (a session the
    node's trusted agent opened).  ``final`` freezes the VM and ends the stream; otherwise
    one pre-copy round runs while the guest keeps running.  Reply: data = bundle (may be
    empty), value = 1 while more follows in this round or stream, 0 when done."""

    CALL: ClassVar[Call] = Call.EXPORT_VM
    vm: int
    stream: int
    final: bool
    max_pages: int = 256


@dataclass(frozen=True, slots=True)
class ImportVm:
    """Management: feed one bundle of stream ``stream`` into the empty VM ``vm``.  Reply:
    value = vm when the stream ended (the VM then waits for the perimeter's commit), data =
    the register state to hand back at the first ENTER."""

    CALL: ClassVar[Call] = Call.IMPORT_VM
    vm: int
    stream: int
    data: bytes


Request = (
    CreateVm | AddPages | Finalize | Enter | Map | Unmap | Remap | ReadPage | WritePage
    | Inject | CompleteIo | Destroy | DropWrites | ExportVm | ImportVm
)

REQUESTS: dict[Call, type] = {
    cls.CALL: cls
    for cls in (
        CreateVm, AddPages, Finalize, Enter, Map, Unmap, Remap, ReadPage, WritePage,
        Inject, CompleteIo, Destroy, DropWrites, ExportVm, ImportVm,
    )
}


@dataclass(slots=True)
class ExitRecord:
    """What the host gets when the vCPU stops: the reason, the fields the level allows,
    and the register state in the form the level gives it (plaintext, deterministic
    ciphertext, or a sealed blob)."""

    reason: ExitReason
    seq: U64
    vcpu: U64
    fields: tuple[tuple[Field, U64], ...] = ()
    state: bytes = b""

    def get(self, name: Field, default: int | None = None) -> int | None:
        for key, value in self.fields:
            if key == name:
                return value
        return default


@dataclass(slots=True)
class Reply:
    """The answer to every request. ``operand`` names the refused field on an error."""

    result: Result
    operand: str = ""
    value: U64 = 0
    data: bytes = b""
    exit: ExitRecord | None = field(default=None)

    @property
    def ok(self) -> bool:
        return self.result == Result.OK
