"""Scenario 8 — dropped writes (CacheWarp, USENIX Security 2024): the host discards the
guest's most recent stores (INVD instead of WBINVD) and a variable silently keeps its
older value.

The victim is ``counter``: it increments a counter in private memory and prints it.  The
host stops the guest right after the increment's store and drops the dirty lines; the
counter keeps its old value and the guest prints the same count twice — a monotonic
counter that repeats, unnoticed.  (That is the "revert a single variable" primitive of
the paper, whose victims were an authentication flag and RSA-CRT state.  ``password``'s
``session.authenticated`` is a poor target here: it only ever goes from 0 to 1 under
the right password, so reverting it can only deny; a counter of attempts or a nonce is
what this primitive breaks, and ``counter`` is exactly that.)

Timing without RIP: on its own copy of the public image at ``plain`` the attacker
single-steps from the completion of a "\\n" console write and reads the counter's page
(plaintext on its own copy) after each step; the step at which the counter changes is
the count K (the same on every iteration and level below the shim: the code path after
the console write does not depend on anything secret).  At the victim: after the "\\n"
that ends "count=10", ENTER with quantum K, then DROP_WRITES.

The model's write-back buffer (tvmm/hw/writeback.py) holds at most 8 dirty 64-byte lines
of the last entry; the first DROP_WRITES on a VM switches it on.  Encryption and the
ownership table do not stop the attack (nothing is written by the host); at ``shim``
the exit path writes the buffer back before the host gets control, so the drop finds
nothing (and the short quantum is extended anyway).
"""

from __future__ import annotations

import struct

from tvmm.abi.guest import PAGE_SIZE
from tvmm.abi.messages import ExitRecord
from tvmm.abi.types import ExitReason, Result
from tvmm.host.client import HostCallError, PlatformClient
from tvmm.host.hypervisor import HonestHypervisor
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, needs_symbols
from tvmm_tools.attacks.calibrate import MAX_STEPS, finish, is_console_request, launch_own_copy

CALIBRATE_AT = 3  # single-step after the newline that ends this count on the own copy
DROP_AT = 10  # drop the increment after this count at the victim


def drop_writes(client: PlatformClient, vm: int) -> None:
    client.calls += 1
    reply = client.drop_writes(vm)
    if reply.result != Result.OK:
        raise HostCallError("DROP_WRITES", reply)


def _line_ends(host: HonestHypervisor, rec: ExitRecord, value: int) -> bool:
    return is_console_request(rec) and host.devices.console.text.endswith(f"count={value}\n")


def _counts_up(text: str) -> bool:
    """Whether the printed counts are 1, 2, 3, ... as an undisturbed counter prints them."""
    counts = [line[6:] for line in text.splitlines() if line.startswith("count=")]
    return counts == [str(i) for i in range(1, len(counts) + 1)]


class _Calibrator(HonestHypervisor):
    """Own copy at plain: steps from a newline's completion to the counter's store."""

    def __init__(self, client, devices, counter: int) -> None:
        super().__init__(client, devices)
        self.counter = counter
        self.stepping = False
        self.steps = 0
        self.value: int | None = None
        self.count: int | None = None

    def read_counter(self) -> int:
        page = self.client.read_page(self.vm, self.counter & ~(PAGE_SIZE - 1))
        return struct.unpack_from("<Q", page, self.counter % PAGE_SIZE)[0]

    def on_exit(self, rec: ExitRecord) -> bool:
        if self.stepping:
            if rec.reason != ExitReason.TIMER or self.steps >= MAX_STEPS:
                return False
            self.steps += 1
            if self.read_counter() != self.value:
                self.count = self.steps
                return False
            return True
        served = super().on_exit(rec)
        if _line_ends(self, rec, CALIBRATE_AT):
            self.stepping, self.quantum, self.value = True, 1, self.read_counter()
        return served


class _Dropper(HonestHypervisor):
    def __init__(self, client, devices, count: int, record) -> None:
        super().__init__(client, devices)
        self.count = count
        self.record = record
        self.armed = False
        self.dropped = False

    def on_exit(self, rec: ExitRecord) -> bool:
        if self.armed:
            self.armed, self.quantum, self.dropped = False, 0, True
            drop_writes(self.client, self.vm)
            self.record("drop_writes", exit=rec.reason.name.lower(), seq=rec.seq)
            if rec.reason == ExitReason.TIMER:
                return True
        served = super().on_exit(rec)
        if not self.dropped and _line_ends(self, rec, DROP_AT):
            self.armed, self.quantum = True, self.count
        return served


class DroppedWrites(Attack):
    name = "dropped-writes"
    summary = ("stop the counter right after its increment and drop the dirty cache lines "
               "(INVD): the counter repeats a value")
    victims = ("counter",)
    kind = "integrity"
    published = ("CacheWarp (USENIX Security 2024): INVD on dirty lines reverts single "
                 "variables such as an authentication flag; encryption and ownership alone "
                 "do not stop it (docs/attacks.md §8; no figure)")

    def run(self, ctx: AttackContext) -> Outcome:
        if (na := needs_symbols(ctx, "counter", why="the counter whose stores it drops")) is not None:
            return na
        counter = ctx.image.symbol("counter")
        cal = _Calibrator(ctx.client, ctx.devices(), counter)
        launch_own_copy(ctx, cal)
        cal.run(max_exits=MAX_STEPS + 1000)
        finish(cal)
        exits = sum(cal.exits.values())
        if cal.count is None:
            return Outcome(exits=exits, notes={"detail": "calibration on the own copy failed"})
        ctx.record("calibrated", count=cal.count)
        host = _Dropper(ctx.client, ctx.devices(), cal.count, ctx.record)
        ctx.launch(host)
        drop_writes(ctx.client, host.vm)  # switches the write-back model on for this VM
        result = host.run()
        text = host.devices.console.text
        repeated = text.count(f"count={DROP_AT}\n") > 1
        notes: dict[str, object] = {"count": cal.count, "how": result.how}
        if repeated:
            notes["detail"] = (f"stopped {cal.count} instructions after the newline, dropped "
                               f"the dirty lines: count={DROP_AT} printed twice")
        elif not _counts_up(text):
            notes["detail"] = (f"dropped the dirty lines {cal.count} instructions after the "
                               "newline: the counter went wrong")
        else:
            notes["blocked"] = True
            notes["detail"] = "DROP_WRITES found nothing to drop: the counter went on"
        return Outcome(hosts=[host], exits=exits + sum(host.exits.values()), notes=notes)
