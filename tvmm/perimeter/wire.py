"""The perimeter's one message format (coordinator, nodes, operator, host stream).

Frame = u32 total length (LE, ≤ MAX_FRAME) ‖ u32 JSON length ‖ JSON object ‖ blob.
The JSON object has an "op" naming the message and the fields of that op's schema,
nothing else; a field's type is checked exactly (bool is not an int).  The blob carries
bulk bytes (images, bundles, checkpoints) without base64.  A blob larger than ``PART``
(a large guest's checkpoint) travels split: the message's frame carries the first part
and the wire-level field "parts" (on any op) counts the "part" frames that follow with
the rest; ``recv`` joins them, up to ``MAX_BLOB`` in all.  ``decode`` is the one parser
of untrusted frames: anything but an exact, valid frame raises ``WireError`` naming the
field (``WireError`` is its only error, whatever the bytes).  Data only: this module
imports nothing of ours.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
from dataclasses import dataclass, field

MAX_FRAME = 64 << 20
MAX_JSON = 1 << 20
PART = 32 << 20  # blob bytes per frame when a blob is split
MAX_BLOB = (1 << 30) + (64 << 20)  # a whole blob: the checkpoint of a 1 GiB guest
MAX_PARTS = 4096
MAX_INT = (1 << 63) - 1  # an integer field is a signed 64-bit value (what SQLite stores)
_U32 = struct.Struct("<I")

S, N, B, D = str, int, bool, dict
SCHEMAS: dict[str, dict[str, type]] = {
    # attestation handshake, both directions
    "attest": {"name": S, "role": S, "report": S, "ark": S, "ask": S, "vcek": S},
    # operator → coordinator
    "register": {"name": S, "host": S, "port": N, "host_port": N},
    "nodes": {}, "vms": {}, "audit": {"limit": N},
    "evidence": {},  # the coordinator's attest message, for an operator that checks it
    "console": {"vm": S},  # the console log a running VM's node keeps
    "launch": {"guest": S, "node": S, "level": S, "memory": N, "secret": S},
    "suspend": {"vm": S},
    "resume": {"node": S},
    "migrate": {"vm": S, "to": S, "live": B, "relay": S},
    "shutdown": {},
    # coordinator → node
    "node_launch": {"vm": S, "level": S, "memory": N, "secret": S, "policy": N},
    "node_suspend": {"vm": S, "epoch": N, "stream": N, "key": S},
    "node_resume": {"vm": S, "epoch": N, "stream": N, "key": S, "level": S, "memory": N},
    "node_migrate_out": {"vm": S, "epoch": N, "stream": N, "dst": S, "dst_host": S,
                         "dst_port": N, "dst_host_port": N, "dst_binding": S, "live": B,
                         "relay": S},
    "node_ready": {"vm": S, "stream": N},
    "node_finish": {"vm": S, "stream": N, "commit": B},
    "node_list": {},
    # node → node (attested)
    "peer_migrate_in": {"vm": S, "epoch": N, "stream": N, "pub": S},
    # node host → node host (untrusted stream)
    "stream_begin": {"stream": N, "vm": S, "level": S, "memory": N, "policy": N},
    "bundle": {},
    "stream_end": {"console": S},
    # node agent ↔ its host process (a local byte channel; the host is untrusted):
    # platform calls (ABI codec bytes in the blob), then the agent's requests
    "abi": {},
    "host_launch": {"vm": S, "level": S, "memory": N, "policy": N, "secret": S},
    "host_pause": {"vm": S}, "host_unpause": {"vm": S}, "host_stop": {"vm": S},
    "host_export": {"vm": S, "stream": N, "epoch": N, "level": S, "memory": N, "policy": N},
    "host_store": {"vm": S, "name": S},
    "host_import": {"stream": N, "level": S, "memory": N, "policy": N},
    "host_adopt": {"vm": S, "platform_vm": N, "console": S},
    "host_discard": {"platform_vm": N},
    "host_expect": {"stream": N}, "host_console": {"stream": N},
    "host_stream_open": {"stream": N, "relay": S, "vm": S, "level": S, "memory": N,
                         "policy": N},
    "host_pump": {"vm": S, "stream": N, "final": B},
    "host_stream_end": {"vm": S, "stream": N},
    "host_list": {}, "host_wait": {"vm": S, "timeout": N},
    # anyone → the transparency ledger (tvmm.perimeter.ledger)
    "ledger_register": {}, "ledger_receipt": {"index": N}, "ledger_head": {},
    "ledger_entries": {"start": N, "count": N}, "ledger_key": {},
    "ledger_consistency": {"size1": N, "size2": N},
    # the rest of a split blob (see "parts")
    "part": {},
    # replies and reports
    "reply": {"ok": B},
    "event": {"node": S, "event": S, "detail": D},
}
OPTIONAL_REPLY = {"error": S, "reason": S, "data": D}
WIRE_FIELDS = {"parts": N}  # on any op: how many "part" frames follow


class WireError(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Message:
    op: str
    fields: dict = field(default_factory=dict)
    blob: bytes = b""

    def __getitem__(self, key: str):
        return self.fields[key]


def reply(ok: bool = True, blob: bytes = b"", *, error: str = "", reason: str = "",
          **data: object) -> Message:
    fields: dict = {"ok": ok}
    if error:
        fields["error"] = error
    if reason:
        fields["reason"] = reason
    if data:
        fields["data"] = data
    return Message("reply", fields, blob)


def _head(op: str, fields: dict, blob_len: int) -> bytes:
    """The frame up to its blob: both lengths and the JSON object."""
    check(op, fields)
    raw = json.dumps({"op": op, **fields}, separators=(",", ":")).encode()
    size = 4 + len(raw) + blob_len
    if size > MAX_FRAME:
        raise WireError("frame", f"{size} bytes exceed {MAX_FRAME}")
    return _U32.pack(size) + _U32.pack(len(raw)) + raw


def encode(msg: Message) -> bytes:
    """One frame (a blob too large for one raises: ``send`` splits it)."""
    return _head(msg.op, msg.fields, len(msg.blob)) + msg.blob


def check(op: object, fields: dict) -> None:
    if not isinstance(op, str) or op not in SCHEMAS:
        raise WireError("op", f"unknown message {op!r}")
    schema = SCHEMAS[op]
    optional = OPTIONAL_REPLY if op == "reply" else {}
    for name, value in fields.items():
        kind = schema.get(name) or optional.get(name) or WIRE_FIELDS.get(name)
        if kind is None:
            raise WireError(name, f"not a field of {op}")
        if type(value) is not kind:
            raise WireError(name, f"expected {kind.__name__}, got {type(value).__name__}")
        if kind is int and not -MAX_INT - 1 <= value <= MAX_INT:
            raise WireError(name, "outside the signed 64-bit range")
    for name in schema:
        if name not in fields:
            raise WireError(name, f"missing from {op}")


def decode(body: bytes) -> Message:
    """Decode a frame body (without the outer length)."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise WireError("frame", "not bytes")
    body = bytes(body)
    n = _json_length(body[:4], len(body))
    return _message(body[4 : 4 + n], body[4 + n :])


