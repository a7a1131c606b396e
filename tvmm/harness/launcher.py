"""Start the TEE's process and the host's, wire them, and speak for the trusted side.

    launcher (this process: owner, judge)
      ├── control link (socket, JSON frames) ──────────────► TEE process (python -m tvmm.harness.tee_server)
      ├── message link (socket, tagged frames) ──► host process (python -m tvmm_tools.host_process)
      │                                              │  platform ABI bytes (mailbox / socket)
      │                                              └───────────────────────────► TEE process
      └ (the host's trace notes go on a pipe of their own straight to the TEE process)

Both children are fresh interpreters (exec, not fork): the host's process holds nothing of
this one's memory — no secret, no owner, no key.  Within ``warm()`` (a campaign's many
runs) each is instead a fork of a zygote of its own program (tvmm.link.zygote): an
interpreter exec'd just as clean that has only imported the program, so a run skips the
imports and still starts from nothing of this process's or of an earlier run's.  Run as
root, the host's program (or its zygote) starts through tvmm.link.privsep, which takes its
privileges and this machine's files away before it runs (``host_separation``).  The launcher closes its copies of the
link's descriptors once both children hold theirs, so a child's death is end of file to its
peer (no hang).
"""

from __future__ import annotations

import atexit
import json
import multiprocessing.util
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tvmm.abi.state_dir import default_state_dir
from tvmm.guestbuild import cache_dir
from tvmm.link import ends, privsep, zygote
from tvmm.link.errors import LinkError
from tvmm.link.frames import recv_frame, send_frame

LINKS = ends.KINDS
DEFAULT_LINK = "mailbox"
NOTE_PIPE_SIZE = 1 << 20
_ROOT = str(Path(__file__).resolve().parents[2])
_F_SETPIPE_SZ = 1031
HOST_MODULE = "tvmm_tools.host_process"
SEPARATION_ENV = "TVMM_HOST_SEPARATION"  # "off": the host unseparated even as root (tests)


class HarnessError(RuntimeError):
    """A process of the run could not be started or configured."""


def host_separation() -> str:
    """How a run's host is separated from this process, the TEE and their files
    (tvmm.link.privsep): "full" as root — read-only mounts, its own /tmp, the machine's
    tvmm state hidden, no capabilities; "caps" as root without CAP_SYS_ADMIN (no mount
    namespace) — no capabilities, the files shared; "none" when this process is not root
    (nothing to drop: the TEE is not dumpable, which stops a peer without CAP_SYS_PTRACE)
    or TVMM_HOST_SEPARATION=off."""
    if os.geteuid() != 0 or os.environ.get(SEPARATION_ENV) == "off":
        return "none"
    return "full" if privsep.can_sandbox_files() else "caps"


def host_spec(mode: str, state_dir: Path | str | None = None) -> dict | None:
    """What tvmm.link.privsep is to do for a host separated by ``mode`` (None: nothing).
    The state directories to hide are made now if missing: one the TEE made later would
    appear, readable, under the host's feet."""
    if mode == "none":
        return None
    hide = {default_state_dir(), *([Path(state_dir)] if state_dir is not None else [])}
    for where in hide:
        where.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = {"/tmp", "/var/tmp", "/dev/shm", tempfile.gettempdir()}
    # The attacks' own cache of their profiling runs on a public image (an attacker's
    # offline calibration, kept across runs): writable.  The built guests beside it are not.
    profiles = cache_dir().resolve() / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    return {"files": mode == "full", "caps": True, "scratch": sorted(scratch),
            "hide": sorted(str(p.resolve()) for p in hide), "writable": [str(profiles)]}


def _entry(module: str, spec: dict | None) -> list[str]:
    """The interpreter's arguments that run ``module`` — through the trusted entry that
    separates it first (tvmm.link.privsep) when ``spec`` asks for that."""
    if spec is None:
        return ["-m", module]
    return ["-m", "tvmm.link.privsep", json.dumps(spec, sort_keys=True), module]


def _spawn(module: str, fd: int, keep: tuple[int, ...], spec: dict | None = None
           ) -> subprocess.Popen | Forked:
    starter = _warm.get(module) if _warm is not None and _warm.pid == os.getpid() else None
    if starter is not None and starter.spec == spec:
        return starter.start([str(fd), str(starter.proc.pid)], keep)
    # Our pid goes along: the child dies with this process, even by SIGKILL
    # (tvmm.link.lifetime); a zygote's fork dies with the zygote, which dies with us.
    return _exec([*_entry(module, spec), str(fd), str(os.getpid())], keep)


