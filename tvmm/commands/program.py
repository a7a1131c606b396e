"""A static Linux program as a command's subject (tvmm measure --program, tvmm transparency
claim --program): the options that name it and the image tvmm run would launch."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from tvmm import guestlinux
from tvmm.guestimage import GuestImage, load_elf


def add_program_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--program", type=Path, help="instead of a guest: a static Linux program "
                   "in the Linux personality (tvmm run), with its files and arguments")
    p.add_argument("--file", action="append", default=[], metavar="HOST:GUEST",
                   help="with --program: a file of its root file system (repeatable)")
    p.add_argument("--args", default="", metavar="'ARG ...'",
                   help="with --program: its arguments, as a shell would split them")
    p.add_argument("--heap", type=lambda s: int(s, 0), default=guestlinux.DEFAULT_HEAP,
                   help="with --program: as tvmm run --heap")


def program_argv_files(args: argparse.Namespace) -> tuple[list[str], list[guestlinux.FileSpec]]:
    """The program's arguments and root-file-system files, as the options give them."""
    return shlex.split(args.args), [guestlinux.FileSpec.parse(f) for f in args.file]


def build_program(args: argparse.Namespace) -> tuple[guestlinux.LinuxImage, GuestImage]:
    """The image ``tvmm run`` launches for ``--program`` with its ``--file``s and
    ``--args``: the personality with the root file system, and it loaded."""
    argv, files = program_argv_files(args)
    linux = guestlinux.build(args.program, argv, files, heap=args.heap)
    return linux, load_elf(linux.path, args.program.name)
