"""Running a target: a child process per target, coverage-guided by atheris (libFuzzer)
when it is installed, else a seeded random mutator; findings saved for replay.

The child catches what a target raises, so that one finding does not end the run: each
distinct signature (tvmm_tools.fuzz.known.Finding) is saved once, as ``input.bin`` (the bytes),
``traceback.txt`` and ``finding.json``, under ``<out>/<target>/<signature hash>/``, with a
count of the inputs that hit it.  libFuzzer never returns from its loop, so the child writes
its figures to ``stats.json`` as it goes and the parent reads them when the child ends.
This module imports nothing of tvmm: the target's module is imported after instrumentation.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tvmm_tools.fuzz.known import Finding, known_id
from tvmm_tools.fuzz.targets import TARGETS, OracleViolation, Target

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = Path("fuzz-findings")
_DONE = re.compile(rb"Done (\d+) runs in (\d+) second")


@dataclass
class RunResult:
    target: str
    engine: str
    seed: int
    seconds: float  # time spent fuzzing (the child's own clock)
    inputs: int
    calls: int  # host calls made (stateful and guest targets), 0 for parsers
    findings: list[dict] = field(default_factory=list)  # one per signature
    error: str = ""  # the child failed outside any input (setup, a hard crash)
    commit: str = ""  # the code fuzzed: git HEAD when the run started (+: changed files)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    @property
    def new(self) -> list[dict]:
        return [f for f in self.findings if not f.get("known")]

    @property
    def known(self) -> list[dict]:
        return [f for f in self.findings if f.get("known")]

    def to_json(self) -> dict:
        return {**asdict(self), "rate": round(self.rate, 1), "new_findings": len(self.new),
                "known_findings": len(self.known)}


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


# -- the parent side -------------------------------------------------------------------
def run(name: str, seconds: float, seed: int, out: Path, engine: str = "auto", *,
        inputs: int = 0, calls: int = 0) -> RunResult:
    """Fuzz one target for ``seconds`` in a child process (or until it has run ``inputs``
    inputs or made ``calls`` host calls, if given); its figures and findings."""
    target = TARGETS[name]
    if engine == "auto":
        engine = "atheris" if have_atheris() else "random"
    tdir = out / name
    tdir.mkdir(parents=True, exist_ok=True)
    stats_path = tdir / "stats.json"
    stats_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "tvmm_tools.fuzz", "_child", name, "--seconds", str(seconds),
           "--seed", str(seed), "--out", str(out), "--engine", engine,
           "--inputs", str(inputs), "--calls", str(calls)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    commit = current_commit()
    limit = seconds + target.timeout + 120
    try:
        proc = subprocess.run(cmd, capture_output=True, env=env, timeout=limit)
    except subprocess.TimeoutExpired:  # the child is killed: one line, the next target runs
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        return RunResult(name, engine, seed, stats.get("seconds", 0.0), stats.get("inputs", 0),
                         stats.get("calls", 0), stats.get("findings", []), commit=commit,
                         error=f"the child was still running after {limit:g} s and was "
                               "stopped (a hang, or a heavily loaded machine: run this "
                               "target alone)")
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    result = RunResult(name, engine, seed, stats.get("seconds", 0.0), stats.get("inputs", 0),
                       stats.get("calls", 0), stats.get("findings", []), commit=commit)
    done = _DONE.search(proc.stderr)
    if done:
        result.inputs = max(result.inputs, int(done.group(1)))
    if proc.returncode != 0 or not stats:
        tail = proc.stderr.decode(errors="replace")[-3000:]
        result.error = f"child exited {proc.returncode}"
        crash = _hard_crash(target, tdir, tail)
        if crash is not None:
            result.findings.append(crash)
    return result


def current_commit() -> str:
    """git HEAD of the code fuzzed, + if its code has uncommitted changes."""
    git = ["git", "-C", str(REPO)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "tvmm", "shim", "tvmm_tools",
                                "guests"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (head or "?") + ("+" if dirty else "")


def _hard_crash(target: Target, tdir: Path, stderr: str) -> dict | None:
    """A child that died in an input (libFuzzer's timeout or crash artifact)."""
    artifacts = sorted(tdir.glob("crash-*")) + sorted(tdir.glob("timeout-*")) + sorted(
        tdir.glob("oom-*"))
    kind = "timeout" if "ALARM" in stderr or "timeout" in stderr else "crash"
    finding = Finding(target.name, f"child_{kind}", "", stderr[-500:], {})
    return _save(tdir, finding, artifacts[0].read_bytes() if artifacts else b"", stderr, 1)


# -- the child side --------------------------------------------------------------------
class _Child:
    def __init__(self, target: Target, out: Path, seconds: float, inputs: int = 0,
                 calls: int = 0) -> None:
        self.target = target
        self.limit_inputs = inputs
        self.limit_calls = calls
        self.dir = out / target.name
        self.seconds = seconds
        self.inputs = 0
        self.calls = 0
        self.findings: dict[str, dict] = {}
        self.start = time.monotonic()
        self.last_write = 0.0
        self.run_input = None
        # libFuzzer runs its whole seed corpus before it looks at -max_total_time: under
        # atheris the child keeps the time itself
        self.own_deadline = False

    def one(self, data: bytes) -> None:
        if self.inputs == 0:
            self.start = time.monotonic()
        self.inputs += 1
        try:
            self.calls += self.run_input(data) or 0
        except Exception as exc:  # a finding: recorded, and the run goes on
            self.record(data, exc)
        except RecursionError as exc:  # pragma: no cover - RecursionError is an Exception
            self.record(data, exc)
        now = time.monotonic()
        if now - self.last_write > 0.25:
            self.write_stats(now)
        if (self.limit_inputs and self.inputs >= self.limit_inputs) or (
                self.limit_calls and self.calls >= self.limit_calls) or (
                self.own_deadline and now - self.start >= self.seconds):
            self.write_stats(now)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)  # libFuzzer's loop has no other way out

    def record(self, data: bytes, exc: BaseException) -> None:
        finding = finding_of(self.target.name, exc)
        sig = finding.signature
        if sig in self.findings:
            self.findings[sig]["count"] += 1
            return
        text = "".join(traceback.format_exception(exc))
        self.findings[sig] = _save(self.dir, finding, data, text, 1)
        self.write_stats(time.monotonic())

    def write_stats(self, now: float) -> None:
        self.last_write = now
        stats = {"inputs": self.inputs, "calls": self.calls,
                 "seconds": round(now - self.start, 3),
                 "findings": list(self.findings.values())}
        tmp = self.dir / "stats.json.tmp"
        tmp.write_text(json.dumps(stats, indent=1))
        tmp.replace(self.dir / "stats.json")


