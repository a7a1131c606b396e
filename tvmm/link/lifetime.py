"""A process of a run lives no longer than the launcher that started it.

The launcher ends its TEE and host processes itself on Ctrl-C, SIGTERM or a time limit
(tvmm.harness.launcher); SIGKILL (or a crash of the interpreter) gives it no chance to.
A TEE inside a guest that never exits would then spin on at full speed with no parent,
since nothing reaches it but a signal.  So each child asks the kernel, first thing, for
SIGKILL when its parent dies (Linux PR_SET_PDEATHSIG), then checks that the parent is
still the launcher: one that died before the request leaves the child already adopted.

SIGKILL, not SIGTERM: a TEE inside Unicorn runs no Python signal handler, and a process
whose launcher is gone has no one to hand a result to.  The signal follows the *thread*
that started the child, so the launcher starts its children from a thread that lives as
long as the run (the main thread, or a pool's worker).
"""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def end_with_parent(parent: int) -> bool:
    """Die with ``parent`` (the launcher's pid); end at once if it has died already.
    False where the kernel has no such request (not Linux): the child then lives on."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # the launcher died before the request: no signal will come
        os._exit(1)
    return True
