"""The platform ABI under a malicious host: a sequence interpreter.

Each input is a program: a fresh platform, then host calls chosen by the input's bytes
(tvmm_tools.fuzz.input.Choices) — CREATE_VM at every level, ADD_PAGES of every page type
(SECRETS with a wrapped secret of any length, oversized ones wrapped by hand, bound to
a random digest of any length), FINALIZE,
ENTER with the state handed out, none, a forged, bit-flipped, replayed or another VM's
state and random quanta, MAP/UNMAP/REMAP, READ_PAGE/WRITE_PAGE (random or replayed
ciphertext), INJECT, COMPLETE_IO, DROP_WRITES, DESTROY, raw bytes — plus a LAUNCH macro
that boots the counter guest (guests/samples/counter.c) the honest way with a planted
secret and a marker page, and an honest step that serves the last exit, so that programs
reach a running guest.  Every call goes through ``Platform.handle_bytes``.

Oracles, checked after every call:
  * no exception out of handle_bytes, and every reply decodes to a Reply;
  * the state table (shim/host_calls/dispatch.py LEGAL_IN): a call not legal in the VM's
    state gets BAD_STATE or VM_DEAD;
  * a refused call changes nothing of its VM (state, memory, page tables, vCPU contexts,
    registers, measurement) — ENTER's VM_DEAD and ENTRY_REFUSED excepted (documented:
    they end or count);
  * at an encrypted level no reply carries the planted secret or the marker page's bytes,
    and READ_PAGE of a private page is not its plaintext;
  * at snp and shim a successful call other than ENTER leaves every private page of a
    running VM as it was (at snp DROP_WRITES excepted: CacheWarp, docs/attacks.md);
  * ADD_PAGES changes no page outside the pages it adds;
  * a launch secret the host wrapped to a random digest never reaches guest memory, not
    at ADD_PAGES and not when FINALIZE succeeds (it is bound to another launch).

ENTER's quantum is never 0 (no timer): a guest whose state the host forged may spin
forever, and that is not a finding.  VMs are at most a few MiB (memory is read whole for
the oracles); larger sizes are tried only where they are refused.
"""

from __future__ import annotations

import random
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shim.host_calls.dispatch import LEGAL_IN
from shim.launch import vmsa_page
from shim.platform import Platform
from shim.vm import Vm
from tvmm.abi import codec, launch_secret
from tvmm.abi.guest import BOOT_INFO_GPA, IMAGE_BASE, SECRETS_GPA, SHARED_BASE, SHARED_SIZE
from tvmm.abi.messages import (
    AddPages,
    CompleteIo,
    CreateVm,
    Destroy,
    DropWrites,
    Enter,
    ExportVm,
    Finalize,
    ImportVm,
    Inject,
    Map,
    ReadPage,
    Remap,
    Reply,
    Unmap,
    WritePage,
)
from tvmm.abi.types import DEFAULT_POLICY, Call, ExitReason, Field, Level, PageType, Result
from tvmm.hw import measurement
from tvmm.hw.vmsa import VMSA_GPA
from tvmm_tools.fuzz.input import Choices
from tvmm_tools.fuzz.targets import OracleViolation

PAGE = 0x1000
MEMORY = 0x280000  # the counter guest's image at 2 MiB, its stack below 2.5 MiB
MARKER_GPA = 0x4000  # a private NORMAL page of random bytes the guest never touches
MAX_STEPS = 64  # operations per input
ENCRYPTED = (Level.SEV, Level.SEV_ES, Level.SNP, Level.SHIM)
OWNED = (Level.SNP, Level.SHIM)  # the ownership table: private pages are the guest's


@dataclass
class VmInfo:
    """What the fuzzer (the host, plus its oracles' inside knowledge) keeps per VM."""

    level: Level | None
    secret: bytes = b""  # planted: never in a reply at an encrypted level
    marker: bytes = b""
    state: bytes = b""  # the state handed out at the last exit
    states: list[bytes] = field(default_factory=list)
    pages: list[bytes] = field(default_factory=list)  # pages the host read (for replays)
    last_exit: object = None
    unbound: list[bytes] = field(default_factory=list)  # secrets wrapped to other digests


