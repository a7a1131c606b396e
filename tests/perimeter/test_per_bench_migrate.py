"""Migration benchmark (pytest -m bench); smoke runs keep every figure of it working
and check that its destination process always ends."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from tvmm.abi.types import Level
from tvmm_tools import bench_migrate


def test_throughput_smoke():
    result = bench_migrate.throughput(1, repeat=1)  # the data is checked end to end
    assert result["throughput_mib_s"] > 0 and result["stream_mib"] >= 1
    assert result["dst_prepare_ms"] > 0 and result["ratio_runs"] == [result["ratio"]]
    for figure in ("pipe_mib_s", "tcp_mib_s", "tcp_cpu_ns_per_byte", "aesgcm_open_mib_s"):
        assert result[figure] > 0
    assert 0 < result["ceiling_ratio"] <= result["cores"]
    assert not multiprocessing.active_children()


def test_destination_process_ends_without_a_source():
    ctx = multiprocessing.get_context("spawn")
    ready, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=bench_migrate._dst_node, daemon=True,
                       args=(child_end, bytes(32), 1, Level.SHIM, 4 << 20, 0, (0, 4096), 0.5))
    proc.start()
    child_end.close()
    try:
        assert ready.poll(10) and ready.recv() > 0  # listening, but nobody connects
        t = time.monotonic()
        proc.join(10)
        assert not proc.is_alive() and proc.exitcode != 0  # accept timed out
        assert time.monotonic() - t < 5
    finally:
        ready.close()
        if proc.is_alive():
            proc.kill()
            proc.join(5)


@pytest.mark.bench
def test_migration_benchmark():
    result = bench_migrate.throughput(64)
    assert result["stream_mib"] >= 64 and len(result["ratio_runs"]) == 3
    print(result)
