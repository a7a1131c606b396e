"""What a timer exit tells the host (issue 15.1): at shim no count of instructions retired,
so the step policy's random extension stays unknown after the exit; below shim the count.
The TEE's own count stays exact and drives the policies; the honest host counts with the
quanta it asked for."""

from __future__ import annotations

import pytest

from tvmm.abi.types import ExitReason, Field, Level
from tvmm.machine import boot


def _timer_exits(launch, level: str, quantum: int, n: int = 40):
    v = launch("modexp", level)
    ctx, out = v.vm.vcpus[0], []
    while len(out) < n:
        before = ctx.retired
        rec = v.client.enter(v.vm_id, quantum=quantum, state=v.host.state).exit
        v.host.state = rec.state
        if rec.reason == ExitReason.TIMER:
            out.append((rec, ctx.retired - before))
        elif not v.host.on_exit(rec) or rec.reason == ExitReason.SHUTDOWN:
            break
    return out


@pytest.mark.parametrize("quantum", [1, 100, 1000])
def test_a_timer_exit_shows_no_count_at_shim(launch, quantum):
    exits = _timer_exits(launch, "shim", quantum)
    assert exits and all(rec.fields == () for rec, _ in exits)
    counted = [n for _, n in exits]  # inside: the quantum plus the policy's draw
    assert all(quantum < n <= quantum + 33 for n in counted) if quantum < 32 else \
        all(quantum <= n <= quantum + 32 for n in counted)
    assert len(set(counted)) > 1  # drawn, not fixed: what the host would have read


@pytest.mark.parametrize("level", ["sev-es", "snp"])
def test_a_timer_exit_shows_the_count_below_shim(launch, level):
    exits = _timer_exits(launch, level, 100)
    assert exits and all(rec.fields == ((Field.RETIRED, 100),) and n == 100
                         for rec, n in exits)


def test_the_honest_host_runs_at_shim_with_a_quantum():
    report = boot("modexp", Level.SHIM, seed=3, quantum=500)
    assert report.how == "exit" and report.status == 0 and report.violations == []
    assert report.retired == 500 * report.exits["timer"] > 0  # what it asked for


def test_the_timer_exits_fast_path_shows_what_the_table_allows():
    """The exit path hands a timer exit over through views.timer_fields, not the generic
    filter: both must give the host the same fields, in the same order, at every view."""
    from shim.views import View, host_fields, timer_fields

    for view in View:
        for retired, rip in ((64, 0x1234), (1, 0), (2**64 - 1, 2**64 - 1)):
            generic = host_fields(view, ExitReason.TIMER, {Field.RETIRED: retired,
                                                            Field.RIP: rip})
            assert timer_fields(view, retired, rip) == generic
    assert timer_fields(View.SANITISED, 64, 0x1234) == ()