def _json_length(raw: bytes, frame: int) -> int:
    if len(raw) < 4:
        raise WireError("frame", "truncated before the JSON length")
    (n,) = _U32.unpack(raw)
    if n > MAX_JSON or 4 + n > frame:
        raise WireError("json", f"length {n} is larger than the frame or {MAX_JSON}")
    return n


def _message(raw: bytes, blob: bytes) -> Message:
    try:
        obj = json.loads(raw.decode())
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, a 5,000-digit number
        # (int() refuses it), nesting deeper than the parser's stack
        raise WireError("json", f"not JSON: {exc.__class__.__name__}") from None
    if not isinstance(obj, dict):
        raise WireError("json", "not an object")
    op = obj.pop("op", None)
    check(op, obj)
    return Message(op, obj, blob)


def decode_frame(data: bytes) -> Message:
    """Decode a whole frame, outer length included (for tests and files)."""
    if len(data) < 4:
        raise WireError("frame", "truncated before the length")
    (n,) = _U32.unpack_from(data)
    if n > MAX_FRAME:
        raise WireError("frame", f"length {n} exceeds {MAX_FRAME}")
    if len(data) != 4 + n:
        raise WireError("frame", f"{len(data) - 4} bytes after the length, expected {n}")
    return decode(data[4:])


