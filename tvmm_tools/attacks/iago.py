"""Scenario 10 — Iago answers and the double fetch (Checkoway & Shacham, ASPLOS 2013;
"A Tale of Two Worlds", CCS 2019), against ``password``'s input path.

``password`` reads each line into ``session.guess[64]``, which is followed in memory by
``session.authenticated``: eight bytes copied past the buffer set the flag, and the guest
says "granted" whatever the line was.  Below ``shim`` the runtime moves input itself
through a fixed shared slot: the host writes a reply header {u32 len, u32 status} and the
data, the driver checks ``len`` against its buffer and the slot, and then copies —
reading ``len`` again from shared memory for the copy.  At ``shim`` the shim allocates
the slot, checks the host's answer against its own record of the request (length within
what the guest asked for), copies from the slot exactly once into private memory, and
zeroes the slot.

- ``iago-length`` (a): the reply says 72 bytes for a 64-byte buffer, with bytes 64..71
  nonzero.  Below the shim the driver's one check refuses it (the guest gets -EIO and
  stops reading); at the shim the length fails the record check (a recorded violation).
- ``iago-double-fetch`` (b): the reply is an honest 2-byte line; after the driver's check
  and before its copy the host rewrites the header's length to 72.  Below the shim the
  copy overwrites ``session.authenticated``: "granted", unnoticed.  At the shim the slot
  was read once, at completion: the rewrite changes nothing.
- ``iago-offset`` (c): the answer points outside the slot: a length that runs past the
  2 KiB slot's end into its neighbour, and a hypercall result that is no length at all
  (a private address).  The driver's slot check refuses the first and never uses the
  second; the shim refuses the value against its record (a recorded violation).

Timing (b) without RIP: on its own copy of the public image at ``plain`` the attacker
tries each stopping point k after the input completes — stop after k instructions,
rewrite the header, let it run — and takes the first k at which its own copy says
"granted" (earlier k: the check sees 72 and refuses; later: the copy already used 2).
The window does not depend on the secret: the line is the same, and so is the path.
"""

from __future__ import annotations

import struct

from tvmm.abi.guest import SLOT_SIZE
from tvmm.abi.messages import ExitRecord
from tvmm.abi.types import Field
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, needs_symbols
from tvmm_tools.attacks.calibrate import finish, is_input_request, launch_own_copy

HEADER = struct.Struct("<II")  # the naive driver's reply header: len, status
BUFFER = 64  # sizeof session.guess
LINE = b"x\n"
PAYLOAD = LINE + b"A" * (BUFFER - len(LINE)) + b"\x01" * 8  # 72 bytes: 64..71 nonzero
MAX_WINDOW = 200  # give up scanning for the double-fetch window after this many steps


class _LyingHost(HonestHypervisor):
    """Answers the first input request with ``header_len`` in the reply header and
    ``result`` as the hypercall's value, the data ``PAYLOAD``; optionally stops ``k``
    instructions after the completion and rewrites the header's length to ``rewrite``."""

    def __init__(self, client, devices: Devices, *, header_len: int, result: int,
                 k: int | None = None, rewrite: int | None = None, record=None) -> None:
        super().__init__(client, devices)
        self.header_len = header_len
        self.result = result
        self.k = k
        self.rewrite = rewrite
        self.record = record or (lambda *a, **kw: None)
        self.slot: int | None = None
        self.lied = False
        self.armed = False

    def on_exit(self, rec: ExitRecord) -> bool:
        if self.armed:
            self.armed, self.quantum = False, 0
            assert self.slot is not None and self.rewrite is not None
            self.client.write_shared(self.vm, self.slot, HEADER.pack(self.rewrite, 0))
            self.record("rewrite_header", slot=self.slot, len=self.rewrite,
                        exit=rec.reason.name.lower())
        if self.lied or not is_input_request(rec):
            return super().on_exit(rec)
        self.lied = True
        shim_slot = rec.get(Field.SLOT)
        if shim_slot is not None:  # a shim bounce slot: data only, the length is the result
            self.slot = shim_slot
            self.client.write_shared(self.vm, shim_slot, PAYLOAD)
        else:  # the runtime's own slot: header, then data
            self.slot = rec.get(Field.ARG1, 0)
            self.client.write_shared(self.vm, self.slot,
                                     HEADER.pack(self.header_len, 0) + PAYLOAD)
        self.record("answer", slot=self.slot, header_len=self.header_len, result=self.result)
        self.client.complete_io(self.vm, self.result)
        if self.k is not None:
            self.armed, self.quantum = True, self.k
        return True


