"""Every parser of untrusted perimeter bytes fails with its own clear error, never another."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.management.stream import (
    HEADER,
    Kind,
    StreamCipher,
    StreamError,
    parse_header,
    unpack_pages,
)
from tvmm.perimeter import wire
from tvmm.perimeter.checkpoint_file import Checkpoint, CheckpointFormatError
from tvmm.perimeter.coordinator import checkpoint_meta

FAST = settings(max_examples=300, deadline=None)


@FAST
@given(st.binary(max_size=512))
def test_wire_random_bytes(data: bytes) -> None:
    try:
        wire.decode(data)
    except wire.WireError as exc:
        assert exc.field


def _valid_frames() -> list[bytes]:
    return [wire.encode(m) for m in (
        wire.Message("migrate", {"vm": "c-1", "to": "n2", "live": True, "relay": ""}),
        wire.Message("stream_begin", {"stream": 1, "vm": "c", "level": "shim",
                                      "memory": 4096, "policy": 0}),
        wire.Message("bundle", {}, b"\x01" * 40),
        wire.reply(True, b"xyz", key="00"),
    )]


@FAST
@given(st.sampled_from(_valid_frames()), st.data())
def test_wire_truncated_and_mutated(frame: bytes, data) -> None:
    assert wire.decode_frame(frame).op
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(wire.WireError):
        wire.decode_frame(frame[:cut])
    pos = data.draw(st.integers(0, len(frame) - 1))
    mutated = bytearray(frame)
    mutated[pos] ^= data.draw(st.integers(1, 255))
    try:
        wire.decode_frame(bytes(mutated))
    except wire.WireError:
        pass


@pytest.mark.parametrize("fields", [{"vm": 1, "to": "n", "live": True, "relay": ""},
                                    {"vm": "x", "to": "n", "live": 1, "relay": ""},
                                    {"vm": "x", "to": "n", "live": True},
                                    {"vm": "x", "to": "n", "live": True, "relay": "", "z": 1}])
def test_wire_schema_is_exact(fields: dict) -> None:
    with pytest.raises(wire.WireError):
        wire.check("migrate", fields)


@FAST
@given(st.binary(max_size=300))
def test_bundle_header_random(data: bytes) -> None:
    try:
        parse_header(data)
    except StreamError as exc:
        assert exc.field


@FAST
@given(st.data())
def test_bundle_truncated_or_flipped_never_opens(data) -> None:
    cipher = StreamCipher(bytes(32))
    bundle = cipher.seal_parts(Kind.PAGES, 5, 3, [os.urandom(4096), bytes(4)], items=1)
    cut = data.draw(st.integers(0, len(bundle) - 1))
    with pytest.raises(StreamError):
        cipher.open(bundle[:cut])
    pos = data.draw(st.integers(0, len(bundle) - 1))
    flipped = bytearray(bundle)
    flipped[pos] ^= 0x80
    with pytest.raises(StreamError):
        cipher.open(bytes(flipped))
    assert len(bundle) > HEADER.size


@FAST
@given(st.lists(st.binary(max_size=300), max_size=6), st.integers(0, 2**64 - 1))
def test_sealing_in_parts_is_one_aesgcm_call(parts: list[bytes], counter: int) -> None:
    """The stream's format is AES-256-GCM over the joined payload with the header as
    associated data, however the exporter hands the payload over."""
    key = bytes(range(32))
    cipher = StreamCipher(key)
    bundle = cipher.seal_parts(Kind.STATE, 9, counter, [memoryview(p) for p in parts])
    header = bytes(bundle[: HEADER.size])
    nonce = counter.to_bytes(8, "little") + b"TVMB"
    assert bundle[HEADER.size :] == AESGCM(key).encrypt(nonce, b"".join(parts), header)
    assert parse_header(bytes(bundle)).counter == counter
    assert bytes(cipher.open(bytes(bundle))[1]) == b"".join(parts)


@FAST
@given(st.integers(0, 10_000), st.sampled_from(["reply", "resume"]))
def test_a_split_blob_arrives_whole(size: int, op: str) -> None:
    """A blob over PART travels as the message's frame and "part" frames; recv joins it
    and the message is as sent (PART made small here; nodes use 32 MiB)."""
    blob = os.urandom(size)
    msg = wire.reply(True, blob, error="x") if op == "reply" else \
        wire.Message("resume", {"node": "n2"}, blob)
    a, b = socket.socketpair()
    with a, b, pytest.MonkeyPatch.context() as mp:
        mp.setattr(wire, "PART", 1000)
        wire.send(a, msg)
        assert wire.recv(b) == msg


def _frames(*msgs: wire.Message) -> bytes:
    return b"".join(wire.encode(m) for m in msgs)


@pytest.mark.parametrize("frames, field", [
    (_frames(wire.Message("nodes", {"parts": 0})), "parts"),
    (_frames(wire.Message("nodes", {"parts": 5000})), "parts"),
    (_frames(wire.Message("nodes", {"parts": 1}, b"a"), wire.Message("nodes", {})), "op"),
    (_frames(wire.Message("nodes", {"parts": 1}, b"a"), wire.Message("part", {"parts": 1})),
     "op"),
    (_frames(wire.Message("nodes", {"parts": 2}, b"a" * 600), wire.Message("part", {}, b"b" * 600),
             wire.Message("part", {}, b"c")), "parts"),
])
def test_a_split_blob_that_is_not_one_is_refused(frames: bytes, field: str) -> None:
    a, b = socket.socketpair()
    with a, b, pytest.MonkeyPatch.context() as mp:
        mp.setattr(wire, "MAX_BLOB", 1000)
        a.sendall(frames)
        with pytest.raises(wire.WireError) as exc:
            wire.recv(b)
        assert exc.value.field == field


@FAST
@given(st.binary(max_size=400))
def test_checkpoint_file_random(data: bytes) -> None:
    for parse, error in ((Checkpoint.from_bytes, CheckpointFormatError),
                         (checkpoint_meta, wire.WireError)):
        try:
            parse(b"TVCK" + data)
        except error:
            pass


@FAST
@given(st.data())
def test_checkpoint_truncated(data) -> None:
    """A file cut anywhere is refused as truncated, except at a bundle boundary, where it
    is the bundles before the cut (the TEE then refuses the stream: no END)."""
    bundles = [b"a" * 50, b"b" * 60]
    ck = Checkpoint({"vm": "c-1", "epoch": 2, "level": "shim", "memory": 4096},
                    bundles).to_bytes()
    assert Checkpoint.from_bytes(ck).bundles == bundles
    head = len(ck) - sum(4 + len(b) for b in bundles)
    boundaries = {head + 4 + len(bundles[0]): bundles[:1]}
    cut = data.draw(st.integers(0, len(ck) - 1))
    if cut in boundaries:
        assert Checkpoint.from_bytes(ck[:cut]).bundles == boundaries[cut]
        return
    with pytest.raises(CheckpointFormatError) as exc:
        Checkpoint.from_bytes(ck[:cut])
    assert exc.value.reason == "truncated"


@FAST
@given(st.binary(max_size=3 * 4100), st.integers(0, 4), st.integers(1, 8))
def test_pages_payload_random(payload: bytes, items: int, npages: int) -> None:
    try:
        runs = unpack_pages(memoryview(payload), items, npages)
    except StreamError as exc:
        assert exc.field in ("items", "payload", "page")
    else:  # only an exact payload gets here: its runs hold every page once, in range
        assert sum(len(data) for _, data in runs) == items * 4096
        assert all(0 <= first < npages for first, _ in runs)


@FAST
@given(st.lists(st.integers(0, 7), min_size=1, max_size=6))
def test_pages_payload_round_trip(indices: list[int]) -> None:
    pages = [os.urandom(4096) for _ in indices]
    payload = b"".join(pages) + struct.pack(f"<{len(indices)}I", *indices)
    runs = unpack_pages(memoryview(payload), len(indices), 8)
    rebuilt = [(first + k, bytes(data[k * 4096 : (k + 1) * 4096]))
               for first, data in runs for k in range(len(data) // 4096)]
    assert rebuilt == list(zip(indices, pages, strict=True))
