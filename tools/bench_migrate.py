"""Migration benchmarks: page-stream throughput over loopback TCP against raw AES-GCM on
the same data in the same run, and live-migration downtime of a 256 MiB guest.

    python -m tools.bench_migrate [--mib 64] [--downtime-mib 256]

Prints one JSON line: throughput_mib_s, aesgcm_mib_s, ratio (target ≥ 0.5), downtime_ms
(target ≤ 50), rounds, pages.  The stream path is the real one: EXPORT_VM on the source
TEE, bundles over a TCP socket, IMPORT_VM on the destination TEE, in two threads.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from rich.progress import Progress

from shim import management
from shim.platform import Platform
from tvmm.abi.types import Level
from tvmm.host.client import PlatformClient
from tvmm.host.hypervisor import Devices
from tvmm.owner import launch_secret
from tvmm.perimeter import wire
from tvmm.perimeter.host_side import PausableHost, VmRunner, export_round, import_stream
from tvmm.samples import build_sample

PAGE = 4096


def _launch(memory: int, count: int) -> tuple[Platform, PlatformClient, PausableHost]:
    src = Platform(seed=1)
    lock = threading.RLock()

    def transport(req):
        with lock:
            return src.handle(req)

    client = PlatformClient(transport)
    host = PausableHost(client, Devices())
    blob = launch_secret.wrap(count.to_bytes(8, "little"), src.launch_public_key)
    host.launch(build_sample("counter"), Level.SHIM, memory, secret_blob=blob)
    return src, client, host


def _receiver(sock: socket.socket, stream: int, level: Level, memory: int, policy: int,
              out: dict) -> None:
    dst = Platform(seed=2)
    client = PlatformClient(dst.handle)
    management.open_import(dst.tee, out["key"], stream, "bench", 2)
    conn, _ = sock.accept()

    def bundles():
        while True:
            msg = wire.recv(conn)
            if msg.op != "bundle":
                return
            yield msg.blob

    with conn:
        out["vm"], _state = import_stream(client, stream, level, memory, bundles(), policy)
        out["end"] = time.perf_counter()
        wire.send(conn, wire.reply())


def migrate(src: Platform, client: PlatformClient, host: PausableHost, memory: int, *,
            live: bool, progress: Progress | None = None) -> dict:
    key, stream = os.urandom(32), 77
    management.open_export(src.tee, host.vm, key, stream, "bench", 2)
    vm = src.tee.vms[host.vm]
    server = socket.create_server(("127.0.0.1", 0))
    out: dict = {"key": key}
    rx = threading.Thread(target=_receiver, args=(server, stream, vm.level, memory, vm.policy,
                                                  out))
    rx.start()
    sent = rounds = 0
    task = progress.add_task("migrating", total=memory) if progress else None
    with socket.create_connection(server.getsockname()) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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
        wire.recv(s)
    rx.join()
    server.close()
    exporter = management.state(src.tee).sessions[stream].worker
    return {"seconds": out["end"] - t0, "downtime_ms": (out["end"] - paused) * 1000,
            "bytes": sent, "pages": exporter.pages_sent, "rounds": rounds}


def throughput(mib: int) -> dict:
    memory = (mib + 8) << 20
    src, client, host = _launch(memory, 10**9)
    payload = os.urandom(mib << 20)
    src.tee.vms[host.vm].vcpu.mem_write(8 << 20, payload)  # data the stream must carry
    host.run(max_exits=50)
    with Progress(transient=True) as progress:
        stats = migrate(src, client, host, memory, live=False, progress=progress)
    aead = AESGCM(os.urandom(32))
    t = time.perf_counter()
    for off in range(0, len(payload), 1 << 20):
        aead.encrypt(os.urandom(12), payload[off : off + (1 << 20)], b"")
    raw = time.perf_counter() - t
    mibs = stats["bytes"] / (1 << 20) / stats["seconds"]
    return {"throughput_mib_s": round(mibs, 1), "aesgcm_mib_s": round(mib / raw, 1),
            "ratio": round(mibs / (mib / raw), 3), "stream_mib": round(stats["bytes"] / 2**20, 1)}


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
    args = p.parse_args(argv)
    result = {**throughput(args.mib), **downtime(args.downtime_mib)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
