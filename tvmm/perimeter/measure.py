"""The measurement of the perimeter's trusted code: what a node's report attests.

It is taken over the code the process actually loaded: every module of the measured set
is imported, and each is hashed by the bytes of the file it was loaded from
(``module.__file__``), in name order: digest = SHA-384(digest ‖ name ‖ NUL ‖
SHA-384(file)), from 48 zero bytes.  A process started from a tree with one changed line
of any measured module (a rogue node: tvmm.operator.launcher runs one from a modified
copy) loads other bytes and gets another measurement, which the coordinator refuses.

The measured set is the trusted trees (tvmm/hw, shim, tvmm/abi, tvmm/perimeter and the
transparency ledger's tvmm/transparency: every module in them) and every other module of ours that code imports (``IMPORTED_BY_TRUSTED``:
the owner-side verifier the agents run and its package's __init__, and the ELF loader
and launch plan with which a node's agent predicts the launch digest it binds a launch
secret to).  The node's host is
not in it: it runs as a process of its own (tvmm.host.node_service), which the agent
starts by name and never imports.  A
perimeter process checks at start that it loaded nothing of ours outside that set
(``check_closed``), so trusted code cannot come to import unmeasured code unnoticed.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
OURS = ("tvmm", "shim")
TRUSTED_TREES = ("tvmm.hw", "shim", "tvmm.abi", "tvmm.perimeter", "tvmm.transparency")
IMPORTED_BY_TRUSTED = ("tvmm", "tvmm.owner", "tvmm.owner.verify", "tvmm.guestimage",
                       "tvmm.launch_plan")


class UnmeasuredCode(RuntimeError):
    """A perimeter process loaded code of ours that its measurement does not cover."""


@lru_cache(maxsize=1)
def measured_names() -> tuple[str, ...]:
    names = set(IMPORTED_BY_TRUSTED)
    for package in TRUSTED_TREES:
        names.add(package)
        module = importlib.import_module(package)
        names.update(info.name for info in pkgutil.walk_packages(module.__path__,
                                                                 package + "."))
    return tuple(sorted(names))


def load() -> dict[str, ModuleType]:
    """Import every module of the measured set: the code the measurement is taken over."""
    return {name: importlib.import_module(name) for name in measured_names()}


def measure_loaded(modules: dict[str, ModuleType]) -> bytes:
    digest = bytes(48)
    for name in sorted(modules):
        content = Path(modules[name].__file__ or "").read_bytes()
        digest = hashlib.sha384(digest + name.encode() + b"\0"
                                + hashlib.sha384(content).digest()).digest()
    return digest


def unmeasured_loaded() -> list[str]:
    """Modules of ours loaded in this process that the measurement does not cover."""
    measured = set(measured_names())
    return sorted(n for n in list(sys.modules)
                  if n.split(".")[0] in OURS and n not in measured)


def check_closed() -> None:
    """Refuse to go on in a perimeter process that loaded unmeasured code of ours."""
    stray = unmeasured_loaded()
    if stray:
        raise UnmeasuredCode(f"trusted code loaded modules it does not measure: "
                             f"{', '.join(stray)}")


@lru_cache(maxsize=1)
def measurement() -> bytes:
    """The measurement of the code this process loaded (cached per process)."""
    return measure_loaded(load())
