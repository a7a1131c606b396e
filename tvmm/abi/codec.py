"""The one bytes codec of the ABI: messages to bytes and back, strictly.

The layout and its rules are ``tvmm.abi.codec_reference``'s, which encodes and decodes
field by field.  Every exit crosses the codec four times (request and reply, each encoded
and decoded), and field by field that cost ~60 µs an exit, more than the exit itself; so
here each message type's layout is compiled once, at import, into one encoder and one
decoder function (generated source, as ``dataclasses`` builds ``__init__``): a run of
fixed-width fields — with the tag and the length, count or presence flag of the variable
field after it — is one precompiled ``struct.Struct`` call, and enum members, 0/1
booleans, lengths and the trailing-bytes check are dict lookups and comparisons inline.

The compiled decoder checks everything the reference checks.  What it refuses — any
exception at all on the way — is handed to the reference decoder, which names the field
in its ``DecodeError``; an encoder that meets a value it does not expect (out of range, a
bytearray, a float) hands the message to the reference encoder, which encodes it or
raises the ``EncodeError``.  So errors and unusual values cost the old price and valid
messages the new one; tests/core/test_core_codec.py checks both agree.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from enum import IntEnum, StrEnum
from itertools import starmap
from typing import Any

from tvmm.abi import codec_reference as reference
from tvmm.abi.codec_reference import (  # noqa: F401 - the codec's public names
    EXIT_TAG,
    MAX_BYTES,
    REPLY_TAG,
    DecodeError,
    EncodeError,
)
from tvmm.abi.messages import U64, ExitRecord
from tvmm.abi.types import Field


class _Refuse(Exception):
    """Raised inside a compiled decoder: the reference decoder says what is wrong."""


_PAIR = struct.Struct("<qQ")
_FIELD_OF = {int(m): m for m in Field}
UNROLLED_PAIRS = 16  # an exit record carries a handful of fields


def _pairs_source(count: int) -> str:
    """``_pairs_<count>(data, pos)``: ``count`` (Field, u64) pairs, unrolled — one
    unpack and a tuple display, where zip/map/slices cost three times as much."""
    names = [(f"a{i}", f"b{i}") for i in range(count)]
    flat = ", ".join(x for pair in names for x in pair)
    pairs = "".join(f"(_FIELD_OF[{a}], {b}), " for a, b in names)
    unpack = f"    {flat}, = _U_pairs_{count}(data, pos)\n" if count else ""
    return f"def _pairs_{count}(data, pos):\n{unpack}    return ({pairs})"


def _pairs_any(count: int, data: bytes, pos: int) -> tuple:
    """Pairs beyond the unrolled counts."""
    flat = struct.Struct("<" + "qQ" * count).unpack_from(data, pos)
    return tuple(zip(map(_FIELD_OF.__getitem__, flat[0::2]), flat[1::2], strict=True))


def _pairs_decoders() -> dict[int, Any]:
    env: dict[str, Any] = {"_FIELD_OF": _FIELD_OF}
    for n in range(1, UNROLLED_PAIRS + 1):
        env[f"_U_pairs_{n}"] = struct.Struct("<" + "qQ" * n).unpack_from
    exec("\n\n".join(map(_pairs_source, range(UNROLLED_PAIRS + 1))), env)  # noqa: S102
    return {n: env[f"_pairs_{n}"] for n in range(UNROLLED_PAIRS + 1)}


_PAIRS_DECODE = _pairs_decoders()


def _kind(tp: Any) -> str:
    if tp is bool:
        return "bool"
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return "strenum"
    if isinstance(tp, type) and issubclass(tp, IntEnum):
        return "intenum"
    if tp is int:
        return "i64"
    if tp == U64:
        return "u64"
    if tp is bytes or tp is str:
        return tp.__name__
    if tp == reference._PAIRS:
        return "pairs"
    if tp == (ExitRecord | None):
        return "record"
    raise TypeError(f"unsupported field type {tp}")  # a schema error, at import


# kind → (pack format, unpack format); a bool packs its truth and unpacks as a byte
_FIXED = {"i64": ("q", "q"), "u64": ("Q", "Q"), "bool": ("?", "B"), "intenum": ("q", "q")}
_HEADER = {"bytes": "I", "str": "I", "strenum": "I", "pairs": "H", "record": "B"}


def _compile(cls: type, tag: int | None, env: dict) -> tuple[str, str]:
    """Source of ``_enc_<cls>(m) -> bytes`` and ``_dec_<cls>(data, pos) -> (msg, pos)``."""
    name = cls.__name__
    env[f"_C_{name}"] = cls
    fields = [(f, _kind(tp), tp) for f, tp in reference._SCHEMAS[cls]]
    steps: list[tuple[list, tuple | None]] = []
    run: list = []
    for field in fields:
        if field[1] in _FIXED:
            run.append(field)
        else:
            steps.append((run, field))
            run = []
    if run or not steps:
        steps.append((run, None))
    enc = [f"def _enc_{name}(m):"]
    dec = [f"def _dec_{name}(data, pos):", "    size = len(data)"]
    parts, values = [], []
    for i, (run, var) in enumerate(steps):
        key = f"{name}_{i}"
        pack_fmt = "<" + ("H" if tag is not None and i == 0 else "")
        pack_fmt += "".join(_FIXED[k][0] for _, k, _ in run)
        unpack_fmt = "<" + "".join(_FIXED[k][1] for _, k, _ in run)
        args = [str(tag)] if tag is not None and i == 0 else []
        args += [f"m.{f}" for f, _, _ in run]
        targets = [f"v_{f}" for f, _, _ in run]
        for _f, kind, tp in run:
            if kind == "bool":
                env["_BOOL"] = {0: False, 1: True}
            elif kind == "intenum":
                env[f"_M_{tp.__name__}"] = {int(m): m for m in tp}
        if var is not None:
            f, kind, tp = var
            pack_fmt += _HEADER[kind]
            unpack_fmt += _HEADER[kind]
            targets.append(f"n_{f}")
            enc += _encode_var(f, kind, tp, env)
            args.append(f"len(m.{f})" if kind == "pairs" else
                        f"m.{f} is not None" if kind == "record" else f"len(p_{f})")
        env[f"_P_{key}"] = struct.Struct(pack_fmt).pack
        unpacker = struct.Struct(unpack_fmt)
        env[f"_U_{key}"] = unpacker.unpack_from
        parts.append(f"_P_{key}({', '.join(args)})")
        if var is not None:
            parts.append(f"p_{var[0]}")
        if targets:
            dec.append(f"    {', '.join(targets)}, = _U_{key}(data, pos)")
            dec.append(f"    pos += {unpacker.size}")
        for f, kind, tp in run:
            if kind == "bool":
                dec.append(f"    v_{f} = _BOOL[v_{f}]")
            elif kind == "intenum":
                dec.append(f"    v_{f} = _M_{tp.__name__}[v_{f}]")
        values += [f"v_{f}" for f, _, _ in run]
        if var is not None:
            dec += _decode_var(*var, env)
            values.append(f"v_{var[0]}")
    enc.append(f"    return b''.join(({', '.join(parts)},))")
    dec += _construct(cls, [f for f, _, _ in fields], values, env)
    # The same encoder taking the field values themselves (encode_values): no message built.
    encv = [f"def _encv_{name}({', '.join(f'v_{f}' for f, _, _ in fields)}):",
            *(re.sub(r"\bm\.(\w+)", r"v_\1", line) for line in enc[1:])]
    return "\n".join(enc) + "\n\n" + "\n".join(encv), "\n".join(dec)


def _construct(cls: type, names: list[str], values: list[str], env: dict) -> list[str]:
    """Lines that return the decoded message, made without a Python ``__init__`` frame
    when the class is a slotted dataclass without ``__post_init__`` (every message): a
    frozen one (every request) is filled through its slots' own descriptors — what its
    ``__init__`` does through ``object.__setattr__``, at half the cost — and the others
    (replies, exit records) by plain attribute stores, a bytecode each."""
    name = cls.__name__
    params = getattr(cls, "__dataclass_params__", None)
    plain = (params is not None and hasattr(cls, "__slots__")
             and not hasattr(cls, "__post_init__")
             and {f.name for f in dataclasses.fields(cls)} == set(names)  # every slot set
             and all(type(cls.__dict__.get(f)).__name__ == "member_descriptor" for f in names))
    if not plain:
        return [f"    return _C_{name}({', '.join(values)}), pos"]
    lines = [f"    m = _new(_C_{name})"]
    for f, v in zip(names, values, strict=True):
        if params.frozen:
            env[f"_S_{name}_{f}"] = cls.__dict__[f].__set__
            lines.append(f"    _S_{name}_{f}(m, {v})")
        else:
            lines.append(f"    m.{f} = {v}")
    return [*lines, "    return m, pos"]


def _encode_var(f: str, kind: str, tp: Any, env: dict) -> list[str]:
    """Lines that set ``p_<f>``, the variable field's payload (anything unexpected raises,
    and the reference encoder takes over)."""
    if kind == "bytes":
        return [f"    p_{f} = m.{f}", f"    if type(p_{f}) is not bytes: raise _Refuse"]
    if kind == "str":
        return [f"    p_{f} = m.{f}", f"    if type(p_{f}) is not str: raise _Refuse",
                f"    p_{f} = p_{f}.encode()"]
    if kind == "strenum":  # a member or its value, to its UTF-8
        env[f"_E_{tp.__name__}"] = {**{m: m.value.encode() for m in tp},
                                    **{m.value: m.value.encode() for m in tp}}
        return [f"    p_{f} = _E_{tp.__name__}[m.{f}]"]
    if kind == "pairs":  # starmap: each pair must be exactly two values (none: no join)
        return [f"    p_{f} = b''.join(_starmap(_PAIR, m.{f})) if m.{f} else b''"]
    # the optional exit record
    return [f"    r_{f} = m.{f}",
            f"    p_{f} = b'' if r_{f} is None else _enc_ExitRecord(r_{f}) "
            f"if type(r_{f}) is _C_ExitRecord else _refuse()"]


def _decode_var(f: str, kind: str, tp: Any, env: dict) -> list[str]:
    if kind in ("bytes", "str", "strenum"):
        lines = [f"    end = pos + n_{f}",
                 f"    if n_{f} > {MAX_BYTES} or end > size: raise _Refuse",
                 f"    v_{f} = data[pos:end]", "    pos = end"]
        if kind == "str":  # most replies name no operand
            lines.append(f"    v_{f} = v_{f}.decode() if n_{f} else ''")
        elif kind == "strenum":
            env[f"_D_{tp.__name__}"] = {m.value.encode(): m for m in tp}
            lines.append(f"    v_{f} = _D_{tp.__name__}[v_{f}]")
        return lines
    if kind == "pairs":
        return [f"    end = pos + {_PAIR.size} * n_{f}",
                "    if end > size: raise _Refuse",
                f"    if not n_{f}: v_{f} = ()",  # a timer exit at shim: no call
                f"    elif (p := _PAIRS_DECODE.get(n_{f})) is not None: v_{f} = p(data, pos)",
                f"    else: v_{f} = _pairs_any(n_{f}, data, pos)",
                "    pos = end"]
    return [f"    if n_{f} == 1: v_{f}, pos = _dec_ExitRecord(data, pos)",
            f"    elif n_{f} == 0: v_{f} = None",
            "    else: raise _Refuse"]


def _refuse() -> bytes:
    raise _Refuse


def _build() -> tuple[dict[type, Any], dict[int, Any]]:
    env: dict[str, Any] = {"_Refuse": _Refuse, "_refuse": _refuse, "_starmap": starmap,
                           "_PAIR": _PAIR.pack, "_PAIRS_DECODE": _PAIRS_DECODE,
                           "_pairs_any": _pairs_any, "_new": object.__new__}
    classes = [(ExitRecord, None)] + [(cls, tag) for tag, cls in reference._TAGS.items()]
    source = []
    for cls, tag in classes:
        source += _compile(cls, tag, env)
    exec("\n\n".join(source), env)  # noqa: S102 - our own source, built from the schema
    encoders = {cls: env[f"_enc_{cls.__name__}"] for cls, tag in classes if tag is not None}
    decoders = {tag: env[f"_dec_{cls.__name__}"] for cls, tag in classes if tag is not None}
    by_values = {cls: env[f"_encv_{cls.__name__}"] for cls, tag in classes if tag is not None}
    return encoders, decoders, by_values


_ENCODERS, _DECODERS, _BY_VALUES = _build()
_ENCODE_ERRORS = (_Refuse, struct.error, TypeError, ValueError, KeyError, AttributeError,
                  OverflowError)


def encode(message: Any) -> bytes:
    encoder = _ENCODERS.get(type(message))
    if encoder is not None:
        try:
            return encoder(message)
        except _ENCODE_ERRORS:
            pass
    return reference.encode(message)  # names the field, or takes an unusual value


def encode_values(cls: type, *values: Any) -> bytes:
    """``encode(cls(*values))`` without building the message (every field given, in the
    schema's order): a host's ENTER, at every exit, need not build a frozen request
    only to have it taken apart.  Anything the compiled encoder does not expect goes
    through ``cls(*values)`` and ``encode``, which encodes it or raises the same error."""
    encoder = _BY_VALUES.get(cls)
    if encoder is not None:
        try:
            return encoder(*values)
        except _ENCODE_ERRORS:
            pass
    return encode(cls(*values))


def decode(data: bytes) -> Any:
    """Decode one message; raises DecodeError on anything but an exact, valid encoding."""
    if type(data) is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError("message", "not bytes")
        data = bytes(data)
    try:
        decoder = _DECODERS[data[0] | data[1] << 8]
        message, pos = decoder(data, 2)
        if pos == len(data):
            return message
    except Exception:  # noqa: BLE001 - whatever it was, the reference names it
        pass
    reference.decode(data)  # raises the DecodeError that names the field
    raise DecodeError("message", "refused by the compiled codec")  # pragma: no cover
