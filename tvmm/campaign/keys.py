"""A campaign cell's key and the codec of its stored row.

The key names everything a cell's verdict depends on: attack, victim, level, the policy
setting, the seed, and the code version.  The policy setting is written as the fields that
differ from ``PolicyConfig()`` ("default" when none do), so a key alone rebuilds the
configuration a worker needs, and two spellings of one setting are one key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from shim.policies.config import PolicyConfig, from_mapping
from tvmm.abi.types import Level
from tvmm.judge import Verdict

DEFAULT_POLICY = "default"


class CampaignError(ValueError):
    """A key or a row that does not decode (a damaged store, a typo in a policy key)."""


@dataclass(frozen=True, slots=True, order=True)
class CellKey:
    attack: str
    victim: str
    level: str
    policy: str
    seed: int
    code: str

    def label(self) -> str:
        policy = "" if self.policy == DEFAULT_POLICY else f" [{self.policy}]"
        return f"{self.attack} on {self.victim} at {self.level}{policy}, seed {self.seed}"

    def group(self) -> tuple[str, str, str, str]:
        """The cell without its seed: what the aggregate is taken over."""
        return (self.attack, self.victim, self.level, self.policy)


def policy_key(config: PolicyConfig | None) -> str:
    """``config`` as "field=value,..." of the fields that differ from the default."""
    if config is None:
        return DEFAULT_POLICY
    base = PolicyConfig()
    parts = []
    for f in fields(PolicyConfig):
        value = getattr(config, f.name)
        if value != getattr(base, f.name):
            text = str(value).lower() if isinstance(value, bool) else str(value)
            parts.append(f"{f.name}={text}")
    return ",".join(parts) or DEFAULT_POLICY


def policy_from_key(key: str) -> PolicyConfig:
    """The inverse of ``policy_key``."""
    if key == DEFAULT_POLICY:
        return PolicyConfig()
    values: dict[str, object] = {}
    for part in key.split(","):
        name, sep, raw = part.partition("=")
        if not sep or not name:
            raise CampaignError(f"policy setting {part!r}: expected FIELD=VALUE")
        values[name] = _value(raw)
    try:
        return from_mapping(values)
    except ValueError as exc:
        raise CampaignError(str(exc)) from None


def _value(raw: str) -> object:
    if raw in ("true", "false"):
        return raw == "true"
    if raw.isdigit():
        return int(raw)
    return raw


def check_key(key: CellKey) -> CellKey:
    """``key``, or CampaignError naming what is wrong with it."""
    try:
        Level(key.level)
    except ValueError:
        raise CampaignError(f"no level {key.level!r}") from None
    if key.seed < 0:
        raise CampaignError(f"seed {key.seed}: must be ≥ 0")
    policy_from_key(key.policy)
    return key


def encode_verdict(v: Verdict) -> str:
    """A verdict as the stored row's JSON (its fields; ``cell`` is derived, not stored)."""
    d = v.to_dict()
    d.pop("cell", None)
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def decode_verdict(text: str) -> Verdict:
    try:
        d = json.loads(text)
        return Verdict(**d)
    except (ValueError, TypeError) as exc:
        raise CampaignError(f"stored verdict does not decode: {exc}") from None
