"""The ABI codec field by field: the specification of the bytes, and the explainer.

``tvmm.abi.codec`` runs a compiled form of this layout on every message; when the compiled
form refuses a message (or cannot take a value it does not expect, such as a bytearray),
this module runs on it, to name the field that is wrong in one clear error, or to encode
the unusual value.  Tests check that both give the same bytes and the same verdicts.

Layout: a u16 message tag, then the fields in declaration order.  int: i64 LE; U64 (what
the TEE answers with: exit fields, sequence numbers, a reply's value): u64 LE, so every
value a 64-bit register holds travels; bool: one byte 0/1; bytes: u32 length + data; str:
u32 length + UTF-8; IntEnum: i64 that must name a member; StrEnum: str that must name a
member; a tuple of (Field, U64) pairs: u16 count + pairs; an optional nested record: u8
presence flag + record.  A value its field cannot hold is an ``EncodeError`` naming the
field.  Decoding rejects unknown tags, out-of-range lengths, unknown enum values and
trailing bytes with ``DecodeError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from enum import IntEnum, StrEnum
from typing import Any

from tvmm.abi.messages import REQUESTS, U64, ExitRecord, Reply
from tvmm.abi.types import Field

MAX_BYTES = 1 << 30
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")

REPLY_TAG = 0x8000
EXIT_TAG = 0x8001


class DecodeError(ValueError):
    """The bytes are not a well-formed ABI message; ``operand`` names where it broke."""

    def __init__(self, operand: str, message: str) -> None:
        super().__init__(f"{operand}: {message}")
        self.operand = operand


class EncodeError(ValueError):
    """A value its field cannot hold; ``operand`` names the field."""

    def __init__(self, operand: str, message: str) -> None:
        super().__init__(f"{operand}: {message}")
        self.operand = operand


_TAGS: dict[int, type] = {int(call): cls for call, cls in REQUESTS.items()}
_TAGS[REPLY_TAG] = Reply
_TAG_OF: dict[type, int] = {cls: tag for tag, cls in _TAGS.items()}


def _field_types(cls: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls, include_extras=True)  # keeps U64 apart from int
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]


_SCHEMAS: dict[type, list[tuple[str, Any]]] = {cls: _field_types(cls) for cls in _TAGS.values()}
_SCHEMAS[ExitRecord] = _field_types(ExitRecord)
_PAIRS = tuple[tuple[Field, U64], ...]


def encode(message: Any) -> bytes:
    tag = _TAG_OF.get(type(message))
    if tag is None:
        raise EncodeError("message", f"not an ABI message: {type(message).__name__}")
    out = bytearray(_U16.pack(tag))
    _encode_fields(out, message)
    return bytes(out)


def _encode_fields(out: bytearray, message: Any) -> None:
    for name, tp in _SCHEMAS[type(message)]:
        _encode_value(out, name, tp, getattr(message, name))


def _encode_value(out: bytearray, name: str, tp: Any, value: Any) -> None:
    if tp is bool:
        out.append(1 if value else 0)
    elif isinstance(tp, type) and issubclass(tp, StrEnum):
        _encode_value(out, name, str, tp(value).value)
    elif tp is int or (isinstance(tp, type) and issubclass(tp, IntEnum)):
        _pack(out, _I64, name, value)
    elif tp == U64:
        _pack(out, _U64, name, value)
    elif tp is bytes:
        out += _U32.pack(len(value)) + bytes(value)
    elif tp is str:
        raw = value.encode()
        out += _U32.pack(len(raw)) + raw
    elif tp == _PAIRS:
        out += _U16.pack(len(value))
        for key, val in value:
            _pack(out, _I64, name, key)
            _pack(out, _U64, name, val)
    elif tp == (ExitRecord | None):
        if value is None:
            out.append(0)
        else:
            out.append(1)
            _encode_fields(out, value)
    else:  # pragma: no cover - a schema error, caught by the codec tests
        raise EncodeError(name, f"unsupported field type {tp}")


def _pack(out: bytearray, fmt: struct.Struct, name: str, value: Any) -> None:
    try:
        out += fmt.pack(int(value))
    except (struct.error, TypeError, ValueError) as exc:
        kind = "u64" if fmt is _U64 else "i64"
        raise EncodeError(name, f"{value!r} does not fit in {kind}") from exc


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, operand: str) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise DecodeError(operand, f"truncated: needs {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk


def decode(data: bytes) -> Any:
    """Decode one message; raises DecodeError on anything but an exact, valid encoding."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("message", "not bytes")
    cur = _Cursor(bytes(data))
    (tag,) = _U16.unpack(cur.take(2, "tag"))
    cls = _TAGS.get(tag)
    if cls is None:
        raise DecodeError("tag", f"unknown message tag {tag:#x}")
    message = _decode_fields(cur, cls)
    if cur.pos != len(cur.data):
        raise DecodeError("message", f"{len(cur.data) - cur.pos} trailing bytes")
    return message


def _decode_fields(cur: _Cursor, cls: type) -> Any:
    values = {name: _decode_value(cur, name, tp) for name, tp in _SCHEMAS[cls]}
    return cls(**values)


def _decode_value(cur: _Cursor, name: str, tp: Any) -> Any:
    if tp is bool:
        byte = cur.take(1, name)[0]
        if byte > 1:
            raise DecodeError(name, f"boolean byte {byte} is neither 0 nor 1")
        return bool(byte)
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        raw = _decode_value(cur, name, str)
        try:
            return tp(raw)
        except ValueError:
            raise DecodeError(name, f"unknown {tp.__name__} {raw!r}") from None
    if tp is int:
        return _I64.unpack(cur.take(8, name))[0]
    if tp == U64:
        return _U64.unpack(cur.take(8, name))[0]
    if isinstance(tp, type) and issubclass(tp, IntEnum):
        return _enum(tp, _I64.unpack(cur.take(8, name))[0], name)
    if tp is bytes or tp is str:
        (length,) = _U32.unpack(cur.take(4, name))
        if length > MAX_BYTES:
            raise DecodeError(name, f"length {length} exceeds {MAX_BYTES}")
        raw = cur.take(length, name)
        if tp is bytes:
            return raw
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise DecodeError(name, "not UTF-8") from None
    if tp == _PAIRS:
        (count,) = _U16.unpack(cur.take(2, name))
        pairs = []
        for _ in range(count):
            key = _enum(Field, _I64.unpack(cur.take(8, name))[0], name)
            pairs.append((key, _U64.unpack(cur.take(8, name))[0]))
        return tuple(pairs)
    if tp == (ExitRecord | None):
        flag = cur.take(1, name)[0]
        if flag > 1:
            raise DecodeError(name, f"presence flag {flag} is neither 0 nor 1")
        return _decode_fields(cur, ExitRecord) if flag else None
    raise DecodeError(name, f"unsupported field type {tp}")  # pragma: no cover


def _enum(tp: type[IntEnum], value: int, name: str) -> IntEnum:
    try:
        return tp(value)
    except ValueError:
        raise DecodeError(name, f"unknown {tp.__name__} value {value}") from None
