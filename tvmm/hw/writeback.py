"""The write-back cache, as far as CacheWarp needs it: stores not yet written back to DRAM.

On real hardware a guest's stores sit in dirty cache lines until they are evicted or
written back; a host that executes INVD instead of WBINVD discards them, and memory keeps
its older value (CacheWarp, USENIX Security 2024).  Encryption does not stop it (the lines
are dropped, not forged) and neither does the ownership table (the host writes nothing).

The model: a buffer of at most ``lines`` dirty 64-byte lines (default 8) of private
memory, least recently written first.  Before a guest store to a line that is not in the
buffer, the line's current contents — what DRAM holds — are kept; when the buffer is
full the least recently written line is evicted (written back: its store stays).  ``drop``
(INVD) puts the kept contents back for every line still in the buffer; ``commit``
(WBINVD) empties it.  The buffer is emptied when an entry starts, so a drop reverts
stores of the guest's most recent entry only — the attacker has to stop the guest right
after the store it wants to revert, as CacheWarp does with a timer.  Stores the TEE
itself makes (interrupt frames, bounce copies) are not guest stores and are not buffered.

Cost: nothing until a VM's first DROP_WRITES creates its buffer; from then on a store hook
(tvmm.hw.vcpu.Vcpu.watch_stores) runs for every guest store of that VM.
"""

from __future__ import annotations

from collections import OrderedDict

from tvmm.hw.memory import GuestMemory

LINE = 64
DEFAULT_LINES = 8


class WriteBackBuffer:
    def __init__(self, memory: GuestMemory, lines: int = DEFAULT_LINES) -> None:
        if lines < 1:
            raise ValueError("a write-back buffer holds at least one line")
        self.memory = memory
        self.lines = lines
        self._dirty: OrderedDict[int, bytes] = OrderedDict()  # line -> contents in DRAM
        memory.vcpu.watch_stores(self._before_store)

    def _before_store(self, gpa: int, size: int) -> None:
        for line in range(gpa & ~(LINE - 1), gpa + max(size, 1), LINE):
            if line in self._dirty:
                self._dirty.move_to_end(line)
                continue
            if not self.memory.contains(line, LINE) or not self.memory.is_private(line):
                continue
            if len(self._dirty) >= self.lines:
                self._dirty.popitem(last=False)  # evicted: its store is in DRAM now
            self._dirty[line] = self.memory.read(line, LINE)

    def begin_entry(self) -> None:
        self._dirty.clear()

    def commit(self) -> None:
        """WBINVD: every dirty line is written back; a later drop finds nothing."""
        self._dirty.clear()

    def dirty_lines(self) -> list[int]:
        """The buffered lines, least recently written first."""
        return list(self._dirty)

    def drop(self) -> int:
        """INVD: the buffered lines get their DRAM contents back; how many lines."""
        dropped = len(self._dirty)
        for line, data in self._dirty.items():
            self.memory.write(line, data)
            self.memory.vcpu.flush_code(line, LINE)
        self._dirty.clear()
        return dropped
