"""Parser targets: every parser of bytes that cross a trust boundary.

Oracle: the parser accepts the input or refuses it with its documented error type (any
other exception is a finding), and what it accepts survives the round trip through its
encoder where one exists.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from shim.management import stream
from tvmm.abi import codec
from tvmm.abi.messages import REQUESTS, ExitRecord, Reply
from tvmm.abi.trace_events import EventKind, Position, TraceEvent, TraceHeader
from tvmm.abi.types import ExitReason, Field, Level, PageType, Result
from tvmm.perimeter import checkpoint_file as ckpt
from tvmm.perimeter import wire
from tvmm.trace import reader
from tvmm_tools.fuzz.targets import OracleViolation


def _check(ok: bool, oracle: str, message: str) -> None:
    if not ok:
        raise OracleViolation(oracle, message)


# -- the ABI codec ---------------------------------------------------------------------
def run_abi(data: bytes) -> None:
    try:
        message = codec.decode(data)
    except codec.DecodeError:
        return
    again = codec.encode(message)
    _check(again == data, "round_trip", "encode(decode(x)) != x")
    _check(codec.decode(again) == message, "round_trip", "decode(encode(m)) != m")


def seeds_abi() -> list[bytes]:
    import typing
    from enum import Enum

    from tvmm.abi.messages import AddPages, CreateVm

    def value(tp: object) -> object:  # a valid value of a field's type (enums: a member)
        if isinstance(tp, type) and issubclass(tp, Enum):
            return next(iter(tp))
        return {int: 0, bool: False, bytes: b"\x01" * 8, str: "x"}.get(tp, 0)

    rec = ExitRecord(ExitReason.HYPERCALL, 3, 0, ((Field.NR, 1), (Field.ARG0, (1 << 64) - 5)),
                     b"st")
    msgs: list[object] = [
        cls(**{name: value(tp) for name, tp in typing.get_type_hints(cls).items()
               if name != "CALL"})
        for cls in REQUESTS.values() if cls not in (CreateVm, AddPages)]
    msgs += [CreateVm(Level.SHIM, 1 << 22, 0x100000, 0x40000, 0x30000),
             AddPages(1, 0x1000, PageType.NORMAL, 1, bytes(64), True),
             Reply(Result.OK), Reply(Result.BAD_OPERAND, "gpa", 7, b"data", rec)]
    return [codec.encode(m) for m in msgs]


# -- the perimeter's wire format -------------------------------------------------------
def run_wire(data: bytes) -> None:
    for parse in (wire.decode, wire.decode_frame, _recv):
        try:
            msg = parse(data)
        except (wire.WireError, _Closed):
            continue
        frame = wire.encode(msg)
        again = wire.decode_frame(frame)
        _check(again.op == msg.op and again.blob == msg.blob and _same_json(
            again.fields, msg.fields), "round_trip", "decode(encode(m)) != m")


class _Closed(Exception):
    """The stream ended inside a frame: recv's documented ConnectionError."""


def _recv(data: bytes) -> wire.Message:
    """wire.recv (frames, a split blob's parts joined) reading ``data`` from a socket."""
    import socket

    if len(data) < 4 or struct.unpack_from("<I", data)[0] > len(data):
        raise _Closed("truncated")  # what recv says, without allocating the claimed frame
    a, b = socket.socketpair()
    try:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        try:
            return wire.recv(b)
        except ConnectionError as exc:
            raise _Closed(str(exc)) from None
    finally:
        a.close()
        b.close()


def _same_json(a: object, b: object) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def seeds_wire() -> list[bytes]:
    values = {str: "n1", int: 7, bool: True, dict: {"a": [1, 2]}}
    frames = []
    for op, schema in wire.SCHEMAS.items():
        fields = {name: values[kind] for name, kind in schema.items()}
        frame = wire.encode(wire.Message(op, fields, b"blob" if op == "bundle" else b""))
        frames += [frame, frame[4:]]
    frames.append(wire.encode(wire.reply(False, error="no", reason="r", x=1)))
    split = wire.Message("bundle", {"parts": 2}, b"a" * 5)
    frames.append(wire.encode(split) + wire.encode(wire.Message("part", {}, b"b" * 7)) * 2)
    frames += [_frame(b'{"op":"audit","limit":' + b"9" * 5000 + b"}"),  # boundary values:
               _frame(b'{"op":"reply","ok":true,"data":{"x":' + b"[" * 2000 + b"]" * 2000
                      + b"}}")]  # digits and nesting past Python's limits
    return frames


def _frame(raw: bytes) -> bytes:
    body = struct.pack("<I", len(raw)) + raw
    return struct.pack("<I", len(body)) + body


# -- checkpoint files ------------------------------------------------------------------
def run_checkpoint(data: bytes) -> None:
    try:
        ckpt.read_meta(data)
    except ckpt.CheckpointFormatError:
        pass
    try:
        cp = ckpt.Checkpoint.from_bytes(data)
    except ckpt.CheckpointFormatError:
        return
    again = ckpt.Checkpoint.from_bytes(cp.to_bytes())
    _check(again.bundles == cp.bundles and _same_json(again.meta, cp.meta), "round_trip",
           "from_bytes(to_bytes(c)) != c")


