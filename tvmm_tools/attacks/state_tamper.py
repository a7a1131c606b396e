"""Scenario 6 — sealed-state tamper and replay: edit the register state the host holds
between exits, or give back an older copy of part of it.

The victim is ``password``.  ``main`` keeps the password's length in a callee-saved
register for the whole run and passes it to ``check_password`` as its fourth argument;
which register that is, the attacker reads off the public binary (the ``mov`` into rcx
before the call).  If that register holds 0 when the guest compares an empty line, the
lengths match and the empty compare loop says "granted".

The host takes one exit right at the start (timer quantum 1) — every register but rsp
and rip still holds its reset value 0 — and keeps that state.  At the first input
request it answers with an empty line and, on the next ENTER, hands back the current
state with the register's 16-byte slot replaced by the slot from that first exit:

- ``plain``/``sev``: the host holds the register file in plaintext; the slot it pastes
  is simply the value 0 (it could as well write any value).  Granted, unnoticed.
- ``sev-es``: the register file is encrypted deterministically, slot by slot, bound to
  the slot's address: the old ciphertext of the same slot decrypts to the old value 0
  (a replay of old ciphertext, as CipherLeaks observes).  Granted, unnoticed.
- ``snp``: the VMSA is guest-owned; ENTER with a changed state is refused (DENIED).
- ``shim``: the state is sealed with AES-GCM bound to VM, vCPU and exit number; the
  spliced blob fails authentication and the VM is killed (KillReason.SEALED_STATE).
"""

from __future__ import annotations

import capstone

from tvmm.abi.messages import ExitRecord, Reply
from tvmm.abi.types import Field, KillReason, Result
from tvmm.host.devices import InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, needs_symbols
from tvmm_tools.attacks.calibrate import is_input_request, symbol_range

# The register save area's public layout: one 16-byte slot per register, in this order.
REG_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
SLOT = 16
_KILL_CODES = {int(k) for k in KillReason}
_WIDE = {f"e{r[1:]}": r for r in REG_NAMES[:8]} | {f"{r}d": r for r in REG_NAMES[8:16]}


def length_register(ctx: AttackContext) -> str | None:
    """The register ``main`` passes as check_password's 4th argument (rcx), read off
    the public binary: the source of the last ``mov rcx/ecx, <reg>`` before the call."""
    main, check = symbol_range(ctx, "main"), symbol_range(ctx, "check_password")
    code = b"".join(p.data for p in ctx.image.pages if p.executable)
    base = min(p.gpa for p in ctx.image.pages if p.executable)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    source: str | None = None
    for insn in md.disasm(code[main.start - base : main.stop - base], main.start):
        if insn.mnemonic == "mov" and ", " in insn.op_str:
            dst, src = insn.op_str.split(", ", 1)
            if dst in ("rcx", "ecx"):
                src = _WIDE.get(src, src)
                source = src if src in REG_NAMES else None
        elif insn.mnemonic == "call" and insn.op_str == hex(check.start):
            return source
    return None


def splice(state: bytes, older: bytes, slot: int) -> bytes:
    """``state`` with the bytes of register slot ``slot`` taken from ``older``."""
    at = slot * SLOT
    return state[:at] + older[at : at + SLOT] + state[at + SLOT :]


class _Tamperer(HonestHypervisor):
    def __init__(self, client, devices: Devices, slot: int, record) -> None:
        super().__init__(client, devices, quantum=1)  # the first entry: one instruction
        self.slot = slot
        self.record = record
        self.reset_state: bytes | None = None
        self.armed = False
        self.tampered = False
        self.refused: Result | None = None

    def on_exit(self, rec: ExitRecord) -> bool:
        if self.reset_state is None:
            self.reset_state, self.quantum = rec.state, 0
            self.record("keep_state", seq=rec.seq, size=len(rec.state))
        served = super().on_exit(rec)
        if is_input_request(rec) and not self.tampered:
            self.armed = True
        return served

    def enter(self) -> Reply:
        if not self.armed or self.reset_state is None:
            return super().enter()
        self.armed, self.tampered = False, True
        state = splice(self.state, self.reset_state, self.slot)
        self.record("enter_tampered", slot=self.slot, changed=state != self.state)
        self.entries += 1
        reply = self.client.enter(self.vm, self.quantum, state)
        if reply.exit is None:  # refused: nothing changed, resume honestly
            self.refused = reply.result
            self.record("refused", result=reply.result.name)
            return super().enter()
        return reply


class StateTamper(Attack):
    name = "state-tamper"
    summary = ("replay one register slot of an older exit's state (password length := 0) "
               "and answer with an empty line")
    victims = ("password",)
    kind = "integrity"
    published = ("CipherLeaks (USENIX Security 2021): the saved register state is "
                 "encrypted deterministically (per-address tweak, no nonce), without "
                 "integrity; sealed state must be detected, never resumed (docs/attacks.md §3, "
                 "§6; no figure for tampering)")

    def run(self, ctx: AttackContext) -> Outcome:
        if (na := needs_symbols(ctx, "check_password", why="the verdict it flips")) is not None:
            return na
        register = length_register(ctx)
        if register is None:
            return Outcome(notes={"detail": "no mov into rcx before check_password found"})
        slot = REG_NAMES.index(register)
        ctx.record("target", register=register, slot=slot)
        host = _Tamperer(ctx.client, Devices(input=InputDevice([b""])), slot, ctx.record)
        ctx.launch(host)
        result = host.run()
        granted = "granted" in host.devices.console.text
        notes: dict[str, object] = {"register": register, "how": result.how}
        if host.refused is not None:
            notes["blocked"] = True
            notes["detail"] = f"ENTER with the spliced state refused: {host.refused.name}"
        elif result.how == "killed":
            reason = result.last.get(Field.KILL_REASON) if result.last else None
            notes["kill_reason"] = KillReason(reason).name if reason in _KILL_CODES else reason
            notes["detail"] = f"the VM was killed ({notes['kill_reason']}) at the spliced ENTER"
        elif granted:
            notes["detail"] = f"{register} := its reset value 0: an empty line was granted"
        else:
            notes["detail"] = "the spliced state was accepted but the guest said denied"
        return Outcome(hosts=[host], exits=sum(host.exits.values()), notes=notes)

