"""Unmodified static Linux programs in the guest's Linux personality (docs/linux.md).

Debian's busybox-static (byte-identical to the package's: its SHA-256 is pinned) and
programs of our own built with musl-gcc and gcc; `.ci/run` installs both packages."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from tvmm import guestlinux
from tvmm.abi.types import Level
from tvmm.cli import main
from tvmm.commands import run as run_command
from tvmm.guestimage import load_elf
from tvmm.machine import boot, expected_measurement, owner_endpoint

BUSYBOX = Path("/bin/busybox")
# Debian 12's busybox-static 1:1.35.0-4+deb12u1+b1 (amd64)
BUSYBOX_SHA256 = "3d9f2889d6782537624a4e1a10e68a2ddd53e0ee8bac02676f27308f42ec6bf6"
ROOT = Path(__file__).resolve().parents[2]
PROG = Path(__file__).with_name("prog.c")


@pytest.fixture(scope="module")
def busybox() -> Path:
    assert BUSYBOX.is_file(), "apt-get install busybox-static (.ci/run does)"
    assert hashlib.sha256(BUSYBOX.read_bytes()).hexdigest() == BUSYBOX_SHA256, \
        "/bin/busybox is not Debian 12's busybox-static"
    return BUSYBOX


def _compile(cc: str, out: Path, *flags: str) -> Path:
    assert shutil.which(cc), f"{cc} missing (.ci/run installs musl-tools and gcc)"
    subprocess.run([cc, *flags, "-O2", "-o", str(out), str(PROG)], check=True)
    return out


@pytest.fixture(scope="module")
def musl_prog(tmp_path_factory) -> Path:
    return _compile("musl-gcc", tmp_path_factory.mktemp("musl") / "prog", "-static")


def run(program: Path, args: list[str], level: Level, files=(), **kw):
    image = guestlinux.build(program, args, [guestlinux.FileSpec.parse(f) for f in files])
    return boot(str(image.path), level, memory=image.memory, **kw), image


@pytest.mark.parametrize("level", list(Level))
def test_busybox_sha256sum_equals_hashlib(busybox, tmp_path, level):
    data = random.Random(18).randbytes(200_000)
    (tmp_path / "in.bin").write_bytes(data)
    report, _ = run(busybox, ["sha256sum", "/data/in"], level, [f"{tmp_path}/in.bin:/data/in"])
    assert (report.how, report.status) == ("exit", 0)
    assert report.console == f"{hashlib.sha256(data).hexdigest()}  /data/in\n"
    # ~70 system calls, none of them an exit: the host sees one console write and the end.
    assert report.exits == {"hypercall": 1, "shutdown": 1}


def test_preempted_program_keeps_its_state(busybox, tmp_path, level=Level.SHIM):
    """Timer exits every 20,000 instructions: glibc's SSE string code, the FS base (TLS)
    and the personality's own state survive each save and restore of the sealed register
    file."""
    text = "".join(f"line {i} {'x' * (i % 50)}\n" for i in range(400))
    (tmp_path / "t").write_text(text)
    report, _ = run(busybox, ["sed", "s/x/yz/g", "/data/t"], level, [f"{tmp_path}/t:/data/t"],
                    quantum=20_000)
    assert report.exits["timer"] > 20
    assert report.console == text.replace("x", "yz")


def test_busybox_through_the_cli(busybox, tmp_path, capsys):
    """The process-separated path at shim: stdin read a byte at a time by the shell's
    `read` (poll, then read), output on stdout, the program's status."""
    (tmp_path / "in").write_text("first line\nsecond\n")
    status = main(["run", str(busybox), "sh", "-c",
                   'read a; read b; echo "hello $((6*7)) $b/$a"; exit 7',
                   "--level", "shim", "--stdin", str(tmp_path / "in")])
    out = capsys.readouterr()
    assert (status, out.out, out.err) == (7, "hello 42 second/first line\n", "")


def test_binary_output_is_byte_exact(busybox, tmp_path, capsysbinary):
    """gzip -c through the CLI: the console's bytes reach stdout as the program wrote them,
    and decompress to the input."""
    data = random.Random(5).randbytes(3000) + b"\x00\xff" * 500
    (tmp_path / "in").write_bytes(data)
    assert main(["run", str(busybox), "gzip", "-c", "/d/in", "--file",
                 f"{tmp_path}/in:/d/in"]) == 0
    assert gzip.decompress(capsysbinary.readouterr().out) == data


