"""Benchmark: the transparency ledger at 10^4 and 10^6 entries.

For each log size N, a fresh ledger is filled with N statement-sized entries (in bulk,
outside the timing), its tree warmed, and then, each for at least ``--seconds``:

- ``register``: the whole registration of real signed statements (signed beforehand) —
  decode, issuer and feed check, signature check, append, a signed tree head, a receipt;
- ``verify``: the offline check of a receipt (tvmm transparency verify without the file
  reads): recompute the root from the statement and its path, check the ledger's
  signature;

and, for sizes 10^1 … N, the inclusion proof's length (hashes) and the receipt's size in
bytes, which grow with log2 of the log.  Prints one JSON line; ``--write-docs`` rewrites the
``bench-transparency`` block of docs/performance.md.

    python -m tvmm_tools.bench_transparency [--sizes 10000 1000000] [--seconds 10] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tvmm.transparency import keys
from tvmm.transparency.claims import Claim
from tvmm.transparency.receipts import verify_receipt
from tvmm.transparency.service import LedgerService
from tvmm.transparency.statements import sign_statement
from tvmm_tools.doc_block import write_block

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
ENTRY_SIZE = 420  # about a signed statement's size
BULK = 50_000


def _claim(i: int) -> Claim:
    return Claim(i.to_bytes(48, "little"), "bench", "bench/feed", i % 1000,
                 bytes(32), "snp", {"compiler": "gcc", "flags": "-O2"})


def measure(size: int, seconds: float, workdir: Path) -> dict:
    issuer = keys.new_key()
    (workdir / "issuer.pub.pem").write_bytes(keys.public_pem(issuer.public_key()))
    service = LedgerService.create(workdir / f"ledger-{size}",
                                   [(workdir / "issuer.pub.pem", ["bench/feed"])])
    filler = os.urandom(ENTRY_SIZE)
    start = time.perf_counter()
    for at in range(0, size, BULK):
        n = min(BULK, size - at)
        service.log.append_many([i.to_bytes(8, "little") + filler for i in range(at, at + n)])
    service.sign_head()
    fill_s = time.perf_counter() - start
    statements = [sign_statement(_claim(i), issuer) for i in range(64)]
    registered, receipts = 0, []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or registered < 8:
        raw = statements[registered % len(statements)]
        receipts.append((raw, service.register(raw)[1]))
        registered += 1
    register_s = time.perf_counter() - start
    public = service.public_key
    verified = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or verified < 8:
        raw, receipt = receipts[verified % len(receipts)]
        verify_receipt(raw, receipt, public)
        verified += 1
    verify_s = time.perf_counter() - start
    proofs = []
    n = 10
    total = service.log.size
    while n <= total:
        proof = service.log.inclusion(n // 2, n)
        proofs.append({"log_size": n, "path_hashes": len(proof.path),
                       "receipt_bytes": len(service.receipt(n // 2)) if n == total else None})
        n *= 10
    last = service.receipt(total - 1)
    service.close()
    return {"size": size, "fill_s": round(fill_s, 1),
            "register_per_s": round(registered / register_s, 1), "registered": registered,
            "verify_ms": round(1000 * verify_s / verified, 2), "verified": verified,
            "receipt_bytes_at_end": len(last), "proofs": proofs}


def run_meta(seconds: float) -> dict:
    """When, where and under what load the figures were taken (at the end of the run)."""
    return {"seconds": seconds, "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load": round(os.getloadavg()[0], 1)}


def doc_block(results: list[dict], meta: dict) -> str:
    """The docs' block for ``results``; it carries its figures as a JSON comment, so a
    test regenerates it byte for byte (the figures are the command's, not typed)."""
    lines = [f"Written by `python -m tvmm_tools.bench_transparency --seconds "
             f"{meta['seconds']:g} --write-docs` on {meta['date']} UTC, {meta['cpus']} "
             f"CPUs, Python {meta['python']}, load average {meta['load']:.1f} at the end.",
             "", "| log size | registrations/s | receipt verification | receipt size |",
             "|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['size']:,} | {r['register_per_s']:,.1f} ({r['registered']:,} "
                     f"timed) | {r['verify_ms']:.2f} ms ({r['verified']:,} timed) | "
                     f"{r['receipt_bytes_at_end']:,} B |")
    lines += ["", "Inclusion proof against log size (in the largest log):", "",
              "| log size | path (hashes) |", "|---:|---:|"]
    for p in results[-1]["proofs"]:
        lines.append(f"| {p['log_size']:,} | {p['path_hashes']} |")
    lines += ["", "<!-- data: " + json.dumps({"results": results, "meta": meta},
                                             sort_keys=True) + " -->"]
    return "\n".join(lines)


def parse_block(text: str) -> dict:
    """The figures a block was written from (its JSON comment): results and meta."""
    _head, sep, rest = text.partition("<!-- data: ")
    if not sep or " -->" not in rest:
        raise ValueError("no data comment in the block")
    return json.loads(rest.split(" -->", 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(size, args.seconds, Path(tmp)) for size in sorted(args.sizes)]
    print(json.dumps(results))
    if args.write_docs:
        write_block(DOC, "bench-transparency", doc_block(results, run_meta(args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
