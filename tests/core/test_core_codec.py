"""The ABI codec: every message round-trips; any other bytes are refused with a clear error."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvmm.abi import codec
from tvmm.abi.messages import REQUESTS, ExitRecord, Reply
from tvmm.abi.types import ExitReason, Field, Level, PageType, Result

I64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
_FIELD_STRATEGIES = {
    int: I64, bytes: st.binary(max_size=64), bool: st.booleans(), str: st.text(max_size=16),
    Level: st.sampled_from(Level), PageType: st.sampled_from(PageType),
}


def strategy_for(cls: type) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: _FIELD_STRATEGIES[hints[f.name]]
                             for f in dataclasses.fields(cls)})


exit_records = st.builds(
    ExitRecord, reason=st.sampled_from(ExitReason), seq=I64, vcpu=I64,
    fields=st.lists(st.tuples(st.sampled_from(Field), I64), max_size=6).map(tuple),
    state=st.binary(max_size=300),
)
replies = st.builds(Reply, result=st.sampled_from(Result), operand=st.text(max_size=20),
                    value=I64, data=st.binary(max_size=64),
                    exit=st.none() | exit_records)
messages = st.one_of(*[strategy_for(cls) for cls in REQUESTS.values()], replies)


@settings(max_examples=400, deadline=None)
@given(messages)
def test_every_message_round_trips(message):
    assert codec.decode(codec.encode(message)) == message


@settings(max_examples=400, deadline=None)
@given(messages, st.data())
def test_truncated_messages_are_refused(message, data):
    raw = codec.encode(message)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(codec.DecodeError):
        codec.decode(raw[:cut])


@settings(max_examples=300, deadline=None)
@given(messages, st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(message, extra):
    with pytest.raises(codec.DecodeError, match="trailing"):
        codec.decode(codec.encode(message) + extra)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_fail_cleanly(raw):
    try:
        message = codec.decode(raw)
    except codec.DecodeError as exc:
        assert exc.operand
    else:
        assert codec.encode(message) == raw


def test_unknown_enum_values_name_the_field():
    raw = bytearray(codec.encode(Reply(Result.OK)))
    raw[2:10] = (99).to_bytes(8, "little")
    with pytest.raises(codec.DecodeError) as err:
        codec.decode(bytes(raw))
    assert err.value.operand == "result"
