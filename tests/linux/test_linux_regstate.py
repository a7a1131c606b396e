"""The whole register state a static Linux program uses (docs/exits.md, "The register
state per level"): FS/GS base, SYSCALL's MSRs and the FXSAVE image travel with every exit
in the level's form, a suspend and a live migration, and the launch measures them.

The program (tests/linux/sse.c, musl-gcc -static) keeps vector accumulators in XMM
registers through a long loop, changes the rounding mode (MXCSR and the x87 control word)
and counts in thread-local storage (the FS base); its output on Linux is the reference."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim import management
from shim.exit_path import accept_host_state
from shim.launch import STATE_OFFSET, initial_registers, vmsa_page
from shim.platform import Platform
from shim.sealing import NONCE
from tvmm import guestlinux
from tvmm.abi.guest import INITIAL_FCW, INITIAL_MXCSR
from tvmm.abi.types import ExitReason, Field, KillReason, Level, Result
from tvmm.guestimage import load_elf
from tvmm.host.client import PlatformClient
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.host.node_host import export_round, import_stream
from tvmm.hw.vcpu import (
    EXT_NAMES,
    FX_FIRST,
    FX_MXCSR,
    FX_XMM,
    FXSAVE_SIZE,
    MXCSR_MASK,
    NREGS,
    NSLOTS,
    SLOT,
    StopKind,
    Vcpu,
)
from tvmm.hw.vmsa import VMSA_SIZE, pack_plain, unpack_plain

SOURCE = Path(__file__).with_name("sse.c")
ROUNDS = "100000"  # ~3 M instructions: ~150 timer exits at the quantum below
QUANTUM = 20_000
XMM0_SLOT = FX_FIRST + FX_XMM // 8  # XMM0's low half; XMM0-15 fill the 32 slots from here
FS_BASE_SLOT = NREGS + EXT_NAMES.index("fs_base")


@pytest.fixture(scope="module")
def sse(tmp_path_factory) -> tuple[Path, str]:
    """The program and what it prints on Linux."""
    assert shutil.which("musl-gcc"), "musl-gcc missing (.ci/run installs musl-tools)"
    out = tmp_path_factory.mktemp("sse") / "sse"
    subprocess.run(["musl-gcc", "-static", "-O2", "-o", str(out), str(SOURCE)], check=True)
    native = subprocess.run([str(out), ROUNDS], check=True, capture_output=True, text=True)
    assert native.stdout.count("\n") == 8
    return out, native.stdout


def _launch(program: Path, level: Level) -> tuple[Platform, HonestHypervisor, int]:
    image = guestlinux.build(program, [ROUNDS], [])
    platform = Platform()
    host = HonestHypervisor(PlatformClient(platform.handle), Devices(), quantum=QUANTUM)
    host.launch(load_elf(image.path), level, image.memory)
    return platform, host, image.memory


def _move(platform: Platform, host: HonestHypervisor, level: Level, memory: int,
          live: bool) -> tuple[HonestHypervisor, Platform]:
    """Export the VM (with a pre-copy round while it runs on when ``live``, else frozen at
    once, as a suspend does) and import it on a fresh platform: the host to finish it."""
    key, stream = bytes(range(32)), 7
    management.open_export(platform.tee, host.vm, key, stream, "rs-1", 2)
    bundles = []
    if live:
        bundles += export_round(host.client, host.vm, stream, False)
        assert host.run(max_exits=sum(host.exits.values()) + 20).how == "limit"
    bundles += export_round(host.client, host.vm, stream, True)
    dest = Platform()
    client = PlatformClient(dest.handle)
    management.open_import(dest.tee, key, stream, "rs-1", 2)
    vm, state = import_stream(client, stream, level, memory, bundles,
                              platform.tee.vms[host.vm].policy)
    assert management.activate(dest.tee, vm)
    management.destroy_frozen(platform.tee, host.vm)
    moved = HonestHypervisor(client, Devices(), quantum=QUANTUM)
    moved.vm, moved.state = vm, state
    return moved, dest


@pytest.mark.parametrize("live", [False, True], ids=["suspend-resume", "live-migration"])
@pytest.mark.parametrize("level", [Level.SHIM, Level.SNP], ids=lambda v: v.value)
def test_sse_program_output_survives_a_move(sse, level, live):
    """Moved mid-run (after some of its output, with XMM, MXCSR, x87 and FS all live), the
    program prints exactly what it prints on Linux."""
    program, native = sse
    platform, host, memory = _launch(program, level)
    assert host.run(max_exits=60).how == "limit"
    before = host.devices.console.text
    assert 0 < before.count("\n") < 8  # moved mid-output
    moved, dest = _move(platform, host, level, memory, live)
    # The destination's sealed/encrypted state carries the guest's FS base and XMM.
    vcpu = dest.tee.vms[moved.vm].vcpu
    state = vcpu.read_state()
    assert state[FS_BASE_SLOT] != 0 and any(state[XMM0_SLOT : XMM0_SLOT + 32])
    result = moved.run()
    assert (result.how, result.status) == ("exit", 0), result.detail
    assert host.devices.console.text + moved.devices.console.text == native


def _first_timer_exit(host: HonestHypervisor, after: int = 30):
    assert host.run(max_exits=after).how == "limit"
    assert host.run_result is not None and host.run_result.last is not None
    assert host.run_result.last.reason == ExitReason.TIMER
    return host.run_result.last


def _flip_xmm(state: bytes, offset: int = 0) -> bytes:
    """``state`` with one bit of XMM0's first byte changed (``offset``: a sealed blob's
    nonce); each XMM byte has its own ciphertext byte at every level."""
    at = offset + XMM0_SLOT * SLOT
    return state[:at] + bytes([state[at] ^ 0x01]) + state[at + 1 :]


def test_corrupted_xmm_in_the_sealed_blob_is_detected(sse):
    """shim: one flipped XMM bit in the sealed state kills the VM (SEALED_STATE), never
    runs it on with the host's value."""
    platform, host, _memory = _launch(sse[0], Level.SHIM)
    rec = _first_timer_exit(host)
    assert len(rec.state) == NONCE + VMSA_SIZE + 16
    reply = host.client.enter(host.vm, QUANTUM, _flip_xmm(rec.state, NONCE))
    assert reply.result == Result.VM_DEAD and reply.exit.reason == ExitReason.KILLED
    assert reply.exit.get(Field.KILL_REASON) == KillReason.SEALED_STATE


