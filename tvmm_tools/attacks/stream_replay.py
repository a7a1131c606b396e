"""Scenario 12b — replay or reorder a migration stream.

The host carries the page stream between nodes (it is the network).  It relays a live
migration through itself and sends one bundle twice (``replay``) or swaps two
(``reorder``).  The judge reads the coordinator's audit log for the destination TEE's
refusal of the stream (tvmm.harness.perimeter); the detail says what the attack saw
(the abort, and where the VM runs)."""

from __future__ import annotations

import socket
import threading

from tvmm.operator.client import PerimeterError
from tvmm.perimeter import wire
from tvmm_tools.attacks._perimeter import (
    audit_has,
    launch_counter,
    perimeter,
    vm_row,
    without_perimeter,
)
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, needs_symbols


class _Relay:
    """A man in the middle on the host network: forwards frames, tampering with bundles."""

    def __init__(self, target: tuple[str, int], mode: str) -> None:
        self.target = target
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.tampered = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            src, _ = self.sock.accept()
        except OSError:
            return
        with src, socket.create_connection(self.target) as dst:
            bundles = 0
            held: wire.Message | None = None
            while True:
                msg = wire.recv(src)
                if msg.op == "bundle":
                    bundles += 1
                    if self.mode == "replay" and bundles == 2:
                        wire.send(dst, msg)
                        self.tampered += 1
                    elif self.mode == "reorder" and bundles == 2:
                        held = msg
                        continue
                    wire.send(dst, msg)
                    if held is not None and msg is not held:
                        wire.send(dst, held)
                        held = None
                        self.tampered += 1
                    continue
                wire.send(dst, msg)
                if msg.op in ("stream_begin", "stream_end"):  # the destination answers
                    wire.send(src, wire.recv(dst))
                if msg.op == "stream_end":
                    return

    def close(self) -> None:
        self.sock.close()


class StreamReplay(Attack):
    name = "stream-replay"
    summary = "relay a live migration and replay, then reorder, a page-stream bundle"
    victims = ("counter",)
    kind = "integrity"
    published = ("TDX migration bundles carry per-stream counters in AES-GCM-protected "
                 "headers (Intel TDX Migration spec); docs/attacks.md §12")

    def run(self, ctx: AttackContext) -> Outcome:
        if (na := without_perimeter(ctx)) is not None:
            return na
        if (na := needs_symbols(ctx, "counter", why="a guest that keeps running to migrate")) is not None:
            return na
        results = []
        with perimeter(ctx, ("n1", "n2")) as (_per, op):
            vm = launch_counter(ctx, op)
            n2 = next(n for n in op.nodes() if n["name"] == "n2")
            for mode in ("replay", "reorder"):
                relay = _Relay((n2["host"], n2["host_port"]), mode)
                ctx.record("relay", mode=mode)
                try:
                    op.migrate(vm, "n2", live=True, relay=f"127.0.0.1:{relay.address[1]}")
                    refused = ""
                except PerimeterError as exc:
                    refused = exc.reason
                finally:
                    relay.close()
                results.append((mode, relay.tampered, refused))
            tee = audit_has(op, "tee_refused", node="n2")
            aborted = audit_has(op, "migrate_abort", vm=vm)
            row = vm_row(op, vm)
        return Outcome(notes={"detail": "; ".join(
            f"{m}: {t} bundle(s) tampered, migration {r or 'NOT refused'}"
            for m, t, r in results) + f"; TEE refusal audited: {tee}; aborted: {aborted}; "
            f"VM {row['state']} on {row['node']}"})
