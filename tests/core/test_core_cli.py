"""The command line, as a user runs it: exit codes, --json, clear errors."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tvmm.cli import main


def run_json(capsys, *argv: str) -> tuple[int, object]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_boot_json(capsys):
    code, report = run_json(capsys, "boot", "hello", "--level", "shim")
    assert code == 0 and report["how"] == "exit" and report["status"] == 0
    assert report["console"] == "hello from a tvmm guest\n"


def test_boot_with_timer_counts_instructions(capsys):
    code, report = run_json(capsys, "boot", "modexp", "--level", "snp", "--quantum", "500")
    assert code == 0 and report["retired"] > 0 and report["mips"] > 0


def test_guests_json(capsys):
    code, rows = run_json(capsys, "guests")
    assert code == 0 and {r["name"] for r in rows} >= {"hello", "modexp", "password"}


@pytest.mark.parametrize("argv, message", [
    (["boot", "nosuch"], "no sample guest"),
    (["boot", "/etc/hostname"], "not a readable ELF"),
    (["boot", "hello", "--set", "bogus=1"], "unknown policy setting"),
    (["boot", "hello", "--set", "nokeyvalue"], "expected KEY=VALUE"),
    (["attack", "--guest", "modexp"], "name an attack"),
    (["attack", "memory-scan", "--guest", "modexp", "--secret", "xyz"], "--secret: non-hexadecimal"),
    (["attack", "memory-scan", "--guest", "modexp", "--secret", "0102"], "must be 8 bytes"),
    (["attack", "memory-scan", "--guest", "password", "--secret", "41424344454647ff"],
     "characters must be from"),
    (["verify", "--chain", "nosuchdir"], "--chain nosuchdir: no such directory"),
    (["verify", "--chain", "/etc/hostname"], "--chain /etc/hostname: not a directory"),
])
def test_clear_errors(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_attack_with_a_fixed_secret_scores_against_it(capsys):
    """--secret replaces the OS draw (debugging, replay): the verdict records that truth."""
    secret = "1122334455667788"
    code, verdict = run_json(capsys, "attack", "memory-scan", "--guest", "modexp", "--level",
                             "plain", "--secret", secret)
    assert code == 0 and verdict["secret"] == secret and verdict["full_recovery"]
    assert verdict["log2_rank"] == 0 and verdict["leaked_bits"] == 64


def test_python_dash_m(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tvmm", "boot", "hello", "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["status"] == 0


def test_trace_round_trip_through_the_cli(tmp_path, capsys):
    trace = tmp_path / "run.jsonl"
    assert main(["boot", "password", "--level", "shim", "--trace", str(trace), "--json"]) == 1
    capsys.readouterr()
    code, stats = run_json(capsys, "trace", "stats", str(trace))
    assert code == 0
    out = tmp_path / "run.json"
    code, info = run_json(capsys, "trace", "export", str(trace), "--perfetto", str(out))
    assert code == 0 and info["events"] > 0 and json.loads(out.read_text())["traceEvents"]


def test_json_into_a_closed_pipe_is_not_an_error():
    """`tvmm attacks --json | head -1`: the reader has gone; a quiet exit, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: EPIPE for certain
    try:
        proc = subprocess.run([sys.executable, "-m", "tvmm", "attacks", "--json"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_a_missing_trace_is_named_once(capsys, tmp_path):
    missing = tmp_path / "nosuch.jsonl"
    assert main(["trace", "stats", str(missing)]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at the terminal width
    assert "no such file" in err and err.count("nosuch.jsonl") == 1


def test_a_killed_vm_says_why_in_words(capsys):
    """A single-stepping host at shim is killed by the step policy: the user reads which."""
    code, report = run_json(capsys, "boot", "counter", "--level", "shim", "--quantum", "1")
    assert report["how"] == "killed" and "step policy" in report["detail"]


def test_a_guest_gets_its_secret_the_way_its_level_can(capsys):
    """Below snp no report is signed, so the default is the launch secret there; from snp
    the owner's broker releases it after verifying the report.  Either way the same secret
    arrives (same seed, same modexp result); a refused one shows in the result."""
    results = {}
    for level, path in (("plain", "launch"), ("sev-es", "launch"), ("snp", "attested"),
                        ("shim", "attested")):
        _, report = run_json(capsys, "boot", "modexp", "--level", level)
        assert report["secret_path"] == path and report["status"] == 0
        results[level] = report["console"]
    assert len(set(results.values())) == 1
    _, refused = run_json(capsys, "boot", "modexp", "--level", "plain", "--secret-path",
                          "attested")
    assert refused["key_release"]["refusal"] and refused["console"] != results["plain"]


def test_an_attacks_table_says_words_not_python_values(capsys):
    """The console table of one attack shows "-", "yes", "no" where --json has null, true
    and false ("detected after exits None" read like a bug)."""
    assert main(["attack", "memory-scan", "--guest", "modexp", "--level", "plain",
                 "--secret", "1122334455667788"]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and "True" not in out and "False" not in out
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines() if "  " in line}
    assert rows["full recovery"].split()[-1] == "yes"
    assert rows["detected"].split()[-1] == "no"
    assert rows["detected after exits"].split()[-1] == "-"


@pytest.mark.parametrize("argv", [
    ["boot", "hello", "--trace", "/nonexistent/dir/run.jsonl"],
    ["attack", "page-fault", "--guest", "modexp", "--level", "snp", "--trace",
     "/nonexistent/dir/pf.jsonl"],
    ["run", "/bin/busybox", "true", "--trace", "/nonexistent/dir/run.jsonl"],
    # the matrix wrote its files only after every cell had run (minutes), with a traceback
    ["matrix", "--attack", "page-fault", "--markdown", "/nonexistent/dir/results.md"],
    ["matrix", "--attack", "page-fault", "--json", "/nonexistent/dir/results.json"],
])
def test_a_trace_into_a_missing_directory_is_one_line_before_anything_runs(capsys, argv):
    """`tvmm attack … --trace /missing/pf.jsonl` printed a traceback from the TEE's
    process after the build and launch: the directory is checked first."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    flag = argv[-2]
    assert f"argument {flag}: /nonexistent/dir/" in err and "no such directory" in err
    assert "Traceback" not in err


def test_a_trace_in_the_current_directory_or_onto_a_directory(tmp_path):
    from tvmm.commands.output import writable_file

    assert writable_file("run.jsonl") == Path("run.jsonl")
    assert writable_file(str(tmp_path / "run.jsonl")) == tmp_path / "run.jsonl"
    with pytest.raises(argparse.ArgumentTypeError, match="is a directory"):
        writable_file(str(tmp_path))
    (tmp_path / "f").write_text("")
    with pytest.raises(argparse.ArgumentTypeError, match="not a directory"):
        writable_file(str(tmp_path / "f" / "run.jsonl"))


def _gone(pid: int) -> bool:
    """No such process, or a zombie (ended, waiting for its new parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_killed_launcher_takes_its_tee_and_host_with_it(tmp_path):
    """SIGKILL of `tvmm boot` gives the launcher no chance to end its processes: the TEE,
    in a guest that never exits, spun on as an orphan.  Now each child has the kernel kill
    it when the launcher dies (PR_SET_PDEATHSIG, tvmm.link.lifetime)."""
    import signal
    import time

    spin = tmp_path / "spin.c"
    spin.write_text('#include "tvmm.h"\nint main(void) { puts("spin\\n"); for (;;) {} }\n')
    proc = subprocess.Popen([sys.executable, "-m", "tvmm", "boot", str(spin), "--level",
                             "shim", "--time-limit", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    children: list[int] = []
    try:
        assert proc.stdout.readline() == b"spin\n"  # the guest runs
        children = [int(p) for t in Path(f"/proc/{proc.pid}/task").iterdir()
                    for p in (t / "children").read_text().split()]
        assert len(children) == 2  # the TEE's process and the host's
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while not all(_gone(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the kernel's view, bounded by the deadline
        assert [c for c in children if not _gone(c)] == []
    finally:
        for child in children:  # on failure, leave nothing spinning behind
            if not _gone(child):
                os.kill(child, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_terminated_boot_stops_its_tee_and_host(tmp_path):
    """`timeout tvmm boot …` (SIGTERM) ended the launcher alone: the TEE, in a guest that
    never exits and has no timer, ran on at full speed with no parent. Now SIGTERM ends the
    run as Ctrl-C does, its processes with it."""
    import signal

    spin = tmp_path / "spin.c"
    spin.write_text('#include "tvmm.h"\nint main(void) { puts("spin\\n"); for (;;) {} }\n')
    proc = subprocess.Popen([sys.executable, "-m", "tvmm", "boot", str(spin), "--level",
                             "shim"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"spin\n"  # the guest runs
        children = [int(p) for t in Path(f"/proc/{proc.pid}/task").iterdir()
                    for p in (t / "children").read_text().split()]
        assert len(children) == 2  # the TEE's process and the host's
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        assert "Traceback" not in proc.stderr.read().decode()
        # the launcher reaped both before it returned
        assert not [c for c in children if Path(f"/proc/{c}").exists()], children
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
