"""The host's separation (tvmm.link.privsep) takes the TEE's process away from a host the
launcher started as root: `proc-mem` reads the TEE's memory through /proc and the chip's
state files.  Next to the platform (the in-process path) its memory probe finds the secret,
and across the boundary with the separation turned off as root it finds it in the TEE's
process — proof that the probe works; separated, fresh or a warm zygote's fork, it finds
nothing, and none of the state files."""

from __future__ import annotations

import os
import stat

import pytest

from tvmm.abi.types import Level
from tvmm.harness import launcher
from tvmm.harness.judge import run_attack as run_across
from tvmm.judge import run_attack as run_in_process
from tvmm.link import privsep
from tvmm.machine import chip_chain
from tvmm_tools.attacks.proc_mem import ProcMem

root = pytest.mark.skipif(os.geteuid() != 0, reason="separation applies to a root launcher")


@pytest.fixture(autouse=True)
def _chip_on_disk():
    """The machine's manufacturer and chip exist (their keys on disk) before each run."""
    chip_chain()


def test_the_probe_finds_the_secret_in_process():
    verdict = run_in_process(ProcMem(), "modexp", Level.SHIM, seed=0)
    assert verdict.full_recovery and verdict.notes["memory"]


def _separated(verdict) -> None:
    assert not verdict.notes.get("error"), verdict.detail
    assert verdict.notes["printed"]  # the victim ran: candidates were checkable
    assert verdict.notes["host_separation"] in ("full", "caps")
    assert verdict.notes["tee_processes"] >= 1  # the TEE was found, and refused
    assert any(not d.startswith("self") for d in verdict.notes["denied"])
    assert verdict.leaked_bits == 0 and not verdict.notes["memory"]
    if verdict.notes["host_separation"] == "full":
        assert verdict.notes["state_files"] == []


@root
def test_a_separated_host_reads_neither_the_tees_memory_nor_the_chip(tmp_path):
    trace = tmp_path / "run.jsonl"
    _separated(run_across(ProcMem.name, ProcMem.kind, "modexp", Level.SHIM, seed=0,
                          trace=trace))
    # sealed from the host while the run lasted, the user's to read after
    assert stat.S_IMODE(trace.stat().st_mode) & 0o600 == 0o600 and trace.read_bytes()


@root
def test_a_warm_hosts_forks_are_separated_too():
    with launcher.warm():
        for level in (Level.SNP, Level.PLAIN):
            _separated(run_across(ProcMem.name, ProcMem.kind, "modexp", level, seed=1))


@root
def test_unseparated_as_root_the_probe_reads_the_tee(monkeypatch):
    monkeypatch.setenv(launcher.SEPARATION_ENV, "off")
    verdict = run_across(ProcMem.name, ProcMem.kind, "modexp", Level.SNP, seed=0)
    assert verdict.notes["host_separation"] == "none"
    assert verdict.full_recovery and verdict.notes["memory"], verdict.detail
    assert any(f.endswith("fuse") for f in verdict.notes["state_files"])  # the chip's


def test_not_root_nothing_is_dropped(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert launcher.host_separation() == "none" and launcher.host_spec("none") is None


def test_capability_sets_are_read_from_status():
    caps = privsep.status_caps("CapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n"
                               "NoNewPrivs:\t1\nName:\tx\n")
    assert caps == {"CapInh": 0, "CapEff": (1 << 41) - 1, "NoNewPrivs": 1}


WRITER = '''
from pathlib import Path

import tvmm
from tvmm_tools.attacks.base import Attack, Outcome


class Writer(Attack):
    name = "writer"
    kind = "integrity"

    def run(self, ctx):
        wrote = []
        for path in (Path(tvmm.__file__).parent / "PROBE", Path(TARGET)):
            try:
                path.write_text("the host was here")
                wrote.append(str(path))
            except OSError:
                pass
        return Outcome(notes={"wrote": wrote})
'''


@root
def test_a_separated_host_changes_no_trusted_file(tmp_path):
    """Trusted code, and the judge's own files, stay as they were: every mount is
    read-only to the host (and its /tmp is its own)."""
    target = tmp_path / "judges-file"
    attack = tmp_path / "writer.py"
    attack.write_text(WRITER.replace("TARGET", repr(str(target))))
    verdict = run_across(None, "?", "modexp", Level.PLAIN, seed=0, file=attack)
    assert not verdict.notes.get("error"), verdict.detail
    assert verdict.notes["wrote"] == [] and not target.exists()


PEEK = '''
import os, sys
from tvmm.link import privsep
privsep.separate({"caps": True})
if sys.argv[1] == "wait":
    print(os.getpid(), flush=True)
    sys.stdin.read()
else:
    for name in ("mem", "environ", "maps", "fd/0"):
        path = f"/proc/{sys.argv[1]}/{name}"
        try:
            if name.startswith("fd/"):
                os.readlink(path)  # where the descriptor leads (the mailbox's memfd)
            else:
                with open(path, "rb") as f:
                    f.read(1)
            print("read", name)
        except OSError:
            print("refused", name)
'''


@root
def test_a_separated_host_cannot_read_another_separated_host():
    """An outside red team's host read other runs' hosts (uid 0 without capabilities, as it
    was): /proc/PID/maps, environ, its descriptors (the mailbox) and mem.  Each host is now
    not dumpable, so another one is refused all of them."""
    import subprocess
    import sys

    waiting = subprocess.Popen([sys.executable, "-c", PEEK, "wait"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        pid = int(waiting.stdout.readline())
        peek = subprocess.run([sys.executable, "-c", PEEK, str(pid)], capture_output=True,
                              text=True, timeout=60)
    finally:
        waiting.communicate("", timeout=60)
    assert peek.stdout.split("\n")[:-1] == [f"refused {n}" for n in
                                            ("mem", "environ", "maps", "fd/0")], peek
