"""The fuzz targets: names, what each fuzzes, and where its code lives.

This module imports nothing of tvmm: a target's module is imported only in the child
process that fuzzes it, after atheris has set up its coverage instrumentation.  Each target
module has ``run(data: bytes) -> int | None`` (the number of host calls it made, if that is
what it counts) and ``seeds() -> list[bytes]``.  ``run`` returns normally on every input a
boundary must accept or refuse with its documented error; anything else it raises (an
``OracleViolation`` or the unexpected exception itself) is a finding.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    kind: str  # "parser", "stateful" (host calls) or "guest" (a guest's hypercalls)
    module: str
    summary: str
    max_len: int = 16384  # the largest input libFuzzer makes for it
    timeout: int = 60  # seconds one input may take before it is a finding


class OracleViolation(Exception):
    """An oracle of a target failed: ``oracle`` names it, ``context`` says where."""

    def __init__(self, oracle: str, message: str, **context: object) -> None:
        super().__init__(f"{oracle}: {message}")
        self.oracle = oracle
        self.context = context


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("abi-codec", "parser", "tvmm_tools.fuzz.parsers",
               "tvmm.abi.codec.decode: DecodeError only; encode(decode(x)) == x"),
        Target("wire", "parser", "tvmm_tools.fuzz.parsers",
               "tvmm.perimeter.wire decode/decode_frame/recv: WireError only; "
               "decode(encode(m)) == m"),
        Target("checkpoint", "parser", "tvmm_tools.fuzz.parsers",
               "tvmm.perimeter.checkpoint_file read_meta/from_bytes: CheckpointFormatError "
               "only; from_bytes(to_bytes(c)) == c"),
        Target("stream", "parser", "tvmm_tools.fuzz.parsers",
               "shim.management.stream parse_header/open/unpack_pages: StreamError only; "
               "open(seal(p)) == p, parse(pack(h)) == h"),
        Target("trace", "parser", "tvmm_tools.fuzz.parsers",
               "tvmm.trace.reader (header, events, index, TraceReader on a file): TraceError "
               "only; parse_event(to_json(e)) == e"),
        Target("host-abi", "stateful", "tvmm_tools.fuzz.host",
               "Platform.handle_bytes driven by a malicious host (every call, every level) "
               "against the counter guest, with oracles", max_len=4096),
        Target("guest-hypercalls", "guest", "tvmm_tools.fuzz.guest",
               "guests/fuzz/hypercalls.c: random hypercalls from a seeded PRNG at every "
               "level under the honest host, through handle_bytes", max_len=64),
    )
}
PARSERS = tuple(name for name, t in TARGETS.items() if t.kind == "parser")