def finding_of(target: str, exc: BaseException) -> Finding:
    if isinstance(exc, OracleViolation):
        ctx = {k: (list(v) if isinstance(v, tuple) else v) for k, v in exc.context.items()}
        where = ":".join(str(ctx.get(k, "")) for k in ("call", "level"))
        return Finding(target, exc.oracle, where, str(exc), ctx)
    where = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if REPO in path.parents and "fuzz" not in path.parts:
            where = f"{path.relative_to(REPO)}:{frame.name}"
    return Finding(target, type(exc).__name__, where, str(exc)[:500], {})


def _save(tdir: Path, finding: Finding, data: bytes, text: str, count: int) -> dict:
    digest = hashlib.sha256(finding.signature.encode()).hexdigest()[:12]
    fdir = tdir / digest
    fdir.mkdir(parents=True, exist_ok=True)
    (fdir / "input.bin").write_bytes(data)
    (fdir / "traceback.txt").write_text(text)
    record = {"signature": finding.signature, "known": known_id(finding),
              "message": finding.message, "context": finding.context, "count": count,
              "path": str(fdir), "target": finding.target, "input_len": len(data)}
    (fdir / "finding.json").write_text(json.dumps(record, indent=1, default=str))
    return record


def child_main(name: str, seconds: float, seed: int, out: Path, engine: str, inputs: int = 0,
               calls: int = 0) -> int:
    target = TARGETS[name]
    child = _Child(target, out, seconds, inputs, calls)
    child.dir.mkdir(parents=True, exist_ok=True)
    if engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["tvmm", "shim"]):
            module = importlib.import_module(target.module)
    else:
        module = importlib.import_module(target.module)
    child.run_input = module.runner(name)
    seeds = module.seeds(name)
    child.write_stats(time.monotonic())
    if engine == "atheris":
        corpus = Path(tempfile.mkdtemp(prefix=f"tvmm-fuzz-{name}-"))
        for i, s in enumerate(seeds):
            (corpus / f"seed-{i}").write_bytes(s)
        argv = [sys.argv[0], f"-max_total_time={max(1, round(seconds))}", f"-seed={seed}",
                f"-timeout={target.timeout}", f"-max_len={target.max_len}",
                "-rss_limit_mb=4096", f"-artifact_prefix={child.dir}/", "-print_final_stats=1",
                str(corpus)]
        child.own_deadline = True
        atheris.Setup(argv, child.one)
        atheris.Fuzz()  # never returns: libFuzzer exits when the time is up
        return 0  # pragma: no cover
    _random_loop(child, seeds, seconds, seed, target)
    child.write_stats(time.monotonic())
    return 0


