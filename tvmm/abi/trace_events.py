"""The trace event schema: frozen dataclasses, one JSON object per line.

Every event is stamped with its position (sequence number, retired-instruction count when
known, vCPU) and carries up to two views of the same moment: ``inside`` (what the TEE saw:
registers, RIP and its symbol) and ``outside`` (exactly what the host got).  Bytes are
written as lowercase hex strings so that a trace is plain JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

FORMAT = "tvmm-trace"
FORMAT_VERSION = 1


class EventKind(StrEnum):
    """The compact kind column of the index; the codes below are stable on disk."""

    EXIT = "exit"  # the vCPU stopped and the host got control
    HYPERCALL = "hypercall"  # a guest request served inside the TEE or forwarded
    POLICY = "policy"  # a shim policy decision (allow, extend, refuse, kill)
    INJECT = "inject"  # an interrupt the host asked for, delivered or refused
    IO = "io"  # a device request crossing the bounce buffers
    MGMT = "mgmt"  # launch, finalize, attest, suspend, resume, migrate
    ATTACK = "attack"  # an action by a malicious host
    CONSOLE = "console"  # guest console output
    VERDICT = "verdict"  # the judge's score of an attack
    END = "end"  # how the run ended, with its summary


KIND_CODES: dict[EventKind, int] = {kind: code for code, kind in enumerate(EventKind, start=1)}
CODE_KINDS: dict[int, EventKind] = {code: kind for kind, code in KIND_CODES.items()}


@dataclass(frozen=True, slots=True)
class Position:
    """Where in the run an event happened."""

    seq: int
    icount: int | None = None  # retired guest instructions counted so far, when known
    vcpu: int = 0


@dataclass(frozen=True, slots=True)
class TraceHeader:
    """The first line of every trace."""

    guest: str
    level: str
    seed: int
    versions: dict[str, str]
    elf: str | None = None  # path of the guest ELF, for symbols and disassembly
    elf_sha256: str | None = None
    symbols: list[tuple[int, int, str]] = field(default_factory=list)  # (addr, size, name)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": "header",
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "guest": self.guest,
                "level": self.level,
                "seed": self.seed,
                "versions": self.versions,
                "elf": self.elf,
                "elf_sha256": self.elf_sha256,
                "symbols": [list(s) for s in self.symbols],
                "extra": self.extra,
            },
            separators=(",", ":"),
        )


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One moment of a run, seen from inside the TEE and from the host."""

    pos: Position
    kind: EventKind
    name: str  # e.g. "timer", "npf", "console_write", "refused"
    inside: dict[str, Any] | None = None
    outside: dict[str, Any] | None = None
    t_ns: int = 0  # wall time since the start of the run, for exporters only

    def to_json(self) -> str:
        obj: dict[str, Any] = {
            "seq": self.pos.seq,
            "icount": self.pos.icount,
            "vcpu": self.pos.vcpu,
            "kind": self.kind.value,
            "name": self.name,
            "t_ns": self.t_ns,
        }
        if self.inside is not None:
            obj["inside"] = self.inside
        if self.outside is not None:
            obj["outside"] = self.outside
        return json.dumps(obj, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"not JSON-serialisable in a trace: {type(value).__name__}")


class NullRecorder:
    """Stands in when no trace was asked for, so callers never test for None (here, with
    the format, so the TEE needs nothing of the writer, tvmm.trace.recorder)."""

    next_seq = 0
    enabled = False

    def emit(self, kind: EventKind, name: str, **_: object) -> None:
        return None

    def close(self) -> None:
        return None
