"""Scenario 7 — memory replay and remap (SEVered, EuroSec 2018; replay on SEV without
integrity): roll the ``counter`` guest back.

The counter lives in private memory (its address is in the public binary's symbols);
the host cannot read it above ``plain``, but the guest prints it, so the host knows
when it holds which value.

- ``memory-replay``: after "count=10" the host copies the counter's page as it sees it
  (READ_PAGE: ciphertext from ``sev`` up) and after "count=20" writes that copy back
  (WRITE_PAGE).  Without integrity the memory encryption engine decrypts the old
  ciphertext at the same address to the old plaintext: the guest counts 11, 12, ... again.
- ``page-remap``: after "count=20" the host points the counter's page at another page of
  the VM, one the image never uses (all zeros) — SEVered's primitive of remapping guest
  pages in the nested page table: at ``plain`` the counter restarts at 1; from ``sev`` up
  the moved ciphertext decrypts to garbage at the counter's address and the counter jumps
  past its limit.

Both work at ``plain``, ``sev`` and ``sev-es``; from ``snp`` up the ownership table (RMP)
refuses host writes to and remaps of private pages (DENIED).
"""

from __future__ import annotations

from tvmm.abi.guest import PAGE_SIZE
from tvmm.abi.messages import ExitRecord
from tvmm.abi.types import Result
from tvmm.host.client import HostCallError
from tvmm.host.hypervisor import HonestHypervisor
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, needs_symbols
from tvmm_tools.attacks.calibrate import is_console_request

SNAPSHOT_AT = 10  # copy the counter's page once the guest has printed this value
ROLLBACK_AT = 20  # and put it back (or remap) once it has printed this one


def counter_page(ctx: AttackContext) -> int:
    return ctx.image.symbol("counter") & ~(PAGE_SIZE - 1)


def unused_page(ctx: AttackContext) -> int:
    """A page of the VM the public image leaves empty: above the image, far below the
    stack at the top of guest memory."""
    end = max(p.gpa for p in ctx.image.pages) + PAGE_SIZE
    return (end + 0x10 * PAGE_SIZE) & ~(PAGE_SIZE - 1)


class _Rollback(HonestHypervisor):
    """Honest, except for one action when the console shows ``count=<at>``."""

    def __init__(self, client, devices, at: dict[int, object], record) -> None:
        super().__init__(client, devices)
        self.at = dict(at)
        self.record = record
        self.refused: Result | None = None

    def on_exit(self, rec: ExitRecord) -> bool:
        served = super().on_exit(rec)
        if is_console_request(rec) and self.at:
            text = self.devices.console.text
            for value in list(self.at):
                if text.endswith(f"count={value}\n"):
                    action = self.at.pop(value)
                    action(self)
        return served


class MemoryReplay(Attack):
    name = "memory-replay"
    summary = "write an old ciphertext copy of the counter's page back: the counter rolls back"
    victims = ("counter",)
    kind = "integrity"
    published = ("SEVered (EuroSec 2018); replay on SEV without integrity: an old "
                 "ciphertext page written back rolls a counter back — works at sev/sev-es, "
                 "stopped at snp by the ownership table (docs/attacks.md §7; no figure)")

    def run(self, ctx: AttackContext) -> Outcome:
        if (na := needs_symbols(ctx, "counter", why="the counter it replays")) is not None:
            return na
        page = counter_page(ctx)
        saved: dict[str, bytes] = {}

        def snapshot(host: _Rollback) -> None:
            saved["page"] = host.client.read_page(host.vm, page)
            ctx.record("read_page", gpa=page, at=SNAPSHOT_AT)

        def replay(host: _Rollback) -> None:
            reply = host.client.write_page(host.vm, page, saved["page"])
            ctx.record("write_page", gpa=page, at=ROLLBACK_AT, result=reply.result.name)
            if reply.result != Result.OK:
                host.refused = reply.result

        host = _Rollback(ctx.client, ctx.devices(),
                         {SNAPSHOT_AT: snapshot, ROLLBACK_AT: replay}, ctx.record)
        ctx.launch(host)
        return _outcome(host, host.run(), f"page {page:#x} from count={SNAPSHOT_AT} "
                        f"written back at count={ROLLBACK_AT}")


class PageRemap(Attack):
    name = "page-remap"
    summary = "remap the counter's page onto an unused zero page: the counter is overwritten"
    victims = ("counter",)
    kind = "integrity"
    published = ("SEVered (EuroSec 2018): the host remaps or swaps guest pages in its "
                 "nested page table — works at sev/sev-es, stopped at snp by the ownership "
                 "table (docs/attacks.md §7; no figure)")

    def run(self, ctx: AttackContext) -> Outcome:
        if (na := needs_symbols(ctx, "counter", why="the counter it replays")) is not None:
            return na
        page, source = counter_page(ctx), unused_page(ctx)

        def remap(host: _Rollback) -> None:
            try:
                reply = host.client.remap(host.vm, page, source)
            except HostCallError as exc:  # pragma: no cover - remap returns the raw reply
                reply = exc.reply
            ctx.record("remap", gpa=page, source=source, result=reply.result.name)
            if reply.result != Result.OK:
                host.refused = reply.result

        host = _Rollback(ctx.client, ctx.devices(), {ROLLBACK_AT: remap}, ctx.record)
        ctx.launch(host)
        return _outcome(host, host.run(), f"page {page:#x} remapped onto {source:#x} at "
                        f"count={ROLLBACK_AT}")


def _outcome(host: _Rollback, result, action: str) -> Outcome:
    notes: dict[str, object] = {"how": result.how}
    if host.refused is not None:
        notes["blocked"] = True
        notes["detail"] = f"{action}: refused ({host.refused.name})"
    else:
        notes["detail"] = f"{action}: accepted"
    return Outcome(hosts=[host], exits=sum(host.exits.values()), notes=notes)