APPLETS = [  # (arguments, level): each applet at one level, so that all five are covered
    (["sort", "-k2", "-n", "t"], Level.PLAIN),
    (["sed", "-e", "s/o/0/g", "-e", "/three/d", "t"], Level.SEV),
    (["awk", "{ n += NF; s = s $1 } END { print n, s, NR }", "t"], Level.SEV_ES),
    (["wc", "t"], Level.SNP),
    (["sh", "-c", 'x=0; for w in a b c; do x=$((x+1)); printf "%s%d " $w $x; done; '
      'test -f t && echo ok; read line < t; echo "$line"'], Level.SHIM),
]


@pytest.mark.parametrize(("args", "level"), APPLETS, ids=[a[0] for a, _ in APPLETS])
def test_busybox_applets_print_what_they_print_on_linux(busybox, tmp_path, args, level):
    """The same binary run natively here and as a guest, on the same file (`t` in the
    working directory: the guest's is /): the same output."""
    (tmp_path / "t").write_text("one 3\ntwo 1\nthree 20\nfour 4 x\n")
    native = subprocess.run([str(busybox), *args], capture_output=True, text=True,
                            cwd=tmp_path, check=True).stdout
    report, _ = run(busybox, args, level, [f"{tmp_path}/t:/t"])
    assert (report.how, report.status) == ("exit", 0), report.console
    assert report.console == native


def test_busybox_wc_and_cat(busybox, tmp_path):
    (tmp_path / "t").write_text("one two\nthree\n")
    report, _ = run(busybox, ["wc", "/data/t"], Level.PLAIN, [f"{tmp_path}/t:/data/t"])
    assert report.console.split() == ["2", "3", "14", "/data/t"]
    report, _ = run(busybox, ["cat", "/data/t"], Level.PLAIN, [f"{tmp_path}/t:/data/t"])
    assert report.console == "one two\nthree\n"


def test_musl_program(musl_prog, tmp_path):
    """argv, stdin from the input device, a tmpfs file, an 8 MiB malloc (mmap), the owner's
    secret as /run/secrets/key, tmpfs directories (mkdir, rename, ftruncate, getdents,
    chdir, unlink), dup2 and pread, a pipe, statx, and its own exit status."""
    secret = bytes(range(1, 33))
    report, _ = run(musl_prog, ["fail", "a b"], Level.PLAIN, input_lines=["x\n", "yz\n"],
                    secret=secret)
    assert report.console == (
        "argc=3 [fail] [a b]\nstdin lines=2 bytes=5\ntmpfs: written 42\n"
        f"malloc 8 MiB ok sum={sum(range(256)) * 8}\nsecret bytes=32 sum={sum(secret)}\n"
        "fs: writ entries=3 cwd=/tmp/d gone=1\npipe: through eof=0\nstatx: 0 dir=1\n")
    assert (report.how, report.status) == ("exit", 9)


@pytest.mark.parametrize("level", [Level.PLAIN, Level.SHIM])
def test_the_program_s_rdtsc_reads_the_virtual_counter(musl_prog, level):
    """The program's code is copied into place by the personality after launch, so the
    launch sweep never saw its RDTSC: the personality tells the CPU (CODE_LOADED_LEAF) and
    the program reads the TEE's virtual counter — the same on every run — not the host's
    clock (before: two runs printed ~10^13 and differed)."""
    first, _ = run(musl_prog, ["rdtsc"], level)
    again, _ = run(musl_prog, ["rdtsc"], level)
    assert (first.how, first.status) == ("exit", 0)
    assert first.console == again.console
    a, b = map(int, first.console.split()[1:])
    assert 0 < a < b < 1_000


def test_glibc_static_pie(tmp_path):
    prog = _compile("gcc", tmp_path / "prog", "-static-pie")
    report, _ = run(prog, [], Level.SHIM)
    assert report.console.startswith("argc=1\nstdin lines=0 bytes=0\ntmpfs: written 42\n")
    assert (report.how, report.status) == ("exit", 0)


