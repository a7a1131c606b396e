"""Protection levels as named sets of features; each feature is implemented once."""

from __future__ import annotations

from dataclasses import dataclass

from tvmm.abi.types import Level


@dataclass(frozen=True, slots=True)
class Features:
    encrypt_memory: bool = False  # the host reads private pages as ciphertext
    hide_ciphertext: bool = False  # ... or not even that: all ones (SNP ciphertext hiding)
    encrypt_registers: bool = False  # the host holds the register state encrypted (deterministic)
    ownership: bool = False  # the ownership table forbids host writes and remaps of private pages
    restricted_view: bool = False  # exits show only the registers the guest exposes
    sealed_state: bool = False  # AEAD-sealed state with a fresh nonce, bound to VM, vCPU, seq
    sanitise_exits: bool = False  # the minimum per exit; faults reveal at most the page
    step_policy: bool = False
    fault_policy: bool = False
    irq_filter: bool = False
    shim_io: bool = False  # the shim bounces I/O for the guest, checking every host value
    commit_writes: bool = False  # dirty lines are written back at every exit (no CacheWarp)


FEATURES: dict[Level, Features] = {
    Level.PLAIN: Features(),
    Level.SEV: Features(encrypt_memory=True),
    Level.SEV_ES: Features(encrypt_memory=True, encrypt_registers=True, restricted_view=True),
    Level.SNP: Features(
        encrypt_memory=True, encrypt_registers=True, restricted_view=True, ownership=True
    ),
    Level.SHIM: Features(
        encrypt_memory=True, hide_ciphertext=True, encrypt_registers=True,
        restricted_view=True, ownership=True, sealed_state=True, sanitise_exits=True,
        step_policy=True, fault_policy=True, irq_filter=True, shim_io=True, commit_writes=True,
    ),
}
