"""The campaign's pieces that run no cell: the key and row codec, the store, the Wilson
interval, the aggregates and the results doc (regenerated from its own cells file)."""

from __future__ import annotations

import sqlite3
from dataclasses import fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.policies.config import PolicyConfig, Response, StepMode
from tvmm.campaign import report
from tvmm.campaign.keys import (
    CampaignError,
    CellKey,
    decode_verdict,
    encode_verdict,
    policy_from_key,
    policy_key,
)
from tvmm.campaign.stats import aggregate, wilson
from tvmm.campaign.store import Store
from tvmm.judge import Verdict

text = st.text(min_size=1, max_size=20)
LEVELS = ("plain", "sev", "sev-es", "snp", "shim")


def _field(f) -> st.SearchStrategy:
    if f.name in ("step_mode",):
        return st.sampled_from(list(StepMode))
    if f.name.endswith("response"):
        return st.sampled_from(list(Response))
    if isinstance(getattr(PolicyConfig(), f.name), bool):
        return st.booleans()
    return st.integers(0, 1 << 31)


policies = st.fixed_dictionaries({f.name: _field(f) for f in fields(PolicyConfig)}).map(
    lambda d: PolicyConfig(**d))
keys = st.builds(CellKey, text, text, st.sampled_from(LEVELS),
                 policies.map(policy_key), st.integers(0, 2**62), st.text(max_size=12))
verdicts = st.builds(
    Verdict, attack=text, guest=text, level=st.sampled_from(LEVELS),
    kind=st.sampled_from(["confidentiality", "integrity", "benign"]),
    n_bits=st.floats(0, 4096), bits_correct=st.floats(0, 4096),
    leaked_bits=st.floats(0, 4096), full_recovery=st.booleans(), detected=st.booleans(),
    detected_after_exits=st.none() | st.integers(0, 10**9),
    integrity_violated=st.booleans(), blocked=st.booleans(), exits=st.integers(0, 10**9),
    wall_s=st.floats(0, 1e6), stepping=st.none() | st.dictionaries(text, st.integers()),
    detail=st.text(), notes=st.dictionaries(text, st.booleans() | st.integers() | text))


@given(policies)
def test_a_policy_setting_round_trips_through_its_key(config):
    assert policy_from_key(policy_key(config)) == config


def test_the_default_policy_is_one_key_however_spelled():
    assert policy_key(PolicyConfig()) == policy_key(None) == "default"
    setting = replace(PolicyConfig(), fault_budget=16, step_mode=StepMode.DETECT)
    assert policy_key(setting) == "step_mode=detect,fault_budget=16"


@pytest.mark.parametrize("bad", ["fault_budget", "no_such=1", "step_mode=sideways",
                                 "fault_budget=-1", "jitter=maybe"])
def test_a_bad_policy_key_is_one_error(bad):
    with pytest.raises(CampaignError):
        policy_from_key(bad)


@settings(max_examples=50)
@given(verdicts)
def test_a_verdict_round_trips_through_its_row(v):
    assert decode_verdict(encode_verdict(v)) == v


@settings(max_examples=30)
@given(st.lists(st.tuples(keys, verdicts), max_size=4, unique_by=lambda kv: kv[0]))
def test_the_store_gives_back_what_was_put(items):
    with Store(":memory:") as store:
        for k, v in items:
            store.put(k, v)
        assert store.keys() == [k for k, _ in items]
        assert [(k, v) for k, v, _ in store.rows()] == items
        assert store.done(k for k, _ in items) == {k for k, _ in items}
        for k, v in items:
            assert store.get(k) == v


def test_each_put_is_durable_on_its_own(tmp_path):
    items = [(CellKey("a", "g", "shim", "default", s, "c0de"), _verdict(float(s)))
             for s in range(3)]
    with Store(tmp_path / "s.sqlite") as store:
        for k, v in items:
            store.put(k, v)
    with Store(tmp_path / "s.sqlite") as store:
        assert [(k, v) for k, v, _ in store.rows()] == items