def test_unsupported_call_is_named_on_stderr(musl_prog, capsys):
    """Each unsupported number is named in one line at its first call; at the end one
    line counts every call answered -ENOSYS, by name."""
    status = main(["run", str(musl_prog), "unsupported"])
    out = capsys.readouterr()
    assert out.err == (
        "tvmm-linux: unsupported system call socket (41): -ENOSYS\n"
        "tvmm-linux: unsupported system call bind (49): -ENOSYS\n"
        "tvmm-linux: unsupported system call unknown (600): -ENOSYS\n"
        "tvmm-linux: unsupported system calls made: 4 (socket 2, bind 1, ...)\n")
    assert "socket=-1\n" in out.out and status == 0


def test_unsupported_calls_are_counted_in_the_summary_and_the_trace(musl_prog, tmp_path,
                                                                    capsys):
    from tvmm.trace.reader import TraceReader
    from tvmm.trace.stats import stats_table, trace_stats

    trace = tmp_path / "run.jsonl"
    assert main(["run", str(musl_prog), "unsupported", "--json", "--trace", str(trace)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["unsupported_syscalls"] == {"total": 4, "socket": 2, "bind": 1}
    stats = trace_stats(TraceReader(trace))
    assert stats.end["unsupported_syscalls"] == {"total": 4, "socket": 2, "bind": 1}
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(stats_table(stats))
    (row,) = [ln for ln in console.export_text().splitlines() if "-ENOSYS" in ln]
    assert "system calls answered -ENOSYS" in row and "│ 4 (socket 2, bind 1) │" in row


@given(st.text(max_size=300))
def test_unsupported_line_parser_takes_any_console(text):
    counts = guestlinux.unsupported_calls(text)
    assert counts is None or isinstance(counts["total"], int)


def test_unsupported_line_parser_reads_the_last_line():
    console = ("hi\ntvmm-linux: unsupported system calls made: 2 (a 2)\n"
               "tvmm-linux: unsupported system calls made: 9 (openat2 3, x 1, ...)\n")
    assert guestlinux.unsupported_calls(console) == {"total": 9, "openat2": 3, "x": 1}
    assert guestlinux.unsupported_calls("unsupported system calls made: 2 (a 2)") is None
    assert guestlinux.unsupported_calls("argc=1\n") is None  # none made: null in --json


@pytest.mark.parametrize("case", ["dynamic", "32-bit", "missing-file", "bad-file-arg"])
def test_bad_input_is_one_line(case, tmp_path, capsys):
    program, extra = "/bin/true", []  # Debian's true: dynamically linked
    if case == "32-bit":
        program = str(tmp_path / "x32")
        Path(program).write_bytes(b"\x7fELF\x01\x01\x01" + bytes(57))
    if case == "missing-file":
        program, extra = str(BUSYBOX), ["--file", f"{tmp_path}/nope:/data/in"]
    if case == "bad-file-arg":
        program, extra = str(BUSYBOX), ["--file", "in.bin"]
    status = main(["run", program, "echo", *extra])
    err = capsys.readouterr().err
    expected = {"dynamic": "dynamically linked: build with -static",
                "32-bit": "a 32-bit ELF: build for x86-64",
                "missing-file": "no such file", "bad-file-arg": "expected HOST:GUEST"}[case]
    assert status == 2 and err.startswith("error: ") and "Traceback" not in err
    assert expected in " ".join(err.split())


CRASH = """#include <stdio.h>
int victim(int x) { if (x == 3) __builtin_trap(); return x; }
int main(int argc, char **argv) { (void)argv; puts("before"); fflush(stdout);
                                  return victim(argc + 2); }
"""


def test_a_faulting_program_is_one_line(tmp_path, capsys):
    """Below shim the host's FAULT exit names the vector and RIP, which the CLI turns into
    the signal and the program's symbol; at shim the host learns neither (the exit path's
    tests hold that view)."""
    (tmp_path / "crash.c").write_text(CRASH)
    subprocess.run(["musl-gcc", "-static", "-O1", "-o", str(tmp_path / "crash"),
                    str(tmp_path / "crash.c")], check=True)
    status = main(["run", str(tmp_path / "crash")])
    out = capsys.readouterr()
    assert status == 128 + 4 and out.out == "before\n"
    assert re.fullmatch(r"tvmm: crash did not exit: it faulted \(exception 6: SIGILL on "
                        r"Linux\) at 0x[0-9a-f]+ \((main|victim)\+0x[0-9a-f]+\)\n", out.err)
    shim = SimpleNamespace(how="fault", detail="vector None")  # the host's view at shim
    assert run_command._ended(shim, tmp_path / "crash") == \
        "it faulted (the level tells the host no more)"


def test_measure_predicts_files_and_key_release_binds_them(busybox, musl_prog, tmp_path,
                                                           capsys):
    (tmp_path / "f").write_bytes(b"payload")
    first = guestlinux.build(musl_prog, [], [guestlinux.FileSpec.parse(f"{tmp_path}/f:/d/f")])
    digest = expected_measurement(load_elf(first.path), first.memory, Level.SNP).hex()
    assert main(["measure", "--program", str(musl_prog), "--file", f"{tmp_path}/f:/d/f",
                 "--json"]) == 0
    assert f'"measurement": "{digest}"' in capsys.readouterr().out
    (tmp_path / "f").write_bytes(b"paylobd")  # one byte changed
    second = guestlinux.build(musl_prog, [], [guestlinux.FileSpec.parse(f"{tmp_path}/f:/d/f")])
    assert expected_measurement(load_elf(second.path), second.memory, Level.SNP).hex() != digest
    # The owner's broker expects the first image; the second one launches and is refused.
    owner = owner_endpoint(load_elf(first.path), b"k" * 16, memory=first.memory,
                           level=Level.SNP)
    report = boot(str(second.path), Level.SNP, memory=second.memory, owner=owner,
                  secret=b"k" * 16)
    assert "no secret\n" in report.console and report.key_release["released"] is False
    report = boot(str(first.path), Level.SNP, memory=first.memory, secret=b"k" * 16,
                  owner=owner_endpoint(load_elf(first.path), b"k" * 16, memory=first.memory,
                                       level=Level.SNP))
    assert f"secret bytes=16 sum={ord('k') * 16}\n" in report.console


def test_syscall_without_efer_sce_is_invalid_opcode(tmp_path):
    """The vCPU's SYSCALL is hardware's: #UD until the guest sets EFER.SCE (a plain guest of
    the runtime never does), and with SCE set it enters LSTAR with RCX and R11 loaded."""
    src = tmp_path / "sc.c"
    src.write_text('#include "tvmm.h"\nint main(void) { __asm__ volatile("syscall"); '
                   'return 0; }\n')
    report = boot(str(src), Level.PLAIN)
    assert report.how == "fault" and report.detail.startswith("vector 6 at 0x")
    src.write_text(SCE_GUEST)
    report = boot(str(src), Level.PLAIN)
    assert (report.how, report.status) == ("exit", 0), report.console


SCE_GUEST = r"""#include "tvmm.h"
u64 seen_rcx, seen_r11;
void lstar_target(void);
__asm__(".globl lstar_target\nlstar_target:\n mov %rcx, seen_rcx(%rip)\n"
        " mov %r11, seen_r11(%rip)\n push %r11\n popfq\n jmp *%rcx\n");
static void wrmsr(u32 m, u64 v) { __asm__ volatile("wrmsr" :: "c"(m), "a"((u32)v), "d"((u32)(v >> 32))); }
int main(void)
{
    u64 after, flags;
    wrmsr(0xC0000080U, 0x501);                 /* EFER: LME, LMA, SCE */
    wrmsr(0xC0000082U, (u64)lstar_target);
    wrmsr(0xC0000084U, 0);
    __asm__ volatile("pushfq; pop %1; lea 1f(%%rip), %0; syscall; 1:" : "=r"(after), "=r"(flags)
                     :: "rcx", "r11", "memory");
    return seen_rcx == after && (seen_r11 & 0xff) == (flags & 0xff) ? 0 : 1;
}
"""


def test_layout_constants_are_the_personality_s():
    """tvmm/guestlinux.py packs and places what guests/libos/libos.h reads."""
    header = (ROOT / "guests/libos/libos.h").read_text()
    defined = {name: int(value, 16) for name, value in
               re.findall(r"^#define (\w+)\s+(0x[0-9a-fA-F]+)UL", header, re.M)}
    assert defined["PROG_BASE"] == guestlinux.PROG_BASE
    assert defined["ROOTFS_BASE"] == guestlinux.ROOTFS_BASE
    assert defined["RFS_MAGIC"] == guestlinux.RFS_MAGIC


def test_docs_syscall_table_is_the_code_table():
    code = (ROOT / "guests/libos/syscalls.c").read_text()
    table = sorted((int(nr), name, doc) for nr, name, doc in
                   re.findall(r'^SYS\((\d+), (\w+), \w+, "(.*)"\)$', code, re.M))
    docs = (ROOT / "docs/linux.md").read_text()
    rows = sorted((int(nr), name, doc) for nr, name, doc in
                  re.findall(r"^\| (\d+) \| `(\w+)` \| (.*) \|$", docs, re.M))
    assert table and rows == table


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=40))
def test_file_argument_parser(text):
    try:
        spec = guestlinux.FileSpec.parse(text)
    except guestlinux.LinuxImageError as exc:
        assert str(exc).startswith("--file ")
    else:
        assert spec.host.is_file() and spec.guest.startswith("/")


