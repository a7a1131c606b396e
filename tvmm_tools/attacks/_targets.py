"""Targets read from a victim's public image, never from its name: the adaptive attacks
(cipher_stack, fault_budget, relaunch) find what to watch here.

- the program's routines: functions above ``main`` on executable pages other than main's
  (the runtime lies below main; guests/samples put secret-dependent routines on pages of
  their own, .text.page_*), in address order;
- its largest page-aligned data object spanning several pages (a lookup table);
- the stack's top page: the public runtime (guests/runtime/start.S) starts the stack at
  the top of guest memory, whose size the host chose.
"""

from __future__ import annotations

from tvmm.abi.guest import PAGE_SIZE
from tvmm.guestimage import GuestImage

STACK_BLOCK = 16  # the memory encryption's block: one 16-byte unit per address


def _executable(image: GuestImage) -> set[int]:
    return {p.gpa for p in image.pages if p.executable}


def program_routines(image: GuestImage) -> list[int]:
    """Entries of the functions above main on executable pages other than main's."""
    main = image.symbol("main")
    code = _executable(image)
    return sorted(start for start, size, name in image.symbols
                  if start > main and size > 0 and not name.startswith("_")
                  and start & ~(PAGE_SIZE - 1) != main & ~(PAGE_SIZE - 1)
                  and start & ~(PAGE_SIZE - 1) in code)


def table_pages(image: GuestImage) -> list[int]:
    """The pages of the largest page-aligned, non-executable object of several pages."""
    code = _executable(image)
    tables = [(size, start) for start, size, _name in image.symbols
              if start % PAGE_SIZE == 0 and size >= 2 * PAGE_SIZE and start not in code]
    if not tables:
        return []
    size, start = max(tables)
    return [start + i * PAGE_SIZE for i in range(size // PAGE_SIZE)]


def stack_page(memory: int) -> int:
    """The top page of guest memory, where the stack starts."""
    return memory - PAGE_SIZE
