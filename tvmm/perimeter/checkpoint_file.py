"""The checkpoint file, data only: both the coordinator (trusted: it routes a resume by
the file's metadata) and the node's host (untrusted: it stores and reads the file) parse
it here, once.  Imports nothing of ours.

    b"TVCK" ‖ u32 length ‖ JSON metadata ‖ bundles, each u32 length ‖ bundle

The metadata (vm, epoch, level, memory, stream, policy, console) is unauthenticated:
routing hints only; every claim is checked again by the TEE that imports the bundles.
All of it is checked here, before anything acts on it (a node opens a TEE session only
for a file that parsed whole).  Malformed bytes of any kind raise
``CheckpointFormatError``, never another error: ``field`` names where, ``reason`` what
("truncated", "too_large", "invalid").
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

MAGIC = b"TVCK"
MAX_META = 1 << 20
MAX_BUNDLE = 8 << 20
MAX_INT = (1 << 63) - 1  # every number of the metadata is a non-negative 64-bit integer
_U32 = struct.Struct("<I")
_REQUIRED = (("vm", str), ("epoch", int), ("level", str), ("memory", int))
_OPTIONAL = (("policy", int), ("console", str), ("stream", int))


class CheckpointFormatError(ValueError):
    """The checkpoint file is not well-formed: ``field`` names where, ``reason`` what."""

    def __init__(self, field: str, reason: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = reason


def _u32(data: bytes, pos: int, what: str) -> int:
    if pos + 4 > len(data):
        raise CheckpointFormatError(what, "truncated", f"truncated at offset {pos}")
    return _U32.unpack_from(data, pos)[0]


def _check_field(meta: dict, key: str, kind: type, required: bool) -> None:
    value = meta.get(key)
    if value is None and not required:
        return
    if type(value) is not kind:
        raise CheckpointFormatError(f"meta.{key}", "invalid",
                                    f"{'missing or ' if required else ''}not {kind.__name__}")
    if kind is int and not 0 <= value <= MAX_INT:
        raise CheckpointFormatError(f"meta.{key}", "invalid", "outside [0, 2^63)")


def read_meta(data: bytes) -> tuple[dict, int]:
    """(metadata, offset of the first bundle): the head of a checkpoint file."""
    if not isinstance(data, bytes | bytearray):
        raise CheckpointFormatError("file", "invalid", "not bytes")
    if len(data) < 4 and MAGIC.startswith(bytes(data)):
        raise CheckpointFormatError("magic", "truncated", "truncated at offset 0")
    if data[:4] != MAGIC:
        raise CheckpointFormatError("magic", "invalid", "not a tvmm checkpoint")
    n = _u32(data, 4, "meta length")
    if n > MAX_META:
        raise CheckpointFormatError("meta length", "too_large", f"{n} exceeds {MAX_META}")
    if 8 + n > len(data):
        raise CheckpointFormatError("meta", "truncated", "truncated at offset 8")
    try:
        meta = json.loads(bytes(data[8 : 8 + n]).decode())
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, a 5,000-digit number,
        # nesting deeper than the parser's stack
        raise CheckpointFormatError("meta", "invalid",
                                    f"not JSON ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise CheckpointFormatError("meta", "invalid", "not an object")
    for key, kind in _REQUIRED:
        _check_field(meta, key, kind, True)
    for key, kind in _OPTIONAL:
        _check_field(meta, key, kind, False)
    return meta, 8 + n


@dataclass(frozen=True)
class Checkpoint:
    meta: dict
    bundles: list[bytes]

    def to_bytes(self) -> bytes:
        raw = json.dumps(self.meta, sort_keys=True).encode()
        out = [MAGIC, _U32.pack(len(raw)), raw]
        for b in self.bundles:
            out += [_U32.pack(len(b)), b]
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        meta, pos = read_meta(data)
        bundles = []
        while pos < len(data):
            n = _u32(data, pos, "bundle length")
            if n > MAX_BUNDLE:
                raise CheckpointFormatError("bundle length", "too_large",
                                            f"{n} exceeds {MAX_BUNDLE}")
            if pos + 4 + n > len(data):
                raise CheckpointFormatError("bundle", "truncated",
                                            f"truncated at offset {pos + 4}")
            bundles.append(bytes(data[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        if not bundles:
            raise CheckpointFormatError("bundles", "truncated", "none")
        return cls(meta, bundles)
