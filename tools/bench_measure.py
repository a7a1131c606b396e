"""Benchmark: SEV-SNP launch measurement (LaunchDigest) against bare per-page SHA-384.

The PAGE_INFO chain adds one small SHA-384 per page on top of hashing the page itself,
so bare hashing of the same pages, timed in the same run, is the honest baseline. Prints
one JSON line; the target is ratio >= 0.8 (LaunchDigest at 80% of hashlib's throughput).

    python -m tools.bench_measure [size_mib]
"""

from __future__ import annotations

import gc
import hashlib
import json
import random
import statistics
import sys
import time

from tvmm.hw.measurement import PAGE_SIZE, LaunchDigest, PageType

_SEED = 0x5EB_5A9
_ROUNDS = 5


def _pages(size_mib: int) -> list[memoryview]:
    rng = random.Random(_SEED)
    image = memoryview(b"".join(rng.randbytes(1 << 20) for _ in range(size_mib)))
    return [image[offset : offset + PAGE_SIZE] for offset in range(0, len(image), PAGE_SIZE)]


def _time_baseline(pages: list[memoryview]) -> float:
    sha384 = hashlib.sha384
    start = time.perf_counter()
    for page in pages:
        sha384(page).digest()
    return time.perf_counter() - start


def _time_launch_digest(pages: list[memoryview]) -> tuple[float, bytes]:
    work = [(index * PAGE_SIZE, PageType.NORMAL, page) for index, page in enumerate(pages)]
    start = time.perf_counter()
    chain = LaunchDigest()
    chain.extend(work)
    return time.perf_counter() - start, chain.digest


def _time_add_page(pages: list[memoryview]) -> float:
    normal = PageType.NORMAL
    start = time.perf_counter()
    add = LaunchDigest().add_page
    for index, page in enumerate(pages):
        add(index * PAGE_SIZE, normal, page)
    return time.perf_counter() - start


def _median_ratio(baseline: list[float], measured: list[float]) -> float:
    return round(statistics.median(b / m for b, m in zip(baseline, measured, strict=True)), 3)


def run(size_mib: int = 256) -> dict:
    """Time LaunchDigest and bare hashing over the same seeded image, interleaved.

    Throughputs are best-of-rounds; ``ratio`` is LaunchDigest.extend against bare
    hashing, ``ratio_add_page`` the same for one add_page call per page.
    """
    pages = _pages(size_mib)
    baseline: list[float] = []
    extend: list[float] = []
    add_page: list[float] = []
    digest = b""
    gc.disable()  # as timeit does: collector pauses would land on whichever loop is running
    try:
        for _ in range(_ROUNDS):
            baseline.append(_time_baseline(pages))
            elapsed, digest = _time_launch_digest(pages)
            extend.append(elapsed)
            add_page.append(_time_add_page(pages))
    finally:
        gc.enable()
    return {
        "bench": "launch_measurement",
        "size_mib": size_mib,
        "pages": len(pages),
        "rounds": _ROUNDS,
        "launch_digest_mib_s": round(size_mib / min(extend), 1),
        "launch_digest_add_page_mib_s": round(size_mib / min(add_page), 1),
        "sha384_pages_mib_s": round(size_mib / min(baseline), 1),
        # Each round times the baseline and LaunchDigest back to back; the median of the
        # per-round ratios is steadier on a shared machine than a ratio of minima.
        "ratio": _median_ratio(baseline, extend),
        "ratio_add_page": _median_ratio(baseline, add_page),
        "target_ratio": 0.8,
        "digest": digest.hex(),
    }


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 256)))
