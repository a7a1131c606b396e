"""UNTRUSTED: start and stop perimeter processes (coordinator and nodes) on this machine.

Each process is ``python -m tvmm.perimeter.service``; the launcher waits for its one
"ready" JSON line (with a timeout, no sleeps).  Children started with ``die_with_parent``
get PR_SET_PDEATHSIG so a test or attack that dies cannot leak them.  ``Perimeter``
records the processes in ``<state>/perimeter/perimeter.json`` for ``tvmm perimeter down``.

A rogue node (``rogue=True``: the host operator runs modified trusted code) is started from
a copy of the code tree with one line of the shim changed (``rogue_tree``): the process
really loads that code, and its measurement is whatever that code measures to.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parents[2]  # the tree the processes run from
ROGUE_FILE = Path("shim") / "__init__.py"


class LaunchError(RuntimeError):
    pass


def rogue_tree(parent: Path) -> Path:
    """A copy of the code tree (tvmm, shim) with one line of the shim changed."""
    root = Path(tempfile.mkdtemp(prefix="rogue-", dir=parent))
    for package in ("tvmm", "shim"):
        shutil.copytree(CODE_ROOT / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    path = root / ROGUE_FILE
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].rstrip("\n") + "  # changed by the host operator\n"
    path.write_text("".join(lines))
    return root


def _pdeathsig(parent: int) -> None:
    """In the child before exec: SIGTERM when ``parent`` dies; a parent that died before
    the request (the child already adopted: no signal would come) ends the child at once."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() != parent:
        os._exit(1)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    info: dict


def spawn(args: list[str], state_dir: Path, *, die_with_parent: bool, timeout: float = 120,
          env: dict | None = None, log: Path | None = None) -> Proc:
    return await_ready(start(args, state_dir, die_with_parent=die_with_parent, env=env,
                             log=log), args, timeout)


def start(args: list[str], state_dir: Path, *, die_with_parent: bool, env: dict | None = None,
          log: Path | None = None, code: Path | None = None) -> subprocess.Popen:
    """Start one process, from ``code`` (a tree holding tvmm and shim) if given."""
    cmd = [sys.executable, "-m", "tvmm.perimeter.service", *args, "--state-dir", str(state_dir)]
    stderr = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    env = {**os.environ, **(env or {})}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env,
                            cwd=code,
                            preexec_fn=functools.partial(_pdeathsig, os.getpid()) if die_with_parent
                            else None,
                            start_new_session=not die_with_parent)


