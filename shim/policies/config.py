"""Policy settings: one frozen value, from defaults, a TOML file or CLI overrides."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any


class Response(StrEnum):
    NOTIFY = "notify"  # post a virtual interrupt to the guest and go on
    REFUSE = "refuse"  # refuse to resume until the host fixes the cause
    TERMINATE = "terminate"  # kill the VM with a reason the owner can read


class StepMode(StrEnum):
    OFF = "off"
    EXTEND = "extend"  # (a) minimum progress: short quanta are extended by a random 1..N
    DETECT = "detect"  # (b) count short entries per window of retired instructions
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    step_mode: StepMode = StepMode.BOTH
    min_progress: int = 32  # an entry whose quantum is below this is short
    extend_max: int = 32  # extension drawn from 1..extend_max (TDX prevention mode)
    detect_window: int = 100_000  # retired instructions per detection window
    detect_short_entries: int = 64  # more short entries in a window is a violation
    step_response: Response = Response.TERMINATE
    jitter: bool = True  # longer quanta get a random 0..extend_max more, too
    fault_same_rip: int = 6  # more faults than this at one RIP trip the TDX rule
    fault_list_max: int = 32
    fault_rule_response: Response = Response.REFUSE
    fault_window: int = 1_000_000  # retired instructions per fault-budget window
    fault_budget: int = 64  # faults allowed per window
    fault_budget_response: Response = Response.TERMINATE
    # Data-page faults (reads and writes, not fetches) allowed per launch, never reset: an
    # honest host never unmaps private memory the guest uses (SNP and TDX hosts pin it), and
    # a fault limit counted per RIP does not see lookups spread over many instructions.
    data_fault_budget: int = 0
    data_fault_response: Response = Response.TERMINATE
    # Refuse entry while any private page is unmapped, and end the VM if one faults: an
    # honest host maps all memory at launch and never unmaps private memory (SNP and TDX
    # hosts pin it), and every private page counts, not only those added at launch (stack,
    # bss and heap are not), since the shim cannot know which pages a guest will use.
    pin_working_set: bool = True
    notify_vector: int = 0x21  # the vector NOTIFY responses post, if the guest registered it
    irq_filter: bool = True


class PolicyConfigError(ValueError):
    pass


_ENUMS = {"step_mode": StepMode, "step_response": Response, "fault_rule_response": Response,
          "fault_budget_response": Response, "data_fault_response": Response}


def from_mapping(values: dict[str, Any], base: PolicyConfig | None = None) -> PolicyConfig:
    base = base or PolicyConfig()
    known = {f.name: f for f in fields(PolicyConfig)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise PolicyConfigError(f"unknown policy setting {key!r}")
        current = getattr(base, name)
        if name in _ENUMS:
            try:
                value = _ENUMS[name](value)
            except ValueError:
                options = ", ".join(m.value for m in _ENUMS[name])
                raise PolicyConfigError(f"{key}: {value!r} is not one of {options}") from None
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                raise PolicyConfigError(f"{key}: expected true or false")
        elif isinstance(current, int):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PolicyConfigError(f"{key}: expected a non-negative integer")
        changes[name] = value
    return replace(base, **changes)


def load(path: Path | str) -> PolicyConfig:
    """Read ``[policy]`` from a TOML file (or the top-level table)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyConfigError(f"{path} is not valid TOML: {exc}") from None
    table = data.get("policy", data)
    if not isinstance(table, dict):
        raise PolicyConfigError("[policy] must be a table")
    return from_mapping(table)