def _read_exact(sock: socket.socket, n: int) -> bytes:
    first = b""
    if not isinstance(sock, ssl.SSLSocket):  # TLS takes no flags
        first = sock.recv(n, socket.MSG_WAITALL)  # usually all of it, without a copy
        if len(first) == n:
            return first
    buf = bytearray(n)
    buf[: len(first)] = first
    view = memoryview(buf)
    got = len(first)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise ConnectionError("peer closed the connection")
        got += k
    return bytes(buf)


_JOIN_BELOW = 1 << 16  # a smaller blob goes out with its head in one write


def _send_frame(sock: socket.socket, head: bytes, blob: bytes | memoryview) -> None:
    if len(blob) < _JOIN_BELOW:
        sock.sendall(head + blob)
    else:  # a bundle: two writes rather than a copy of a megabyte
        sock.sendall(head)
        sock.sendall(blob)


def send(sock: socket.socket, msg: Message) -> None:
    """One message: one frame, or, for a blob over ``PART``, its first part and the rest
    in "part" frames."""
    blob = msg.blob
    if len(blob) <= PART:
        _send_frame(sock, _head(msg.op, msg.fields, len(blob)), blob)
        return
    if len(blob) > MAX_BLOB:
        raise WireError("blob", f"{len(blob)} bytes exceed {MAX_BLOB}")
    view = memoryview(blob)
    parts = (len(blob) - 1) // PART
    _send_frame(sock, _head(msg.op, {**msg.fields, "parts": parts}, PART), view[:PART])
    for off in range(PART, len(blob), PART):
        part = view[off : off + PART]
        _send_frame(sock, _head("part", {}, len(part)), part)


def _recv_frame(sock: socket.socket) -> Message:
    """One frame; the blob is read into its own bytes object (no slice copy)."""
    (size,) = _U32.unpack(_read_exact(sock, 4))
    if size > MAX_FRAME:
        raise WireError("frame", f"length {size} exceeds {MAX_FRAME}")
    n = _json_length(_read_exact(sock, min(size, 4)), size)
    return _message(_read_exact(sock, n), _read_exact(sock, size - 4 - n))


def recv(sock: socket.socket) -> Message:
    """One message, a split blob joined (at most ``MAX_BLOB`` bytes in all)."""
    msg = _recv_frame(sock)
    parts = msg.fields.get("parts")
    if parts is None:
        return msg
    if not 1 <= parts <= MAX_PARTS:
        raise WireError("parts", f"{parts} is outside [1, {MAX_PARTS}]")
    blob = bytearray(msg.blob)
    for _ in range(parts):
        part = _recv_frame(sock)
        if part.op != "part" or part.fields:
            raise WireError("op", f"expected a part of the blob, got {part.op}")
        if len(blob) + len(part.blob) > MAX_BLOB:
            raise WireError("parts", f"the blob exceeds {MAX_BLOB} bytes")
        blob += part.blob
    fields = {k: v for k, v in msg.fields.items() if k != "parts"}
    return Message(msg.op, fields, bytes(blob))


def call(sock: socket.socket, msg: Message) -> Message:
    send(sock, msg)
    answer = recv(sock)
    if answer.op != "reply":
        raise WireError("op", f"expected a reply, got {answer.op}")
    return answer
