"""Migration benchmarks: node-to-node throughput over loopback TCP against raw AES-GCM
on the same data in the same run, and live-migration downtime of a 256 MiB guest.

    python -m tvmm_tools.bench_migrate [--mib 64] [--downtime-mib 256] [--repeat 3]

Prints one JSON line.  Throughput: the real stream path (EXPORT_VM on the source TEE,
bundles over a TCP socket, IMPORT_VM on a destination TEE in a separate process, as
perimeter nodes are), ``ratio`` to raw AES-256-GCM (target ≥ 0.5), and, on the same
data in the same run, what bounds it on this machine: ``pipe_*`` (seal + loopback TCP +
open, nothing of tvmm), ``tcp_*`` (loopback TCP alone, with its CPU cost) and
``ceiling_ratio`` (the most any stream could reach here, from the CPU each byte needs:
``throughput``'s docstring), with ``steal_pct``, the share of the machine's time its own
hypervisor gave to others meanwhile.  Downtime is measured in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rich.console import Console
from rich.progress import Progress

from shim import management
from shim.launch import predict
from shim.platform import Platform
from tvmm.abi import launch_secret
from tvmm.abi.types import Level
from tvmm.host.client import PlatformClient
from tvmm.host.hypervisor import Devices
from tvmm.host.node_host import (
    PausableHost,
    VmRunner,
    create_for_import,
    export_round,
    feed_stream,
)
from tvmm.launch_plan import plan_launch
from tvmm.perimeter import wire
from tvmm.samples import build_sample

PAGE = 4096


def _launch(memory: int, count: int) -> tuple[Platform, PlatformClient, PausableHost]:
    src = Platform()
    lock = threading.RLock()

    def transport(req):
        with lock:
            return src.handle(req)

    client = PlatformClient(transport)
    host = PausableHost(client, Devices())
    image = build_sample("counter")
    blob = launch_secret.wrap(count.to_bytes(8, "little"), src.launch_public_key,
                              predict(plan_launch(image, memory), Level.SHIM).digest)
    host.launch(image, Level.SHIM, memory, secret_blob=blob)
    return src, client, host


def _receiver(sock: socket.socket, stream: int, level: Level, memory: int, policy: int,
              out: dict) -> None:
    dst = Platform()
    client = PlatformClient(dst.handle)
    management.open_import(dst.tee, out["key"], stream, "bench", 2)
    t = time.perf_counter()
    empty = create_for_import(client, level, memory, policy)  # before the stream, as a node
    out["prepare_s"] = time.perf_counter() - t
    out["ready"].set()
    conn, _ = sock.accept()

    def bundles():
        while True:
            msg = wire.recv(conn)
            if msg.op != "bundle":
                return
            yield msg.blob

    with conn:
        out["vm"], _state = feed_stream(client, empty, stream, bundles())
        out["end"] = time.perf_counter()
        wire.send(conn, wire.reply())


def _send_stream(s: socket.socket, client: PlatformClient, host: PausableHost, stream: int,
                 memory: int, live: bool, progress: Progress | None) -> dict:
    """Source side: pre-copy rounds (if live), pause, final round, stream_end."""
    sent = rounds = 0
    task = progress.add_task("migrating", total=memory) if progress else None

    def pump(final: bool) -> int:
        nonlocal sent, rounds
        n = 0
        for bundle in export_round(client, host.vm, stream, final):
            wire.send(s, wire.Message("bundle", {}, bundle))
            sent += len(bundle)
            n += 1
            if progress:
                progress.update(task, completed=min(sent, memory))
        rounds += 1
        return n

    t0 = time.perf_counter()
    if live:
        for _ in range(8):
            if pump(False) <= 1 and rounds > 1:
                break
    paused = time.perf_counter()
    host.pause()
    pump(True)
    wire.send(s, wire.Message("stream_end", {"console": ""}))
    return {"t0": t0, "paused": paused, "bytes": sent, "rounds": rounds}


def migrate(src: Platform, client: PlatformClient, host: PausableHost, memory: int, *,
            live: bool, progress: Progress | None = None) -> dict:
    """Both TEEs in this process: the destination imports in a thread."""
    key, stream = os.urandom(32), 77
    management.open_export(src.tee, host.vm, key, stream, "bench", 2)
    vm = src.tee.vms[host.vm]
    server = socket.create_server(("127.0.0.1", 0))
    out: dict = {"key": key, "ready": threading.Event()}
    rx = threading.Thread(target=_receiver, args=(server, stream, vm.level, memory, vm.policy,
                                                  out))
    rx.start()
    out["ready"].wait(60)
    with socket.create_connection(server.getsockname()) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = _send_stream(s, client, host, stream, memory, live, progress)
        wire.recv(s)
    rx.join()
    server.close()
    exporter = management.state(src.tee).sessions[stream].worker
    return {"seconds": out["end"] - sent["t0"], "downtime_ms": (out["end"] - sent["paused"]) * 1000,
            "bytes": sent["bytes"], "pages": exporter.pages_sent, "rounds": sent["rounds"],
            "prepare_s": out.get("prepare_s", 0.0)}


# -- destination TEE in its own process --------------------------------------------------------
def _dst_node(ready, key: bytes, stream: int, level: Level, memory: int, policy: int,
              check: tuple[int, int], timeout: float) -> None:
    """Entry point of the destination process: its own TEE, a listening socket on an
    ephemeral loopback port (sent to the parent through ``ready``), the same import path as
    a node's host.  Replies ok once the VM is complete (after END and stream_end), then
    the SHA-256 of guest memory ``check`` = (gpa, size), so the parent can verify the data,
    and the CPU seconds this process spent receiving and importing.
    Every blocking call has ``timeout``: the process ends even if the parent vanishes."""
    dst = Platform()
    client = PlatformClient(dst.handle)
    management.open_import(dst.tee, key, stream, "bench", 2)
    t = time.perf_counter()
    empty = create_for_import(client, level, memory, policy)  # before the stream, as a node
    prepare = time.perf_counter() - t
    conn = _accept_one(ready, timeout)
    cpu = time.process_time()
    with conn:
        # Blocking, as a node's host port is (a bundle is then read with one recv into its
        # bytes), with the timeout kept by the kernel.
        conn.settimeout(None)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", int(timeout), int(timeout % 1 * 1e6)))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def bundles():
            while True:
                msg = wire.recv(conn)
                if msg.op != "bundle":
                    raise wire.WireError("op", f"stream ended before END ({msg.op})")
                yield msg.blob

        vm, _state = feed_stream(client, empty, stream, bundles())
        if wire.recv(conn).op != "stream_end":
            raise wire.WireError("op", "expected stream_end")
        wire.send(conn, wire.reply())  # the end of the timed stream
        cpu = time.process_time() - cpu
        digest = hashlib.sha256(dst.tee.vms[vm].vcpu.mem_read(*check)).hexdigest()
        wire.send(conn, wire.reply(sha256=digest, cpu_s=cpu, prepare_s=prepare))


@contextlib.contextmanager
def _listener(target, args: tuple, timeout: float) -> Iterator[socket.socket]:
    """Spawn ``target(ready, *args)``, a process that sends its listening port through
    ``ready``; yield a connection to it; make sure the process is gone afterwards."""
    ctx = multiprocessing.get_context("spawn")
    ready, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(child_end, *args), daemon=True)
    proc.start()
    child_end.close()
    try:
        if not ready.poll(timeout):
            raise TimeoutError(f"{target.__name__} did not start")
        with socket.create_connection(("127.0.0.1", ready.recv()), timeout=timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            yield s
        proc.join(timeout)
    finally:
        ready.close()
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    if proc.exitcode != 0:
        raise RuntimeError(f"{target.__name__} exited with {proc.exitcode}")


def migrate_to_process(src: Platform, client: PlatformClient, host: PausableHost, memory: int,
                       *, check: tuple[int, int], progress: Progress | None = None,
                       timeout: float = 120.0) -> dict:
    """Stop-and-copy to a destination TEE in a separate process (spawned), as between two
    perimeter nodes.  The timed span starts with the first export and ends when the
    destination replies that the VM is complete; process start-up is not timed."""
    key, stream = os.urandom(32), 78
    management.open_export(src.tee, host.vm, key, stream, "bench", 2)
    vm = src.tee.vms[host.vm]
    with _listener(_dst_node, (key, stream, vm.level, memory, vm.policy, check, timeout),
                   timeout) as s:
        cpu = time.process_time()
        sent = _send_stream(s, client, host, stream, memory, False, progress)
        done = wire.recv(s)
        end = time.perf_counter()
        cpu = time.process_time() - cpu
        verdict = wire.recv(s)
    if not (done.op == verdict.op == "reply" and done["ok"] and verdict["ok"]):
        raise RuntimeError(f"destination refused the stream: {done} {verdict}")
    exporter = management.state(src.tee).sessions[stream].worker
    return {"seconds": end - sent["t0"], "bytes": sent["bytes"], "pages": exporter.pages_sent,
            "rounds": sent["rounds"], "sha256": verdict.fields["data"]["sha256"],
            "src_cpu_s": cpu, "dst_cpu_s": verdict.fields["data"]["cpu_s"],
            "prepare_s": verdict.fields["data"]["prepare_s"]}


def _aesgcm_seconds(payload: bytes) -> tuple[float, float]:
    """AES-256-GCM over ``payload`` in 1 MiB chunks, the best of three passes each way,
    each into one reused buffer (``encrypt_into`` / ``decrypt_into``: no allocation is
    timed): (seal seconds, open seconds)."""
    view, chunk = memoryview(payload), 1 << 20
    offsets = range(0, len(payload), chunk)
    out = memoryview(bytearray(chunk + 16))
    seal = opened = float("inf")
    for _ in range(3):
        aead = AESGCM(os.urandom(32))  # a key per pass, a counter nonce per chunk
        t = time.perf_counter()
        for i, off in enumerate(offsets):
            part = view[off : off + chunk]
            aead.encrypt_into(i.to_bytes(12, "little"), part, b"", out[: len(part) + 16])
        seal = min(seal, time.perf_counter() - t)
        sealed = [aead.encrypt(i.to_bytes(12, "little"), view[off : off + chunk], b"")
                  for i, off in enumerate(offsets)]
        t = time.perf_counter()
        for i, ct in enumerate(sealed):
            aead.decrypt_into(i.to_bytes(12, "little"), ct, b"", out[: len(ct) - 16])
        opened = min(opened, time.perf_counter() - t)
    return seal, opened


def _read_into(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if not n:
            raise ConnectionError("source closed the connection")
        got += n


def _accept_one(ready, timeout: float) -> socket.socket:
    """Listen on an ephemeral loopback port, send it through ``ready``, accept one peer."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(timeout)
        ready.send(server.getsockname()[1])
        ready.close()
        conn, _ = server.accept()
    conn.settimeout(timeout)
    return conn


