"""Step policy: single-stepping is defeated by counting retired instructions, never time.

(a) extend: when the host's quantum is below ``min_progress`` the shim runs the guest a
random 1..``extend_max`` instructions further before the timer fires (the TDX module's
prevention mode), so a quantum of 1 never stops the guest after exactly one instruction.
(b) detect: short entries are counted in windows of retired instructions; more than
``detect_short_entries`` in one window is a violation.  With ``jitter``, every other timed
entry also runs a random 0..``extend_max`` further instructions, so that threshold tests at
quanta above the minimum do not count instructions exactly either.
Draws are ``int(random() * n)``: one C call where ``randint`` makes five Python ones, at
every entry; its bias (below 2**-45) is far under anything a host could measure.  The
draws come from the OS (shim.policies.draws): the host cannot predict them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shim.policies.config import PolicyConfig, StepMode
from shim.policies.draws import Draws


@dataclass(slots=True)
class StepPolicy:
    config: PolicyConfig
    rng: Draws
    window_start: int = 0
    short_in_window: int = 0
    # Read off the config once: this runs at every entry.
    _extend: bool = field(init=False)
    _jitter: bool = field(init=False)
    _detect: bool = field(init=False)

    def __post_init__(self) -> None:
        mode = self.config.step_mode
        self._extend = mode in (StepMode.EXTEND, StepMode.BOTH)
        self._jitter = self.config.jitter and mode != StepMode.OFF
        self._detect = mode in (StepMode.DETECT, StepMode.BOTH)

    def quantum(self, quantum: int) -> tuple[int, bool]:
        """(the quantum to arm, whether this entry is short)."""
        if not quantum:
            return 0, False
        short = quantum < self.config.min_progress
        if short and self._extend:
            return quantum + 1 + int(self.rng.random() * self.config.extend_max), True
        if self._jitter:
            # Longer quanta are jittered too: else a host counts instructions with threshold
            # tests at quanta just above the minimum (an early-exit compare falls that way).
            return quantum + int(self.rng.random() * (self.config.extend_max + 1)), short
        return quantum, short

    def count_short(self, retired: int) -> bool:
        """Count one short entry; True when the window's limit is exceeded."""
        if not self._detect:
            return False
        if retired - self.window_start >= self.config.detect_window:
            self.window_start = retired
            self.short_in_window = 0
        self.short_in_window += 1
        return self.short_in_window > self.config.detect_short_entries
