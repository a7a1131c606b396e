"""The host's process starts without privileges: a trusted entry that drops them, then runs
the untrusted program.

A launcher running as root (CI, a container, this project's machines) would otherwise give
the host — the attack — every capability of root: CAP_SYS_PTRACE reads the TEE's memory
through /proc/PID/mem even though the TEE is not dumpable, and root's files (the modeled
chip's fused secret and sealed keys, the manufacturer's keys, the trace being written, the
judge's and owner's directories, the trusted code itself) are open to it.  So the launcher
starts the host's program (or its zygote) as

    python -m tvmm.link.privsep SPEC MODULE ARGS...

and this module, before importing MODULE, does what SPEC (JSON) asks:

- ``files``: a mount namespace of its own in which every mount is read-only (no trusted
  code, result or state file can be changed), ``scratch`` directories (/tmp and the like)
  are fresh empty tmpfs of its own, and ``hide`` directories (the machine's tvmm state:
  chips, manufacturer, perimeter CA) are covered by an empty tmpfs: what lies beneath is
  out of reach.  It needs CAP_SYS_ADMIN, which the launcher checks before asking.
- ``caps``: every capability gone for good — the bounding set emptied, the effective,
  permitted, inheritable and ambient sets cleared, the securebits locked so that no
  exec as uid 0 gives them back, and no_new_privs (no setuid binary either).  A process
  without CAP_SYS_PTRACE cannot read the memory of a process that holds capabilities it
  lacks (the TEE, the launcher) nor of a non-dumpable one — and the host itself is made
  non-dumpable, so that the hosts of other runs (a campaign's other cells) cannot read
  it either.

The process keeps uid 0: the interpreter and its libraries may live where only root can
read (a pyenv under /root), and read-only mounts take away what uid 0 could write.  Any
step that fails ends the process (exit 3) before MODULE runs: a scored run is never
unseparated without the launcher knowing it.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import sys
from pathlib import Path

from tvmm.link.errors import PeerGone

EXIT_NOT_SEPARATED = 3
_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = (
    1, 2, 4, 1 << 12, 1 << 14, 1 << 18)
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (a syscall of 5.12)
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_MOUNT_ATTR_RDONLY = 1
_PR_SET_DUMPABLE, _PR_CAPBSET_DROP, _PR_SET_SECUREBITS, _PR_CAP_AMBIENT = 4, 24, 28, 47
_PR_CAP_AMBIENT_CLEAR_ALL, _PR_SET_NO_NEW_PRIVS = 4, 38
# SECBIT_NOROOT and its lock, KEEP_CAPS locked off, NO_CAP_AMBIENT_RAISE and its lock
_SECUREBITS = 0x01 | 0x02 | 0x20 | 0x40 | 0x80
_CAP_V3 = 0x20080522
_CAP_SYS_ADMIN = 21


class SeparationError(OSError):
    """A step of the separation failed."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SeparationError(err, f"{what}: {os.strerror(err)}")


def status_caps(status: str | None = None) -> dict[str, int]:
    """The capability sets of /proc/self/status (CapEff, CapPrm, ...) as integers."""
    text = status if status is not None else Path("/proc/self/status").read_text()
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap") or key == "NoNewPrivs":
            out[key] = int(value.strip(), 16 if key.startswith("Cap") else 10)
    return out


def can_sandbox_files() -> bool:
    """Whether this process may make a mount namespace (CAP_SYS_ADMIN, effective)."""
    try:
        return bool(status_caps()["CapEff"] >> _CAP_SYS_ADMIN & 1)
    except (OSError, KeyError, ValueError):
        return False


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _tmpfs(libc: ctypes.CDLL, where: str, mode: str) -> None:
    _check(libc.mount(b"tmpfs", where.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                      f"mode={mode},size=25%".encode()), f"tmpfs on {where}")


def _mount_attr(libc: ctypes.CDLL, where: str, flags: int, attr: _MountAttr) -> None:
    _check(libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_long(_AT_FDCWD),
                        ctypes.c_char_p(where.encode()), ctypes.c_ulong(flags),
                        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
           f"mount attributes of {where}")


