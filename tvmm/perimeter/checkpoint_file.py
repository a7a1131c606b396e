"""The checkpoint file, data only: both the coordinator (trusted: it routes a resume by
the file's metadata) and the node's host (untrusted: it stores and reads the file) parse
it here, once.  Imports nothing of ours.

    b"TVCK" ‖ u32 length ‖ JSON metadata ‖ bundles, each u32 length ‖ bundle

The metadata (vm, epoch, level, memory, stream, console) is unauthenticated: routing
hints only; every claim is checked again by the TEE that imports the bundles.
Malformed bytes raise ``CheckpointFormatError`` naming where.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

MAGIC = b"TVCK"
MAX_META = 1 << 20
MAX_BUNDLE = 8 << 20
_U32 = struct.Struct("<I")
_REQUIRED = (("vm", str), ("epoch", int), ("level", str), ("memory", int))


class CheckpointFormatError(ValueError):
    """The checkpoint file is not well-formed; the message names where."""


def _u32(data: bytes, pos: int, what: str) -> int:
    if pos + 4 > len(data):
        raise CheckpointFormatError(f"{what}: truncated at offset {pos}")
    return _U32.unpack_from(data, pos)[0]


def read_meta(data: bytes) -> tuple[dict, int]:
    """(metadata, offset of the first bundle): the head of a checkpoint file."""
    if not isinstance(data, bytes | bytearray) or data[:4] != MAGIC:
        raise CheckpointFormatError("magic: not a tvmm checkpoint")
    n = _u32(data, 4, "meta length")
    if n > MAX_META:
        raise CheckpointFormatError(f"meta length: {n} exceeds {MAX_META}")
    if 8 + n > len(data):
        raise CheckpointFormatError("meta: truncated at offset 8")
    try:
        meta = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"meta: not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointFormatError("meta: not an object")
    for key, kind in _REQUIRED:
        if type(meta.get(key)) is not kind:
            raise CheckpointFormatError(f"meta.{key}: missing or not {kind.__name__}")
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
                raise CheckpointFormatError(f"bundle length: {n} exceeds {MAX_BUNDLE}")
            if pos + 4 + n > len(data):
                raise CheckpointFormatError(f"bundle: truncated at offset {pos + 4}")
            bundles.append(bytes(data[pos + 4 : pos + 4 + n]))
            pos += 4 + n
        if not bundles:
            raise CheckpointFormatError("bundles: none")
        return cls(meta, bundles)