def test_live_migration_of_a_running_busybox_gives_the_same_output(busybox, tmp_path):
    """At shim, busybox (glibc: SSE string code, TLS) runs part way on one platform, is
    exported live (a pre-copy round while it runs on, then the final one) and finishes on
    another: its output is what one uninterrupted run prints."""
    from shim import management
    from shim.platform import Platform
    from tvmm.host.client import PlatformClient
    from tvmm.host.hypervisor import Devices
    from tvmm.host.node_host import PausableHost, export_round, import_stream

    text = "".join(f"line {i} {'x' * (i % 50)}\n" for i in range(300))
    (tmp_path / "t").write_text(text)
    image = guestlinux.build(busybox, ["sed", "s/x/yz/g", "/data/t"],
                             [guestlinux.FileSpec(tmp_path / "t", "/data/t")])
    a = Platform()
    ca = PlatformClient(a.handle)
    host = PausableHost(ca, Devices(), quantum=20_000)
    host.launch(load_elf(image.path), Level.SHIM, image.memory)
    assert host.run(max_exits=160).how == "limit"  # of ~390 exits: a 4 KiB write made
    key = bytes(range(32))
    management.open_export(a.tee, host.vm, key, 7, "l-1", 2)
    bundles = list(export_round(ca, host.vm, 7, False))
    assert host.run(max_exits=220).how == "limit"  # it runs on between rounds
    bundles += list(export_round(ca, host.vm, 7, False))
    bundles += list(export_round(ca, host.vm, 7, True))
    b = Platform()
    cb = PlatformClient(b.handle)
    management.open_import(b.tee, key, 7, "l-1", 2)
    vm2, state = import_stream(cb, 7, Level.SHIM, image.memory, bundles,
                               a.tee.vms[host.vm].policy)
    assert management.activate(b.tee, vm2)
    loaded = a.tee.vms[host.vm].vcpu.loaded_rdtsc
    management.destroy_frozen(a.tee, host.vm)
    # import_stream's empty VM has all its memory mapped, as launch does (the stream
    # carries only the pages that are not zero, the program goes on to touch fresh ones,
    # its heap, and at shim entry is refused while a private page is unmapped).
    moved = PausableHost(cb, Devices(), quantum=20_000)
    moved.vm, moved.state = vm2, state
    result = moved.run()
    assert (result.how, result.status) == ("exit", 0), result.detail
    assert host.devices.console.text + moved.devices.console.text == text.replace("x", "yz")
    assert host.devices.console.text and moved.devices.console.text  # moved mid-output
    # the traps of the program's RDTSCs (glibc's tempname has one) moved with it
    assert loaded and b.tee.vms[vm2].vcpu.loaded_rdtsc == loaded


