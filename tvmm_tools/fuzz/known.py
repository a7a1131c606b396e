"""Findings already known and being fixed by others, recognised by a small signature each,
so that a run can report them apart (and CI can fail on new findings only until they land;
then the signature is deleted here and the run is strict for it too)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    """One failure of one input: what was raised (an exception type or an oracle name),
    the innermost frame of ours it came from, the message, and the oracle's context."""

    target: str
    name: str
    where: str
    message: str
    context: dict

    @property
    def signature(self) -> str:
        return f"{self.target}:{self.name}@{self.where}"


@dataclass(frozen=True, slots=True)
class Known:
    id: str
    summary: str
    matches: Callable[[Finding], bool]


KNOWN: tuple[Known, ...] = ()  # every finding of the campaign is fixed: any finding fails CI


def known_id(finding: Finding) -> str | None:
    for known in KNOWN:
        if known.matches(finding):
            return known.id
    return None
