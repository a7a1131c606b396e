"""Real traces for the viewer's tests, recorded by ``tvmm boot`` and ``tvmm attack`` in
this test session (once each, on first use): synthetic traces were all the viewer was
built on, and real ones differ (floats in verdicts, ``gpa_page`` at shim, running
instruction totals, two VMs in one attack: a calibration VM, then the victim)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from tvmm.cli import main

# name -> the tvmm command line that records it (small guests, short runs)
REAL_TRACES: dict[str, list[str]] = {
    "boot-shim": ["boot", "modexp", "--level", "shim"],
    "boot-sev": ["boot", "modexp", "--level", "sev", "--quantum", "200"],
    "pf-snp": ["attack", "page-fault", "--guest", "modexp", "--level", "snp"],
    # pinning off: with it, the attack's entries are refused and no NPF is ever shown
    "pf-shim": ["attack", "page-fault", "--guest", "modexp", "--level", "shim",
                "--set", "pin_working_set=false"],
    "ss-sev-es": ["attack", "single-step", "--guest", "modexp", "--level", "sev-es"],
    # the attacker's own calibration VM at plain, then the victim at shim: two VMs
    "two-vms": ["attack", "dropped-writes", "--guest", "counter", "--level", "shim"],
}


class RealTraces:
    """``real_traces["pf-shim"]`` is the path of that trace, recorded when first asked for."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._done: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self._done:
            path = self.directory / f"{name}.jsonl"
            with contextlib.redirect_stdout(io.StringIO()):
                main([*REAL_TRACES[name], "--trace", str(path), "--json"])
            assert path.exists(), f"tvmm {' '.join(REAL_TRACES[name])} wrote no trace"
            self._done[name] = path
        return self._done[name]


@pytest.fixture(scope="session")
def real_traces(tmp_path_factory: pytest.TempPathFactory) -> RealTraces:
    return RealTraces(tmp_path_factory.mktemp("real-traces"))
