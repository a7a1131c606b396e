"""Benchmarks run only when asked (pytest -m bench); a smoke run keeps the script working."""

from __future__ import annotations

import pytest

from tvmm.abi.types import Level
from tvmm_tools import bench_core


def test_bench_pieces_run():
    image = bench_core.compute_image()
    assert bench_core.bare_unicorn(image) > 0
    tvmm_s, bare_s = bench_core.round_trip(Level.SNP, 1_000, 50)
    assert tvmm_s > 0 and bare_s > 0


@pytest.mark.bench
def test_core_benchmark_ratios():
    results = bench_core.run(rounds=3)
    for key in ("compute_no_timer_plain", "compute_timer_shim", "exit_round_trip_shim",
                "single_step_sev-es"):
        assert key in results
    print(results)


def _marks(tmp_path):
    import shutil
    from pathlib import Path

    if shutil.which("gcc") is None or not Path("/usr/include/valgrind/callgrind.h").exists():
        pytest.skip("needs gcc and valgrind's headers")
    return bench_core.build_marks(tmp_path)


def test_the_counted_phases_run_with_the_guest_standing_still(tmp_path):
    """Outside valgrind the marks do nothing: the phases run, every exit a timer exit
    (timer_exits raises on any other), and the stubbed uc_emu_start leaves the guest where
    it was, so a count cannot move with the guest's phase."""
    before, after = bench_core.count_phases(Level.SHIM, 64, 20, str(_marks(tmp_path)))
    assert before == after


@pytest.mark.bench
def test_instructions_per_exit_are_counted_per_side():
    for level, quantum in bench_core.COUNTED:
        r = bench_core.instructions_per_exit(level, quantum, exits=200)
        assert r["tee"] > r["host"] > r["mailbox_end"] > 0
        print(r)


def test_the_boundary_round_trip_measures_all_three_sides():
    """One short round: the exit across the boundary, bare stop/resume and the bare link's
    round trip are all measured, and the ratio is theirs."""
    r = bench_core.boundary_round_trip(Level.SHIM, 64, 200, 1, link="socket")
    assert r["across_us"] > 0 and r["bare_us"] > 0 and r["transport_us"] > 0
    assert r["host_cpu_us"] > 0 and r["tee_cpu_us"] > 0  # both processes did the work
    # the ratio is computed before the rounds' times are rounded for the report: the two
    # agree to the report's last digit, give or take one
    assert r["cost_vs_bare_plus_transport"] == pytest.approx(
        r["rounds"][0][0] / (r["rounds"][0][1] + r["rounds"][0][2]), abs=0.011)


def test_bench_writes_its_block_of_the_doc_and_nothing_else(tmp_path):
    from tvmm.commands.bench import BLOCK, write_docs

    doc = tmp_path / "performance.md"
    doc.write_text(f"prose before\n<!-- {BLOCK}:begin -->\nold\n<!-- {BLOCK}:end -->\nafter\n")
    write_docs(doc, {"exit_round_trip_shim_across_mailbox": {
        "quantum": 64, "link": "mailbox", "across_us": 30.0, "bare_us": 10.0,
        "transport_us": 5.0, "cost_vs_bare_plus_transport": 2.0, "exits_per_s": 33_333,
        "host_cpu_us": 12.5, "tee_cpu_us": 17.5}})
    text = doc.read_text()
    assert text.startswith("prose before\n") and text.endswith("\nafter\n")
    assert "old" not in text and "| 2.00× |" in text and "33,333 exits/s" in text
    assert "host 12.5 µs, TEE 17.5 µs" in text


def test_every_ratio_of_tvmm_bench_has_one_wording_and_a_legend(capsys):
    """Rows measure a speed, a cost per exit or a rate; the table shows each as tvmm's time
    over the baseline's, so one column reads one way (1.00× as fast, lower is better)."""
    from tvmm.commands.bench import LEGEND, doc_block, show

    rows = {  # one row of each shape tvmm_tools/bench_core writes
        "compute": {"tvmm_s": 0.2, "bare_s": 0.1, "speed_vs_bare": 0.5},
        "round_trip": {"quantum": 64, "tvmm_us": 30.0, "bare_us": 10.0, "cost_vs_bare": 3.0},
        "step": {"exits_per_s": 1000, "bare_steps_per_s": 4000},
        "across": {"quantum": 64, "link": "socket", "across_us": 60.0, "bare_us": 10.0,
                   "transport_us": 10.0, "cost_vs_bare_plus_transport": 3.0,
                   "exits_per_s": 16667},
    }
    show({"guest": "compute", **rows})
    out = capsys.readouterr().out
    table = [[c.strip() for c in line.split("│")] for line in out.splitlines()]
    cells = {cols[1]: cols[-2] for cols in table if len(cols) > 4 and cols[1] in rows}
    assert cells == {"compute": "2.00×", "round_trip": "3.00×", "step": "4.00×",
                     "across": "3.00×"}, out
    assert "× speed" not in out and "× cost" not in out
    assert " ".join(LEGEND.split()[:6]) in " ".join(out.split())
    block = doc_block(rows)
    assert [r.rsplit("|", 2)[-2].strip() for r in block.splitlines() if r.startswith("| ")
            and not r.startswith("| measure")] == ["2.00×", "3.00×", "4.00×", "3.00×"]
    assert "lower is better" in block
    timed = doc_block({**rows, "seconds_per_side": 2.0, "rounds": 3})
    assert "for 2 s a round, 3 rounds" in " ".join(timed.split())


def test_bench_tells_each_figure_before_measuring_it(monkeypatch, capsys):
    """A full tvmm bench takes minutes: each figure is announced on stderr before it is
    measured, one line each, in the order of the table (the timing loops are replaced by
    constants here: this checks the announcements, not the figures)."""
    from tvmm.commands.bench import tell_progress

    measured: list[str] = []
    told: list[tuple[str, int, int]] = []

    def note(what):
        measured.append(what)
        assert len(told) == len({k for k, _, _ in told})  # one line per figure
        return what

    monkeypatch.setattr(bench_core, "for_seconds", lambda f, s: note(told[-1][0]) and 1.0)
    monkeypatch.setattr(bench_core, "round_trip",
                        lambda *a, **k: note(told[-1][0]) and (2e-6, 1e-6))
    monkeypatch.setattr(bench_core, "boundary_round_trip",
                        lambda *a, **k: note(told[-1][0]) and {"across_us": 1.0})
    results = bench_core.run(rounds=1, quick=True,
                             progress=lambda *a: (told.append(a), tell_progress(*a)))
    names = [k for k, _, _ in told]
    assert names == [k for k in results if isinstance(results[k], dict)]
    assert [i for _, i, _ in told] == list(range(1, len(told) + 1))
    assert {n for _, _, n in told} == {len(told)}
    assert set(measured) == set(names)  # every measurement came after its announcement
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"measuring 1 of {len(told)}: compute_no_timer_plain")
    assert "the table comes at the end" in err[0] and len(err) == len(told)