def _said(host: HonestHypervisor) -> str:
    text = host.devices.console.text
    return "granted" if "granted" in text else ("denied" if "denied" in text else "error")


PUBLISHED = ("Iago attacks (ASPLOS 2013); \"A Tale of Two Worlds\" (CCS 2019): Open "
             "Enclave's CVE-2019-1369 leaked up to 10 kB; stopped by copying once and "
             "checking every host value against the shim's record (docs/attacks.md §10)")


def _lie_once(ctx: AttackContext, header_len: int, result: int) -> Outcome:
    host = _LyingHost(ctx.client, Devices(), header_len=header_len, result=result,
                      record=ctx.record)
    ctx.launch(host)
    run = host.run()
    said = _said(host)
    notes: dict[str, object] = {"how": run.how, "guest_said": said}
    notes["detail"] = (f"header length {header_len}, result {result:#x}: "
                       f"the guest {'said ' + said if said != 'error' else 'got an error'}")
    return Outcome(hosts=[host], exits=sum(host.exits.values()), notes=notes)


class IagoLength(Attack):
    name = "iago-length"
    summary = "answer a 64-byte input request with 72 bytes (8 past the buffer, onto the flag)"
    victims = ("password",)
    kind = "integrity"
    published = PUBLISHED

    def run(self, ctx: AttackContext) -> Outcome:
        return _lie_once(ctx, len(PAYLOAD), len(PAYLOAD))


class IagoOffset(Attack):
    name = "iago-offset"
    summary = ("answer with a length that runs past the slot's end and a result that is a "
               "private address")
    victims = ("password",)
    kind = "integrity"
    published = PUBLISHED

    def run(self, ctx: AttackContext) -> Outcome:
        # 8 header bytes + 2 KiB of data run past the slot's end; the result is the
        # address of password's session, where a careless guest would copy to
        if (na := needs_symbols(ctx, "session", why="the flag past the input buffer")) is not None:
            return na
        return _lie_once(ctx, SLOT_SIZE, ctx.image.symbol("session"))


class IagoDoubleFetch(Attack):
    name = "iago-double-fetch"
    summary = ("rewrite the reply length in the shared slot between the driver's check and "
               "its copy: 72 bytes land on session.authenticated")
    victims = ("password",)
    kind = "integrity"
    published = PUBLISHED

    def run(self, ctx: AttackContext) -> Outcome:
        k, trials, cal_exits = self.calibrate(ctx)
        if k is None:
            return Outcome(exits=cal_exits, notes={
                "detail": f"no double-fetch window within {MAX_WINDOW} instructions on the "
                          f"own copy ({trials} trials)"})
        ctx.record("calibrated", k=k, trials=trials)
        host = _LyingHost(ctx.client, Devices(), header_len=len(LINE), result=len(LINE), k=k,
                          rewrite=len(PAYLOAD), record=ctx.record)
        ctx.launch(host)
        result = host.run()
        said = _said(host)
        notes: dict[str, object] = {"k": k, "trials": trials, "how": result.how,
                                    "guest_said": said}
        if said == "granted":
            notes["detail"] = (f"length rewritten to {len(PAYLOAD)} {k} instructions after "
                               "the completion: session.authenticated overwritten, granted")
        else:
            notes["blocked"] = True
            notes["detail"] = f"length rewritten after the completion: the guest said {said}"
        return Outcome(hosts=[host], exits=cal_exits + sum(host.exits.values()), notes=notes)

    @staticmethod
    def calibrate(ctx: AttackContext) -> tuple[int | None, int, int]:
        """(the first k at which the own copy grants, trials, exits used)."""
        exits = 0
        for k in range(1, MAX_WINDOW + 1):
            cal = _LyingHost(ctx.client, Devices(), header_len=len(LINE), result=len(LINE),
                             k=k, rewrite=len(PAYLOAD))
            launch_own_copy(ctx, cal)
            cal.run(max_exits=200)
            finish(cal)
            exits += sum(cal.exits.values())
            said = _said(cal)
            if said == "granted":
                return k, k, exits
            if said == "denied":  # past the window: the copy already used the checked length
                return None, k, exits
        return None, MAX_WINDOW, exits
