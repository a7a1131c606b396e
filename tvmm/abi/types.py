"""Enums of the platform ABI: protection levels, calls, page types, exits, results."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Level(StrEnum):
    PLAIN = "plain"
    SEV = "sev"
    SEV_ES = "sev-es"
    SNP = "snp"
    SHIM = "shim"


LEVEL_CODES = {level: i for i, level in enumerate(Level)}


class PageType(IntEnum):
    """SEV-SNP PAGE_INFO page types, as measured."""

    NORMAL = 1
    VMSA = 2
    ZERO = 3
    UNMEASURED = 4
    SECRETS = 5
    CPUID = 6


class Call(IntEnum):
    CREATE_VM = 1
    ADD_PAGES = 2
    FINALIZE = 3
    ENTER = 4
    MAP = 5
    UNMAP = 6
    READ_PAGE = 7
    WRITE_PAGE = 8
    INJECT = 9
    COMPLETE_IO = 10
    DESTROY = 11
    REMAP = 12
    DROP_WRITES = 13  # CacheWarp's INVD: discard the guest's stores still in the cache
    EXPORT_VM = 14  # management: the next bundle of the VM's encrypted checkpoint stream
    IMPORT_VM = 15  # management: feed one bundle of a checkpoint stream into an empty VM


class InjectMode(IntEnum):
    """How INJECT asks for an interrupt (below ``shim``; the shim's filter holds every
    vector until the guest can take it, whichever is asked)."""

    EVENT = 0  # event injection (SVM EVENTINJ, VMX VM-entry injection): at the next
    # entry, whether or not the guest can take it
    VIRTUAL = 1  # a virtual interrupt (SVM V_IRQ, VMX interrupt-window exiting): held
    # pending until the guest has RFLAGS.IF = 1, one pending per vector (as an IRR bit)


class Result(IntEnum):
    OK = 0
    MALFORMED = 1  # the request could not be decoded or a field has the wrong type
    BAD_OPERAND = 2  # a field is out of range, misaligned or reserved bits are set
    BAD_STATE = 3  # legal request, but not in the VM's current state
    DENIED = 4  # the ownership table or a policy refused it
    NO_VM = 5
    VM_DEAD = 6  # the VM was terminated; nothing more will run
    ENTRY_REFUSED = 7  # the shim refuses to resume until the host fixes something


class ExitReason(IntEnum):
    TIMER = 1  # the host's instruction quantum expired
    NPF = 2  # nested page fault on a page the host did not map
    HYPERCALL = 3  # the guest asked the host for something
    IO_PORT = 4  # in/out
    HLT = 5
    INTERRUPT_WINDOW = 6  # a posted interrupt waits for the guest to enable interrupts
    SHUTDOWN = 7  # the guest exited with a status
    KILLED = 8  # the TEE terminated the VM; the reason is in the fields
    FAULT = 9  # the guest crashed (exception, access outside its memory)


class Field(IntEnum):
    """Fields an exit record may carry; which ones the host gets depends on the level."""

    RIP = 1
    GPA = 2  # the faulting guest-physical address (full)
    GPA_PAGE = 3  # only the page number of it
    ACCESS = 4  # 1 read, 2 write, 4 fetch
    NR = 5  # hypercall number
    ARG0 = 6
    ARG1 = 7
    ARG2 = 8
    PORT = 9
    SIZE = 10
    VALUE = 11
    STATUS = 12  # exit status of a shutdown
    VECTOR = 13
    KILL_REASON = 14  # a KillReason code
    RETIRED = 15  # instructions retired in this entry, when the timer counted them
    SLOT = 16  # bounce-buffer slot offset
    DEVICE = 17  # Device code of an I/O request forwarded by the shim
    LENGTH = 18


class Device(IntEnum):
    CONSOLE = 1
    BLOCK_READ = 2
    BLOCK_WRITE = 3
    INPUT = 4
    OWNER = 5  # the guest owner's key-release channel (docs/attestation.md), relayed by the host


class KillReason(IntEnum):
    """Why the TEE terminated a VM: readable by the owner, never an integrity oracle."""

    SEALED_STATE = 1  # the sealed vCPU state failed authentication (tamper, replay, wrong VM)
    STEP_POLICY = 2
    FAULT_POLICY = 3
    GUEST_FAULT = 4
    IO_POLICY = 5
    INTERRUPT_POLICY = 6


# Guest policy bits of CREATE_VM, in the SEV-SNP layout (tvmm.abi.report.GuestPolicy): the
# attestation report carries them, and the owner's key broker refuses what it does not allow.
POLICY_SMT = 1 << 16  # SMT allowed on the host
POLICY_RESERVED_ONE = 1 << 17  # must be one in SNP (the TEE sets it in every report)
POLICY_MIGRATE_MA = 1 << 18  # a migration agent may be associated
POLICY_DEBUG = 1 << 19  # the debug path is allowed (the report tells the owner)
POLICY_SINGLE_SOCKET = 1 << 20
DEFAULT_POLICY = POLICY_SMT | POLICY_RESERVED_ONE  # 0x30000, what the honest host asks for