def test_changed_xmm_is_refused_at_snp(sse):
    platform, host, _memory = _launch(sse[0], Level.SNP)
    rec = _first_timer_exit(host)
    reply = host.client.enter(host.vm, QUANTUM, _flip_xmm(rec.state))
    assert reply.result == Result.DENIED and reply.operand == "state"


@pytest.mark.parametrize("level", [Level.PLAIN, Level.SEV_ES], ids=lambda v: v.value)
def test_below_snp_the_host_changes_xmm(sse, level):
    """plain: the host's edit of XMM0 is loaded as written; sev-es: a changed ciphertext
    block is loaded as the garbage it decrypts to.  Either way the guest runs on with it."""
    platform, host, _memory = _launch(sse[0], level)
    rec = _first_timer_exit(host)
    vm = platform.tee.vms[host.vm]
    before = vm.vcpu.read_state()
    state = rec.state
    if level == Level.PLAIN:
        values = list(unpack_plain(state))
        assert values[XMM0_SLOT] == before[XMM0_SLOT]  # the host reads it in clear
        values[XMM0_SLOT] ^= 0xFFFF_0000
        state = pack_plain(tuple(values))
    else:
        state = _flip_xmm(state)
    accept_host_state(vm, vm.vcpus[0], state)  # what ENTER does with a changed state
    after = vm.vcpu.read_state()
    assert after[XMM0_SLOT] != before[XMM0_SLOT]
    assert after[:XMM0_SLOT] == before[:XMM0_SLOT]  # only the changed block differs
    assert after[XMM0_SLOT + 1 :] == before[XMM0_SLOT + 1 :]
    if level == Level.PLAIN:
        assert after[XMM0_SLOT] == before[XMM0_SLOT] ^ 0xFFFF_0000


def test_launch_measures_the_whole_initial_state():
    """The VMSA page holds the whole initial state at STATE_OFFSET: zero bases and MSRs,
    FCW 0x37F and MXCSR 0x1F80 (a Linux process's), after SEV_FEATURES."""
    regs = initial_registers(0x40_0000, 0x100_0000)
    assert len(regs) == NSLOTS
    page = vmsa_page(0x40_0000, 0x100_0000, Level.SNP)
    assert page[STATE_OFFSET : STATE_OFFSET + VMSA_SIZE] == pack_plain(regs)
    assert not any(page[STATE_OFFSET + VMSA_SIZE :])
    fx = b"".join(v.to_bytes(8, "little") for v in regs[FX_FIRST:])
    assert len(fx) == FXSAVE_SIZE
    assert int.from_bytes(fx[0:2], "little") == INITIAL_FCW
    assert int.from_bytes(fx[FX_MXCSR : FX_MXCSR + 4], "little") == INITIAL_MXCSR
    assert int.from_bytes(fx[FX_MXCSR + 4 : FX_MXCSR + 8], "little") == MXCSR_MASK
    assert not any(regs[NREGS:FX_FIRST])


@pytest.fixture(scope="module")
def vcpu() -> Vcpu:
    v = Vcpu(0x20_0000, lambda _leaf, _sub: (0, 0, 0, 0))
    v.write_state(initial_registers(0x1000, 0x20_0000))
    return v