# -- the bound: AES-GCM and loopback TCP alone, no VM --------------------------------------------
def _pipe_sink(ready, key: bytes, chunks: int, timeout: float) -> None:
    """Receive ``chunks`` sealed 1 MiB chunks (u32 length ‖ ciphertext) and open each into
    one reused buffer: the least any destination does."""
    aead, plain, sealed = AESGCM(key), bytearray(1 << 20), bytearray((1 << 20) + 16)
    with _accept_one(ready, timeout) as conn:
        length = memoryview(bytearray(4))
        for i in range(chunks):
            _read_into(conn, length)
            (n,) = struct.unpack("<I", length)
            _read_into(conn, memoryview(sealed)[:n])
            aead.decrypt_into(i.to_bytes(12, "little"), memoryview(sealed)[:n], b"",
                              memoryview(plain)[: n - 16])
        conn.sendall(b"k")


def pipe_seconds(payload: bytes, timeout: float = 60.0) -> float:
    """Seal ``payload`` in 1 MiB chunks and send them to a process that opens them, over
    loopback TCP, as the two nodes do, without anything of tvmm: the bound of the stream on
    this machine and in this language (seal + send on one core, receive + open on the other)."""
    key, view = os.urandom(32), memoryview(payload)
    chunks = -(-len(payload) // (1 << 20))
    aead = AESGCM(key)
    with _listener(_pipe_sink, (key, chunks, timeout), timeout) as s:
        t = time.perf_counter()
        for i in range(chunks):
            sealed = aead.encrypt(i.to_bytes(12, "little"), view[i << 20 : (i + 1) << 20], b"")
            s.sendall(struct.pack("<I", len(sealed)))
            s.sendall(sealed)
        if s.recv(1, socket.MSG_WAITALL) != b"k":
            raise RuntimeError("pipe sink failed")
        seconds = time.perf_counter() - t
    return seconds


def _tcp_sink(ready, size: int, timeout: float) -> None:
    """Receive ``size`` bytes into one reused 1 MiB buffer; reply with this process's CPU
    seconds (8 bytes, a double)."""
    view = memoryview(bytearray(1 << 20))
    with _accept_one(ready, timeout) as conn:
        cpu, got = time.process_time(), 0
        while got < size:
            n = conn.recv_into(view[: min(len(view), size - got)])
            if not n:
                raise ConnectionError("source closed the connection")
            got += n
        conn.sendall(struct.pack("<d", time.process_time() - cpu))


def tcp_seconds(size: int, timeout: float = 60.0) -> tuple[float, float]:
    """Carry ``size`` bytes over loopback TCP, 1 MiB writes of one buffer (in cache, as a
    bundle just sealed is), to a process that reads them into a reused buffer: (wall
    seconds, CPU seconds of both processes) — the least moving the bytes costs, before
    any cryptography."""
    chunk = memoryview(os.urandom(1 << 20))
    with _listener(_tcp_sink, (size, timeout), timeout) as s:
        t, cpu = time.perf_counter(), time.process_time()
        for off in range(0, size, len(chunk)):
            s.sendall(chunk[: min(len(chunk), size - off)])
        answer = s.recv(8, socket.MSG_WAITALL)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    if len(answer) != 8:
        raise RuntimeError("TCP sink failed")
    return seconds, cpu + struct.unpack("<d", answer)[0]


def _steal_ticks() -> tuple[int, int] | None:
    """(stolen, all) CPU ticks of the machine so far (Linux /proc/stat), or None: the share
    of time the hypervisor under this machine gave to others shows how noisy a run was."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (ticks[7], sum(ticks)) if len(ticks) > 7 else None


def _migrate_once(payload: bytes, memory: int, check: tuple[int, int]) -> dict:
    """Launch a counter VM holding ``payload``, migrate it (stop-and-copy) to a separate
    process, and check the destination's memory against the frozen source's."""
    src, client, host = _launch(memory, 10**9)
    src.tee.vms[host.vm].vcpu.mem_write(check[0], payload)  # data the stream must carry
    host.run(max_exits=50)
    with Progress(transient=True, console=Console(stderr=True)) as progress:  # stdout: JSON
        stats = migrate_to_process(src, client, host, memory, check=check, progress=progress)
    frozen = src.tee.vms[host.vm].vcpu.mem_read(*check)  # the guest's stack is in there too
    if stats["sha256"] != hashlib.sha256(frozen).hexdigest():
        raise RuntimeError("destination memory differs from the source's")
    return stats


def throughput(mib: int, repeat: int = 3) -> dict:
    """Node-to-node migration throughput against raw AES-256-GCM on the same random guest
    memory, with the bound (seal + TCP + open, nothing of tvmm) and the ceiling of any
    stream on this machine; ``repeat`` rounds of each, interleaved, and the best of each
    kept (the least disturbed run of each measures the machine, not its neighbours).

    The ceiling: each byte is sealed once (1/A seconds at AES-GCM's speed A), opened once
    (1/D) and carried by loopback TCP (c CPU seconds over both processes, measured with
    plain data from a buffer in cache, the least of ``repeat`` runs); P cores give at most
    P CPU seconds per second, so no stream beats P / (1/A + 1/D + c), a ratio of
    P / (1 + A/D + A·c)."""
    memory = (mib + 8) << 20
    payload = os.urandom(mib << 20)
    check = (8 << 20, len(payload))
    size = mib << 20
    steal0 = _steal_ticks()
    runs: list[dict] = []
    seal = opened = pipe = tcp = tcp_cpu = float("inf")
    for _ in range(repeat):
        stats = _migrate_once(payload, memory, check)
        s, o = _aesgcm_seconds(payload)
        stats["ratio"] = (s / stats["seconds"]) * stats["bytes"] / size
        runs.append(stats)
        seal, opened = min(seal, s), min(opened, o)
        pipe = min(pipe, pipe_seconds(payload))
        wall, cpu = tcp_seconds(size)
        tcp, tcp_cpu = min(tcp, wall), min(tcp_cpu, cpu)
    steal1 = _steal_ticks()
    best = max(runs, key=lambda r: r["bytes"] / r["seconds"])
    mibs = best["bytes"] / (1 << 20) / best["seconds"]
    aes = mib / seal
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ceiling = cores / (1 + opened / seal + tcp_cpu / seal)
    result = {
        "throughput_mib_s": round(mibs, 1), "aesgcm_mib_s": round(aes, 1),
        "ratio": round(mibs / aes, 3),
        "ratio_runs": [round(r["ratio"], 3) for r in runs],
        "aesgcm_open_mib_s": round(mib / opened, 1),
        "pipe_mib_s": round(mib / pipe, 1), "pipe_ratio": round(seal / pipe, 3),
        "tcp_mib_s": round(mib / tcp, 1), "tcp_cpu_ns_per_byte": round(tcp_cpu / size * 1e9, 3),
        "cores": cores, "ceiling_ratio": round(ceiling, 3),
        "of_pipe": round(mibs / (mib / pipe), 3), "of_ceiling": round(mibs / aes / ceiling, 3),
        "stream_mib": round(best["bytes"] / 2**20, 1),
        "dst_prepare_ms": round(best["prepare_s"] * 1000, 1),
    }
    result |= {f"{k}_ms": round(best[v] * 1000, 1) for k, v in
               (("wall", "seconds"), ("src_cpu", "src_cpu_s"), ("dst_cpu", "dst_cpu_s"))}
    if steal0 and steal1 and steal1[1] > steal0[1]:
        result["steal_pct"] = round(100 * (steal1[0] - steal0[0]) / (steal1[1] - steal0[1]), 1)
    return result


def downtime(mib: int) -> dict:
    memory = mib << 20
    src, client, host = _launch(memory, 10**9)
    runner = VmRunner(host).start()
    host.pause()  # let it run a while, then migrate live
    host.resume()
    stats = migrate(src, client, host, memory, live=True)
    host.stop()
    host.resume()
    runner.done.wait(10)
    return {"guest_mib": mib, "downtime_ms": round(stats["downtime_ms"], 1),
            "rounds": stats["rounds"], "pages": stats["pages"],
            "live_seconds": round(stats["seconds"], 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="migration throughput and downtime")
    p.add_argument("--mib", type=int, default=64)
    p.add_argument("--downtime-mib", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3, help="rounds of each throughput figure")
    args = p.parse_args(argv)
    result = {**throughput(args.mib, args.repeat), **downtime(args.downtime_mib)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
