"""python -m tvmm_tools.fuzz list | <target>|all --seconds N --seed S [--inputs N] [--calls N]
[--json] [--write-docs] | replay <finding dir>

Runs each target in a child process for N seconds and prints inputs run, inputs/s and
findings (new ones, and known ones being fixed: tvmm_tools.fuzz.known).  Exit status 1 when a
run has a new finding (or any finding with --strict), 0 otherwise."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tvmm_tools.fuzz import engine
from tvmm_tools.fuzz.targets import TARGETS


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        return _child(argv[1:])
    p = argparse.ArgumentParser(prog="python -m tvmm_tools.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("target", help="a target name, 'all', 'list' or 'replay'")
    p.add_argument("path", nargs="?", help="replay: a finding's directory")
    p.add_argument("--seconds", type=float, default=10.0, help="per target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inputs", type=int, default=0,
                   help="stop a target after this many inputs (--seconds still caps it)")
    p.add_argument("--calls", type=int, default=0,
                   help="stop a target after this many host calls (stateful and guest)")
    p.add_argument("--out", type=Path, default=engine.DEFAULT_OUT,
                   help="where findings and per-target stats go")
    p.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    p.add_argument("--json", action="store_true")
    p.add_argument("--strict", action="store_true", help="known findings fail the run too")
    p.add_argument("--write-docs", type=Path, nargs="?", const=Path("docs/security.md"),
                   help="rewrite the figures block of docs/security.md with this run")
    args = p.parse_args(argv)
    if args.target == "list":
        return _list(args.json)
    if args.target == "replay":
        return _replay(Path(args.path or ""))
    names = list(TARGETS) if args.target == "all" else [args.target]
    for name in names:
        if name not in TARGETS:
            p.error(f"no target {name!r}; try: list")
    results = []
    for name in names:
        result = engine.run(name, args.seconds, args.seed, args.out, args.engine,
                            inputs=args.inputs, calls=args.calls)
        results.append(result)
        if not args.json:
            _print(result)
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=1))
    if args.write_docs:
        from tvmm_tools.fuzz import docs

        docs.write(args.write_docs, results)
    failed = any(r.new or r.error or (args.strict and r.findings) for r in results)
    return 1 if failed else 0


def _list(as_json: bool) -> int:
    if as_json:
        print(json.dumps({n: {"kind": t.kind, "summary": t.summary} for n, t in TARGETS.items()},
                         indent=1))
        return 0
    for name, t in TARGETS.items():
        print(f"{name:18} {t.kind:9} {t.summary}")
    return 0


def _print(r: engine.RunResult) -> None:
    calls = f", {r.calls} host calls ({r.calls / r.seconds:.0f}/s)" if r.calls and r.seconds \
        else ""
    print(f"{r.target}: {r.inputs} inputs in {r.seconds:.1f} s ({r.rate:.0f}/s, {r.engine})"
          f"{calls}; findings: {len(r.new)} new, {len(r.known)} known (being fixed)"
          + (f"; {r.error}" if r.error else ""))
    for f in r.findings:
        tag = f"known: {f['known']}" if f.get("known") else "NEW"
        print(f"  [{tag}] {f['signature']} x{f['count']}: {f['message'][:160]}")
        print(f"      replay: python -m tvmm_tools.fuzz replay {f['path']}")


def _replay(path: Path) -> int:
    finding, text = engine.replay(path)
    if finding is None:
        print("passes: the input no longer raises")
        return 0
    print(text)
    print(f"{finding.signature}: {finding.message}")
    return 1


def _child(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--seconds", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--out", type=Path)
    p.add_argument("--engine")
    p.add_argument("--inputs", type=int, default=0)
    p.add_argument("--calls", type=int, default=0)
    a = p.parse_args(argv)
    return engine.child_main(a.target, a.seconds, a.seed, a.out, a.engine, a.inputs, a.calls)


if __name__ == "__main__":
    sys.exit(main())
