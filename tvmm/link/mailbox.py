"""A request/reply mailbox in shared memory: a round trip in microseconds when both sides
have a core.

Two processes share one mapping (a memfd, inherited across exec): a header of sequence
numbers and lengths, then a request area and a reply area of ``capacity`` bytes each.  The
client copies its request in, stores the length, then bumps the request number; the server
waits for the number to move, copies the request out (the client may scribble on shared
memory at any time: the server parses only its copy), and answers the same way.

Waiting spins on the peer's number for up to ``spin_s`` (a single-stepping host asks
again within tens of microseconds) — skipped, when more tasks are runnable than there are
cores, while the last waits all took longer and after waking a sleeping peer (it needs a
core first), and never on a process confined to one core (the peer could not answer
meanwhile) — then blocks: the waiter raises its
sleep flag, looks once more, and sleeps on a pipe the peer writes a byte to after a bump
it sees the flag up for.
A wake-up lost between flag and number (stores and loads may pass each other) costs at most
one ``poll`` timeout.  The pipe's other end dying is end of file: PeerGone, never a hang.

Stores become visible in program order on x86-64 (TSO), which the copy-then-bump order
relies on; Python offers no fence to make it portable to weaker memory models.
"""

from __future__ import annotations

import mmap
import os
import select
import time
from dataclasses import dataclass

from tvmm.link.errors import FrameError, PeerGone

# The header is read and written through memoryview casts: an item of a "Q" or "I" view
# is one aligned load or store.  struct.pack_into would not do: it zero-fills the field
# before writing it (and "<Q" goes byte by byte), so a peer could read a number that was
# never sent (0, or 255 → 256 read half-way) and take a frame twice.
# One cache line each, so the two sides' stores do not share a line.
REQ_SEQ, REQ_LEN, REP_SEQ, REP_LEN, SERVER_SLEEPS, CLIENT_SLEEPS = (
    0, 8, 64, 72, 128, 192)
HEADER = 256
DEFAULT_CAPACITY = 16 << 20
DEFAULT_SPIN_S = 100e-6
POLL_S = 0.05
MISSES = 4
RETRY = 64
LOADAVG = "/proc/loadavg"  # its fourth field: runnable tasks now / all tasks
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def crowded() -> bool:
    """Whether more tasks are runnable right now than this process has cores (this one
    counted): then a spinning end holds a core its peer may need.  Unknown counts as
    crowded (the cautious way)."""
    try:
        with open(LOADAVG, "rb") as f:
            runnable = int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return True
    return runnable > (CORES or 1)


@dataclass(frozen=True)
class MailboxFds:
    """The descriptors of one mailbox; each process keeps the ones of its end."""

    memory: int
    capacity: int
    to_server: tuple[int, int]  # pipe (read, write): the client rings the server
    to_client: tuple[int, int]  # pipe (read, write): the server rings the client

    def client_spec(self) -> dict:
        return {"kind": "mailbox", "memory": self.memory, "capacity": self.capacity,
                "bell_in": self.to_client[0], "bell_out": self.to_server[1]}

    def server_spec(self) -> dict:
        return {"kind": "mailbox", "memory": self.memory, "capacity": self.capacity,
                "bell_in": self.to_server[0], "bell_out": self.to_client[1]}

    def all(self) -> tuple[int, ...]:
        return (self.memory, *self.to_server, *self.to_client)


def create(capacity: int = DEFAULT_CAPACITY) -> MailboxFds:
    """A fresh mailbox: a memfd of the header and both areas, and two doorbell pipes
    (all inheritable, for ``pass_fds``)."""
    fd = os.memfd_create("tvmm-mailbox", 0)
    os.ftruncate(fd, HEADER + 2 * capacity)
    to_server, to_client = os.pipe(), os.pipe()
    for f in (fd, *to_server, *to_client):
        os.set_inheritable(f, True)
    return MailboxFds(fd, capacity, to_server, to_client)


