"""A warm start for a link's processes: a clean interpreter that has imported one program
(the TEE's server or the host's process) and forks a fresh copy of it per run.

A campaign runs hundreds of short cells, and each cell's TEE and host were fresh
interpreters that spent most of their CPU importing (about 0.3 s the TEE, 0.15 s the host,
measured; docs/performance.md, "Campaigns").  A zygote pays that once: it is started like
those processes (``python -m tvmm.link.zygote MODULE FD PARENT``, exec'd, holding nothing of its
starter), imports ``MODULE``, and then only forks.  Each child is a fork of the zygote —
never of an earlier child — so a run starts from the same clean state a fresh interpreter
would reach after its imports: no VM, no key, no secret of an earlier run (keys are made
after the fork, from the OS's randomness; OpenSSL and ``random`` reseed in a forked child).
The zygote of the TEE and the zygote of the host are separate processes, as their
children are.

The starter sends a request on a SOCK_SEQPACKET socket: the child's argument list, and the
descriptors it is to hold (``pass_fds`` of a fresh start) with the numbers they must have
there, passed as SCM_RIGHTS.  The zygote forks; the child puts each descriptor at its
number, starts a process group of its own, and runs ``MODULE.main(argv)``; the zygote
answers with the child's pid and a pidfd for it (so the starter can wait for and kill a
process that is not its own child), and reaps the children that ended at each request.
End of file on the socket — the starter closed it or died — ends the zygote once its
children have ended.
"""

from __future__ import annotations

import array
import fcntl
import gc
import importlib
import json
import os
import socket
import sys
import traceback

from tvmm.link.errors import PeerGone
from tvmm.link.lifetime import end_with_parent

MAX_FDS = 16
_HIGH_FD = 512  # received descriptors wait here while the child moves them into place


def send_request(sock: socket.socket, argv: list[str], fds: dict[int, int]) -> None:
    """Ask for a child: ``fds`` maps the number each descriptor must have in the child
    to the descriptor (in the caller)."""
    wanted = list(fds)
    if len(wanted) > MAX_FDS:
        raise ValueError(f"at most {MAX_FDS} descriptors")
    body = json.dumps({"argv": argv, "fds": wanted}).encode()
    sock.sendmsg([body], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                           array.array("i", [fds[n] for n in wanted]))])


def recv_reply(sock: socket.socket) -> tuple[int, int]:
    """(pid, pidfd) of the child the zygote forked; PeerGone if the zygote is gone."""
    body, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(4))
    fds = _fds_of(ancdata)
    if not body:
        raise PeerGone("the zygote is gone")
    reply = json.loads(body)
    if "error" in reply or len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise PeerGone(f"the zygote could not fork: {reply.get('error', 'no pidfd')}")
    return int(reply["pid"]), fds[0]


def _fds_of(ancdata: list) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _place(received: list[int], numbers: list[int]) -> None:
    """Put each received descriptor at its number (inheritable, as ``pass_fds`` does)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, _HIGH_FD) for fd in received]
    for fd in received:
        os.close(fd)
    for fd, number in zip(high, numbers, strict=True):
        os.dup2(fd, number, inheritable=True)
    for fd in high:
        if fd not in numbers:
            os.close(fd)


def _child(module: object, sock: socket.socket, argv: list[str], received: list[int],
           numbers: list[int]) -> None:
    """In the forked child: become the program's process, run it, and exit (never return)."""
    code: object = 1
    try:
        sock.close()
        os.setpgid(0, 0)  # as a fresh start's process_group=0: Ctrl-C reaches the starter only
        _place(received, numbers)
        gc.enable()
        try:
            code = module.main(argv)
        except SystemExit as exc:
            code = exc.code
        except PeerGone:  # as the program's own __main__: the starter has gone
            code = 1
    except BaseException:  # noqa: BLE001 - a fresh interpreter would print it and exit 1
        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def _reap(*, block: bool) -> None:
    """Wait for the children that ended (all of them, ``block``: at the zygote's end), so
    that their CPU time is counted in the zygote's and its starter's RUSAGE_CHILDREN as a
    fresh start's would be."""
    while True:
        try:
            pid, _status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(module_name: str, sock: socket.socket) -> int:
    module = importlib.import_module(module_name)
    gc.collect()
    gc.freeze()  # the imports stay shared with every child, not copied by its collector
    while True:
        try:
            body, ancdata, _flags, _addr = sock.recvmsg(
                65536, socket.CMSG_SPACE(MAX_FDS * 4))
        except OSError:
            return 0
        received = _fds_of(ancdata)
        if not body:
            for fd in received:
                os.close(fd)
            _reap(block=True)
            return 0
        _reap(block=False)
        try:
            request = json.loads(body)
            argv, numbers = list(map(str, request["argv"])), [int(n) for n in request["fds"]]
            if len(numbers) != len(received):
                raise ValueError("the descriptors do not match their numbers")
            pid = os.fork()
        except (ValueError, KeyError, TypeError, OSError) as exc:
            for fd in received:
                os.close(fd)
            sock.send(json.dumps({"error": str(exc)}).encode())
            continue
        if pid == 0:
            _child(module, sock, argv, received, numbers)
        for fd in received:
            os.close(fd)
        pidfd = os.pidfd_open(pid)  # not reaped before the next request: it is there
        try:
            sock.sendmsg([json.dumps({"pid": pid}).encode()],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pidfd]))])
        except OSError:
            return 0
        finally:
            os.close(pidfd)


def main(argv: list[str]) -> int:
    """``MODULE FD PARENT``: serve forks of MODULE on the socket FD, dying with PARENT."""
    end_with_parent(int(argv[2]))  # its forks die with it in turn (their PARENT is it)
    return serve(argv[0], socket.socket(fileno=int(argv[1])))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m tvmm.link.zygote MODULE FD PARENT (started by tvmm.harness)")
    sys.exit(main(sys.argv[1:]))
