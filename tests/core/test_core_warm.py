"""Warm starts (a campaign's): each run's TEE and host are forks of a zygote that has only
imported its program — fresh processes, not the starter's children and not one another's,
with keys of their own — and a boot through them is the boot a fresh start gives.  And the
link's spin policy: an end confined to one core never spins (its peer could not answer)."""

from __future__ import annotations

import os

import pytest

from tvmm.abi.types import Level
from tvmm.harness import launcher
from tvmm.harness.boot import boot as boot_across
from tvmm.link import mailbox


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_warm_runs_are_fresh_forks_of_the_zygotes(monkeypatch):
    cold = boot_across("hello", Level.SHIM, seed=1)
    seen: list[tuple[launcher.Session, int, int]] = []
    start = launcher.start

    def watched(**kw):
        session = start(**kw)
        seen.append((session, _ppid(session.tee.pid), _ppid(session.host.pid)))
        return session

    monkeypatch.setattr(launcher, "start", watched)
    with launcher.warm():
        zygotes = {m: z.proc for m, z in launcher._warm.zygotes.items()}
        warm = [boot_across("hello", Level.SHIM, seed=1, link=link)
                for link in ("mailbox", "socket")]
    assert [(r.how, r.console) for r in warm] == [(cold.how, cold.console)] * 2
    tee_z, host_z = (zygotes[m].pid for m in launcher.WARM_MODULES)
    assert [(t, h) for _, t, h in seen] == [(tee_z, host_z)] * 2
    a, b = (s for s, _, _ in seen)
    assert isinstance(a.tee, launcher.Forked) and a.tee.pid != b.tee.pid
    assert a.launch_key.public_numbers() != b.launch_key.public_numbers()
    assert all(s.tee.poll() and s.host.poll() for s in (a, b))
    assert all(z.poll() is not None for z in zygotes.values())  # ended with the block


def test_a_warm_run_can_be_killed():
    with launcher.warm():
        session = launcher.start()
        session.host.kill()
        session.host.wait(timeout=10)
        session.close()  # the TEE sees its host gone and answers as after any run
    assert session.tee.poll() and session.host.poll()


def test_an_end_confined_to_one_core_never_spins():
    assert mailbox.default_spin_s(1) == 0.0
    assert mailbox.default_spin_s(2) == mailbox.DEFAULT_SPIN_S
    cores = os.sched_getaffinity(0)
    if len(cores) < 2:
        pytest.skip("needs two cores to tell a pinned end from a free one")
    fds = mailbox.create(1 << 12)
    ends = []
    try:
        ends.append(mailbox.MailboxServer(fds.server_spec()))
        os.sched_setaffinity(0, {min(cores)})
        try:
            ends.append(mailbox.MailboxClient(fds.client_spec()))
        finally:
            os.sched_setaffinity(0, cores)
        assert [e.spin_s for e in ends] == [mailbox.DEFAULT_SPIN_S, 0.0]
        ends[1]._put(b"ping")
        assert ends[0].recv() == b"ping"
        ends[0].send(b"pong")
        assert ends[1]._take() == b"pong"
    finally:
        for e in ends:
            e.close()
        os.close(fds.memory)
