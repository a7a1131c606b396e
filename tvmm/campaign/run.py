"""Running a campaign: the grid of keys, the cells not yet stored, and the executor that
runs them — this process (one worker), local worker processes, or a Dask cluster.

A worker runs one cell through the scored path (tvmm.matrix.run_cell: the TEE and the
attack each in a process of its own) and returns the verdict as the store's JSON together
with its own code version; this process checks the version and stores the cell at once.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from tvmm import matrix
from tvmm.abi.types import Level
from tvmm.campaign.keys import (
    DEFAULT_POLICY,
    CampaignError,
    CellKey,
    check_key,
    decode_verdict,
    policy_from_key,
)
from tvmm.campaign.store import Store
from tvmm.campaign.version import code_version
from tvmm.judge import Verdict

Progress = Callable[[int, int, str], None]  # (cells stored, cells in the grid, last label)


def grid(attacks: Iterable[str] | None = None, victims: Iterable[str] | None = None,
         levels: Iterable[Level | str] | None = None,
         policies: Sequence[str] = (DEFAULT_POLICY,), seeds: Iterable[int] = range(5),
         code: str | None = None) -> list[CellKey]:
    """The matrix's cells (tvmm.matrix.cells) × policy settings × seeds, seed by seed, so a
    campaign cut short holds whole matrices of its first seeds."""
    code = code or code_version()
    chosen = set(victims) if victims is not None else None
    base = [c for c in matrix.cells(attacks, levels) if chosen is None or c.victim in chosen]
    if not base:
        raise CampaignError("the grid is empty: no attack has these victims and levels")
    return [check_key(CellKey(c.attack, c.victim, c.level.value, policy, seed, code))
            for seed in seeds for policy in policies for c in base]


def run_key(key: CellKey) -> tuple[str, str]:
    """(this worker's code version, the verdict's JSON) of one cell — what a worker runs."""
    from tvmm.campaign.keys import encode_verdict

    cell = matrix.Cell(key.attack, key.victim, Level(key.level))
    verdict = matrix.run_cell(cell, seed=key.seed, policy_config=policy_from_key(key.policy))
    return code_version(), encode_verdict(verdict)


@dataclass(frozen=True, slots=True)
class Summary:
    total: int
    skipped: int  # stored before this run
    ran: int
    wall_s: float

    @property
    def cells_per_s(self) -> float:
        return self.ran / self.wall_s if self.wall_s > 0 else 0.0


def run_campaign(keys: Sequence[CellKey], store: Store, *, workers: int | None = None,
                 cluster: str | object | None = None,
                 progress: Progress | None = None) -> Summary:
    """Run every key of ``keys`` not in ``store`` and store each as it finishes.

    ``workers``: local worker processes (default: this machine's cores; 1 runs the cells in
    this process).  ``cluster``: a Dask scheduler's address (``tcp://host:port``) or a
    ``distributed.Client``-compatible object such as a LocalCluster; then the cluster's
    workers run the cells."""
    done = store.done(keys)
    todo = [k for k in keys if k not in done]
    start = time.perf_counter()
    stored = len(done)
    if progress is not None:
        progress(stored, len(keys), f"{stored} cells stored before, {len(todo)} to run")
    if todo:
        if cluster is not None:
            results = _dask(todo, cluster)
        elif (workers or os.cpu_count() or 1) <= 1 or len(todo) == 1:
            results = ((k, run_key(k)) for k in todo)
        else:
            results = _pool(todo, workers or os.cpu_count() or 1)
        for key, (version, text) in results:
            if version != key.code:
                raise CampaignError(
                    f"a worker runs code version {version}, the campaign {key.code}: "
                    "install the same tvmm on every worker")
            store.put(key, decode_verdict(text))
            stored += 1
            if progress is not None:
                progress(stored, len(keys), key.label())
    return Summary(len(keys), len(done), len(todo), time.perf_counter() - start)


def _pool(todo: list[CellKey], workers: int) -> Iterator[tuple[CellKey, tuple[str, str]]]:
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        futures = {pool.submit(run_key, k): k for k in todo}
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except BrokenProcessPool:
                raise CampaignError(
                    "a worker process died; every finished cell is stored: run the same "
                    "command again to resume") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _dask(todo: list[CellKey], cluster: str | object
          ) -> Iterator[tuple[CellKey, tuple[str, str]]]:
    try:
        from distributed import Client
        from distributed import as_completed as dask_completed
    except ImportError:
        raise CampaignError("--cluster needs Dask: pip install 'tvmm[cluster]'") from None
    try:
        client = Client(cluster, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise CampaignError(f"cannot reach the Dask scheduler at {cluster}: {exc}") from None
    try:
        futures = client.map(run_key, todo, pure=False)
        keys = {f.key: k for f, k in zip(futures, todo, strict=True)}
        for future in dask_completed(futures):
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - the cluster's failure, in one line
                raise CampaignError(
                    f"{keys[future.key].label()} failed on the cluster ({type(exc).__name__}: "
                    f"{exc}); every finished cell is stored: run the same command again to "
                    "resume") from None
            yield keys[future.key], result
    finally:
        client.close()


def verdicts(store: Store, keys: Sequence[CellKey]) -> list[tuple[CellKey, Verdict]]:
    """The stored verdicts of ``keys``, in the grid's order (cells not stored are left out)."""
    found = {k: v for k, v, _ in store.rows(keys)}
    return [(k, found[k]) for k in keys if k in found]
