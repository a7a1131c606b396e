"""UNTRUSTED: attack scenarios — malicious hypervisors on the platform ABI.

Every module here defines ``Attack`` subclasses (tvmm_tools.attacks.base); ``registry()``
finds them all, and ``load_file`` loads a user's own attack file.  Nothing here may import
tvmm.hw or shim (architecture contract)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from pathlib import Path

from tvmm_tools.attacks.base import Attack


def _attacks_in(module: object) -> list[type[Attack]]:
    return [
        obj for _name, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, Attack) and obj is not Attack and not inspect.isabstract(obj)
        and obj.__module__ == getattr(module, "__name__", None)
    ]


def registry() -> dict[str, type[Attack]]:
    found: dict[str, type[Attack]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for cls in _attacks_in(module):
            found[cls.name] = cls
    return dict(sorted(found.items()))


def load_file(path: Path | str) -> list[type[Attack]]:
    """The attacks defined in a user's Python file."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"user_attack_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    attacks = _attacks_in(module)
    if not attacks:
        raise ImportError(f"{path} defines no Attack subclass")
    return attacks
