"""The architecture contracts (pyproject.toml, checked by ``lint-imports`` in CI) hold
today and each one fails when its rule is broken: a copy of the source tree gets one
violating import per contract, and lint-imports must report every contract broken, each
by its own violation.  A contract added without a violation here fails this test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = [c["name"] for c in tomllib.loads(
    (ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]]

# contract name (start of) -> (file that breaks it, the import added to that file)
VIOLATIONS: dict[str, tuple[str, str]] = {
    "Untrusted code": ("tvmm/host/devices.py", "import shim.vm"),
    "The ABI is data only": ("tvmm/abi/codec.py", "import tvmm.guestimage"),
    "The TEE's core": ("shim/vm.py", "import tvmm.trace.recorder"),
    "The shim stands on the modeled hardware": ("tvmm/hw/cpuid.py", "import shim.vm"),
    "The perimeter's formats": ("tvmm/perimeter/wire.py", "import tvmm.abi.types"),
    "The trusted perimeter": ("tvmm/perimeter/store.py", "import tvmm.owner.broker"),
    "The guest owner": ("tvmm/owner/endpoint.py", "import tvmm.perimeter.wire"),
    "The trace tools and the viewer": ("tvmm/tui/hexdump.py", "import tvmm.owner.verify"),
    "The viewer stands on the trace tools": ("tvmm/trace/stats.py", "import tvmm.tui.hexdump"),
    "The public image": ("tvmm/guestimage.py", "import tvmm.trace.reader"),
    "Only trusted code and the assembly": ("tvmm_tools/bench_core.py", "import shim.vm"),
    "The assembly is the top": ("tvmm/machine.py", "import tvmm_tools.bench_trace"),
    "Campaigns sit on the assembly": ("tvmm/matrix.py", "import tvmm.campaign.store"),
    "The links between the processes": ("tvmm/link/frames.py", "import tvmm.abi.codec"),
    "Code transparency's formats": ("tvmm/transparency/claims.py", "import tvmm.abi.types"),
    "Key rank is pure arithmetic": ("tvmm/keyrank.py", "import tvmm.samples"),
}


def _violation(contract: str) -> tuple[str, str]:
    matches = [v for prefix, v in VIOLATIONS.items() if contract.startswith(prefix)]
    assert len(matches) == 1, f"no (or no single) violation for contract {contract!r}"
    return matches[0]


def _lint(root: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "1000"}
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.is_file() else ["lint-imports"]
    if shutil.which(command[0]) is None:
        pytest.skip("lint-imports (import-linter) is not installed")
    done = subprocess.run([*command, "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    return done.stdout + done.stderr


def _sections(report: str) -> dict[str, str]:
    """Each broken contract's section of the report, by contract name."""
    tail = report.split("Broken contracts", 1)[-1]
    names = [n for n in CONTRACTS if re.search(rf"^{re.escape(n)}\s*$", tail, re.M)]
    starts = sorted((tail.index(f"\n{n}\n"), n) for n in names)
    return {name: tail[at: starts[i + 1][0] if i + 1 < len(starts) else len(tail)]
            for i, (at, name) in enumerate(starts)}


def test_every_contract_has_a_violation():
    for contract in CONTRACTS:
        _violation(contract)
    assert len(VIOLATIONS) == len(CONTRACTS)


def test_each_contract_fails_when_violated(tmp_path):
    for package in ("tvmm", "shim", "tvmm_tools"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    clean = _lint(tmp_path)
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in clean, clean
    for contract in CONTRACTS:
        path, line = _violation(contract)
        with open(tmp_path / path, "a") as source:
            source.write(f"\n{line}  # noqa\n")
    broken = _lint(tmp_path)
    for contract in CONTRACTS:
        assert re.search(rf"^{re.escape(contract)} BROKEN$", broken, re.M), (contract, broken)
    sections = _sections(broken)
    for contract in CONTRACTS:
        path, line = _violation(contract)
        importer = path.removesuffix(".py").replace("/", ".")
        assert importer in sections[contract], (contract, sections[contract])
