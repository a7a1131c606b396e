"""Interrupt filter: the host only rings a doorbell; the shim decides what is delivered."""

from __future__ import annotations

from dataclasses import dataclass

from shim.policies.config import PolicyConfig


@dataclass(slots=True)
class IrqFilter:
    config: PolicyConfig

    def refusal(self, registered: set[int], vector: int) -> str:
        """Why ``vector`` is refused, or "" to accept it (delivered once IF is set)."""
        if not self.config.irq_filter:
            return ""
        if vector < 32:
            return f"vector {vector} is an exception vector"
        if vector not in registered:
            return f"vector {vector:#x} was not registered by the guest"
        return ""