def sandbox_files(scratch: list[str], hide: list[str], writable: list[str] = ()) -> None:
    """A mount namespace: everything read-only, ``scratch`` fresh and writable (1777),
    ``hide`` covered by an empty directory of this process's own (0700), ``writable``
    (the attacks' own cache of their profiling runs) left writable."""
    libc = _libc()
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "private mounts")
    _mount_attr(libc, "/", _AT_RECURSIVE, _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0))
    for where in writable:
        if not os.path.isdir(where):
            raise SeparationError(0, f"{where} is not a directory: it cannot be writable")
        _check(libc.mount(where.encode(), where.encode(), None, _MS_BIND, None),
               f"bind {where}")
        _mount_attr(libc, where, 0, _MountAttr(0, _MOUNT_ATTR_RDONLY, 0, 0))
    # The code this process runs may lie in a scratch directory (a clone and its venv under
    # /tmp, as CI makes them): opened before the tmpfs covers it, put back read-only.
    code = _code_dirs([s for s in scratch if os.path.isdir(s)])
    held = [(d, os.open(d, os.O_PATH | os.O_DIRECTORY)) for d in code]
    for where in scratch:
        if os.path.isdir(where):
            _tmpfs(libc, where, "1777")
    for where, fd in held:
        os.makedirs(where, exist_ok=True)  # in the fresh tmpfs
        _check(libc.mount(f"/proc/self/fd/{fd}".encode(), where.encode(), None,
                          _MS_BIND | _MS_REC, None), f"bind {where} back")
        _mount_attr(libc, where, _AT_RECURSIVE, _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0))
        os.close(fd)
    for where in hide:
        if any(_under(where, s) for s in scratch):
            continue  # gone already, with the scratch directory above it
        # The launcher makes a missing one first: made later by the TEE, it would appear
        # here, readable.
        if not os.path.isdir(where):
            raise SeparationError(0, f"{where} is not a directory: it cannot be hidden")
        _tmpfs(libc, where, "0700")


def _code_dirs(scratch: list[str]) -> list[str]:
    """The directories of this interpreter and its import path that lie under a scratch
    directory, outermost only (a path inside another is put back with it)."""
    found = set()
    for p in (*sys.path, sys.prefix, sys.base_prefix, sys.exec_prefix):
        if p and os.path.isdir(p):
            real = os.path.realpath(p)
            for top in scratch:
                top_real = os.path.realpath(top)
                if real != top_real and _under(real, top_real):
                    # the directory just below the scratch root: the clone or the venv
                    rel = os.path.relpath(real, top_real).split(os.sep)[0]
                    found.add(os.path.join(top_real, rel))
    return sorted(found)


def _under(path: str, top: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(top)]) == \
        os.path.abspath(top)


def drop_capabilities() -> None:
    """Every capability gone, for good (see the module's docstring)."""
    libc = _libc()
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    _check(libc.prctl(_PR_SET_SECUREBITS, _SECUREBITS, 0, 0, 0), "securebits")
    for cap in range(last + 1):
        _check(libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"bounding set drop {cap}")
    _check(libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "ambient caps")
    header = (ctypes.c_uint32 * 2)(_CAP_V3, 0)
    data = (ctypes.c_uint32 * 6)()  # two of {effective, permitted, inheritable}: all zero
    _check(libc.capset(header, data), "capset")
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    caps = status_caps()
    left = {k: v for k, v in caps.items() if k.startswith("Cap") and v}
    if left or caps.get("NoNewPrivs") != 1:
        raise SeparationError(0, f"capabilities left after the drop: {left or 'no_new_privs'}")


def separate(spec: dict) -> None:
    """Do what ``spec`` asks: {"files": bool, "scratch": [...], "hide": [...],
    "writable": [...], "caps": bool}; raise SeparationError if any step fails."""
    if spec.get("files"):
        sandbox_files(list(spec.get("scratch", [])), list(spec.get("hide", [])),
                      list(spec.get("writable", [])))
    if spec.get("caps"):
        drop_capabilities()
        # Other runs' hosts (a campaign runs several at once, all uid 0 without
        # capabilities) could otherwise read this one's /proc/PID/mem, maps, environ and
        # descriptors — its mailbox — and change another cell's result.
        make_undumpable()


def make_undumpable() -> None:
    """No core dumps, and none of this process's /proc/PID entries (mem, maps, environ,
    fd) for a process of the same user without CAP_SYS_PTRACE."""
    _check(_libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "not dumpable")


def main(argv: list[str]) -> int:
    spec, module_name, rest = json.loads(argv[0]), argv[1], argv[2:]
    try:
        separate(spec)
    except (OSError, ValueError) as exc:
        print(f"tvmm.link.privsep: the host could not be separated: {exc}", file=sys.stderr)
        return EXIT_NOT_SEPARATED
    module = importlib.import_module(module_name)
    return module.main(rest)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m tvmm.link.privsep SPEC MODULE ARGS... (started by tvmm.harness)")
    try:
        sys.exit(main(sys.argv[1:]))
    except PeerGone:  # the launcher has gone: nothing left to serve
        sys.exit(1)
