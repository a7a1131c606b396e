"""Page-fault policy: the TDX rule, a fault budget, and optional pinning.

- TDX rule: more than ``fault_same_rip`` faults at the same RIP put the faulting pages on a
  list (at most ``fault_list_max``); entry is refused while any of them is unmapped, for the
  rest of the window — clearing the list at the next entry would cost a host that unmaps
  and maps in turn (the controlled channel) nothing.
- Budget: more than ``fault_budget`` faults in a window of retired instructions.
- Data faults: more than ``data_fault_budget`` faults on data accesses (reads, writes) in
  the whole launch.  The TDX rule counts per RIP, so a lookup table read at many RIPs
  (an unrolled loop: guests/victims/ttable_unrolled.c) never trips it, and its page
  changes fit in the budget; a data fault on memory the guest uses is never benign.
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
    data_faults: int = 0  # in the whole launch

    def record_data(self) -> bool:
        """Count a data-access fault; True when the launch's data budget is exceeded."""
        self.data_faults += 1
        return self.data_faults > self.config.data_fault_budget

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
