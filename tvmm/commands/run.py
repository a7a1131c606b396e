"""tvmm run: an unmodified static Linux program as a confidential guest (docs/linux.md).

    tvmm run /bin/busybox sha256sum /data/in --file in.bin:/data/in --level shim

The program's output goes to stdout and the exit status is the program's.  Options of
tvmm's may stand before or after the program's arguments; after ``--`` everything is the
program's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tvmm import guestlinux
from tvmm.abi.types import Level
from tvmm.commands.output import emit_json, fail, writable_file
from tvmm.guestbuild import GuestBuildError
from tvmm.guestimage import GuestImageError
from tvmm.harness.boot import boot
from tvmm.harness.launcher import HarnessError
from tvmm.owner.broker import PolicyError, load_policy
from tvmm.transparency import bundle

LOG_PREFIX = guestlinux.LOG_PREFIX  # the personality's own lines: shown on stderr
# Exception vectors as the signal Linux would send for them.
SIGNALS = {1: "SIGTRAP", 3: "SIGTRAP", 6: "SIGILL", 13: "SIGSEGV", 14: "SIGSEGV",
           16: "SIGFPE", 17: "SIGBUS", 19: "SIGFPE"}
NUMBERS = {"SIGTRAP": 5, "SIGILL": 4, "SIGSEGV": 11, "SIGFPE": 8, "SIGBUS": 7}


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an unmodified static Linux program as a guest",
                       description="Run PROGRAM (a static x86-64 Linux ELF) with ARGS inside "
                       "the guest's Linux personality.  tvmm's options may follow the "
                       "program's arguments; after -- everything is the program's.")
    p.add_argument("program", type=Path)
    p.add_argument("args", nargs=argparse.REMAINDER, help="the program's arguments")
    add_options(p)
    p.set_defaults(run=run)


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", action="append", default=[], metavar="HOST:GUEST",
                   help="put a host file into the root file system (repeatable)")
    p.add_argument("--level", choices=[lv.value for lv in Level], default="plain")
    p.add_argument("--stdin", type=Path, metavar="FILE", help="the program's standard input")
    p.add_argument("--trace", type=writable_file, help="write a trace (JSON Lines) here")
    p.add_argument("--secret", type=Path, metavar="FILE",
                   help="the owner's secret: released to the guest (attested at snp and "
                   "shim) and read by the program as /run/secrets/key")
    p.add_argument("--heap", type=lambda s: int(s, 0), default=guestlinux.DEFAULT_HEAP,
                   help="bytes for the program's mmap area and stack (default 32 MiB)")
    p.add_argument("--release-policy", type=Path, metavar="TOML",
                   help="with --secret: the owner's release policy (default: this image's "
                   "predicted digest), e.g. a transparency policy (tvmm transparency policy)")
    p.add_argument("--present", nargs=2, type=Path, metavar=("STATEMENT", "RECEIPT"),
                   help="as the host, present the program's transparency statement and "
                   "receipt with its evidence (tvmm transparency claim --program)")
    p.add_argument("--json", action="store_true", help="a JSON summary instead of the output")


OPTIONS = ("--file", "--level", "--stdin", "--trace", "--secret", "--heap",
           "--release-policy", "--present")
ARITY = {"--present": 2}  # values an option takes (others: one)
FLAGS = ("--json",)


def split_args(args: argparse.Namespace) -> argparse.Namespace:
    """Take tvmm's options out of the program's arguments (up to a ``--``) and parse them
    into ``args`` (repeated --file add to those before the program)."""
    rest, mine, program_args = list(args.args), [], []
    while rest:
        token = rest.pop(0)
        if token == "--":
            program_args += rest
            break
        name = token.split("=", 1)[0]
        if name in FLAGS or (name in OPTIONS and "=" in token):
            mine.append(token)
        elif name in OPTIONS:
            n = ARITY.get(name, 1)
            mine += [token, *rest[:n]]
            rest = rest[n:]
        else:
            program_args.append(token)
    own = argparse.ArgumentParser(prog="tvmm run", add_help=False, allow_abbrev=False)
    add_options(own)
    own.parse_args(mine, namespace=args)
    args.args = program_args
    return args


def run(args: argparse.Namespace) -> int:
    args = split_args(args)
    try:
        specs = [guestlinux.FileSpec.parse(f) for f in args.file]
        image = guestlinux.build(args.program, args.args, specs, heap=args.heap)
        input_lines = _stdin_lines(args.stdin)
        secret = _secret(args.secret)
        policy = load_policy(args.release_policy) if args.release_policy else None
        presented = (bundle.pack(args.present[0].read_bytes(), args.present[1].read_bytes())
                     if args.present else None)
    except (guestlinux.LinuxImageError, GuestBuildError, GuestImageError) as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{exc.filename}: {exc.strerror}")
    except PolicyError as exc:
        return fail(f"{args.release_policy}: {exc}")
    live = None if args.json else _output
    try:
        report = boot(str(image.path), Level(args.level), trace=args.trace,
                      memory=image.memory, input_lines=input_lines, on_output=live,
                      secret=secret, release_policy=policy, receipt=presented)
    except (GuestBuildError, GuestImageError, OSError, HarnessError) as exc:
        return fail(str(exc))
    if args.json:
        emit_json({"program": str(args.program), "args": args.args, "level": args.level,
                   "how": report.how, "status": report.status, "detail": report.detail,
                   "output": report.console, "exits": report.exits,
                   "launch_digest": report.launch_digest, "memory": image.memory,
                   "unsupported_syscalls": guestlinux.unsupported_calls(report.console),
                   "key_release": report.key_release})
    if report.how == "exit" and report.status is not None:
        return report.status & 0xFF
    print(f"tvmm: {args.program.name} did not exit: {_ended(report, args.program)}",
          file=sys.stderr)
    if report.how != "fault":
        return 3
    vector = report.detail.removeprefix("vector ").split(" ")[0]
    signal = SIGNALS.get(int(vector), "SIGSEGV") if vector.isdigit() else "SIGSEGV"
    return 128 + NUMBERS[signal]  # as a shell reports a program a signal ended


def _output(data: bytes) -> None:
    """A console write, byte for byte: the personality's own lines to stderr."""
    stream = sys.stderr if data.startswith(LOG_PREFIX.encode()) else sys.stdout
    stream.flush()
    stream.buffer.write(data)
    stream.buffer.flush()


def _ended(report, program: Path) -> str:
    if report.how != "fault":
        return f"{report.how} {report.detail}".strip()
    vector, _, where = report.detail.removeprefix("vector ").partition(" at ")
    if not vector.isdigit():  # at shim the host is told neither vector nor RIP
        return "it faulted (the level tells the host no more)"
    signal = SIGNALS.get(int(vector), "a signal")
    if int(vector) == 0:
        signal = "SIGFPE, or SIGSEGV for an access outside guest memory"
    line = f"it faulted (exception {vector}: {signal} on Linux)"
    if where:
        rip = int(where, 16)
        line += f" at {rip:#x}" + (f" ({name})" if (name := guestlinux.symbolize(program, rip))
                                   else "")
    return line


def _stdin_lines(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        return path.read_text().splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise guestlinux.LinuxImageError(f"--stdin {path}: {exc}") from None


def _secret(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise guestlinux.LinuxImageError(f"--secret {path}: {exc.strerror}") from None
    if not data or len(data) > 4088:
        raise guestlinux.LinuxImageError(f"--secret {path}: 1 to 4088 bytes")
    return data
