"""A new user's first hour with the perimeter (issue 17): the README's walk-through runs
twice in a row through the CLI, a second `up` never orphans the first, `down` with nothing
up is fine, `down --reset` starts afresh, a VM that ended says how, its console can be
read, and bad names get one line, not a traceback."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from tvmm.cli import main as cli
from tvmm.host import node_host
from tvmm.host.hypervisor import RunResult
from tvmm.operator import launcher


def _runner(state: Path, capsys: pytest.CaptureFixture):
    common = ["--state-dir", str(state), "--json"]

    def run(*argv: str, code: int = 0) -> dict:
        got = cli([*argv, *common])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        assert got == code, out + err
        return json.loads(out) if out.strip() else {}

    return run


def _reap(pids: list[int]) -> None:
    """The processes are this test's children: `down` returned once each had exited."""
    for pid in pids:
        try:
            assert os.waitpid(pid, os.WNOHANG)[0] == pid  # exited, not yet reaped
        except ChildProcessError:
            pass  # reaped already (subprocess reaps finished children)


def test_up_twice_refuses_and_down_twice_is_fine(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    state = tmp_path / "state"
    run = _runner(state, capsys)
    first = [p["pid"] for p in run("perimeter", "up", "--nodes", "1")["processes"]]
    try:
        run("perimeter", "up", "--nodes", "3", code=2)  # refused: nothing new starts
        assert set(launcher.running(state).values()) == set(first)
        with pytest.raises(launcher.LaunchError):  # no reset under a running perimeter
            launcher.reset(state)
        assert (state / "perimeter" / "coordinator.db").exists()
    finally:
        assert run("perimeter", "down")["stopped"] == ["coordinator", "n1"]
    assert launcher.running(state) == {}
    assert not any(launcher.is_ours(pid, state) for pid in first)
    assert run("perimeter", "down") == {"stopped": [], "reset": []}  # nothing is up: ok
    _reap(first)
    # a record left by processes that are gone (a crash, a reboot; or a pid now another
    # program's) is stale: nothing is up, and `down` clears it
    launcher.record_path(state).write_text(json.dumps(
        {"coordinator": {"pid": os.getpid(), "host": "127.0.0.1", "port": 1}}))
    assert launcher.running(state) == {}
    assert run("perimeter", "down") == {"stopped": [], "reset": []}
    assert not launcher.record_path(state).exists()


@pytest.mark.parametrize("result, shown", [
    (RunResult("exit", 3, Counter(), 0, 0, 0), "exited with status 3"),
    (RunResult("exit", -1, Counter(), 0, 0, 0), "exited with status -1"),
    (RunResult("killed", None, Counter(), 0, 0, 0, "fault policy"), "killed (fault policy)"),
    (RunResult("fault", None, Counter(), 0, 0, 0, "vector 6"), "fault (vector 6)"),
    (RunResult("refused", None, Counter(), 0, 0, 0, "BAD_STATE (host stopped)"), "stopped"),
    (None, None),
])
def test_how_a_vm_ended_is_said_in_words(result, shown) -> None:
    runner = node_host.VmRunner(node_host.PausableHost(None))  # never started: no client
    runner.result = result
    assert runner.ended == shown


def test_the_readme_walk_through_twice(tmp_path: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    monkeypatch.chdir(tmp_path)
    run = _runner(state, capsys)
    pids: list[int] = []
    for round_ in (1, 2):
        up = run("perimeter", "up", "--nodes", "3")
        pids += [p["pid"] for p in up["processes"]]
        assert up["earlier_vms"] == []  # a fresh perimeter each time
        try:
            assert run("vm", "launch", "counter", "--node", "n1")["vm"] == "counter-1"
            run("vm", "suspend", "counter-1", "--out", "ckpt.bin")
            assert run("vm", "resume", "ckpt.bin", "--node", "n2")["node"] == "n2"
            assert run("vm", "migrate", "counter-1", "--to", "n3", "--live")["node"] == "n3"
            listed = run("vm", "list")["vms"]
            assert [(v["name"], v["node"], v["version"]) for v in listed] == [
                ("counter-1", "n3", 3)]
            shown = run("vm", "console", "counter-1")  # its log, carried across the moves
            counts = [int(x) for x in re.findall(r"count=(\d+)", shown["console"])]
            assert shown["node"] == "n3" and counts  # no gap, no repeat across the moves
            assert counts == list(range(counts[0], counts[0] + len(counts)))
            if round_ == 1:
                _ended_and_console(run)
                _bad_names(run)
        finally:
            down = run("perimeter", "down", "--reset")
        assert down["stopped"] == ["coordinator", "n1", "n2", "n3"]
        assert "perimeter" in down["reset"] and not (state / "perimeter").exists()
    _reap(pids)


def _ended_and_console(run) -> None:
    """hello prints its line and exits: the list says so, and its console shows it."""
    assert run("vm", "launch", "hello", "--node", "n2")["vm"] == "hello-2"
    for _ in range(2000):  # each round trip reaches the node; hello ends in milliseconds
        out = run("vm", "console", "hello-2")
        if out["ended"]:
            break
    assert out["ended"] == "exited with status 0" and out["node"] == "n2"
    assert "hello from a tvmm guest" in out["console"]
    hello = next(v for v in run("vm", "list")["vms"] if v["name"] == "hello-2")
    assert hello["state"] == "running" and hello["ended"] == "exited with status 0"
    for argv, what in ((("suspend", "hello-2", "--out", "hello.bin"), "suspend"),
                       (("migrate", "hello-2", "--to", "n3"), "migrate")):
        refused = run("vm", *argv, code=1)  # it ended: refused, saying so in one line
        assert refused["reason"] == "ended", refused
        assert refused["error"] == ("hello-2 has ended (exited with status 0): there is "
                                    f"nothing to {what}; `tvmm vm console hello-2` shows "
                                    "its output")


def _bad_names(run) -> None:
    run("vm", "launch", "nosuch", "--node", "n1", code=2)
    Path("broken.c").write_text("int main(void) { return 0;\n")
    run("vm", "launch", "broken.c", "--node", "n1", code=2)  # the compiler's error, one line
    Path("broken.elf").write_bytes(b"not an ELF")
    run("vm", "launch", "broken.elf", "--node", "n1", code=2)
    assert run("vm", "launch", "hello", "--node", "n9", code=1)["reason"] == "not_in_perimeter"
    assert run("vm", "suspend", "nosuch-1", "--out", "x.bin", code=1)["reason"] == "no_vm"
    run("vm", "suspend", "counter-1", "--out", "no/such/dir/x.bin", code=2)
    assert run("vm", "migrate", "counter-1", "--to", "n9", code=1)["reason"] == \
        "not_in_perimeter"
    assert run("vm", "console", "nosuch-1", code=1)["reason"] == "no_vm"
    run("vm", "resume", "no-such.bin", "--node", "n1", code=2)
    run("vm", "list", "--coordinator", "nonsense", code=2)


def test_a_piped_suspend_prints_no_empty_line(capsys: pytest.CaptureFixture) -> None:
    """`tvmm vm suspend … | cat` began with an empty line: the progress bar, transient on a
    terminal, leaves one behind when the output is not a terminal.  Piped, there is none."""
    from tvmm.commands.perimeter import _with_progress

    assert _with_progress("suspending counter-1", lambda: 7, quiet=False) == 7
    assert capsys.readouterr().out == ""
