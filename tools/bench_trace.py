"""Benchmark the trace reader on a 1,000,000-event synthetic trace; print one JSON line.

Measures, in the same run: opening with the recorder's index, opening after the index was
deleted (rebuilt by scanning), reading 1,000 random events, and a naive baseline (a Python
loop over the lines keeping offsets in a list).  Every measurement runs in a fresh child
interpreter so that its peak RSS (``getrusage``) belongs to that measurement alone; the
Python heap peak comes from ``tracemalloc`` in a separate child, since tracing allocations
slows the timed code down.  Budget: open in <= 2 s and <= 500 MB.

    PYTHONPATH=. python tools/bench_trace.py [--events N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OPEN_BUDGET_S = 2.0
RSS_BUDGET_MB = 500.0
RANDOM_READS = 1_000


def run(n: int = 1_000_000, seed: int = 0) -> dict:
    """Write an ``n``-event trace, measure it, and return the figures."""
    from tvmm.trace.recorder import index_path
    from tvmm.trace.synthetic import write_synthetic_trace

    with tempfile.TemporaryDirectory(prefix="tvmm-bench-") as tmp:
        trace = Path(tmp) / "bench.jsonl"
        t0 = time.perf_counter()
        write_synthetic_trace(trace, n, seed)
        write_s = time.perf_counter() - t0
        idx = index_path(trace)
        with_index = _child(trace, "open", seed)
        traced_index = _child(trace, "tracemalloc", seed)
        idx.unlink()
        rebuild = _child(trace, "open", seed)
        idx.unlink()
        traced_rebuild = _child(trace, "tracemalloc", seed)
        naive = _child(trace, "naive", seed)
        trace_mb = trace.stat().st_size / 2**20
    return summarise(n, trace_mb, write_s, with_index, traced_index, rebuild, traced_rebuild,
                     naive)


def summarise(n: int, trace_mb: float, write_s: float, with_index: dict, traced_index: dict,
              rebuild: dict, traced_rebuild: dict, naive: dict) -> dict:
    """The result line from the children's figures: ratios from the measured durations,
    figures rounded only for display.  A duration below the clock's resolution (0) makes
    its ratio null, never a division by zero."""
    result = {
        "bench": "trace_reader",
        "events": n,
        "trace_mb": round(trace_mb, 1),
        "write_s": round(write_s, 2),
        "open_index_s": round(with_index["open_s"], 4),
        "open_index_rss_mb": round(with_index["rss_peak_mb"], 1),
        "open_index_rss_delta_mb": round(with_index["rss_delta_mb"], 1),
        "open_index_py_peak_mb": round(traced_index["py_peak_mb"], 1),
        "open_rebuild_s": round(rebuild["open_s"], 4),
        "open_rebuild_rss_mb": round(rebuild["rss_peak_mb"], 1),
        "open_rebuild_rss_delta_mb": round(rebuild["rss_delta_mb"], 1),
        "open_rebuild_py_peak_mb": round(traced_rebuild["py_peak_mb"], 1),
        "index_written_back": rebuild["index_written"],
        "random_reads": RANDOM_READS,
        "random_reads_ms": round(with_index["reads_ms"], 1),
        "naive_scan_s": round(naive["open_s"], 4),
        "naive_scan_rss_mb": round(naive["rss_peak_mb"], 1),
        "ratio_open_index_vs_naive": _ratio(with_index["open_s"], naive["open_s"], 4),
        "ratio_rebuild_vs_naive": _ratio(rebuild["open_s"], naive["open_s"], 3),
    }
    result["within_budget"] = all(
        figures["open_s"] <= OPEN_BUDGET_S and figures["rss_peak_mb"] <= RSS_BUDGET_MB
        for figures in (with_index, rebuild)
    )
    return result


def _ratio(numerator: float, denominator: float, digits: int) -> float | None:
    """numerator / denominator, rounded after dividing; None when the denominator was too
    short to measure (0: the two cannot be compared, which is not a ratio of 0 or of ∞)."""
    return round(numerator / denominator, digits) if denominator > 0 else None


def _child(trace: Path, mode: str, seed: int) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, __file__, "--measure", mode, str(trace), str(seed)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def _measure(mode: str, trace: str, seed: int) -> dict:
    """One measurement, in this (fresh) process."""
    import random
    import tracemalloc

    from tvmm.trace.reader import TraceReader

    figures: dict = {}
    if mode == "tracemalloc":
        tracemalloc.start()
        reader = TraceReader(trace)
        figures["py_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        return figures
    before = _rss_now_mb()
    t0 = time.perf_counter()
    if mode == "naive":
        offsets, pos = [], 0
        with open(trace, "rb") as f:
            for line in f:
                offsets.append(pos)
                pos += len(line)
    else:
        reader = TraceReader(trace)
        figures["index_written"] = reader.index_written
    figures["open_s"] = time.perf_counter() - t0  # rounded only for display, after dividing
    if mode == "open":
        rng = random.Random(seed)
        picks = [rng.randrange(len(reader)) for _ in range(RANDOM_READS)]
        t1 = time.perf_counter()
        for i in picks:
            reader.event(i)
        figures["reads_ms"] = (time.perf_counter() - t1) * 1000
    peak = _rss_peak_mb()
    figures["rss_peak_mb"] = peak
    figures["rss_delta_mb"] = peak - before
    return figures


def _rss_peak_mb() -> float:
    """This process's own peak RSS (VmHWM: its address space's, from exec on).  Not
    ``ru_maxrss``: Linux keeps that across fork and exec, so a child would report its
    parent's peak (a test process holding guest memory, say) as its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--measure", nargs=3, metavar=("MODE", "TRACE", "SEED"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.measure:
        mode, trace, seed = args.measure
        print(json.dumps(_measure(mode, trace, int(seed))))
        return 0
    result = run(args.events, args.seed)
    print(json.dumps(result))
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout
    sys.exit(main())
