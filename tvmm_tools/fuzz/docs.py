"""The figures block of docs/security.md, written by the fuzz command that measured it
(``--write-docs``), never by hand: one row per target, the last run of each kept."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from tvmm_tools.fuzz.engine import RunResult

BLOCK = "fuzz"
BEGIN, END = f"<!-- {BLOCK}:begin -->", f"<!-- {BLOCK}:end -->"
HEAD = ("| target | engine | inputs | inputs/s | host calls | findings (new / known) | seed "
        "| seconds | date (UTC) | commit | machine |")
RULE = "|---|---|---|---|---|---|---|---|---|---|---|"


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def row(r: RunResult, when: datetime.datetime | None = None) -> str:
    when = when or datetime.datetime.now(datetime.UTC)
    calls = f"{r.calls:,}" if r.calls else "—"
    known = ", ".join(sorted({f["known"] for f in r.known}))
    findings = f"{len(r.new)} / {len(r.known)}" + (f" ({known})" if known else "")
    return (f"| {r.target} | {r.engine} | {r.inputs:,} | {r.rate:,.0f} | {calls} | {findings} "
            f"| {r.seed} | {r.seconds:.0f} | {when:%Y-%m-%d %H:%M} | {getattr(r, 'commit', '') or '?'} | {machine()} |")


def write(path: Path, results: list[RunResult]) -> None:
    """Rewrite the block with these runs' rows, keeping the other targets' rows."""
    from tvmm_tools.doc_block import replace_block
    from tvmm_tools.fuzz.targets import TARGETS

    text = path.read_text()
    old = text.split(BEGIN, 1)[-1].split(END, 1)[0]
    rows = {line.split("|")[1].strip(): line for line in old.splitlines()
            if line.startswith("| ") and not line.startswith("| target")}
    for r in results:
        rows[r.target] = row(r)
    ordered = [rows[n] for n in TARGETS if n in rows]
    path.write_text(replace_block(text, BLOCK, "\n".join([HEAD, RULE, *ordered])))
