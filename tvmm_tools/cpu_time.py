"""CPU seconds a benchmark spent, its own and its processes'."""

from __future__ import annotations

import resource


def cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (a child counts
    once it is waited for: end a run's zygotes before reading)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
