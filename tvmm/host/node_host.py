"""UNTRUSTED: the node's honest host — it runs VMs, pumps checkpoint streams, stores them.

Nothing here can open a bundle or choose a key: it moves opaque bytes between the
platform ABI (EXPORT_VM / IMPORT_VM), files and sockets.  The architecture contract forbids
it to import tvmm.hw or shim (pyproject.toml), like every other piece of host code.

* ``VmRunner``: the honest hypervisor on a thread that can be paused between two entries
  (never with a guest request half served), so the VM can be frozen for export.
* ``export_round`` / ``feed_stream`` (``import_stream`` = ``create_for_import`` + feed): the
  pump loops.
* checkpoint files: stored atomically (``store_checkpoint``); their format is
  ``checkpoint_file`` (data only, shared with the coordinator).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tvmm.abi.guest import PAGE_SIZE, SHARED_BASE, SHARED_SIZE
from tvmm.abi.messages import ExportVm, ImportVm, Reply
from tvmm.abi.types import ExitReason, Level, Result
from tvmm.host.client import HostCallError, PlatformClient
from tvmm.host.hypervisor import Devices, HonestHypervisor

CONSOLE_TAIL = 64 << 10  # characters of the host's console log carried with a VM


def console_tail(text: str) -> str:
    """The end of a console log, from a line start: what travels with a VM (in a checkpoint,
    a stream's end, a node's listing).  The log is the host's, not the VM's state, and a
    guest that prints for long would otherwise outgrow every message it rides in."""
    if len(text) <= CONSOLE_TAIL:
        return text
    tail = text[-CONSOLE_TAIL:]
    cut = tail.find("\n")
    return tail[cut + 1 :] if cut >= 0 else tail


# -- pumps ------------------------------------------------------------------------------------------
def export_round(client: PlatformClient, vm: int, stream: int, final: bool,
                 max_pages: int = 256) -> Iterator[bytes]:
    """One pre-copy round (or, with ``final``, the rest of the stream), bundle by bundle."""
    while True:
        reply = client.call(ExportVm(vm, stream, final, max_pages))
        if reply.result != Result.OK:
            raise HostCallError("EXPORT_VM", reply)
        if reply.data:
            yield reply.data
        if reply.value == 0:
            return


def import_bundle(client: PlatformClient, vm: int, stream: int, bundle: bytes | bytearray
                  ) -> Reply:
    # The TEE takes bytes only (a buffer the host could still change is refused): a
    # bundle straight from EXPORT_VM (a bytearray) is copied; one from a socket or a
    # file already is bytes, and bytes() returns it as it is.
    reply = client.call(ImportVm(vm, stream, bytes(bundle)))
    if reply.result != Result.OK:
        raise HostCallError("IMPORT_VM", reply)
    return reply


def create_for_import(client: PlatformClient, level: Level, memory: int, policy: int = 0
                      ) -> int:
    """The empty VM a stream is imported into (its memory is backed at creation, so a
    destination prepares it before the stream starts), with all its memory mapped, as
    launch maps it: the stream carries only the pages that are not zero, and at shim
    entry is refused while a private page is unmapped (docs/policies.md, pinning)."""
    vm = client.create_vm(level, memory, SHARED_BASE, SHARED_SIZE, policy)
    client.map(vm, 0, memory // PAGE_SIZE)
    return vm


def feed_stream(client: PlatformClient, vm: int, stream: int, bundles: Iterable[bytes]
                ) -> tuple[int, bytes]:
    """Feed the stream into the empty ``vm``: (vm id, state blob for the first ENTER).
    The VM is destroyed if the stream fails or ends without END."""
    try:
        for bundle in bundles:
            reply = import_bundle(client, vm, stream, bundle)
            if reply.value:
                return vm, reply.data
    except BaseException:
        try:
            client.destroy(vm)
        except HostCallError:
            pass
        raise
    client.destroy(vm)
    raise HostCallError("IMPORT_VM", Reply(Result.BAD_STATE, operand="stream (no END)"))


def import_stream(client: PlatformClient, stream: int, level: Level, memory: int,
                  bundles: Iterable[bytes], policy: int = 0) -> tuple[int, bytes]:
    """Create the empty VM and feed the stream: (vm id, state blob for the first ENTER)."""
    return feed_stream(client, create_for_import(client, level, memory, policy), stream,
                       bundles)


# -- checkpoint files -----------------------------------------------------------------------------
def store_checkpoint(path: Path, data: bytes) -> None:
    """Write a checkpoint so that it is either whole under its name or absent (a crash
    mid-write leaves only a temporary file), and on disk before this returns."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- the runner -------------------------------------------------------------------------------------
class PausableHost(HonestHypervisor):
    """The honest hypervisor, pausable between entries (no request half served)."""

    def __init__(self, client: PlatformClient, devices: Devices | None = None, **kw) -> None:
        super().__init__(client, devices, **kw)
        self._cv = threading.Condition()
        self._pause = 0
        self._paused = False
        self._stop = False

    def enter(self) -> Reply:
        with self._cv:
            while self._pause and not self._stop:
                self._paused = True
                self._cv.notify_all()
                self._cv.wait()
            self._paused = False
            if self._stop:
                return Reply(Result.BAD_STATE, operand="host stopped")
        return super().enter()

    def pause(self, timeout: float = 10.0) -> bool:
        """Hold the VM before its next entry; True once it is held (or not running)."""
        with self._cv:
            self._pause += 1
            return self._cv.wait_for(lambda: self._paused or not self.running, timeout)

    def resume(self) -> None:
        with self._cv:
            self._pause = max(0, self._pause - 1)
            self._cv.notify_all()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()

    running = False


class VmRunner:
    """Runs one VM's honest host on a thread; ``on_end`` is called when the run ends."""

    def __init__(self, host: PausableHost, on_end: Callable[[VmRunner], None] | None = None
                 ) -> None:
        self.host = host
        self.on_end = on_end
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.result = None
        self.done = threading.Event()

    def start(self) -> VmRunner:
        self.host.running = True
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self.host.run()
        finally:
            with self.host._cv:
                self.host.running = False
                self.host._cv.notify_all()
            self.done.set()
            if self.on_end is not None:
                self.on_end(self)

    @property
    def ended(self) -> str | None:
        """How the guest ended, as the operator reads it ("exited with status 0", "killed
        (fault policy)", "fault (vector 6)"; "stopped" and "frozen" when its host stopped
        or the TEE froze it), or None while it may still run."""
        r = self.result
        if r is None:
            return None
        if r.how == "refused" and r.last is None:
            return "stopped"
        if r.how == "refused" and r.last is not None and r.last.reason != ExitReason.SHUTDOWN:
            return "frozen"
        if r.how == "exit":
            return f"exited with status {r.status}"
        return r.how + (f" ({r.detail})" if r.detail else "")