class Session:
    def __init__(self, c: Choices) -> None:
        self.c = c
        self.platform = Platform(state_dir=_state_dir())
        self.tee = self.platform.tee
        self.info: dict[int, VmInfo] = {}
        self.calls: list[str] = []
        self.snaps: dict[int, bytearray] = {}
        self.destination: Platform | None = None  # a second TEE, for migrations
        self.streams = 0
        self.imported = 0  # streams carried whole and compared
        self.rng = random.Random(int.from_bytes(c.data[:8].ljust(8, b"\0"), "little"))

    # -- one call, with the oracles -------------------------------------------------------
    def call(self, request: object, raw: bytes | None = None, platform: Platform | None = None
             ) -> Reply | None:
        platform = platform or self.platform
        name = type(request).__name__ if raw is None else "raw"
        call = getattr(request, "CALL", None)
        self.calls.append(call.name if call is not None else name)
        if raw is None:
            raw = codec.encode(request)
        vm_id = getattr(request, "vm", None)
        vm = platform.tee.vms.get(vm_id) if isinstance(vm_id, int) else None
        info = self.info.get(vm_id) if vm is not None and platform is self.platform else None
        level = vm.level if vm is not None else getattr(request, "level", None)
        ctx = {"call": call.name if call is not None else name, "level": str(level or ""),
               "calls": tuple(self.calls[-24:])}
        before = _fingerprint(vm) if vm is not None else None
        snap = self._snapshot(vm) if vm is not None else None
        state_before = vm.state if vm is not None else None
        try:
            out = platform.handle_bytes(raw)
        except Exception as exc:
            exc.add_note(f"fuzz context: {ctx}")
            raise
        try:
            reply = codec.decode(out)
        except codec.DecodeError as exc:
            raise OracleViolation("reply_undecodable", str(exc), **ctx) from None
        if not isinstance(reply, Reply):
            raise OracleViolation("reply_undecodable", "not a Reply", **ctx)
        self._confidential(out, reply, request, vm, ctx)
        if vm is None or call is None:
            return reply
        legal = state_before in LEGAL_IN.get(call, frozenset())
        if not legal and reply.result not in (Result.BAD_STATE, Result.VM_DEAD):
            raise OracleViolation("illegal_call_accepted", f"{call.name} in state "
                                  f"{state_before.name} got {reply.result.name}", **ctx)
        now = _memory(vm)
        changed = [] if now == snap else _pages_changed(now, snap)
        ended = call == Call.ENTER and reply.result in (Result.VM_DEAD, Result.ENTRY_REFUSED)
        if reply.result != Result.OK and not ended:
            after = _fingerprint(vm)
            if after != before or changed:
                parts = _diff(before, after) + (["memory"] if changed else [])
                raise OracleViolation("refusal_changed_state", f"{call.name} refused with "
                                      f"{reply.result.name} ({reply.operand}) changed "
                                      f"{parts} {changed[:8]}", **ctx)
        if changed and reply.result == Result.OK and call != Call.ENTER and \
                vm.level in OWNED and state_before.name == "RUNNABLE" and not (
                    call == Call.DROP_WRITES and vm.level == Level.SNP):
            private = [p for p in changed if vm.memory.is_private(p)]
            if private:
                raise OracleViolation("private_page_changed", f"{call.name} changed private "
                                      f"pages {[hex(p) for p in private[:8]]}", **ctx)
        if changed and reply.result == Result.OK and call == Call.ADD_PAGES:
            lo, hi = request.gpa, request.gpa + request.count * PAGE
            outside = [p for p in changed if not lo <= p < hi]
            if outside:
                raise OracleViolation("add_pages_outside_range", f"ADD_PAGES "
                                      f"{request.page_type.name} at {lo:#x} x{request.count} "
                                      f"changed {[hex(p) for p in outside[:8]]}",
                                      **{**ctx, "page_type": request.page_type.name})
        if info is not None and info.unbound and reply.result == Result.OK and \
                call in (Call.ADD_PAGES, Call.FINALIZE):
            stray = [secret for secret in info.unbound if secret in now]
            if stray:
                raise OracleViolation("unbound_secret_installed", f"{call.name} put a launch "
                                      "secret bound to another digest into guest memory", **ctx)
        if info is not None and reply.exit is not None:
            info.last_exit = reply.exit
            if reply.exit.state:
                info.state = reply.exit.state
                info.states.append(reply.exit.state)
        if info is not None and call == Call.READ_PAGE and reply.ok:
            info.pages.append(reply.data)
        return reply

    def _confidential(self, out: bytes, reply: Reply, request: object, vm: Vm | None,
                      ctx: dict) -> None:
        for vid, info in self.info.items():
            if info.level not in ENCRYPTED or not info.secret:
                continue
            leaked = info.secret[8:] in out or any(
                info.marker[i : i + 32] in out for i in range(0, PAGE, 512))
            if leaked:
                raise OracleViolation("plaintext_in_reply", f"VM {vid}'s planted secret or "
                                      "marker page is in a reply", **{**ctx,
                                                                      "level": str(info.level)})
        if vm is not None and vm.level in ENCRYPTED and type(request) is ReadPage and \
                reply.ok and vm.memory.is_private(request.gpa):
            if reply.data == vm.vcpu.mem_read(request.gpa, PAGE):
                raise OracleViolation("private_page_plaintext", f"READ_PAGE "
                                      f"{request.gpa:#x} returned its plaintext", **ctx)

    def _snapshot(self, vm: Vm) -> bytearray:
        """The VM's memory before the call, in a buffer kept per VM (a fresh 2.5 MiB
        allocation each call costs page faults)."""
        buf = self.snaps.get(id(vm))
        if buf is None or len(buf) != vm.memory.size:
            buf = self.snaps[id(vm)] = bytearray(vm.memory.size)
        buf[:] = vm.vcpu.ram(0, vm.memory.size)
        return buf

    # -- choices ----------------------------------------------------------------------------
    def vm_id(self) -> int:
        ids = list(self.info)
        if ids and not self.c.chance(1, 16):
            return self.c.pick(ids)
        return self.c.pick((0, -1, 999, 1 << 40, len(ids) + 1))

    def gpa(self, vm_id: int) -> int:
        vm = self.tee.vms.get(vm_id)
        size = vm.memory.size if vm is not None else MEMORY
        k = self.c.below(8)
        if k < 4:
            return self.c.below(size // PAGE) * PAGE
        if k < 7:
            return self.c.pick((0, BOOT_INFO_GPA, SECRETS_GPA, MARKER_GPA, SHARED_BASE,
                                SHARED_BASE + SHARED_SIZE - PAGE, SHARED_BASE + SHARED_SIZE,
                                IMAGE_BASE, IMAGE_BASE + PAGE, size - PAGE, size))
        return self.c.int64()

    def state(self, info: VmInfo | None) -> bytes:
        k = self.c.below(8)
        if info is None:
            return self.c.blob(64)
        if k < 4:
            return info.state
        if k == 4:
            return b""
        if k == 5 and info.state:  # a bit flipped, or a register-sized word overwritten
            forged = bytearray(info.state)
            i = self.c.below(len(forged))
            if self.c.chance(1, 2):
                forged[i] ^= 1 << self.c.below(8)
            else:
                forged[i : i + 8] = (self.c.int64() & ((1 << 64) - 1)).to_bytes(8, "little")
            return bytes(forged[: len(info.state)])
        if k == 6 and info.states:
            return self.c.pick(info.states)
        others = [o.state for o in self.info.values() if o.state and o is not info]
        if others and self.c.chance(1, 2):
            return self.c.pick(others)
        return self.c.blob(300)


def _state_dir() -> str:
    global _STATE_DIR
    if _STATE_DIR is None:
        _STATE_DIR = tempfile.mkdtemp(prefix="tvmm-fuzz-chip-")
    return _STATE_DIR


_STATE_DIR: str | None = None


# -- what the oracles compare -----------------------------------------------------------
def _memory(vm: Vm) -> bytes:
    return vm.vcpu.mem_read(0, vm.memory.size)


def _fingerprint(vm: Vm) -> tuple:
    """Everything of a VM a refused call must leave as it was, but its memory (compared
    apart, page by page)."""
    ctxs = tuple((c.rip, c.seq, c.handed_out, repr(c.pending), c.completion, tuple(c.irqs),
                  tuple(sorted(c.registered)), c.retired, c.entries) for c in vm.vcpus)
    return (vm.state, vm.exit_status, vm.kill_reason, vm.entry, vm.launch_digest,
            vm.digest.digest, bytes(vm.added), bytes(vm.memory.mapped), bytes(vm.memory.state),
            len(vm.code_ranges), vm.writeback is None, ctxs, vm.vcpu.read_regs())


_PARTS = ("state", "exit_status", "kill_reason", "entry", "launch_digest", "digest", "added",
          "mapped", "page_states", "code_ranges", "writeback", "vcpu_contexts", "registers")


def _diff(a: tuple, b: tuple) -> list[str]:
    return [name for name, x, y in zip(_PARTS, a, b, strict=True) if x != y]


def _pages_changed(now: bytes, before: bytearray) -> list[int]:
    return [p for p in range(0, len(now), PAGE) if now[p : p + PAGE] != before[p : p + PAGE]]


# -- the guest and the secret -------------------------------------------------------------
_IMAGE = None


def _image():
    global _IMAGE
    if _IMAGE is None:
        from tvmm.samples import build_sample

        _IMAGE = build_sample("counter")
    return _IMAGE


_RUNS: list[tuple[int, bytes, bool]] | None = None


def _image_runs() -> list[tuple[int, bytes, bool]]:
    """The image's ADD_PAGES runs as the honest host makes them: (gpa, contents, exec)."""
    global _RUNS
    if _RUNS is None:
        _RUNS = [(r.gpa, b"".join(r.parts), r.executable) for r in _image().runs()]
    return _RUNS


def wrap_any(secret: bytes, platform_key: ec.EllipticCurvePublicKey, rng: random.Random,
             digest: bytes | None = None) -> bytes:
    """launch_secret.wrap without its checks: a host may wrap anything to the platform's
    public key, bound to any digest (random if None) of any length."""
    eph = ec.derive_private_key(rng.getrandbits(383) | 1, ec.SECP384R1())
    nonce = rng.getrandbits(96).to_bytes(12, "little")
    point = eph.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    if digest is None:
        digest = rng.randbytes(rng.choice((launch_secret.DIGEST,) * 3 + (0, 47, 49)))
    head = launch_secret.MAGIC + point + bytes([len(digest)]) + digest
    return head + nonce + launch_secret._kek(eph, platform_key).encrypt(nonce, secret, head)


def launch_digest(level: Level, marker: bytes) -> bytes:
    """The digest of the LAUNCH macro's page list at ``level`` (its owner's prediction:
    the plan's pages plus the marker page), which its launch secret is bound to."""
    chain = measurement.LaunchDigest()
    chain.add_page(BOOT_INFO_GPA, PageType.CPUID, None)
    chain.add_page(SECRETS_GPA, PageType.SECRETS, None)
    chain.add_run(MARKER_GPA, marker)
    for gpa, data, _executable in _image_runs():
        chain.add_run(gpa, data)
    chain.add_page(VMSA_GPA, PageType.VMSA, vmsa_page(_image().entry, MEMORY, level))
    return chain.digest


# -- the operations -------------------------------------------------------------------------
def op_launch(s: Session) -> None:
    launch(s, s.c.pick(list(Level)), finalize=not s.c.chance(1, 4))


def launch(s: Session, level: Level, finalize: bool = True) -> int | None:
    """The honest launch of the counter guest with a planted secret and a marker page
    (stopped before FINALIZE if not ``finalize``); the VM id, or None if CREATE_VM was
    refused.  One launch in four binds the secret to another level's digest, as a host
    spending the owner's blob on a downgrade would: FINALIZE must refuse it."""
    secret = struct.pack("<Q", 100) + s.rng.randbytes(24)  # counter counts to 100
    marker = s.rng.randbytes(PAGE)
    reply = s.call(CreateVm(level, MEMORY, SHARED_BASE, SHARED_SIZE, DEFAULT_POLICY))
    if reply is None or not reply.ok:
        return None
    vm = reply.value
    s.info[vm] = VmInfo(level, secret, marker)
    image, runs = _image(), _image_runs()
    bound = level  # now and then the owner's blob for another level: a downgrade
    if not s.c.chance(3, 4):  # (an input that ran out launches honestly)
        bound = s.c.pick([other for other in Level if other != level])
        s.info[vm].unbound.append(secret)
    blob = wrap_any(secret, s.platform.launch_public_key, s.rng, launch_digest(bound, marker))
    s.call(AddPages(vm, BOOT_INFO_GPA, PageType.CPUID, 1))
    s.call(AddPages(vm, SECRETS_GPA, PageType.SECRETS, 1, blob))
    s.call(AddPages(vm, MARKER_GPA, PageType.NORMAL, 1, marker))
    for gpa, data, executable in runs:
        s.call(AddPages(vm, gpa, PageType.NORMAL, len(data) // PAGE, data, executable))
    if not finalize:
        return vm
    s.call(Finalize(vm, image.entry))
    s.call(Map(vm, 0, MEMORY // PAGE))
    return vm


def op_create(s: Session) -> None:
    c = s.c
    level = c.pick(list(Level))
    if c.chance(3, 4):  # mostly a VM that exists, for the calls that follow
        reply = s.call(CreateVm(level, c.pick((MEMORY, IMAGE_BASE + 0x10000, 1 << 22)),
                                SHARED_BASE, SHARED_SIZE, DEFAULT_POLICY))
        if reply is not None and reply.ok:
            s.info[reply.value] = VmInfo(level)
        return
    size = c.pick((MEMORY, IMAGE_BASE + 0x10000, IMAGE_BASE + 0xF000, 1 << 22, (1 << 30) + PAGE,
                   MEMORY + 1, -PAGE, 0))
    base = c.pick((SHARED_BASE, 0x1000, 0, SHARED_BASE + 1, IMAGE_BASE, c.int64()))
    shared = c.pick((SHARED_SIZE, PAGE, 0, IMAGE_BASE, c.int64()))
    policy = c.pick((DEFAULT_POLICY, 0, 1 << 21, -1, c.int64()))
    reply = s.call(CreateVm(level, size, base, shared, policy))
    if reply is not None and reply.ok:
        s.info[reply.value] = VmInfo(level)


def op_add_pages(s: Session) -> None:
    c = s.c
    vm = s.vm_id()
    page_type = c.pick(list(PageType))
    count = c.pick((1, 1, 1, 1, 1, 2, 0, -1, 1 << 16, (1 << 16) + 1))
    k = c.below(6)
    if page_type == PageType.SECRETS and k < 4:
        length = c.pick((0, 8, 32, 4088, 4089, 4096, 6000))
        secret = s.rng.randbytes(length)
        data = wrap_any(secret, s.platform.launch_public_key, s.rng)
        info = s.info.get(vm)
        if info is not None and length >= 32:  # bound to a random digest: never installed
            info.unbound.append(secret)
        if k == 3:
            data = bytearray(data)
            data[c.below(len(data))] ^= 0x40
            data = bytes(data)
    elif k < 3:
        data = s.rng.randbytes(PAGE * max(0, min(count, 2)))
    else:
        data = c.blob(64)
    gpa = c.below(0x100) * PAGE if c.chance(1, 2) else s.gpa(vm)  # low pages: mostly unadded
    s.call(AddPages(vm, gpa, page_type, count, data, c.chance(1, 2)))


def op_finalize(s: Session) -> None:
    vm = s.vm_id()
    s.call(Finalize(vm, s.c.pick((_image().entry, IMAGE_BASE, 0, s.c.int64()))))


def op_enter(s: Session) -> None:
    c = s.c
    vm = s.vm_id()
    vcpu = c.pick((0, 0, 0, 0, 1, -1))
    quantum = c.pick((1 + c.below(4000), 1 + c.below(200), 50_000, -1, (1 << 40) + 1))
    s.call(Enter(vm, vcpu, quantum, s.state(s.info.get(vm))))


def op_honest(s: Session) -> None:
    """Serve the last exit as the honest host would, so that the guest goes on."""
    vm = s.vm_id()
    info = s.info.get(vm)
    rec = info.last_exit if info is not None else None
    if rec is None:
        s.call(Enter(vm, 0, 1 + s.rng.randrange(5000), info.state if info else b""))
        return
    info.last_exit = None
    if rec.reason in (ExitReason.HYPERCALL, ExitReason.IO_PORT):
        length = rec.get(Field.LENGTH)
        s.call(CompleteIo(vm, 0, length if length is not None else 0))
    elif rec.reason == ExitReason.NPF:
        gpa = rec.get(Field.GPA)
        page = gpa & ~0xFFF if gpa is not None else (rec.get(Field.GPA_PAGE, 0) or 0) << 12
        s.call(Map(vm, page))
    else:
        s.call(Enter(vm, 0, 1 + s.rng.randrange(5000), info.state))


def op_map(s: Session) -> None:
    vm = s.vm_id()
    cls = s.c.pick((Map, Unmap))
    s.call(cls(vm, s.gpa(vm), s.c.pick((1, 1, 2, 16, 0, -1, MEMORY // PAGE, 1 << 40))))


def op_remap(s: Session) -> None:
    """Half the time a private page (the marker, the secrets, code) onto a shared one."""
    vm = s.vm_id()
    if s.c.chance(1, 2):
        gpa = SHARED_BASE + s.c.below(SHARED_SIZE // PAGE) * PAGE
        s.call(Remap(vm, gpa, s.c.pick((MARKER_GPA, SECRETS_GPA, IMAGE_BASE, MEMORY - PAGE))))
        if s.c.chance(1, 2):
            s.call(ReadPage(vm, gpa))
        return
    s.call(Remap(vm, s.gpa(vm), s.gpa(vm)))


def op_read(s: Session) -> None:
    vm = s.vm_id()
    s.call(ReadPage(vm, s.gpa(vm)))


def op_write(s: Session) -> None:
    c = s.c
    vm = s.vm_id()
    info = s.info.get(vm)
    k = c.below(4)
    if k == 0 and info is not None and info.pages:
        data = c.pick(info.pages)  # replayed ciphertext (or a page of another address)
    elif k == 1:
        data = c.blob(64)
    else:
        data = s.rng.randbytes(PAGE)
    s.call(WritePage(vm, s.gpa(vm), data))


def op_inject(s: Session) -> None:
    vm = s.vm_id()
    s.call(Inject(vm, s.c.pick((0, 0, 1, -1)), s.c.pick((0x20, 14, 2, 255, 256, -1, s.c.u8()))))


def op_complete(s: Session) -> None:
    vm = s.vm_id()
    s.call(CompleteIo(vm, s.c.pick((0, 0, 1)), s.c.int64()))


def op_drop(s: Session) -> None:
    s.call(DropWrites(s.vm_id()))


def op_destroy(s: Session) -> None:
    vm = s.vm_id()
    reply = s.call(Destroy(vm))
    if reply is not None and reply.ok:
        s.info.pop(vm, None)


def op_raw(s: Session) -> None:
    """Bytes that are not a valid request: random, or a valid one with a byte changed."""
    c = s.c
    raw = bytearray(codec.encode(Enter(s.vm_id(), 0, 100, b"")) if c.chance(1, 2)
                    else c.blob(40))
    if raw:
        raw[c.below(len(raw))] = c.u8()
    s.call(Destroy(0), raw=bytes(raw))


def op_migrate(s: Session) -> None:
    """A migration the host carries, tampering with it: the trusted agents (inside) open
    an export stream on a running VM and an import stream on a second TEE under one key;
    the host pumps EXPORT_VM, then feeds IMPORT_VM the bundles as they were or changed
    (a byte flipped, dropped, replayed, reordered, cut short, another stream's).  Oracle:
    the importer accepts exactly the bundles the exporter made, in order (anything else is
    refused), and a stream carried faithfully ends with the source's memory."""
    from shim import management

    c = s.c
    running = [vid for vid, i in s.info.items() if i.level is not None
               and vid in s.tee.vms and s.tee.vms[vid].state.name == "RUNNABLE"]
    if not running:
        return
    vid = c.pick(running)
    src = s.tee.vms[vid]
    if s.destination is None:
        s.destination = Platform(state_dir=_state_dir())
    dst = s.destination
    s.streams += 1
    stream, key = 0x5000 + s.streams, s.rng.randbytes(32)
    management.open_export(s.tee, vid, key, stream, "fuzz", s.streams)
    management.open_import(dst.tee, key, stream, "fuzz", s.streams)
    bundles, final = [], False
    for _ in range(64):
        final = final or c.chance(1, 3)
        reply = s.call(ExportVm(vid, stream, final, c.pick((256, 256, 256, 64, 0, 257))))
        if reply is None or reply.result == Result.BAD_STATE:
            break
        if not reply.ok:
            continue
        if reply.data:
            bundles.append(reply.data)
        if final and reply.value == 0:
            break
    created = s.call(CreateVm(src.level, src.memory.size, src.memory.shared.start,
                              len(src.memory.shared), src.policy), platform=dst)
    if created is None or not created.ok:
        return
    target, accepted, tampered, failed = created.value, 0, False, False
    for i, bundle in enumerate(list(bundles)):
        k = c.below(24)  # mostly carried as it is: a whole stream must get through too
        fed = bundle
        if k == 0:
            fed = bytearray(bundle)
            fed[c.below(len(fed))] ^= 1 << c.below(8)
            fed = bytes(fed)
        elif k == 1:
            continue  # dropped
        elif k == 2 and i:
            fed = bundles[i - 1]  # replayed
        elif k == 3 and i + 1 < len(bundles):
            fed = bundles[i + 1]  # reordered
        elif k == 4:
            fed = bundle[: c.below(len(bundle))]
        reply = s.call(ImportVm(target, stream, fed), platform=dst)
        if reply is None:
            return
        expected = not failed and fed == bundles[accepted]
        if reply.ok and not expected:
            raise OracleViolation("tampered_bundle_accepted", f"bundle {i} changed ({k}) "
                                  "was accepted", call="IMPORT_VM", level=str(src.level),
                                  calls=tuple(s.calls[-24:]))
        if reply.ok:
            accepted += 1
        else:
            failed = failed or reply.result == Result.DENIED or expected
        tampered = tampered or fed != bundle
        if accepted == len(bundles) and reply.ok and reply.value == target and final \
                and not tampered:
            s.imported += 1
            moved, kept = dst.tee.vms[target], src
            if moved.vcpu.mem_read(0, moved.memory.size) != kept.vcpu.mem_read(
                    0, kept.memory.size):
                raise OracleViolation("import_mismatch", "a faithful stream ended with "
                                      "other memory", call="IMPORT_VM",
                                      level=str(src.level), calls=tuple(s.calls[-24:]))
    if c.chance(1, 2):  # the agents give up or commit: the source thaws or goes
        management.close(s.tee, stream)
        management.close(dst.tee, stream)
        management.thaw(s.tee, vid)


OPS: tuple[Callable[[Session], None], ...] = (
    op_launch, op_create, op_add_pages, op_finalize, op_enter, op_enter, op_enter, op_honest,
    op_honest, op_honest, op_map, op_remap, op_read, op_write, op_inject, op_complete, op_drop,
    op_destroy, op_raw, op_migrate,
)


def run(data: bytes) -> int:
    c = Choices(data)
    s = Session(c)
    if c.chance(3, 4):  # most programs start from a guest, running (or not yet finalized)
        launch(s, c.pick(list(Level)), finalize=not c.chance(1, 4))
    steps = 0
    while c.left() > 0 and steps < MAX_STEPS:
        c.pick(OPS)(s)
        steps += 1
    return len(s.calls)


def runner(name: str) -> Callable[[bytes], int]:
    return run


def seeds(name: str) -> list[bytes]:
    """Per level: an honest run, and for every operation a program that repeats it with
    random operands (so that mutation starts from every call)."""
    rng = random.Random(0)
    out = []
    honest = bytes([OPS.index(op_honest), 1])  # serve the last exit of the first VM
    for level in range(len(Level)):
        out.append(bytes([0, level]) + honest * 60)
        for i in range(len(OPS)):
            for finalized in (0, 1):  # the launch stops before FINALIZE, or does not
                out.append(bytes([0, level, finalized]) + b"".join(
                    bytes([i]) + rng.randbytes(7) for _ in range(12)))
    return out


