"""How much each policy hides, in bits, computed from its parameters.

docs/policies.md shows ``markdown_table()`` for the default settings (a test keeps the two
equal).  A draw of one of n equally likely values hides log2(n) bits; a sum of independent
draws (the jitter of several entries, none of which the host is shown at shim) hides the
Shannon entropy of the sum's distribution, computed here by convolution.
"""

from __future__ import annotations

import itertools
import math

from shim.policies.config import PolicyConfig

PAGE_OFFSET_BITS = 12  # a 4 KiB page: what GPA_PAGE leaves out of the full GPA
ACCESS_KINDS = 3  # read, write, fetch


def uniform_bits(n: int) -> float:
    return math.log2(n) if n > 0 else 0.0


def sum_entropy(values: int, draws: int) -> float:
    """Entropy in bits of the sum of ``draws`` independent uniform draws of ``values``
    values each (0..values-1)."""
    dist = [1.0]
    for _ in range(draws):  # convolve with the uniform kernel: a sliding window of sums
        prefix = [0.0, *itertools.accumulate(dist)]
        n = len(dist)
        dist = [(prefix[min(k + 1, n)] - prefix[max(k + 1 - values, 0)]) / values
                for k in range(n + values - 1)]
    return -sum(p * math.log2(p) for p in dist if p > 0)


def markdown_table(config: PolicyConfig | None = None) -> str:
    c = config or PolicyConfig()
    ext, jit = c.extend_max, c.extend_max + 1
    rows = [
        ("step: extend", f"extend_max = {ext}",
         f"how far an entry with a quantum below min_progress = {c.min_progress} ran: "
         f"1..{ext} instructions further, equally likely",
         f"log2({ext}) = {uniform_bits(ext):.2f} per short entry"),
        ("step: jitter", f"extend_max = {ext}",
         f"how far any other timed entry ran: 0..{ext} further",
         f"log2({jit}) = {uniform_bits(jit):.2f} per timed entry"),
        ("step: jitter, summed", f"extend_max = {ext}",
         "how far the guest is after n timed entries (no count is shown, so the draws add "
         "up)",
         ", ".join(f"n = {n}: {sum_entropy(jit, n):.2f}" for n in (1, 10, 100))),
        ("step: detect", f"detect_short_entries = {c.detect_short_entries}, "
         f"detect_window = {c.detect_window}",
         f"nothing; it bounds the channel: more than {c.detect_short_entries} short entries "
         f"in {c.detect_window} instructions is answered by {c.step_response.value}", "0"),
        ("fault view (GPA_PAGE)", "—",
         "the offset in the page and the access type of a fault",
         f"{PAGE_OFFSET_BITS} + log2({ACCESS_KINDS}) = "
         f"{PAGE_OFFSET_BITS + uniform_bits(ACCESS_KINDS):.2f} per fault"),
        ("fault: TDX rule", f"fault_same_rip = {c.fault_same_rip}",
         f"nothing; after {c.fault_same_rip} faults at one RIP each faulting page must "
         f"stay mapped ({c.fault_rule_response.value} entry otherwise)", "0"),
        ("fault: budget", f"fault_budget = {c.fault_budget}, "
         f"fault_window = {c.fault_window}",
         f"nothing; more than {c.fault_budget} faults in {c.fault_window} instructions is "
         f"answered by {c.fault_budget_response.value}", "0"),
        ("fault: data budget", f"data_fault_budget = {c.data_fault_budget}",
         f"nothing; more than {c.data_fault_budget} faults on data accesses (reads, writes) "
         f"in the launch are answered by {c.data_fault_response.value}", "0"),
        ("fault: pinning", f"pin_working_set = {str(c.pin_working_set).lower()}",
         "nothing; it closes the channel: an entry with a private page unmapped is refused, "
         "and a fault on one ends the VM, so no fault on private memory is ever shown"
         if c.pin_working_set else "— (off: the limits above bound the channel)", "0"),
    ]
    lines = ["| policy | parameters | what the host cannot tell | bits (defaults) |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {d} | {e} |" for a, b, d, e in rows]
    return "\n".join(lines) + "\n"
