"""Hostile bytes reach each perimeter parser and raise only its documented error: a JSON
number of thousands of digits, nesting deeper than the parser's stack, any bytes at all
(issue 16, finding 3)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvmm.perimeter import wire
from tvmm.perimeter.checkpoint_file import MAGIC, Checkpoint, CheckpointFormatError, read_meta

FAST = settings(max_examples=200, deadline=None)
HUGE = "9" * 5000  # over CPython's 4,300-digit limit: int() raises ValueError
DEEP = "[" * 100_000 + "]" * 100_000  # json's C scanner raises RecursionError

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)


def _hostile_json() -> st.SearchStrategy[bytes]:
    """JSON texts a parser must refuse or accept, never crash on."""
    fields = {"vm": "c-1", "epoch": 2, "level": "shim", "memory": 4096}
    return st.one_of(
        st.binary(max_size=300),
        _json.map(lambda v: json.dumps(v).encode()),
        st.sampled_from([HUGE, DEEP, "{" + '"a":' * 3 + HUGE + "}", '{"op":"nodes","x":'
                         + DEEP + "}", '{"op":"register","name":"n","host":"h","port":'
                         + HUGE + ',"host_port":1}', '{"op":"register","name":"n","host":"h",'
                         '"port":' + "9" * 30 + ',"host_port":1}'])
        .map(str.encode),
        st.dictionaries(st.sampled_from(["vm", "epoch", "level", "memory", "policy",
                                         "console", "op"]), _json, max_size=6)
        .map(lambda d: json.dumps({**fields, **d}).encode()),
        st.sampled_from(list(fields)).map(
            lambda k: json.dumps(fields).replace(json.dumps(fields[k]), HUGE, 1).encode()),
    )


def _frame_body(raw: bytes) -> bytes:
    return struct.pack("<I", len(raw)) + raw


@pytest.mark.parametrize("text", [HUGE, DEEP, '{"op":"audit","limit":' + HUGE + "}",
                                  '{"op":"audit","limit":' + "9" * 40 + "}"])
def test_wire_decode_refuses_huge_numbers_and_deep_nesting(text: str) -> None:
    with pytest.raises(wire.WireError) as exc:
        wire.decode(_frame_body(text.encode()))
    assert exc.value.field in ("json", "limit")


@FAST
@given(_hostile_json(), st.binary(max_size=16))
def test_wire_decode_raises_only_wire_error(raw: bytes, blob: bytes) -> None:
    try:
        msg = wire.decode(_frame_body(raw) + blob)
    except wire.WireError as exc:
        assert exc.field
    else:
        wire.check(msg.op, msg.fields)  # what decodes is a valid message
        assert all(abs(v) <= wire.MAX_INT for v in msg.fields.values() if type(v) is int)


@pytest.mark.parametrize("text", [HUGE, DEEP, '{"vm":"c","epoch":' + HUGE + "}",
                                  '{"vm":"c","epoch":' + "9" * 40 + ',"level":"shim",'
                                  '"memory":1}'])
def test_read_meta_refuses_huge_numbers_and_deep_nesting(text: str) -> None:
    raw = text.encode()
    with pytest.raises(CheckpointFormatError) as exc:
        read_meta(MAGIC + struct.pack("<I", len(raw)) + raw)
    assert exc.value.reason == "invalid"


@FAST
@given(_hostile_json(), st.binary(max_size=40))
def test_checkpoint_parser_raises_only_its_error(raw: bytes, rest: bytes) -> None:
    data = MAGIC + struct.pack("<I", len(raw)) + raw + rest
    for parse in (read_meta, Checkpoint.from_bytes):
        try:
            parse(data)
        except CheckpointFormatError as exc:
            assert exc.field and exc.reason in ("truncated", "too_large", "invalid")


@FAST
@given(st.binary(max_size=600))
def test_checkpoint_parser_on_any_bytes(data: bytes) -> None:
    for blob in (data, MAGIC + data):
        try:
            Checkpoint.from_bytes(blob)
        except CheckpointFormatError as exc:
            assert exc.reason in ("truncated", "too_large", "invalid")


@pytest.mark.parametrize("meta", [{"policy": "x"}, {"console": 5}, {"policy": -1},
                                  {"policy": 1 << 64}, {"epoch": 1 << 63}])
def test_every_metadata_field_is_checked(meta: dict) -> None:
    """What a node or the coordinator reads from the metadata is checked here, before
    any of them acts on it (a tampered policy used to reach the node after its TEE
    session was open)."""
    good = {"vm": "c-1", "epoch": 2, "level": "shim", "memory": 4096}
    with pytest.raises(CheckpointFormatError) as exc:
        Checkpoint.from_bytes(Checkpoint({**good, **meta}, [b"x"]).to_bytes())
    assert exc.value.field == f"meta.{next(iter(meta))}" and exc.value.reason == "invalid"
