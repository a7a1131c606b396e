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
from contextlib import nullcontext
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
from tvmm.harness import launcher
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


def run_key(key: CellKey, warm: bool = True) -> tuple[str, str]:
    """(this worker's code version, the verdict's JSON) of one cell — what a worker runs.

    ``warm``: the cell's TEE and host are forks of this worker's zygotes (started at its
    first cell, kept for its life; tvmm.harness.launcher.warm) rather than fresh
    interpreters — the same programs from the same clean state, without the imports that
    were most of a short cell's CPU."""
    from tvmm.campaign.keys import encode_verdict

    if warm:
        launcher.keep_warm()
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
                 progress: Progress | None = None, warm: bool = True) -> Summary:
    """Run every key of ``keys`` not in ``store`` and store each as it finishes.

    ``workers``: local worker processes (default: this machine's cores; 1 runs the cells in
    this process).  ``cluster``: a Dask scheduler's address (``tcp://host:port``) or a
    ``distributed.Client``-compatible object such as a LocalCluster; then the cluster's
    workers run the cells.  Local workers, when no more than this process's cores, each
    get a core of their own (``_pin``).  ``warm`` (every executor alike): each worker
    forks its cells' TEE and host from warm zygotes (run_key); False starts fresh
    interpreters per cell."""
    done = store.done(keys)
    todo = [k for k in keys if k not in done]
    start = time.perf_counter()
    stored = len(done)
    if progress is not None:
        progress(stored, len(keys), f"{stored} cells stored before, {len(todo)} to run")
    if todo:
        serial = cluster is None and ((workers or os.cpu_count() or 1) <= 1 or len(todo) == 1)
        if cluster is not None:
            results = _dask(todo, cluster, warm)
        elif serial:
            results = ((k, run_key(k, warm)) for k in todo)
        else:
            results = _pool(todo, workers or os.cpu_count() or 1, warm)
        with launcher.warm() if serial and warm else nullcontext():
            stored = _store_all(results, keys, store, stored, progress)
    return Summary(len(keys), len(done), len(todo), time.perf_counter() - start)


def _store_all(results: Iterable[tuple[CellKey, tuple[str, str]]], keys: Sequence[CellKey],
               store: Store, stored: int, progress: Progress | None) -> int:
    for key, (version, text) in results:
        if version != key.code:
            raise CampaignError(
                f"a worker runs code version {version}, the campaign {key.code}: "
                "install the same tvmm on every worker")
        store.put(key, decode_verdict(text))
        stored += 1
        if progress is not None:
            progress(stored, len(keys), key.label())
    return stored


def _pool(todo: list[CellKey], workers: int, warm: bool
          ) -> Iterator[tuple[CellKey, tuple[str, str]]]:
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    cpus = sorted(os.sched_getaffinity(0))
    pin = workers <= len(cpus)
    slots = context.SimpleQueue()
    for cpu in cpus[:workers] if pin else ():
        slots.put(cpu)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_pin if pin else None,
                               initargs=(slots,) if pin else ())
    try:
        futures = {pool.submit(run_key, k, warm): k for k in todo}
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except BrokenProcessPool:
                raise CampaignError(
                    "a worker process died; every finished cell is stored: run the same "
                    "command again to resume") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _pin(slots: object) -> None:
    """A worker's start: a core of its own, which its zygotes and so its cells' TEE and
    host inherit.  A cell is a chain (the host asks, the TEE answers, the judge waits), so
    on one core it loses only the little its processes overlapped; unpinned, two cells'
    four processes wake one another onto whichever core woke them and queue there while
    the other core idles (measured in short runs given priority on a loaded machine:
    1.5× the serial loop unpinned, 1.8× pinned, at the same CPU time per cell).  Its
    link then never spins (tvmm.link.mailbox.default_spin_s)."""
    os.sched_setaffinity(0, {slots.get()})


def _dask(todo: list[CellKey], cluster: str | object, warm: bool
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
        futures = client.map(run_key, todo, warm=warm, pure=False)
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