def default_spin_s(cpus: int | None = None) -> float:
    """``DEFAULT_SPIN_S`` where this process may run on more than one core (``cpus``: how
    many it may; default its affinity), else 0: on a single core the peer cannot answer
    while this end spins — a campaign pins each worker, its TEE and its host to a core of
    their own (tvmm.campaign.run) — so waiting sleeps at once."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    return DEFAULT_SPIN_S if cpus > 1 else 0.0


class _End:
    """What both ends share: the mapping, the waiting and the ringing."""

    def __init__(self, spec: dict, *, mine: tuple[int, int, int, int],
                 spin_s: float | None = None) -> None:
        capacity = spec["capacity"]
        self.capacity = capacity
        self.map = mmap.mmap(spec["memory"], HEADER + 2 * capacity, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)  # the memfd stays its owner's
        self.buf = memoryview(self.map)
        self.q = self.buf[:HEADER].cast("Q")  # the numbers: index = offset // 8
        self.w = self.buf[:HEADER].cast("I")  # lengths and sleep flags: offset // 4
        self.bell_in = spec["bell_in"]
        self.bell_out = spec["bell_out"]
        poller = select.poll()  # one for the end's life: a sleep registers nothing
        poller.register(self.bell_in, select.POLLIN)
        self._poll = poller.poll
        os.set_blocking(self.bell_out, False)
        self.spin_s = default_spin_s() if spin_s is None else spin_s
        in_seq, in_len, my_sleep, peer_sleep = mine
        out_seq = REP_SEQ if in_seq == REQ_SEQ else REQ_SEQ
        self._in_seq, self._out_seq = in_seq // 8, out_seq // 8
        self._in_len, self._out_len = in_len // 4, (out_seq + 8) // 4
        self._my_sleep, self._peer_sleep = my_sleep // 4, peer_sleep // 4
        self._in_area = HEADER if in_seq == REQ_SEQ else HEADER + capacity
        self._out_area = HEADER + capacity if in_seq == REQ_SEQ else HEADER
        # Numbered from zero, whenever each end maps it: the peer may have sent already.
        self.seen = 0
        self.sent = 0
        self.closed = False
        self.misses = 0  # waits in a row that the spin did not end
        self.waits = 0
        self.rang = 0  # the peer was asleep when this end last sent: it woke it
        self.crowded = crowded()  # looked at again every RETRY waits

    def _put(self, data: bytes) -> None:
        if self.closed:
            raise PeerGone("this end is closed")
        if len(data) > self.capacity:
            raise FrameError(f"frame of {len(data)} bytes is over the mailbox's "
                             f"capacity of {self.capacity}")
        at = self._out_area
        self.map[at : at + len(data)] = data
        self.w[self._out_len] = len(data)
        self.sent += 1
        self.q[self._out_seq] = self.sent
        self.rang = self.w[self._peer_sleep]
        if self.rang:
            try:
                os.write(self.bell_out, b"\1")
            except BlockingIOError:
                pass  # the pipe is full of earlier rings: the peer is awake enough
            except OSError:
                raise PeerGone("the peer is gone (its doorbell is closed)") from None

    def _take(self) -> bytes:
        """Wait for the peer's next frame and copy it out."""
        q, at = self.q, self._in_seq
        seen = self.seen
        if q[at] == seen:
            # A few microseconds if the peer is running and nearly done; none if this end
            # had to wake it (it needs a core first).
            for _ in range(0 if self.rang or not self.spin_s else 64):
                if q[at] != seen:
                    break
            else:
                self._wait_longer(seen)
        self.seen = q[at]
        n = self.w[self._in_len]
        if n > self.capacity:
            raise FrameError(f"frame length {n} is over the mailbox's capacity "
                             f"of {self.capacity}")
        at = self._in_area
        return self.map[at : at + n]  # one copy, straight into a bytes object

    def _wait_longer(self, seen: int) -> None:
        """Spin on the peer's number for up to ``spin_s`` (a single-stepping host asks
        again within tens of microseconds), then sleep.  On a crowded machine (more
        runnable tasks than cores, looked at every ``RETRY`` waits) sleep at once while
        the last ``MISSES`` waits all outlasted the spin, or when this end's last frame
        had to wake the peer (spinning again every ``RETRY`` waits): a peer that was
        asleep needs a core before it can answer, and with every core taken the one this
        end would spin on is the one it gets soonest (a pipe's wake-up prefers the
        waker's core).  With a core to spare both ends spin: otherwise two ends that
        each find the other asleep go on paying two wake-ups a round trip.
        No ``sched_yield``: on a machine with more runnable processes than cores a yield
        hands the core to a stranger for a whole time slice (a round trip of milliseconds,
        measured), where a sleeper the pipe wakes is scheduled at once."""
        q, at = self.q, self._in_seq
        self.waits += 1
        retry = self.waits % RETRY == 0
        if retry:
            self.crowded = crowded()
        if self.spin_s and (not self.crowded or (self.misses < MISSES and not self.rang)
                            or retry):
            clock = time.perf_counter
            deadline = clock() + self.spin_s
            while q[at] == seen:
                if clock() > deadline:
                    break
            else:  # the answer came while spinning
                self.misses = 0
                return
        self.misses += 1
        self._sleep(seen)

    def _sleep(self, seen: int) -> None:
        q, w = self.q, self.w
        w[self._my_sleep] = 1
        try:
            poll = self._poll
            while q[self._in_seq] == seen:
                if poll(POLL_S * 1000) and not os.read(self.bell_in, 4096):
                    raise PeerGone("the peer closed the link or died")
        finally:
            w[self._my_sleep] = 0

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self.bell_in, self.bell_out):
            try:
                os.close(fd)
            except OSError:
                pass
        for view in (self.q, self.w, self.buf):
            view.release()
        try:
            self.map.close()
        except BufferError:
            pass


class MailboxClient(_End):
    """The calling end (the host): ``call`` one request, get its reply."""

    def __init__(self, spec: dict, spin_s: float | None = None) -> None:
        super().__init__(spec, mine=(REP_SEQ, REP_LEN, CLIENT_SLEEPS, SERVER_SLEEPS),
                         spin_s=spin_s)

    def call(self, data: bytes) -> bytes:
        self._put(data)
        return self._take()


class MailboxServer(_End):
    """The answering end (the TEE): ``recv`` a request, ``send`` its reply."""

    def __init__(self, spec: dict, spin_s: float | None = None) -> None:
        super().__init__(spec, mine=(REQ_SEQ, REQ_LEN, SERVER_SLEEPS, CLIENT_SLEEPS),
                         spin_s=spin_s)

    def recv(self) -> bytes:
        return self._take()

    def send(self, data: bytes) -> None:
        self._put(data)
