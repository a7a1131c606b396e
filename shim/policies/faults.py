"""Page-fault policy: the TDX rule, a fault budget, and optional pinning.

- TDX rule: more than ``fault_same_rip`` faults at the same RIP put the faulting pages on a
  list (at most ``fault_list_max``); entry is refused while any of them is unmapped, for the
  rest of the window — clearing the list at the next entry would cost a host that unmaps
  and maps in turn (the controlled channel) nothing.
- Budget: more than ``fault_budget`` faults in a window of retired instructions.
- Pinning: the pages added at launch must stay mapped; entry is refused otherwise.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from shim.policies.config import PolicyConfig


@dataclass(slots=True)
class FaultPolicy:
    config: PolicyConfig
    per_rip: Counter = field(default_factory=Counter)
    listed: set[int] = field(default_factory=set)  # page addresses the host must map
    window_start: int = 0
    in_window: int = 0

    def record(self, rip: int, page: int, retired: int) -> tuple[bool, bool]:
        """(the TDX rule tripped, the budget is exceeded) after this fault."""
        self.per_rip[rip] += 1
        tripped = False
        if self.per_rip[rip] > self.config.fault_same_rip:
            if len(self.listed) < self.config.fault_list_max:
                self.listed.add(page)
            tripped = True
        if retired - self.window_start >= self.config.fault_window:
            self.window_start = retired
            self.in_window = 0
            self.listed.clear()  # listed pages stay required for the whole window
        self.in_window += 1
        return tripped, self.in_window > self.config.fault_budget
