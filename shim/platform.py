"""The TEE's front door: one entry point for every host call, in-process or as bytes.

``Platform.handle`` takes a frozen request, checks that it is one (types are checked again
by each handler, once), finds the VM, checks the call is legal in the VM's state, and runs
the handler; every refusal becomes an error reply naming the operand, and changes nothing.
``Platform.handle_bytes`` is the same behind the ABI codec, for transports that carry bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from shim.bounce import BounceBuffers
from shim.errors import BadState, Malformed, NoVm, PlatformError, VmDead
from shim.exit_path import view_of
from shim.host_calls import create_vm
from shim.host_calls.dispatch import HANDLERS, LEGAL_IN
from shim.levels import Features
from shim.sealing import StateSealer
from shim.vm import Vm, VmState
from tvmm.abi import codec
from tvmm.abi.messages import REQUESTS, CreateVm, Reply
from tvmm.abi.trace_events import NullRecorder
from tvmm.abi.types import Call, Level, Result
from tvmm.hw import cpuid
from tvmm.hw.measurement import LaunchDigest
from tvmm.hw.mee import MemoryEncryptionEngine
from tvmm.hw.memory import GuestMemory
from tvmm.hw.root_of_trust import DEFAULT_CHIP, Chip, load_chip
from tvmm.hw.vcpu import PAGE, Vcpu
from tvmm.hw.vmsa import DeterministicVmsaCipher


@dataclass
class Tee:
    """What the handlers may use of the TEE: its keys, recorder and VM table.

    Every key and every policy draw comes from the OS, inside the TEE: nothing a host (or
    whoever knows a run's seed) can reproduce.  The launch key is made here; each VM's
    memory-encryption, save-area and sealing keys in ``new_vm``; the chip (the VCEK key
    that signs reports) is loaded from the state directory on first use and held here."""

    recorder: object = field(default_factory=NullRecorder)
    policy_config: object | None = None  # shim.policies.PolicyConfig for the shim level
    vms: dict[int, Vm] = field(default_factory=dict)
    next_id: int = 1
    state_dir: Path | str | None = None  # the chip's keys (None: $TVMM_STATE_DIR or ~)
    chip_name: str = DEFAULT_CHIP
    attestation: dict[int, object] = field(default_factory=dict)  # shim.attestation per VM
    _chip: Chip | None = field(default=None, init=False, repr=False)
    # Launch secrets opened so far (shim.launch): each blob opens for one launch only.
    opened_launch_secrets: set[bytes] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.launch_key = ec.generate_private_key(ec.SECP384R1())

    @property
    def chip(self) -> Chip:
        """The chip whose VCEK key signs this TEE's reports (loaded on first use: the
        manufacturer's RSA keys are made, once per state directory, only if needed)."""
        if self._chip is None:
            self._chip = load_chip(self.state_dir, self.chip_name)
        return self._chip

    def new_vm(
        self, level: Level, features: Features, size: int, shared: range, policy: int
    ) -> Vm:
        vcpu = Vcpu(size, cpuid.serve)
        mee = MemoryEncryptionEngine() if features.encrypt_memory else None  # its own key
        memory = GuestMemory(vcpu, shared, mee, features.ownership, features.hide_ciphertext)
        vm = Vm(
            id=self.next_id,
            level=level,
            features=features,
            vcpu=vcpu,
            memory=memory,
            policy=policy,
            vmsa_cipher=DeterministicVmsaCipher(os.urandom(32)),
            sealer=StateSealer(),  # its own key and nonce field
            digest=LaunchDigest(),
            added=bytearray(size // PAGE),
        )
        if features.step_policy or features.fault_policy or features.irq_filter:
            from shim.policies import PolicySet  # only the shim level has policies

            vm.policies = PolicySet(self.policy_config)  # draws from the OS
        if features.shim_io:
            vm.bounce = BounceBuffers(memory)
        vm.view = view_of(vm)
        self.vms[vm.id] = vm
        self.next_id += 1
        return vm

    def forget(self, vm_id: int) -> None:
        self.vms.pop(vm_id, None)
        self.attestation.pop(vm_id, None)


_OK = Result.OK
_REFUSALS = frozenset({Result.DENIED, Result.ENTRY_REFUSED})  # the TEE said no, on purpose
_REFUSAL_LIMIT = 1024

# One lookup per request: its call, its handler and the states it is legal in.
_ROUTES: dict[type, tuple[Call, Callable, frozenset[VmState]]] = {
    cls: (call, HANDLERS.get(call), LEGAL_IN.get(call, frozenset()))
    for call, cls in REQUESTS.items()
}


class Platform:
    """The modeled TEE as the host reaches it."""

    def __init__(self, recorder: object | None = None, policy_config: object | None = None, *,
                 state_dir: Path | str | None = None) -> None:
        self.tee = Tee(recorder or NullRecorder(), policy_config, state_dir=state_dir)

    @property
    def launch_public_key(self) -> ec.EllipticCurvePublicKey:
        """The key owners wrap launch secrets to (tvmm.abi.launch_secret)."""
        return self.tee.launch_key.public_key()

    def handle(self, request: object) -> Reply:
        try:
            reply = self._dispatch(request)
        except PlatformError as exc:
            reply = Reply(exc.result, operand=exc.operand)
        if reply.result is not _OK and reply.result in _REFUSALS:
            self._note_refusal(request, reply)
        return reply

    def _note_refusal(self, request: object, reply: Reply) -> None:
        """A refusal of a host request on a VM goes on that VM's record (the judge's
        "blocked" is read from these, never from what the host says)."""
        vm_id = getattr(request, "vm", None)
        vm = self.tee.vms.get(vm_id) if type(vm_id) is int else None
        if vm is not None and len(vm.io.refusals) < _REFUSAL_LIMIT:
            vm.io.refusals.append({"call": type(request).__name__,
                                   "result": reply.result.name, "operand": reply.operand})

    def handle_bytes(self, data: bytes) -> bytes:
        try:
            request = codec.decode(data)
        except codec.DecodeError as exc:
            return codec.encode(Reply(Result.MALFORMED, operand=exc.operand))
        if type(request) not in _ROUTES:  # keyed by every request type: one lookup
            return codec.encode(Reply(Result.MALFORMED, operand="tag"))
        return codec.encode(self.handle(request))

    def _dispatch(self, request: object) -> Reply:
        route = _ROUTES.get(type(request))
        if route is None:
            raise Malformed("request", f"not a platform request: {type(request).__name__}")
        call, handler, legal = route
        if type(request) is CreateVm:
            return create_vm.handle(self.tee, request)
        vm_id = request.vm  # type: ignore[attr-defined]
        if type(vm_id) is not int:  # bool and other int subclasses too
            raise Malformed("vm", "expected an integer")
        vm = self.tee.vms.get(vm_id)
        if vm is None:
            raise NoVm("vm", f"no VM {vm_id}")
        if vm.state not in legal:
            if vm.state == VmState.DEAD:
                raise VmDead("vm", f"VM {vm_id} is dead: {vm.end_detail}")
            raise BadState("vm", f"{call.name} is not legal in state {vm.state.name}")
        return handler(self.tee, vm, request)

    def vm(self, vm_id: int) -> Vm:
        """Inside access for tests and the trace: never handed to host code."""
        return self.tee.vms[vm_id]

    @property
    def chip(self):  # -> tvmm.hw.root_of_trust.Chip
        """The chip that signs this platform's reports; its certificates (Chip.write_chain)
        are public, as AMD's key server publishes a VCEK.  Inside access: never handed to
        host code."""
        return self.tee.chip