def seeds_checkpoint() -> list[bytes]:
    meta = {"vm": "counter-1", "epoch": 2, "level": "shim", "memory": 1 << 22, "stream": 9,
            "console": "count=1\n"}
    return [ckpt.Checkpoint(meta, [b"\x01" * 48, b"TVMB" + bytes(60)]).to_bytes(),
            ckpt.Checkpoint({"vm": "", "epoch": 0, "level": "", "memory": 0}, [b""]).to_bytes(),
            _head(b'{"vm":"a","epoch":' + b"9" * 5000 + b',"level":"shim","memory":1}'),
            _head(b'{"vm":"a","epoch":1,"level":"shim","memory":1,"x":' + b"[" * 2000
                  + b"]" * 2000 + b"}")]


def _head(meta: bytes) -> bytes:
    return ckpt.MAGIC + struct.pack("<I", len(meta)) + meta + struct.pack("<I", 1) + b"b"


# -- migration bundles -----------------------------------------------------------------
_KEY = bytes(range(32))


def run_stream(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == 0:  # raw bytes: the clear header, then authentication
        try:
            header = stream.parse_header(body)
        except stream.StreamError:
            pass
        else:
            _check(header.pack() == bytes(body[:32]), "round_trip", "pack(parse(h)) != h")
        try:
            stream.StreamCipher(_KEY).open(body)
        except stream.StreamError:
            pass
        return
    # a sealed bundle whose header fields and payload come from the input
    if len(body) < 18:
        return
    kind_byte, sid, counter, items = struct.unpack_from("<BQQB", body)
    kinds = list(stream.Kind)
    kind = kinds[kind_byte % len(kinds)]
    payload = body[18:]
    cipher = stream.StreamCipher(_KEY)
    bundle = cipher.seal_parts(kind, sid, counter, [payload[:7], payload[7:]], items)
    try:
        header, opened = cipher.open(bytes(bundle))
    except stream.StreamError:
        return  # a header the parser refuses (item count, length): sealing does not check
    _check(bytes(opened) == payload and header.kind == kind and header.counter == counter
           and header.stream == sid, "round_trip", "open(seal(p)) != p")
    if mode == 2:
        npages = 1 + (counter % 4096)
        try:
            runs = stream.unpack_pages(opened, header.items, npages)
        except stream.StreamError:
            return
        pages = b"".join(bytes(r) for _, r in runs)
        _check(pages == payload[: header.items * 4096], "round_trip",
               "unpack_pages lost or reordered pages")


def seeds_stream() -> list[bytes]:
    cipher = stream.StreamCipher(_KEY)
    sealed = cipher.seal_parts(stream.Kind.PAGES, 5, 1, [bytes(4096), struct.pack("<I", 3)], 1)
    head = cipher.seal_parts(stream.Kind.HEAD, 5, 0, [b'{"level":"shim"}'])
    return [b"\0" + bytes(sealed), b"\0" + bytes(head),
            b"\x02" + struct.pack("<BQQB", 1, 5, 1, 1) + bytes(4096) + struct.pack("<I", 0),
            b"\x01" + struct.pack("<BQQB", 0, 1, 0, 0) + b"{}"]


# -- trace files -----------------------------------------------------------------------
_TMP = Path(os.environ.get("TVMM_FUZZ_TMP") or (
    "/dev/shm" if Path("/dev/shm").is_dir() else tempfile.gettempdir()))
_FILE = _TMP / f"tvmm-fuzz-trace-{os.getpid()}.jsonl"


def run_trace(data: bytes) -> None:
    split = int.from_bytes(data[:2].ljust(2, b"\0"), "little")
    body = data[2:]
    trace, index = body[: split % (len(body) + 1)], body[split % (len(body) + 1) :]
    lines = trace.split(b"\n")
    try:
        reader.parse_header(lines[0])
    except reader.TraceError:
        pass
    for i, line in enumerate(lines[1:64], 1):
        try:
            event = reader.parse_event(line, i)
        except reader.TraceError:
            continue
        again = reader.parse_event(event.to_json().encode(), i)
        _check(again.to_json() == event.to_json(), "round_trip",
               "parse_event(to_json(e)) != e")
    _FILE.write_bytes(trace)
    idx = reader.index_path(_FILE)
    if index:
        idx.write_bytes(index)
    else:
        idx.unlink(missing_ok=True)
    for rebuild in (False, True):
        try:
            with reader.TraceReader(_FILE, rebuild_index=rebuild, write_index=False) as tr:
                for i in range(min(len(tr), 64)):
                    try:
                        tr.event(i)
                    except reader.TraceError:
                        pass
                tr.count_by_kind()
        except reader.TraceError:
            pass


def seeds_trace() -> list[bytes]:
    header = TraceHeader("counter", "shim", 0, {"tvmm": "0.1"}, symbols=[(0x200000, 16, "main")])
    events = [TraceEvent(Position(i, i * 10, 0), kind, "x", {"a": 1}, {"b": [1]}, 5)
              for i, kind in enumerate(list(EventKind)[:6])]
    text = (header.to_json() + "\n" + "".join(e.to_json() + "\n" for e in events)).encode()
    return [len(text).to_bytes(2, "little") + text,
            (len(text) + 5).to_bytes(2, "little") + text + bytes(16)]


_RUNNERS: dict[str, tuple[Callable[[bytes], None], Callable[[], list[bytes]]]] = {
    "abi-codec": (run_abi, seeds_abi),
    "wire": (run_wire, seeds_wire),
    "checkpoint": (run_checkpoint, seeds_checkpoint),
    "stream": (run_stream, seeds_stream),
    "trace": (run_trace, seeds_trace),
}


def runner(name: str) -> Callable[[bytes], None]:
    return _RUNNERS[name][0]


def seeds(name: str) -> list[bytes]:
    return _RUNNERS[name][1]()
