"""Process entry points: ``python -m tvmm.perimeter.service coordinator|node ...``.

Each process prints one JSON line ``{"ready": true, ...addresses}`` on stdout once it
serves (the launcher waits for it), then serves until SIGTERM/SIGINT.  Addresses are
configuration: bind and advertise any host; the default is loopback with ephemeral ports.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from tvmm.abi.state_dir import default_state_dir
from tvmm.perimeter import measure
from tvmm.perimeter.coordinator import Coordinator
from tvmm.perimeter.identity import Identity, pinned_ark
from tvmm.perimeter.ledger import LedgerAgent, SealedLedger
from tvmm.perimeter.node import Node
from tvmm.transparency.errors import TransparencyError


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tvmm.perimeter.service")
    p.add_argument("role", choices=["coordinator", "node", "ledger"])
    p.add_argument("--name", default="coordinator")
    p.add_argument("--state-dir", type=Path, default=None)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--advertise", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host-port", type=int, default=0)
    p.add_argument("--db", type=Path, help="coordinator database (SQLite)")
    p.add_argument("--coordinator", type=_address, help="host:port of the coordinator")
    p.add_argument("--storage", type=Path, help="the node host's checkpoint storage")
    p.add_argument("--issuer", type=Path, action="append", default=[],
                   help="(ledger, first start) an issuer's public key PEM it admits")
    p.add_argument("--feed", action="append", default=[],
                   help="(ledger, first start) a feed those issuers may publish on")
    args = p.parse_args(argv)
    measure.load()
    measure.check_closed()  # nothing of ours runs here that the report does not cover
    state = args.state_dir or default_state_dir()
    ark = pinned_ark(state)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.role == "coordinator":
        ident = Identity.create(args.name, "coordinator", state)
        db = args.db or state / "perimeter" / "coordinator.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        service = Coordinator(db, ident, ark, args.bind, args.port).start()
        recovered = service.recover()
        info = {"ready": True, "role": "coordinator", "port": service.address[1],
                "host": args.advertise, "recovered": recovered}
        if service.refusal is not None:  # it serves only the audit op, which names this
            info["refused"] = {"reason": service.refusal.reason.value,
                               "error": str(service.refusal)}
    elif args.role == "ledger":
        ident = Identity.create(args.name, "ledger", state)
        db = args.db or state / "perimeter" / f"ledger-{args.name}.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        try:
            issuers = [(path.read_bytes(), args.feed) for path in args.issuer]
            service = LedgerAgent(
                lambda: SealedLedger(db, ident.chip, ident.measurement, args.name, issuers),
                ident, ark, args.bind, args.port).start()
        except (OSError, TransparencyError) as exc:
            sys.stdout.write(json.dumps({"ready": False, "role": "ledger",
                                         "error": str(exc)}) + "\n")
            return 1
        info = {"ready": True, "role": "ledger", "port": service.address[1],
                "host": args.advertise, "entries": service.entries()}
    else:
        ident = Identity.create(args.name, "node", state)
        service = Node(args.name, ident, ark, host=args.bind, port=args.port,
                       host_port=args.host_port, storage=args.storage)
        service.start()
        info = {"ready": True, "role": "node", "name": args.name, "port": service.address[1],
                "host_port": service.host_address[1], "host": args.advertise,
                "registered": False}
        if args.coordinator:
            try:
                service.register(args.coordinator, args.advertise)
                info["registered"] = True
            except Exception as exc:  # noqa: BLE001 - reported, the process still serves
                info["error"] = f"{type(exc).__name__}: {exc}"
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    stop.wait()
    service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