# -- the engine without atheris: seeded mutations of the seeds, no coverage ------------
def _random_loop(child: _Child, seeds: list[bytes], seconds: float, seed: int,
                 target: Target) -> None:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    pool = list(seeds) or [b""]

    def alarm(*_: object) -> None:
        raise TimeoutError(f"one input ran longer than {target.timeout} s")

    signal.signal(signal.SIGALRM, alarm)
    # the seeds count against --seconds too (host-abi's 205 take minutes on a busy
    # machine), in a seeded order so that a short run starts from every level and call
    for s in rng.sample(pool, len(pool)):
        if time.monotonic() >= deadline:
            return
        _one_with_alarm(child, s, target)
    while time.monotonic() < deadline:
        data = mutate(rng, rng.choice(pool), pool, target.max_len)
        _one_with_alarm(child, data, target)


def _one_with_alarm(child: _Child, data: bytes, target: Target) -> None:
    signal.alarm(target.timeout)
    try:
        child.one(data)
    finally:
        signal.alarm(0)


def mutate(rng: random.Random, data: bytes, pool: list[bytes], max_len: int) -> bytes:
    buf = bytearray(data)
    for _ in range(1 + rng.randrange(4)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[pos % len(buf)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(1 + rng.randrange(8)))
        elif op == 3 and buf:
            del buf[pos : pos + 1 + rng.randrange(8)]
        elif op == 4:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 5 and len(buf) >= 4:
            buf[pos % (len(buf) - 3) : pos % (len(buf) - 3) + 4] = rng.choice(
                (b"\0\0\0\0", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\0\0\0\x80"))
        elif op == 6:
            del buf[pos:]
    return bytes(buf[:max_len])


def replay(path: Path) -> tuple[Finding | None, str]:
    """Run a saved finding's input again in this process: the finding it raises now (None
    if it passes) and its traceback."""
    fdir = path if path.is_dir() else path.parent
    record = json.loads((fdir / "finding.json").read_text())
    name = record["target"]
    module = importlib.import_module(TARGETS[name].module)
    try:
        module.runner(name)((fdir / "input.bin").read_bytes())
    except Exception as exc:
        return finding_of(name, exc), "".join(traceback.format_exception(exc))
    return None, ""
