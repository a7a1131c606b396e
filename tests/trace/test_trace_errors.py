"""Unusable files end in one TraceError with the right reason — never another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvmm.trace.reader import TraceError, TraceErrorReason, TraceReader
from tvmm.trace.recorder import index_path
from tvmm.trace.synthetic import write_synthetic_trace

R = TraceErrorReason
HEADER = b'{"kind":"header","format":"tvmm-trace","version":1,"guest":"g","level":"plain"}\n'
EVENT = b'{"seq":0,"icount":null,"vcpu":0,"kind":"console","name":"c","t_ns":1}\n'


def reason_of(path: Path, **kwargs: bool) -> TraceErrorReason:
    with pytest.raises(TraceError) as err:
        TraceReader(path, **kwargs)
    return err.value.reason


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", R.EMPTY_FILE),
        (b"hello world\n", R.NOT_A_TRACE),
        (b"\x00\xff\x13garbage", R.NOT_A_TRACE),
        (b'{"kind":"header","format":"other","version":1}\n', R.NOT_A_TRACE),
        (b'["kind","header"]\n', R.NOT_A_TRACE),
        (b'{"kind":"header","format":"tvmm-trace","version":2}\n', R.UNSUPPORTED_VERSION),
        (b'{"kind":"header","format":"tvmm-trace","ver', R.TRUNCATED),
        (HEADER + EVENT + EVENT[:30], R.TRUNCATED),
        (b'{"kind":"header","format":"tvmm-trace","version":1,"seed":"x"}\n', R.CORRUPT_LINE),
        (b'{"kind":"header","format":"tvmm-trace","version":1,"symbols":[[1]]}\n', R.CORRUPT_LINE),
    ],
)
def test_bad_files_name_their_problem(tmp_path: Path, content: bytes, reason: R) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_bytes(content)
    assert reason_of(trace) is reason


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert reason_of(tmp_path / "nope.jsonl") is R.MISSING_FILE
    assert reason_of(tmp_path) is R.UNREADABLE


def test_truncated_trace_message_says_so(tmp_path: Path) -> None:
    trace = write_synthetic_trace(tmp_path / "s.jsonl", 50, seed=1)
    trace.write_bytes(trace.read_bytes()[:-10])
    with pytest.raises(TraceError) as err:
        TraceReader(trace)
    assert err.value.reason is R.TRUNCATED
    assert "cut short" in err.value.message


def test_corrupted_json_names_its_line(tmp_path: Path) -> None:
    trace = write_synthetic_trace(tmp_path / "s.jsonl", 30, seed=2)
    lines = trace.read_bytes().splitlines(keepends=True)
    lines[12] = lines[12][:20] + b"#" + lines[12][21:]  # same length: the index still fits
    trace.write_bytes(b"".join(lines))
    with TraceReader(trace) as reader:
        reader.event(10)
        with pytest.raises(TraceError) as err:
            reader.event(11)
    assert err.value.reason is R.CORRUPT_LINE
    assert err.value.line == 12
    assert "line 12" in str(err.value)


def test_an_unknown_kind_is_a_corrupt_line(tmp_path: Path) -> None:
    trace = tmp_path / "kind.jsonl"
    trace.write_bytes(HEADER + EVENT.replace(b"console", b"weather"))
    with TraceReader(trace) as reader:
        assert list(reader.kinds) == [0]
        with pytest.raises(TraceError) as err:
            reader.event(0)
    assert err.value.reason is R.CORRUPT_LINE


def _lie_about_kind(trace: Path, line: int) -> None:
    words = bytearray(index_path(trace).read_bytes())
    words[8 * line + 7] = 1 if words[8 * line + 7] != 1 else 2
    index_path(trace).write_bytes(bytes(words))


def test_a_wrong_index_is_caught_when_opened(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(HEADER + EVENT + EVENT)
    TraceReader(trace).close()
    _lie_about_kind(trace, 1)  # small traces: every entry is checked at open
    assert reason_of(trace, rebuild_index=False) is R.INDEX_MISMATCH
    with TraceReader(trace) as reader:
        assert reader.index_rebuilt
        assert reader.event(0).name == "c"


def test_a_wrong_index_entry_is_caught_when_read(tmp_path: Path) -> None:
    trace = write_synthetic_trace(tmp_path / "s.jsonl", 2000, seed=3)
    _lie_about_kind(trace, 2)  # not among the entries spot-checked at open
    with TraceReader(trace, rebuild_index=False) as reader:
        reader.event(0)
        with pytest.raises(TraceError) as err:
            reader.event(1)
    assert err.value.reason is R.INDEX_MISMATCH


def test_file_changed_under_the_reader(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(HEADER + EVENT + EVENT)
    with TraceReader(trace) as reader:
        with open(trace, "r+b") as f:
            f.seek(len(HEADER) - 1)
            f.write(b" ")  # the newline before event 0 is gone
        with pytest.raises(TraceError) as err:
            reader.event(0)
    assert err.value.reason is R.INDEX_MISMATCH


def _exercise(path: Path) -> None:
    """Open (as the CLI does, and as the viewer does: cut-short files allowed) and read
    everything; only TraceError may come out."""
    for allow in (False, True):
        _exercise_one(path, allow)


def _exercise_one(path: Path, allow_truncated: bool) -> None:
    try:
        reader = TraceReader(path, allow_truncated=allow_truncated)
    except TraceError as exc:
        assert isinstance(exc.reason, TraceErrorReason)
        return
    with reader:
        for i in range(len(reader)):
            try:
                reader.event(i)
            except TraceError as exc:
                assert exc.reason in (R.CORRUPT_LINE, R.INDEX_MISMATCH)
        list(reader.indices({k for k in reader.count_by_kind()}))


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "random.jsonl"
        trace.write_bytes(data)
        _exercise(trace)


@SETTINGS
@given(st.binary(max_size=300))
def test_a_header_then_random_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "random.jsonl"
        trace.write_bytes(HEADER + data)
        _exercise(trace)


_VALID = None


def _valid_trace() -> bytes:
    global _VALID
    if _VALID is None:
        with tempfile.TemporaryDirectory() as tmp:
            _VALID = write_synthetic_trace(Path(tmp) / "v.jsonl", 40, seed=9).read_bytes()
    return _VALID


@SETTINGS
@given(st.data())
def test_random_truncation_of_a_valid_trace(data: st.DataObject) -> None:
    valid = _valid_trace()
    cut = data.draw(st.integers(0, len(valid)))
    keep_index = data.draw(st.booleans())
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "cut.jsonl"
        trace.write_bytes(valid[:cut])
        if keep_index:  # the full trace's index, now stale
            index_path(trace).write_bytes(_index_of(valid))
        try:
            reader = TraceReader(trace)
        except TraceError as exc:
            if cut == 0:
                assert exc.reason is R.EMPTY_FILE
            elif valid[cut - 1 : cut] != b"\n":
                assert exc.reason is R.TRUNCATED
            return
        with reader:
            assert valid[cut - 1 : cut] == b"\n"
            assert len(reader) == valid[:cut].count(b"\n") - 1
            assert [e.pos.seq for e in reader.iter_events()] == list(range(len(reader)))


@SETTINGS
@given(st.data())
def test_random_corruption_of_a_valid_trace(data: st.DataObject) -> None:
    valid = bytearray(_valid_trace())
    for _ in range(data.draw(st.integers(1, 8))):
        valid[data.draw(st.integers(0, len(valid) - 1))] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "flipped.jsonl"
        trace.write_bytes(bytes(valid))
        if data.draw(st.booleans()):
            index_path(trace).write_bytes(_index_of(_valid_trace()))
        _exercise(trace)


def _index_of(content: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "i.jsonl"
        trace.write_bytes(content)
        TraceReader(trace).close()
        return index_path(trace).read_bytes()


# -- a cut-short trace opened with allow_truncated ---------------------------------------------


@SETTINGS
@given(st.data())
def test_random_truncation_opens_with_allow_truncated(data: st.DataObject) -> None:
    """A crashed run's trace, cut anywhere after its header, opens with the whole lines
    before the cut and says where it stops; the index, stale or fresh, never misleads."""
    valid = _valid_trace()
    header_end = valid.index(b"\n") + 1
    cut = data.draw(st.integers(header_end, len(valid)))
    index = data.draw(st.sampled_from(["none", "full", "cut"]))
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "cut.jsonl"
        trace.write_bytes(valid[:cut])
        if index == "full":  # the recorder wrote the index of lines that did not land
            index_path(trace).write_bytes(_index_of(valid))
        elif index == "cut":  # ... or one word for the line the cut fell in
            words = _index_of(valid)
            index_path(trace).write_bytes(words[: 8 * (valid[:cut].count(b"\n") + 1)])
        with TraceReader(trace, allow_truncated=True) as reader:
            whole = valid[:cut].count(b"\n") - 1
            assert len(reader) == whole
            assert [e.pos.seq for e in reader.iter_events()] == list(range(whole))
            if valid[cut - 1 : cut] == b"\n":
                assert reader.truncation is None
            else:
                assert reader.truncation is not None and f"byte {cut:,}" in reader.truncation
                assert reader.size == valid.rfind(b"\n", 0, cut) + 1


def test_a_cut_short_trace_keeps_its_index(tmp_path: Path) -> None:
    """The recorder's index holds one word for the partial line: it is trimmed, not a
    reason to rebuild (which would read every byte of a large trace)."""
    full = write_synthetic_trace(tmp_path / "t.jsonl", 300, seed=4)
    data = full.read_bytes()
    lines = data.splitlines(keepends=True)
    full.write_bytes(b"".join(lines[:201]) + lines[201][:10])
    words = index_path(full).read_bytes()
    index_path(full).write_bytes(words[: 8 * 202])
    assert reason_of(full) is R.TRUNCATED
    with TraceReader(full, allow_truncated=True) as reader:
        assert len(reader) == 200 and not reader.index_rebuilt
        assert reader.event(199).pos.seq == 199


def test_a_cut_inside_the_header_is_truncated_either_way(tmp_path: Path) -> None:
    trace = tmp_path / "h.jsonl"
    trace.write_bytes(HEADER[:30])
    assert reason_of(trace, allow_truncated=True) is R.TRUNCATED