def test_a_linux_program_is_claimed_registered_and_released_by_ledger(musl_prog, tmp_path,
                                                                       capsys):
    """tvmm transparency claim --program: the claim's digest is tvmm measure --program's,
    and tvmm run releases the secret under a transparency policy only when the host
    presents the program's statement and receipt."""
    t = tmp_path

    def cli(*argv: object) -> dict | None:
        code = main([str(a) for a in argv])
        out = capsys.readouterr().out
        assert code == 0, (argv, out)
        return json.loads(out) if "--json" in argv else None
    cli("transparency", "keygen", t / "issuer.pem")
    cli("transparency", "init", t / "ledger", "--issuer", t / "issuer.pub.pem", "--feed", "f")
    cli("transparency", "claim", "--program", musl_prog, "--args", "a b", "--feed", "f",
        "--svn", 3, "--issuer-key", t / "issuer.pem", "-o", t / "p.stmt")
    cli("transparency", "register", t / "p.stmt", "--ledger", t / "ledger", "-o", t / "p.receipt")
    claimed = cli("transparency", "verify", t / "p.stmt", t / "p.receipt", "--service-key",
                  t / "ledger" / "service.pub.pem", "--json")
    measured = cli("measure", "--program", musl_prog, "--args", "a b", "--json")
    assert claimed["launch_digest"] == measured["measurement"] and claimed["svn"] == 3
    cli("transparency", "policy", "--service-key", t / "ledger" / "service.pub.pem",
        "--issuer", t / "issuer.pub.pem", "--feed", "f", "--min-svn", 3, "-o", t / "r.toml")
    (t / "key").write_bytes(b"k" * 16)
    run_args = ["run", musl_prog, "a", "b", "--level", "snp", "--secret", t / "key",
                "--release-policy", t / "r.toml", "--json"]
    released = cli(*run_args, "--present", t / "p.stmt", t / "p.receipt")
    assert released["key_release"]["released"] is True
    assert f"secret bytes=16 sum={ord('k') * 16}\n" in released["output"]
    refused = cli(*run_args)  # nothing presented
    assert refused["key_release"]["refusal"] == "transparency"
    assert "no secret\n" in refused["output"]