def _canonical(fx: bytes) -> bytes:
    """What FXRSTOR then FXSAVE give back here: reserved bytes and ST padding zero, the tag
    byte's reserved byte zero, MXCSR cut to MXCSR_MASK, MXCSR_MASK itself the model's."""
    out = bytearray(fx)
    out[5] = 0
    mxcsr = int.from_bytes(out[24:28], "little") & MXCSR_MASK
    out[24:32] = mxcsr.to_bytes(4, "little") + MXCSR_MASK.to_bytes(4, "little")
    for i in range(8):
        out[32 + 16 * i + 10 : 48 + 16 * i] = bytes(6)
    out[416:] = bytes(FXSAVE_SIZE - 416)
    return bytes(out)


@settings(max_examples=60)
@given(ext=st.lists(st.integers(0, 2**64 - 1), min_size=5, max_size=5),
       fx=st.binary(min_size=FXSAVE_SIZE, max_size=FXSAVE_SIZE))
def test_state_round_trips_through_the_vcpu(vcpu, ext, fx):
    """Any bases, MSRs and FXSAVE image loaded into the vCPU read back as FXSAVE would
    store them (hypothesis over the whole image)."""
    start = vcpu.read_state()
    values = (*start[:NREGS], *ext, *(int.from_bytes(fx[i : i + 8], "little")
                                      for i in range(0, FXSAVE_SIZE, 8)))
    vcpu.write_state(values)
    got = vcpu.read_state()
    assert got[:FX_FIRST] == values[:FX_FIRST]
    got_fx = b"".join(v.to_bytes(8, "little") for v in got[FX_FIRST:])
    assert got_fx == _canonical(fx)
    vcpu.write_state(got)
    assert vcpu.read_state() == got  # canonical: a second round trip changes nothing


def test_write_state_refuses_a_short_state(vcpu):
    with pytest.raises(ValueError, match=f"expected {NSLOTS}"):
        vcpu.write_state(tuple(range(NREGS)))


def test_a_register_changed_in_the_vcpu_is_read_again(vcpu):
    """The save area is read afresh at every exit: a change to XMM, MXCSR or an MSR since
    the last read shows in the next one after a run (the vCPU keeps a read only until the
    guest runs, and skips only the copy of what is equal).  The change is made in the
    engine behind the vCPU's back, then a run of one HLT stands for the guest's run."""
    from unicorn import x86_const as X

    vcpu.set_mapped(0x1000, 1, True)
    vcpu.mem_write(0x1000, b"\xf4")  # hlt
    vcpu.run(0x1000, 0)
    first = vcpu.read_state()
    vcpu._uc.reg_write(X.UC_X86_REG_XMM15, 0x1234_5678_9ABC_DEF0_0FED_CBA9_8765_4321)
    vcpu._uc.reg_write(X.UC_X86_REG_MXCSR, 0x1F80 ^ 0x6000)  # round toward zero
    vcpu._uc.reg_write(X.UC_X86_REG_MSR, (0xC0000082, 0xFFFF_8000_0000_1000))  # LSTAR
    assert vcpu.run(0x1000, 0).kind == StopKind.HLT
    got = vcpu.read_state()
    xmm15 = XMM0_SLOT + 2 * 15
    assert got[xmm15 : xmm15 + 2] == (0x0FED_CBA9_8765_4321, 0x1234_5678_9ABC_DEF0)
    assert got[FX_FIRST + FX_MXCSR // 8] & 0xFFFF_FFFF == 0x1F80 ^ 0x6000
    assert got[NREGS + EXT_NAMES.index("lstar")] == 0xFFFF_8000_0000_1000
    changed = {i for i, (a, b) in enumerate(zip(first, got, strict=True)) if a != b}
    assert changed <= {xmm15, xmm15 + 1, FX_FIRST + FX_MXCSR // 8,
                       NREGS + EXT_NAMES.index("lstar")}


def test_a_state_read_before_the_guest_ran_is_loaded_again(vcpu):
    """The vCPU skips loading the extended state only when it is handed back as read and
    the guest has not run since: a host that hands back an older state after a run (the
    guest changed XMM0 in between) gets that older state loaded, as below snp it may."""
    start = list(vcpu.read_state())
    start[XMM0_SLOT + 1] = 0xAB
    vcpu.write_state(start)
    old = vcpu.read_state()
    vcpu.set_mapped(0x1000, 1, True)
    vcpu.mem_write(0x1000, b"\x66\x0f\xef\xc0\xf4")  # pxor xmm0, xmm0; hlt
    vcpu.run(0x1000, 0)  # the guest clears XMM0; nothing reads the state before the write
    vcpu.write_state(old)
    assert vcpu.read_state()[XMM0_SLOT + 1] == 0xAB
    vcpu.run(0x1000, 0)
    assert vcpu.read_state()[XMM0_SLOT + 1] == 0  # the snippet does clear it