def test_a_file_that_is_not_a_store_is_one_error(tmp_path):
    path = tmp_path / "x.sqlite"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(CampaignError, match="not a campaign store"):
        Store(path)
    assert sqlite3.sqlite_version  # the library itself is there


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Statistics
# in Medicine 17:857-872, Table I, method 3 (score interval without continuity correction).
@pytest.mark.parametrize("k,n,lo,hi", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                       (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_interval_matches_published_values(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_interval_at_the_edges():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(5, 5)
    assert hi == 1.0 and 0.5 < lo < 0.6  # 5/5 at 95 %: [0.566, 1]


def _verdict(bits: float, *, kind: str = "confidentiality", detected: bool = False,
             attack: str = "a", level: str = "shim") -> Verdict:
    return Verdict(attack=attack, guest="g", level=level, kind=kind, n_bits=64.0,
                   bits_correct=bits, leaked_bits=bits, full_recovery=bits >= 64,
                   detected=detected, detected_after_exits=None, integrity_violated=False,
                   blocked=False, exits=10, wall_s=0.5, detail=f"{bits} bits")


@given(st.lists(st.floats(0, 64), min_size=1, max_size=9))
def test_a_cell_never_reads_zero_where_a_seed_leaked(bits):
    (agg,) = aggregate((s, "default", _verdict(b)) for s, b in enumerate(bits))
    shown = report.cell_text(agg)
    if max(bits) >= 1:
        assert f"{max(bits):.0f}" in shown and "✗" not in shown
    else:
        assert shown == "✗"


def test_aggregate_counts_successes_and_detections_per_seed():
    runs = [_verdict(0), _verdict(6), _verdict(0), _verdict(6, detected=True), _verdict(0)]
    (agg,) = aggregate((s, "default", v) for s, v in enumerate(runs))
    assert (agg.median_bits, agg.min_bits, agg.max_bits) == (0, 0, 6)
    assert agg.classes == ("none", "partial", "none", "detected", "none")
    assert (agg.successes, agg.detected, agg.n) == (1, 1, 5)
    assert report.cell_text(agg) == "detected 1/5 · 0 b (0–6)"


def _rows() -> list:
    out = []
    for seed in range(5):
        for attack, level, bits in (("pf", "snp", 64.0), ("pf", "shim", seed % 2 * 3.0),
                                    ("scan", "plain", 41.0)):
            key = CellKey(attack, "g", level, "default", seed, "c0de")
            out.append((key, _verdict(bits, attack=attack, level=level)))
    return out


def test_results_doc_is_regenerated_from_its_cells_file(tmp_path):
    meta = report.Meta.now("tvmm campaign --seeds 5 --markdown x.md", "c0de", "abc", 15, 9.0,
                           "2 local worker processes")
    data = report.write_results(tmp_path / "results.md", meta, _rows())
    again_meta, again_rows = report.load_cells(data.read_text())
    assert again_meta == meta and again_rows == _rows()
    text = (tmp_path / "results.md").read_text()
    assert report.results_markdown(again_meta, again_rows, data.name) == text
    assert "5 seeds per cell (seeds 0–4)" in text and "15 runs, finished in 9 s" in text
    assert "| pf | g | — | — | — | **64 b** | **0 b (0–3)** |" in text
    assert "- pf on g: 0 b (0–3) — seeds leaking: 2/5" in text


def test_a_damaged_cells_file_is_one_error():
    with pytest.raises(CampaignError, match="not a campaign's cells file"):
        report.load_cells('{"meta": {}}\n')


def test_a_residual_states_its_bits_per_launch_and_per_fault():
    """Issue 15: a residual at shim is stated per owner launch secret and per fault the
    attack says it spent (its notes), mean over the seeds; a cell whose attack does not
    say shows neither."""
    rows = []
    for seed, (bits, launches, faults) in enumerate([(40.0, 2, 10), (20.0, 1, 20)]):
        v = _verdict(bits, attack="tb")
        v.notes.update(launches=launches, faults=faults)
        rows.append((CellKey("tb", "g", "shim", "default", seed, "c0de"), v))
        rows.append((CellKey("pf", "g", "shim", "default", seed, "c0de"), _verdict(3.0,
                                                                                   attack="pf")))
    meta = report.Meta.now("x", "c0de", "abc", 4, 1.0, "1")
    text = report.results_markdown(meta, rows, "x.jsonl")
    assert ("- tb on g: 30 b (20–40) — seeds leaking: 2/2; 20.0 b a launch (1.5 launches, "
            "mean); 2.50 b a fault (15.0 faults, mean)") in text
    assert "- pf on g: 3 b — seeds leaking: 2/2\n" in text