@settings(max_examples=60, deadline=None)
@given(start=st.integers(-8, 3 * 4096), length=st.integers(-8, 3 * 4096),
       code=st.binary(min_size=0, max_size=64))
def test_code_loaded_leaf_traps_every_0f31_in_ram_and_refuses_the_rest(start, length, code):
    """The guest's notice is a hostile-input border of the CPU model: a range outside guest
    RAM (or empty) is refused and changes nothing; inside, every 0F 31 gets one trap, and a
    second notice of the same range adds none."""
    from tvmm.hw import cpuid
    from tvmm.hw.vcpu import CODE_LOADED_REFUSED, Vcpu

    vcpu = Vcpu(2 * 4096, cpuid.serve)
    vcpu.mem_write(100, code + b"\x0f\x31")
    ram = bytes(vcpu.mem_read(0, 2 * 4096))
    found = vcpu.trap_loaded_code(start, length)
    if length <= 0 or start < 0 or start + length > 2 * 4096:
        assert found == CODE_LOADED_REFUSED and vcpu.loaded_rdtsc == []
        return
    window = ram[start:start + length]
    expect = [start + i for i in range(len(window) - 1) if window[i:i + 2] == b"\x0f\x31"]
    assert found == len(expect) and sorted(vcpu.loaded_rdtsc) == expect
    assert vcpu.trap_loaded_code(start, length) == 0


def test_code_the_launch_sweep_trapped_is_not_trapped_twice():
    """A notice over measured code adds no second trap to an RDTSC the launch sweep
    trapped (two would count one read twice)."""
    from tvmm.hw import cpuid
    from tvmm.hw.vcpu import Vcpu

    vcpu = Vcpu(2 * 4096, cpuid.serve)
    vcpu.mem_write(16, b"\x0f\x31\x90\x0f\x31")
    vcpu.install_code_traps([], [16])
    assert vcpu.trap_loaded_code(0, 4096) == 1 and vcpu.loaded_rdtsc == [19]


@pytest.mark.parametrize(("value", "why"), [
    ({"a": 1}, "a list"), ([1, "2"], "outside guest memory"), ([1 << 40], "outside"),
    ([True], "outside"), (list(range(5000)), "at most")])
def test_a_stream_s_loaded_traps_are_checked(value, why):
    from shim.management.importer import _loaded_traps

    with pytest.raises(ValueError, match=why):
        _loaded_traps(value, 1 << 20)