def _exec(args: list[str], keep: tuple[int, ...]) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    # A process group of its own: a terminal's Ctrl-C reaches only the launcher, which
    # decides what it means and ends its processes (Session.close) — a TEE inside a guest
    # with no timer could not see it anyway, and a host would print a traceback.
    return subprocess.Popen([sys.executable, *args], pass_fds=keep, env=env,
                            stdin=subprocess.DEVNULL, process_group=0)


class Forked:
    """A run's process forked by a zygote (tvmm.link.zygote): not this process's child, so
    it is waited for and killed through its pidfd.  Its exit status stays the zygote's."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd

    def poll(self) -> bool | None:
        """True once the process has ended, else None (as Popen.poll's "still running")."""
        if self.pidfd < 0:
            return True
        if select.select([self.pidfd], [], [], 0)[0]:
            self._release()
            return True
        return None

    def wait(self, timeout: float | None = None) -> None:
        if self.pidfd < 0:
            return
        if not select.select([self.pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
        self._release()

    def kill(self) -> None:
        if self.pidfd >= 0:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def _release(self) -> None:
        os.close(self.pidfd)
        self.pidfd = -1


class Zygote:
    """One warm program (tvmm.link.zygote): forks a fresh process of it per run."""

    def __init__(self, module: str, spec: dict | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        self.module = module
        self.spec = spec  # the zygote is separated (and so its forks) as this says
        self.proc = _exec([*_entry("tvmm.link.zygote", spec), module, str(theirs.fileno()),
                           str(os.getpid())], (theirs.fileno(),))
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()  # one request and its reply at a time (Dask's threads)

    def start(self, argv: list[str], keep: tuple[int, ...]) -> Forked:
        try:
            with self.lock:
                zygote.send_request(self.sock, argv, {fd: fd for fd in keep})
                return Forked(*zygote.recv_reply(self.sock))
        except (OSError, LinkError) as exc:
            raise HarnessError(f"the warm {self.module} could not start a run: {exc}") from None

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        self.sock.close()  # end of file: the zygote exits
        try:
            self.proc.wait(timeout=CLOSE_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Warm:
    """This process's zygotes, one per program a run starts (see ``warm``)."""

    pid: int
    zygotes: dict[str, Zygote]

    def get(self, module: str) -> Zygote | None:
        return self.zygotes.get(module)

    def close(self) -> None:
        for z in self.zygotes.values():
            z.close()


_warm: Warm | None = None
_warm_lock = threading.Lock()
WARM_MODULES = ("tvmm.harness.tee_server", HOST_MODULE)


def _zygote(module: str) -> Zygote:
    """A zygote of ``module``, the host's separated as a run's host would be."""
    return Zygote(module, host_spec(host_separation()) if module == HOST_MODULE else None)


@contextmanager
def warm(modules: tuple[str, ...] = WARM_MODULES) -> Iterator[None]:
    """Within the block, this process starts each run's TEE and host as forks of a warm
    zygote instead of fresh interpreters (many runs in a row: a campaign).  Nested or
    repeated use keeps the zygotes that are up."""
    global _warm
    if _warm is not None and _warm.pid == os.getpid():
        yield
        return
    mine = Warm(os.getpid(), {})
    try:
        for module in modules:
            mine.zygotes[module] = _zygote(module)
        _warm = mine
        yield
    finally:
        _warm = None
        mine.close()


def cool() -> None:
    """End this process's zygotes now (waiting for them: their runs' CPU time then counts
    in this process's children); the next warm start makes new ones."""
    global _warm
    with _warm_lock:
        mine, _warm = _warm, None
    if mine is not None and mine.pid == os.getpid():
        mine.close()


def keep_warm() -> None:
    """Start this process's zygotes for the rest of its life (a campaign's worker process:
    they end when it does — their socket's end of file)."""
    global _warm
    with _warm_lock:
        if _warm is None or _warm.pid != os.getpid():
            _warm = Warm(os.getpid(), {m: _zygote(m) for m in WARM_MODULES})
            # At the process's end, close them and wait: their runs' CPU time then counts
            # in this process's children, as fresh starts' would (a worker of a
            # multiprocessing pool ends through its finalizers, not atexit).
            atexit.register(_warm.close)
            multiprocessing.util.Finalize(None, _warm.close, exitpriority=100)


def _fds(spec: dict) -> tuple[int, ...]:
    return tuple(spec[k] for k in ("memory", "bell_in", "bell_out", "fd") if k in spec)


def policy_data(config: object | None) -> dict | None:
    """A PolicyConfig as JSON-ready settings (shim.policies.config.from_mapping's input)."""
    if config is None:
        return None
    from dataclasses import fields

    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        out[f.name] = value.value if isinstance(value, Enum) else value
    return out

CLOSE_GRACE_S = 2.0  # how long a closing session waits for a process that does not answer



@dataclass
class Session:
    """One run's two processes and the launcher's three links to them."""

    tee: subprocess.Popen | Forked
    control: socket.socket
    host: subprocess.Popen | Forked
    link: socket.socket
    launch_key: ec.EllipticCurvePublicKey
    host_job: dict = field(default_factory=dict)  # the link specs the host is handed
    result: dict | None = None
    separation: str = "none"  # how the host was separated (host_separation)
    sealed: list[Path] = field(default_factory=list)  # files the host could not read

    def start_job(self, job: dict) -> None:
        send_frame(self.link, json.dumps({**job, **self.host_job}).encode())

    def serve(self, owner: Callable[[bytes], bytes] | None = None,
              on_console: Callable[[str], None] | None = None,
              on_output: Callable[[bytes], None] | None = None,
              time_limit: float | None = None,
              perimeter: Callable[[dict], dict] | None = None) -> dict | None:
        """Answer the host until it hands in its result (None: it died without one); each
        console write goes to ``on_console`` as text and to ``on_output`` as bytes; a
        request for a perimeter goes to ``perimeter`` (the judge's), whose answer (what an
        operator holds of it) goes back.  With
        ``time_limit`` (seconds) a run still going then is ended: both processes are
        killed (the TEE may be inside a guest that never exits, where nothing else reaches
        it; its trace holds every event so far) and the result is ``{"how": "time_limit"}``."""
        deadline = None if not time_limit else time.monotonic() + time_limit
        while True:
            if deadline is not None:
                self.link.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                frame = recv_frame(self.link)
            except LinkError:
                if deadline is not None and time.monotonic() >= deadline:
                    return self._stop_at_time_limit()
                return None
            tag, body = frame[:1], frame[1:]
            if tag == b"O":
                answer = b"O" + owner(body) if owner is not None else b"X"
                try:
                    send_frame(self.link, answer)
                except LinkError:
                    return None
            elif tag == b"P":
                try:
                    request = json.loads(body)
                except ValueError:
                    request = None
                offered = perimeter(request) if perimeter is not None else {
                    "error": "no perimeter is offered in this run"}
                try:
                    send_frame(self.link, b"P" + json.dumps(offered).encode())
                except LinkError:
                    return None
            elif tag == b"C":
                if on_console is not None:
                    on_console(body.decode("utf-8", errors="replace"))
                if on_output is not None:
                    on_output(body)
            elif tag == b"R":
                try:
                    self.result = json.loads(body)
                except ValueError:
                    return None
                return self.result if isinstance(self.result, dict) else None
            else:
                return None

    def _stop_at_time_limit(self) -> dict:
        for proc in (self.tee, self.host):
            proc.kill()
            proc.wait()
        self.result = {"how": "time_limit"}
        return self.result

    def control_call(self, request: dict) -> dict:
        send_frame(self.control, json.dumps(request).encode())
        return json.loads(recv_frame(self.control))

    def records(self) -> list[dict]:
        """The TEE's records of every VM the run created (judge-only)."""
        return self.control_call({"op": "records"})["vms"]

    def emit(self, kind: str, name: str, *, inside: dict | None = None,
             outside: dict | None = None) -> None:
        self.control_call({"op": "emit", "kind": kind, "name": name, "inside": inside,
                           "outside": outside})

    def close(self) -> None:
        # A TEE inside a guest that never exits (a loop with no timer, after Ctrl-C) cannot
        # answer: it gets CLOSE_GRACE_S, then is killed, never waited on for good.
        self.control.settimeout(CLOSE_GRACE_S)
        try:
            self.control_call({"op": "close"})
            answered = True
        except (LinkError, OSError, ValueError):
            answered = False
        for sock in (self.control, self.link):
            sock.close()
        for proc in (self.host, self.tee):
            try:
                proc.wait(timeout=10 if answered else CLOSE_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        unseal(self.sealed)


def seal(paths: list[Path]) -> list[Path]:
    """Make each file (created if missing) mode 0 while the run lasts: the TEE, which holds
    CAP_DAC_OVERRIDE, still writes it; a host that is uid 0 without capabilities, on
    read-only mounts, can neither read it nor change its mode."""
    for path in paths:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0))
        os.chmod(path, 0)
    return paths


def unseal(paths: list[Path]) -> None:
    """The files' mode as the user's umask gives a new file, once the run is over."""
    mask = os.umask(0)
    os.umask(mask)
    for path in paths:
        try:
            os.chmod(path, 0o666 & ~mask)
        except OSError:
            pass


def start(*, policy_config: object | None = None,
          state_dir: Path | str | None = None, trace: Path | str | None = None,
          header: dict | None = None, link: str = DEFAULT_LINK, notes: bool = False,
          separate: bool = True) -> Session:
    """Start the TEE's process (configured) and the host's (waiting for its job).  With
    ``separate`` (scored runs) the host runs as ``host_separation`` says; the trace is
    sealed from it while the run lasts."""
    separation = host_separation() if separate else "none"
    spec = host_spec(separation, state_dir)
    sealed: list[Path] = []
    if spec is not None and trace is not None:
        from tvmm.trace.recorder import index_path

        sealed = seal([Path(trace), index_path(Path(trace))])
    client_spec, server_spec, link_fds = ends.specs(link)
    note_r = note_w = None
    if notes and trace is not None:
        note_r, note_w = os.pipe()
        try:
            import fcntl

            fcntl.fcntl(note_w, _F_SETPIPE_SZ, NOTE_PIPE_SIZE)
        except OSError:
            pass  # the default size: a burst of notes may then wait for the next call
        os.set_inheritable(note_r, True)
        os.set_inheritable(note_w, True)
    control, control_tee = socket.socketpair()
    link_sock, link_host = socket.socketpair()
    for s in (control_tee, link_host):
        s.set_inheritable(True)
    tee_keep = (control_tee.fileno(), *_fds(server_spec), *([note_r] if note_r else []))
    host_keep = (link_host.fileno(), *_fds(client_spec), *([note_w] if note_w else []))
    tee = _spawn("tvmm.harness.tee_server", control_tee.fileno(), tee_keep)
    host = _spawn(HOST_MODULE, link_host.fileno(), host_keep, spec)
    for fd in (*link_fds, *(f for f in (note_r, note_w) if f is not None)):
        os.close(fd)
    control_tee.close()
    link_host.close()
    config = {"policy": policy_data(policy_config),
              "state_dir": str(state_dir) if state_dir is not None else None,
              "trace": str(trace) if trace is not None else None, "header": header,
              "host": server_spec, "notes_fd": note_r}
    try:
        send_frame(control, json.dumps(config).encode())
        hello = json.loads(recv_frame(control))
    except (LinkError, ValueError) as exc:
        hello = {"ok": False, "error": str(exc)}
    except BaseException:  # Ctrl-C while the TEE starts: leave no process behind
        for proc in (host, tee):
            proc.kill()
            proc.wait()
        unseal(sealed)
        raise
    if not hello.get("ok"):
        for proc in (host, tee):
            proc.kill()
            proc.wait()
        unseal(sealed)
        control.close()
        link_sock.close()
        raise HarnessError(f"the TEE process did not start: {hello.get('error')}")
    key = load_pem_public_key(hello["launch_public_key"].encode())
    return Session(tee, control, host, link_sock, key,
                   host_job={"tee": client_spec, "notes_fd": note_w},
                   separation=separation, sealed=sealed)


@dataclass
class TeeOnly:
    """A TEE process whose host is the caller (benchmarks): ``end.call`` carries ABI bytes."""

    tee: subprocess.Popen
    control: socket.socket
    end: object  # tvmm.link client end

    def close(self) -> None:
        self.end.close()
        try:
            send_frame(self.control, json.dumps({"op": "close"}).encode())
            recv_frame(self.control)
        except (LinkError, OSError):
            pass
        self.control.close()
        self.tee.wait(timeout=10)


def start_tee(*, link: str = DEFAULT_LINK,
              policy_config: object | None = None) -> TeeOnly:
    """A TEE process alone, its host link's client end in this process."""
    client_spec, server_spec, _ = ends.specs(link)
    control, control_tee = socket.socketpair()
    control_tee.set_inheritable(True)
    tee = _spawn("tvmm.harness.tee_server", control_tee.fileno(),
                 (control_tee.fileno(), *_fds(server_spec)))
    control_tee.close()
    end = ends.client(client_spec)
    for fd in _fds(server_spec):  # the TEE's end (and the memfd, mapped by now)
        os.close(fd)
    send_frame(control, json.dumps({"policy": policy_data(policy_config),
                                    "host": server_spec}).encode())
    hello = json.loads(recv_frame(control))
    if not hello.get("ok"):
        raise HarnessError(f"the TEE process did not start: {hello.get('error')}")
    return TeeOnly(tee, control, end)