def await_ready(popen: subprocess.Popen, args: list[str], timeout: float = 120) -> Proc:
    """Wait for the process's one "ready" line (several may start up meanwhile)."""
    sel = selectors.DefaultSelector()
    sel.register(popen.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            popen.kill()
            raise LaunchError(f"{args[0]} did not become ready in {timeout} s")
        chunk = os.read(popen.stdout.fileno(), 4096)
        if not chunk:
            raise LaunchError(f"{args[0]} exited with {popen.wait()}")
        line += chunk
    sel.close()
    return Proc(args[args.index("--name") + 1] if "--name" in args else args[0], popen,
                json.loads(line))


@dataclass
class Perimeter:
    state_dir: Path
    coordinator: Proc | None = None
    nodes: dict[str, Proc] = field(default_factory=dict)
    die_with_parent: bool = True
    trees: list[Path] = field(default_factory=list)  # rogue code trees, removed at stop
    joins: tuple[str, int] | None = None  # a coordinator someone else runs, for our nodes
    # where this run keeps node storage, logs and rogue trees: the state directory for
    # `tvmm perimeter up`; a run of its own (an attack, a fault trial) gives its own, so
    # that it never writes into the storage of the user's perimeter nor of another run
    files: Path | None = None

    @property
    def run_dir(self) -> Path:
        return self.files or self.state_dir

    def storage(self, name: str) -> Path:
        """The directory where node ``name``'s host keeps its files (checkpoints)."""
        return self.run_dir / "storage" / name

    @property
    def address(self) -> tuple[str, int]:
        if self.coordinator is None and self.joins is not None:
            return self.joins
        assert self.coordinator is not None
        return self.coordinator.info["host"], self.coordinator.info["port"]

    def start_coordinator(self, db: Path | None = None, env: dict | None = None) -> Proc:
        args = ["coordinator", "--name", "coordinator"]
        if db:
            args += ["--db", str(db)]
        self.coordinator = spawn(args, self.state_dir, die_with_parent=self.die_with_parent,
                                 env=env, log=self.run_dir / "coordinator.log")
        return self.coordinator

    def start_node(self, name: str, *, rogue: bool = False, env: dict | None = None) -> Proc:
        return self.start_nodes([name], rogue=rogue, env={name: env or {}})[0]

    def start_nodes(self, names: list[str], *, rogue: bool = False,
                    env: dict[str, dict] | None = None) -> list[Proc]:
        """Start the nodes together (each takes about a second to come up), then wait for
        every one to be registered and ready."""
        host, port = self.address
        started = []
        code = None
        if rogue:
            (self.run_dir / "rogue").mkdir(parents=True, exist_ok=True)
            code = rogue_tree(self.run_dir / "rogue")
            self.trees.append(code)
        for name in names:
            args = ["node", "--name", name, "--coordinator", f"{host}:{port}",
                    "--storage", str(self.storage(name))]
            self.storage(name).mkdir(parents=True, exist_ok=True)
            started.append((name, args, start(args, self.state_dir,
                                              die_with_parent=self.die_with_parent,
                                              env=(env or {}).get(name),
                                              log=self.run_dir / f"{name}.log", code=code)))
        try:
            for name, args, popen in started:
                self.nodes[name] = await_ready(popen, args)
        except LaunchError:
            for _name, _args, popen in started:
                if popen.poll() is None:
                    popen.kill()
            raise
        return [self.nodes[name] for name in names]

    def save(self) -> Path:
        path = self.state_dir / "perimeter" / "perimeter.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        procs = {"coordinator": self.coordinator, **self.nodes}
        path.write_text(json.dumps({n: {"pid": p.popen.pid, **p.info}
                                    for n, p in procs.items() if p is not None}, indent=1))
        return path

    def stop(self) -> None:
        procs = [p for p in (*self.nodes.values(), self.coordinator) if p is not None]
        for p in procs:
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in procs:
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
            if p.popen.stdout:
                p.popen.stdout.close()
        if self.die_with_parent:  # else the processes outlive us and still run from them
            for tree in self.trees:
                shutil.rmtree(tree, ignore_errors=True)

    def __enter__(self) -> Perimeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def record_path(state_dir: Path) -> Path:
    return state_dir / "perimeter" / "perimeter.json"


def saved(state_dir: Path) -> dict:
    path = record_path(state_dir)
    if not path.exists():
        raise LaunchError(f"no perimeter is up (no {path}); run `tvmm perimeter up`")
    return json.loads(path.read_text())


def is_ours(pid: int, state_dir: Path) -> bool:
    """Whether ``pid`` is a live perimeter process of ``state_dir`` (not a zombie, and not
    another program that got the pid after ours exited): its command line says so."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"tvmm.perimeter.service" not in argv or b"--state-dir" not in argv:
        return False
    i = argv.index(b"--state-dir") + 1
    return i < len(argv) and Path(os.fsdecode(argv[i])).resolve() == state_dir.resolve()


def running(state_dir: Path) -> dict[str, int]:
    """The recorded processes that still run (name -> pid); {} when nothing is up."""
    try:
        record = saved(state_dir)
    except (LaunchError, ValueError):
        return {}
    return {name: int(info["pid"]) for name, info in record.items()
            if isinstance(info, dict) and is_ours(int(info.get("pid", 0)), state_dir)}


def stop_saved(state_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop the recorded processes and wait until they are gone (SIGKILL after
    ``timeout``), so that what starts next finds the state directory free; the names
    stopped, [] when nothing was up.  The record goes either way."""
    procs = running(state_dir)
    for pid in procs.values():
        _signal(pid, signal.SIGTERM)
    for name, pid in procs.items():
        if not _await_exit(pid, timeout):
            _signal(pid, signal.SIGKILL)
            if not _await_exit(pid, timeout) and is_ours(pid, state_dir):
                raise LaunchError(f"{name} (pid {pid}) did not exit")
    record_path(state_dir).unlink(missing_ok=True)
    return list(procs)


def _await_exit(pid: int, timeout: float) -> bool:
    """Wait for a process that need not be our child (a pidfd is readable once it has
    exited, zombie or reaped); True once it has."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# What ``tvmm perimeter down --reset`` clears: the coordinator's database (its VMs, their
# versions and checkpoints, the audit log), the nodes' stored checkpoints and the logs.
# The chips, the manufacturer and the transport CA stay: they are the machines, not the
# perimeter's history.
RESET_PATHS = ("perimeter", "storage", "rogue")


def reset(state_dir: Path) -> list[str]:
    """Clear the perimeter's state for a fresh start (the VM names start again at 1);
    refused while any recorded process still runs.  The paths removed."""
    if up := running(state_dir):
        raise LaunchError(f"the perimeter is up ({', '.join(up)}): "
                          "`tvmm perimeter down` first")
    removed = []
    for rel in RESET_PATHS:
        path = state_dir / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(rel)
    for log in sorted(state_dir.glob("*.log")):  # coordinator.log and the nodes' (n1.log)
        log.unlink()
        removed.append(log.name)
    return removed
