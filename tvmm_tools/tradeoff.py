"""The shim's step and fault policies: leakage bought against cost, threshold by threshold.

For each setting of one policy knob this harness measures, in the same run:

- leakage: the bits the relevant confidentiality attacks get at ``shim`` with that policy
  (tvmm.harness.judge.run_attack: the attack in its own process; averaged over seeds), and whether the shim detected them;
- cost: benign guests under honest hosts with the same policy, timed side by side with the
  default policy (interleaved repetitions, median wall time, ratio), and whether the
  policy fired on them (a false positive: a violation, a kill or a refused entry).

Step sweep (min_progress, extend_max, detect_short_entries, step_mode): attacks
single-step on password and on modexp; benign modexp under a fine-tick host (timer every
64 instructions — an interrupt storm, the case AEX-Notify's authors worried about) and
kvstore under a host with a 10,000-instruction tick.  The fault policy is relaxed in this
sweep (budget and TDX rule out of reach) so that the step policy alone is measured.

Fault sweep (fault_budget and fault_same_rip with pinning and the data-fault budget off, then data_fault_budget,
pin_working_set): attack page-fault on modexp (and the constant-time control); benign
modexp and kvstore under the honest host (all memory mapped at launch), timed against no
fault policy at all, and modexp under a demand-paging host that maps nothing up front and
maps each page on its first fault (what pinning and the data-fault budget rule out).

    python -m tvmm_tools.tradeoff [--seeds N] [--reps N] [--out docs/tradeoff.md]
                             [--svg docs/img/tradeoff.svg] [--store tradeoff.sqlite]
                             [--workers N]

The attack cells run as a campaign (tvmm.campaign) on ``--workers`` local processes,
stored in ``--store`` as each finishes, so an interrupted sweep resumes.  Writes the
measured rows as JSON beside the Markdown (docs/tradeoff.json; the page is regenerated
from it), the Markdown tables and an SVG chart (hand-written: no plotting dependency).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from xml.sax.saxutils import escape

from shim.policies.config import PolicyConfig, StepMode
from tvmm.abi.guest import PAGE_SIZE
from tvmm.abi.types import Level
from tvmm.campaign.keys import policy_from_key, policy_key
from tvmm.campaign.run import grid, run_campaign, verdicts
from tvmm.campaign.store import Store
from tvmm.campaign.version import code_version, git_commit
from tvmm.harness.judge import run_attack
from tvmm.host.devices import BlockDevice, Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.hw.vcpu import RCX, RSP, StopKind, Vcpu
from tvmm.machine import DEFAULT_MEMORY, make_machine, wrap_secret
from tvmm.samples import resolve
from tvmm_tools.attacks.page_fault import PageFault
from tvmm_tools.attacks.single_step import SingleStep

OFF = 1 << 30  # a threshold no run reaches
FINE_TICK = 64
COARSE_TICK = 10_000
# The fault policy out of reach: the step sweep measures the step policy alone, and the
# fault sweep times each fault setting against no fault policy at all.
RELAXED_FAULTS = dict(fault_budget=OFF, fault_same_rip=OFF, data_fault_budget=OFF,
                      pin_working_set=False)
NO_FAULT_POLICY = replace(PolicyConfig(), **RELAXED_FAULTS)


@dataclass
class Setting:
    label: str
    knob: str  # the knob this row varies (for the chart); "" for special rows
    value: float | None
    config: PolicyConfig


@dataclass
class Benign:
    name: str
    ratio: float  # median wall time with the setting / with the default policy
    false_positive: bool
    why: str = ""
    exits: int = 0


@dataclass
class Row:
    setting: Setting
    leaks: dict[str, float] = field(default_factory=dict)  # attack/victim -> mean bits
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # (min, max) bits
    detected: dict[str, float] = field(default_factory=dict)  # fraction of seeds detected
    blocked: dict[str, float] = field(default_factory=dict)  # fraction the shim refused
    benign: list[Benign] = field(default_factory=list)


# -- the model's fault re-arming ---------------------------------------------------------
@functools.cache
def model_rearms_faults() -> bool:
    """Whether the modeled CPU faults again on a code page the host unmapped after the
    guest ran it — the controlled channel's re-arming.  A loop in page A calls B then C;
    the host keeps one of A, B, C mapped at a time, as tvmm_tools.attacks.page_fault does.  A
    correct model faults B, A, C, A, B, ...; Unicorn keeps running blocks it translated
    before unless the vCPU drops the page's translated code on unmap, and then the second
    call of B does not fault (the model note in docs/tradeoff.md)."""
    a, b, c = 0x1000, 0x2000, 0x3000
    vcpu = Vcpu(0x6000, lambda leaf, sub: (0, 0, 0, 0))
    vcpu.set_mapped(0, 6, True)
    loop = (b"\xe8" + (b - a - 5).to_bytes(4, "little", signed=True)  # call b
            + b"\xe8" + (c - a - 10).to_bytes(4, "little", signed=True)  # call c
            + b"\xff\xc9\x75\xf2"  # dec ecx; jnz loop
            + b"\x0f\x01\xc1")  # vmcall
    vcpu.mem_write(a, loop)
    vcpu.mem_write(b, b"\xc3")
    vcpu.mem_write(c, b"\xc3")
    vcpu.write_reg(RSP, 0x6000)
    vcpu.write_reg(RCX, 3)
    vcpu.set_mapped(b, 1, False)
    vcpu.set_mapped(c, 1, False)
    rip, pages = a, []
    for _ in range(5):
        stop = vcpu.run(rip, 0)
        if stop.kind != StopKind.NPF:
            break
        page, rip = stop.addr & ~0xFFF, stop.rip
        pages.append(page)
        for other in (a, b, c):
            vcpu.set_mapped(other, 1, other == page)
    return pages == [b, a, c, a, b]


# -- settings --------------------------------------------------------------------------------
def step_settings() -> list[Setting]:
    base = replace(PolicyConfig(), **RELAXED_FAULTS)
    rows = [Setting("step policy off", "", None, replace(base, step_mode=StepMode.OFF)),
            Setting("detect only (64 short / 100k)", "", None,
                    replace(base, step_mode=StepMode.DETECT)),
            Setting("extend only (min 32, +1..32)", "", None,
                    replace(base, step_mode=StepMode.EXTEND)),
            Setting("no jitter of longer quanta", "", None, replace(base, jitter=False))]
    for mp in (8, 16, 32, 64, 96, 128, 256):
        tag = " (default)" if mp == 32 else ""
        rows.append(Setting(f"min_progress {mp}{tag}", "min_progress", mp,
                            replace(base, min_progress=mp)))
    for em in (4, 128):
        rows.append(Setting(f"extend_max {em}", "extend_max", em, replace(base, extend_max=em)))
    for d in (8, 256):
        rows.append(Setting(f"detect_short_entries {d}", "detect", d,
                            replace(base, detect_short_entries=d)))
    return rows


def fault_settings() -> list[Setting]:
    """The budgets and the TDX rule with pinning and the data-fault budget off (pinning
    refuses the attack's first entry, and the data-fault budget ends the VM at its first
    fault on a data page, whatever they are), then the data-fault budget added, and the
    default."""
    base = replace(PolicyConfig(), pin_working_set=False, data_fault_budget=OFF)
    rows = []
    for b in (8, 16, 32, 64, 128, 256, OFF):
        label = "fault_budget off" if b == OFF else f"fault_budget {b}"
        rows.append(Setting(label + ", pinning off", "fault_budget",
                            b if b != OFF else None, replace(base, fault_budget=b)))
    for r in (2, OFF):
        label = "fault_same_rip off" if r == OFF else f"fault_same_rip {r}"
        rows.append(Setting(label + ", pinning off", "fault_same_rip", r,
                            replace(base, fault_same_rip=r)))
    rows.append(Setting("data_fault_budget on, pinning off", "", None,
                        replace(PolicyConfig(), pin_working_set=False)))
    rows.append(Setting("default (pinning)", "", None, PolicyConfig()))
    return rows


# -- benign runs --------------------------------------------------------------------------------
class DemandPagingHost(HonestHypervisor):
    """An honest host that maps nothing up front: every page faults once, then is mapped."""

    def launch(self, image, level, memory_size, *, secret_blob=b"", policy=0) -> bytes:
        digest = super().launch(image, level, memory_size, secret_blob=secret_blob,
                                policy=policy)
        self.client.unmap(self.vm, 0, memory_size // PAGE_SIZE)
        return digest


@dataclass
class BenignCase:
    name: str
    guest: str
    host: type[HonestHypervisor]
    quantum: int
    baseline: PolicyConfig = NO_FAULT_POLICY  # what "time ×" divides by


def benign_run(case: BenignCase, config: PolicyConfig, seed: int = 0
               ) -> tuple[float, bool, str, int]:
    """(seconds of launch + run, false positive, why, exits) of one honest run at shim.
    The time is this process's CPU time (the platform runs in-process), which other
    work on the machine disturbs less than wall time; building the platform and
    wrapping the secret are left out."""
    image, sample = resolve(case.guest)
    secret = sample.make_secret(random.Random(seed)) if sample else b""
    machine = make_machine(seed=seed, image=image, level=Level.SHIM, policy_config=config)
    try:
        devices = Devices(Console(), BlockDevice(None), InputDevice(["guess"]))
        host = case.host(machine.client, devices, quantum=case.quantum)
        blob = wrap_secret(machine, secret, image, Level.SHIM)
        start = time.process_time()
        host.launch(image, Level.SHIM, DEFAULT_MEMORY, secret_blob=blob)
        result = host.run()
        wall = time.process_time() - start
        vm = machine.platform.tee.vms.get(host.vm)
        violations = list(vm.policies.violations) if vm and vm.policies else []
        fp = result.how != "exit" or bool(violations)
        why = (f"{violations[0].policy}" if violations else
               (result.how if result.how != "exit" else ""))
        return wall, fp, why, sum(result.exits.values())
    finally:
        machine.close()


def benign_compare(case: BenignCase, config: PolicyConfig, reps: int) -> Benign:
    """Time the setting and its case's baseline interleaved: ``reps`` rounds, each timing a
    batch of back-to-back runs long enough (≥ 100 ms) to rise above timer noise."""
    default = case.baseline
    wall, fp, why, exits = benign_run(case, config)  # also warms the guest build cache
    batch = max(1, math.ceil(0.1 / max(wall, 1e-4)))
    mine, base = [], []
    for _ in range(reps):
        mine.append(sum(benign_run(case, config)[0] for _ in range(batch)))
        base.append(sum(benign_run(case, default)[0] for _ in range(batch)))
    return Benign(case.name, statistics.median(mine) / statistics.median(base), fp, why,
                  exits)


# -- the sweeps ----------------------------------------------------------------------------------
AttackSpec = tuple[str, Callable[[], object], str]

STEP_ATTACKS: list[AttackSpec] = [("single-step/password", SingleStep, "password"),
                                  ("single-step/modexp", SingleStep, "modexp")]
FAULT_ATTACKS: list[AttackSpec] = [("page-fault/modexp", PageFault, "modexp"),
                                   ("page-fault/modexp-ct", PageFault, "modexp-ct")]
STEP_BENIGN = [BenignCase(f"modexp, tick {FINE_TICK}", "modexp", HonestHypervisor, FINE_TICK),
               BenignCase(f"kvstore, tick {COARSE_TICK}", "kvstore", HonestHypervisor,
                          COARSE_TICK)]
FAULT_BENIGN = [BenignCase("modexp, mapped at launch", "modexp", HonestHypervisor, 0),
                BenignCase("kvstore, mapped at launch", "kvstore", HonestHypervisor, 0),
                BenignCase(f"kvstore, mapped, tick {COARSE_TICK}", "kvstore",
                           HonestHypervisor, COARSE_TICK),
                BenignCase("modexp, demand paging", "modexp", DemandPagingHost, 0)]


def sweep(settings: list[Setting], attacks: list[AttackSpec], benign: list[BenignCase],
          seeds: int, reps: int, log: Callable[[str], None], store: Store,
          workers: int | None = None) -> list[Row]:
    """Every setting's attack cells as one campaign (tvmm.campaign: stored as each
    finishes, so a rerun resumes; ``workers`` local processes), then its benign timings
    here, one setting after another (timing wants the machine to itself as far as it can)."""
    cells = {(s.label, key): grid([cls.name], [guest], [Level.SHIM.value],
                                  [policy_key(s.config)], range(seeds))
             for s in settings for key, cls, guest in attacks}
    run_campaign([k for keys in cells.values() for k in keys], store, workers=workers,
                 progress=lambda done, total, label: log(f"[{done}/{total}] {label}"))
    rows = []
    for setting in settings:
        row = Row(setting)
        for key, _cls, _guest in attacks:
            runs = verdicts(store, cells[(setting.label, key)])
            bits = [v.leaked_bits for _, v in runs]
            row.leaks[key] = statistics.mean(bits)
            row.ranges[key] = (min(bits), max(bits))
            row.detected[key] = statistics.mean(1.0 if v.detected else 0.0 for _, v in runs)
            row.blocked[key] = statistics.mean(1.0 if v.blocked else 0.0 for _, v in runs)
        row.benign = [benign_compare(case, setting.config, reps) for case in benign]
        rows.append(row)
        log(f"{setting.label:34} " + "  ".join(
            f"{k}={row.leaks[k]:5.1f}b det={row.detected[k]:.0%}" for k in row.leaks)
            + "  " + "  ".join(f"[{b.name}: x{b.ratio:.2f}{' FP ' + b.why if b.false_positive else ''}]"
                               for b in row.benign))
    return rows


# -- the measured rows as data (docs/tradeoff.json): the doc is regenerated from them ------
def row_to_dict(row: Row) -> dict:
    s = row.setting
    return {"label": s.label, "knob": s.knob, "value": s.value, "policy": policy_key(s.config),
            "leaks": row.leaks, "ranges": {k: list(v) for k, v in row.ranges.items()},
            "detected": row.detected, "blocked": row.blocked,
            "benign": [asdict(b) for b in row.benign]}


def row_from_dict(d: dict) -> Row:
    return Row(Setting(d["label"], d["knob"], d["value"], policy_from_key(d["policy"])),
               leaks=d["leaks"], ranges={k: tuple(v) for k, v in d["ranges"].items()},
               detected=d["detected"], blocked=d["blocked"],
               benign=[Benign(**b) for b in d["benign"]])


# -- the cost of issue 15's defences (docs/tradeoff.md, "Cost of each new defence") -------
TICK_CASE = BenignCase("counter, tick 50", "counter", HonestHypervisor, 50)
DEFENCE_CONFIGS = (("none of them", NO_FAULT_POLICY),
                   ("data-fault budget (pinning off)", replace(PolicyConfig(),
                                                               pin_working_set=False)),
                   ("default (pinning)", PolicyConfig()))


def exit_round_trips(reps: int) -> dict[str, tuple[float, float, float, int]]:
    """For each of DEFENCE_CONFIGS: (µs of CPU time an exit, median over ``reps`` rounds
    that run every setting once, interleaved; exits) of the counter under an honest host
    whose timer fires every 50 instructions — hundreds of exits, every entry through the
    fault policy's checks."""
    runs: dict[str, list[tuple[float, bool, str, int]]] = {k: [] for k, _ in DEFENCE_CONFIGS}
    for _ in range(reps):
        for label, config in DEFENCE_CONFIGS:
            runs[label].append(benign_run(TICK_CASE, config))
    out = {}
    for label, rs in runs.items():
        per = [r[0] / max(1, r[3]) * 1e6 for r in rs]
        out[label] = (statistics.median(per), min(per), max(per), rs[0][3])
    return out


def read_page_cost(hidden: bool, reps: int) -> float:
    """µs a host's READ_PAGE of a private page takes at shim with ciphertext hiding on or
    (switched off in the TEE's memory, for this measurement only) off."""
    image, sample = resolve("modexp")
    machine = make_machine(seed=0, image=image, level=Level.SHIM)
    try:
        host = HonestHypervisor(machine.client, Devices(Console()))
        host.launch(image, Level.SHIM, DEFAULT_MEMORY, secret_blob=wrap_secret(
            machine, sample.make_secret(random.Random(0)) if sample else b"", image, Level.SHIM))
        machine.platform.tee.vms[host.vm].memory.hide_ciphertext = hidden
        page = DEFAULT_MEMORY - PAGE_SIZE  # the stack's page: private
        times = []
        for _ in range(reps):
            start = time.process_time()
            for _ in range(200):
                machine.client.read_page(host.vm, page)
            times.append((time.process_time() - start) / 200 * 1e6)
        return statistics.median(times)
    finally:
        machine.close()


def count_shortfall() -> tuple[float, int]:
    """(instructions an honest host's count falls short per timer exit, timer exits) at
    shim: the host counts the quanta it asked for (no count is shown), the TEE counts what
    ran, the quantum plus the step policy's jitter (kvstore, tick 10,000)."""
    image, sample = resolve("kvstore")
    machine = make_machine(seed=0, image=image, level=Level.SHIM)
    try:
        devices = Devices(Console(), BlockDevice(None), InputDevice([]))
        host = HonestHypervisor(machine.client, devices, quantum=COARSE_TICK)
        host.launch(image, Level.SHIM, DEFAULT_MEMORY, secret_blob=wrap_secret(
            machine, sample.make_secret(random.Random(0)) if sample else b"", image, Level.SHIM))
        result = host.run()
        timers = result.exits.get("timer", 0)
        retired = sum(ctx.retired for ctx in machine.platform.tee.vms[host.vm].vcpus)
        return (retired - result.retired) / max(1, timers), timers
    finally:
        machine.close()


def launches_refused(launches: int, window_s: int, restarts: int, tmp: Path) -> int:
    """Launch secrets the owner's ledger refuses an honest host that launches the VM once
    and restarts it ``restarts`` times, evenly, within one window (a crash loop, an
    operator's redeploys), under a budget of ``launches`` per ``window_s``."""
    from tvmm.owner.ledger import AuditRecord, LaunchBudget, LaunchLedger

    ledger = LaunchLedger(tmp / f"ledger-{launches}-{restarts}")
    budget = LaunchBudget(launches, window_s)
    step = window_s / (restarts + 1)
    return sum(bool(ledger.admit(budget, AuditRecord(1.0 + i * step, f"{i:032x}", "", "launch",
                                                     True)))
               for i in range(restarts + 1))


def defence_costs(reps: int) -> dict:
    """Each of issue 15's defences against what it costs an honest host."""
    import tempfile

    trips = exit_round_trips(reps)
    shortfall, timers = count_shortfall()
    with tempfile.TemporaryDirectory(prefix="tvmm-tradeoff-") as tmp:
        refused = {r: launches_refused(3, 3600, r, Path(tmp)) for r in range(1, 7)}
    return {"reps": reps, "exit_us": {k: [round(x, 2) for x in v[:3]] for k, v in trips.items()},
            "exits": trips["default (pinning)"][3],
            "read_page_us": {"hidden": round(read_page_cost(True, reps), 2),
                             "ciphertext": round(read_page_cost(False, reps), 2)},
            "count_shortfall": round(shortfall, 1), "timer_exits": timers,
            "refused": refused,
            "meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "load": round(os.getloadavg()[0], 1), "commit": git_commit()}}


def defences_section(d: dict) -> str:
    """The section of docs/tradeoff.md on the cost of issue 15's defences."""
    def us(label: str) -> str:
        median, lo, hi = d["exit_us"][label]
        return f"{median:.1f} µs an exit ({lo:.0f}–{hi:.0f})"

    refused = ", ".join(f"{int(r)} restart{'s' if int(r) > 1 else ''}: {n}"
                        for r, n in d["refused"].items())
    m = d["meta"]
    return f"""## Cost of each new defence (issue 15)

Measured by `python -m tvmm_tools.tradeoff --defences --reps {d["reps"]}` on {m["date"]} (load
average {m["load"]}, commit {m["commit"] or "?"}); CPU time, median of {d["reps"]} runs.

| defence | exit round trip | compute | launches refused |
|---|---|---|---|
| no count at a timer exit | nothing to do: a field left out of the record | none; the honest host counts the quanta it asked for, {d["count_shortfall"]} instructions a timer exit short of what ran (the jitter, 0..32; kvstore, tick {COARSE_TICK}, {d["timer_exits"]} timer exits) | none |
| data-fault budget (pinning off) | {us("data-fault budget (pinning off)")}, against {us("none of them")} with no fault policy | time × of the fault table's "data_fault_budget on, pinning off" row | a host that demand-pages is killed at its first data fault (the fault table's last column) |
| pinning (default) | {us("default (pinning)")}, against {us("none of them")} (two scans of a byte a page at each entry) | time × of the fault table's "default (pinning)" row | a host that demand-pages: its first entry is refused |
| ciphertext hiding | READ_PAGE of a private page {d["read_page_us"]["hidden"]:.1f} µs hidden, {d["read_page_us"]["ciphertext"]:.1f} µs as ciphertext | none: no honest host reads a private page (a migration's pages leave sealed, by the TEE) | none |
| launch budget (owner: 3 per 3600 s) | none | none | an honest host that launches once and restarts the VM evenly within the hour — {refused} |

Exit round trip: the counter under an honest host whose timer fires every 50 instructions
({d["exits"]} exits), CPU time of launch and run divided by its exits (so it includes the
guest's own 50 instructions an exit), the settings interleaved: median (min–max) of the
runs.  The differences between the rows are the defences' cost an exit; where they are
smaller than the spread of the runs they are noise on a shared machine.  Launches refused: the owner's ledger
(tvmm.owner.ledger) deciding each launch of the pattern; a refused launch gets no secret
(the guest runs without it, or the operator waits for the window to move).
"""


# -- output ------------------------------------------------------------------------------------
def markdown_table(rows: list[Row], attacks: list[AttackSpec]) -> str:
    keys = [k for k, _, _ in attacks]
    benign = [b.name for b in rows[0].benign]
    head = (["setting"] + [f"{k} leaked (b) / detected" for k in keys]
            + [f"{b}: time × / false positive (exits)" for b in benign])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.setting.label]
        cells += [_bits(row, k) + f" / {_pct(row.detected[k])}"
                  + (f" (blocked {_pct(row.blocked[k])})" if row.blocked[k] else "")
                  for k in keys]
        cells += [f"{b.ratio:.2f} / " + (f"**yes** ({b.why})" if b.false_positive else "no")
                  + f" ({b.exits} exits)" for b in row.benign]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bits(row: Row, key: str) -> str:
    """Mean bits, and the range over the seeds when they differ: a mean never hides the
    seed that leaked."""
    lo, hi = row.ranges[key]
    mean = f"{row.leaks[key]:.1f}"
    return mean if f"{lo:.0f}" == f"{hi:.0f}" else f"{mean} ({lo:.0f}–{hi:.0f})"


def _pct(x: float) -> str:
    return "yes" if x == 1 else ("no" if x == 0 else f"{x:.0%}")


def svg_chart(panels: list[tuple[str, str, list[Row], list[str]]]) -> str:
    """Side-by-side line charts: leaked bits against one knob's threshold (log2 x axis).
    A filled dot means the shim detected the attack; an orange "FP" in the strip above a
    threshold means a benign run was flagged there."""
    pw, ph, ml, mr, mt, mb = 440, 330, 56, 20, 52, 96
    width = len(panels) * pw
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{ph}" '
           f'viewBox="0 0 {width} {ph}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{ph}" fill="white"/>']
    for p, (title, knob, rows, keys) in enumerate(panels):
        pts = [r for r in rows if r.setting.knob == knob and r.setting.value]
        if not pts:
            continue
        x0 = p * pw + ml
        w, h = pw - ml - mr, ph - mt - mb
        xs = [math.log2(r.setting.value) for r in pts]
        lo, hi = min(xs), max(xs)
        ymax = max(max(r.leaks[k] for r in rows for k in keys), 1.0)
        ytop = 16 * math.ceil(ymax / 16)

        def X(v: float, lo=lo, hi=hi, x0=x0, w=w) -> float:
            return x0 + (v - lo) / ((hi - lo) or 1) * w

        def Y(v: float, ytop=ytop, h=h) -> float:
            return mt + h - v / ytop * h

        out.append(f'<text x="{x0 + w / 2}" y="16" text-anchor="middle" font-size="13" '
                   f'font-weight="bold">{escape(title)}</text>')
        out.append(f'<text x="{x0 - 14}" y="{mt - 12}" text-anchor="end" fill="#ff7f0e">'
                   'benign</text>')
        for i in range(5):
            v = ytop * i / 4
            out.append(f'<line x1="{x0}" y1="{Y(v):.1f}" x2="{x0 + w}" y2="{Y(v):.1f}" '
                       f'stroke="#ddd"/><text x="{x0 - 4}" y="{Y(v) + 4:.1f}" '
                       f'text-anchor="end">{v:g}</text>')
        out.append(f'<line x1="{x0}" y1="{mt + h}" x2="{x0 + w}" y2="{mt + h}" stroke="black"/>')
        out.append(f'<line x1="{x0}" y1="{mt}" x2="{x0}" y2="{mt + h}" stroke="black"/>')
        for r, xv in zip(pts, xs, strict=True):
            out.append(f'<text x="{X(xv):.1f}" y="{mt + h + 14}" text-anchor="middle">'
                       f'{r.setting.value:g}</text>')
            flagged = [b.name for b in r.benign if b.false_positive]
            mark = "FP" if flagged else "ok"
            colour = "#ff7f0e" if flagged else "#999"
            out.append(f'<text x="{X(xv):.1f}" y="{mt - 12}" text-anchor="middle" '
                       f'fill="{colour}" font-weight="bold">{mark}<title>'
                       f'{escape(", ".join(flagged) or "no benign run flagged")}</title></text>')
        out.append(f'<text x="{x0 + w / 2}" y="{mt + h + 30}" text-anchor="middle">'
                   f'{escape(knob)} (log scale)</text>')
        out.append(f'<text x="{x0 - 38}" y="{mt + h / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 {x0 - 38} {mt + h / 2})">leaked bits (mean)</text>')
        for k, key in enumerate(keys):
            colour = colours[k % len(colours)]
            path = " ".join(f"{X(xv):.1f},{Y(r.leaks[key]):.1f}"
                            for r, xv in zip(pts, xs, strict=True))
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       f'stroke-width="2"/>')
            for r, xv in zip(pts, xs, strict=True):
                fill = colour if r.detected[key] >= 0.5 else "white"
                out.append(f'<circle cx="{X(xv):.1f}" cy="{Y(r.leaks[key]):.1f}" r="4" '
                           f'stroke="{colour}" stroke-width="2" fill="{fill}">'
                           f'<title>{escape(key)} at {r.setting.value:g}: '
                           f'{r.leaks[key]:.1f} b, detected {_pct(r.detected[key])}</title>'
                           f'</circle>')
            ly = mt + h + 50 + 14 * k
            out.append(f'<line x1="{x0}" y1="{ly - 4}" x2="{x0 + 18}" y2="{ly - 4}" '
                       f'stroke="{colour}" stroke-width="2"/><text x="{x0 + 24}" y="{ly}">'
                       f'{escape(key)}</text>')
        out.append(f'<text x="{x0}" y="{mt + h + 50 + 14 * len(keys)}" fill="#555">'
                   'filled dot: detected · FP: a benign run flagged at that threshold</text>')
    out.append("</svg>")
    return "\n".join(out)


def document(data: dict) -> str:
    """docs/tradeoff.md from the measured data (``measure``; docs/tradeoff.json)."""
    step_rows = [row_from_dict(r) for r in data["step"]]
    fault_rows = [row_from_dict(r) for r in data["fault"]]
    seeds, reps, region, m = data["seeds"], data["reps"], data["region"], data["meta"]
    def pf_leak(config: PolicyConfig) -> float:
        """page-fault on modexp with the fault table's row of that policy."""
        return next(r.leaks["page-fault/modexp"] for r in fault_rows
                    if r.setting.config == config)

    unpinned = replace(PolicyConfig(), pin_working_set=False, data_fault_budget=OFF)
    pf_unpinned, pf_no_rip = pf_leak(unpinned), pf_leak(replace(unpinned, fault_same_rip=OFF))
    pf_data = pf_leak(replace(PolicyConfig(), pin_working_set=False))
    pf_default = pf_leak(PolicyConfig())
    return f"""# Policy trade-off: leakage against cost

Generated by `python -m tvmm_tools.tradeoff --seeds {seeds} --reps {reps}` on {m["date"]} in
{m["wall_s"]:.0f} s ({m["cores"]} cores, load average {m["load"]} when it ended; code
version {m["code"]}, commit {m["commit"] or "?"}); the measured rows are in
[tradeoff.json](tradeoff.json), from which this page is regenerated.  Every number comes
from running the attacks as a campaign (tvmm.campaign, the judge's scored path, level
`shim`, seeds 0..{seeds - 1}: mean leaked bits, with the range over the seeds where they
differ) and honest benign runs with the same policy.  "time ×" is the median
CPU time of the benign run with the setting divided by the median with the default
policy, measured interleaved in the same process ({reps} repetitions each); "false positive"
means the policy fired on a benign run (a recorded violation, a kill or a refused entry).

![trade-off](img/tradeoff.svg)

{_model_note()}

## Step policy

Attacks: `single-step` on `password` (instruction counting of the early-exit compare) and
on `modexp` (single steps between page-level events).  The fault policy is relaxed in this
sweep (`fault_budget`, `fault_same_rip` out of reach) so that only the step policy acts.
Benign: modexp under a host whose timer fires every {FINE_TICK} instructions (an interrupt
storm) and kvstore under a host with a {COARSE_TICK}-instruction tick.  A host that arms no
timer (the honest default) never meets the step policy at all.

{markdown_table(step_rows, STEP_ATTACKS)}

## Fault policy

Attacks: `page-fault` on `modexp` and on the constant-time control `modexp-ct`.  The step
policy is at its default.  The budgets and the TDX rule are swept with pinning and the
data-fault budget off (with pinning on, the attack's first entry with a page unmapped is
refused, and with the data-fault budget on, its first fault on a data page ends the VM,
whatever they are); the last two rows add the data-fault budget, then pinning.  Benign:
modexp and kvstore under the honest host, which maps all memory at launch ("time ×" here
divides by the same run with no fault policy at all: the cost of each defence on the exit
path), and modexp under a demand-paging host (nothing mapped up front; each page mapped on
its first fault), which the data-fault budget and pinning rule out by design.

{markdown_table(fault_rows, FAULT_ATTACKS)}

## Reading the numbers

- Leaked bits are the judge's key rank, `n − log2(rank of the true secret)` (docs/attacks.md,
  "What the judge scores"), averaged over the seeds, each against a secret drawn from the
  OS.  Bits an attack did not read count as unknown, not as guessed; a blind guess that
  claims every bit scores about 1 b on average.
- "Detected" means the shim recorded a violation the owner can read (a refused entry is
  one); it does not mean the attack was stopped.  With pinning and the data-fault budget
  off, two rules bound the page-fault attack: the TDX rule (more than `fault_same_rip`
  faults at one RIP refuse entry until the listed pages are mapped; it trips on the
  attack's returns into `main`) and the fault budget, which kills the VM.  At their
  defaults ({PolicyConfig().fault_same_rip} at one RIP, {PolicyConfig().fault_budget} in all) the judge scores what it read of the top bits before
  the kill at {pf_unpinned:.0f} b (mean); without the TDX rule, {pf_no_rip:.0f} b.  The
  data-fault budget (on by default) ends the VM at the attack's first fault on a data page:
  {pf_data:.0f} b with it and pinning off (an attacker who has read docs/policies.md leaves
  data pages mapped: the `fault-budget` attack, docs/policies.md's residuals).  Pinning (the default: entry refused
  while any private page is unmapped) leaves it {pf_default:.0f} b: its first entry with a
  page unmapped is refused, so no fault is ever taken.  Its cost is demand paging: a host
  that maps memory lazily is refused (the demand-paging column), as on SEV-SNP and TDX
  hosts, which pin a confidential guest's private memory anyway.
- Extending and counting act only on entries *shorter* than `min_progress`.  Without the
  jitter of longer quanta (row "no jitter of longer quanta"), an attacker that counts
  instructions with quanta of at least `min_progress` is neither stretched nor counted,
  and docs/policies.md tells it which quanta are honoured (min_progress; a timer exit at
  shim shows no count): the password's compare region (input completion to the `denied`
  write, {region} instructions at `shim` without jitter) then falls to threshold tests,
  whole and undetected.  With every timed quantum
  jittered by 0..`extend_max`, the threshold tests no longer count exactly and the attack
  recovers nothing, at no measurable cost.  Single-stepping modexp, whose events are only
  6 or 14 instructions apart, is caught by the short-entry count at every `min_progress`.
- The step sweep's default row compares the default policy with itself: its time ratios
  show the measurement noise (the machine was shared; see the load above).  Outside the
  false positives no setting costs a benign guest more than that noise: in this model an
  extended quantum is just a longer run, and detection is a counter; pinning adds two
  scans of a byte a page at each entry (1,024 pages here), which the kvstore run with a
  tick (717 exits) does not lift above the noise either.  (On hardware the TDX module
  single-steps the extension itself, which does cost time; the model does not charge for
  it.)
""" + ("\n" + defences_section(data["defences"]) if "defences" in data else "")


def _model_note() -> str:
    if model_rearms_faults():
        return ("Model check: a code page the host unmaps after the guest ran it faults "
                "again on the next call (`model_rearms_faults()`): the page-fault channel "
                "re-arms, as on hardware.")
    return ("**Model check failed**: a code page the host unmaps after the guest ran it does "
            "*not* fault again on the next direct call — Unicorn keeps running the blocks it "
            "translated (chained across the call) because UNMAP only changes the page's "
            "protection.  The page-fault channel cannot re-arm, so the page-fault rows and "
            "single-step on modexp below show the model's bug, not the policy.  Fix: drop the "
            "page's translated code when it is unmapped (`Vcpu.set_mapped` calling "
            "`ctl_remove_cache` for the range).")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("docs/tradeoff.md"))
    ap.add_argument("--svg", type=Path, default=Path("docs/img/tradeoff.svg"))
    ap.add_argument("--store", type=Path, default=Path("tradeoff.sqlite"),
                    help="the campaign store of the attack cells (a rerun resumes)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--defences", action="store_true",
                    help="measure only the cost of issue 15's defences and add it to the "
                         "page's data (its JSON beside --out), then regenerate the page")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    if args.defences:
        data = json.loads(args.out.with_suffix(".json").read_text())
        data["defences"] = defence_costs(args.reps)
        args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
        args.out.write_text(document(data))
        print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
        return 0
    with Store(args.store) as store:
        step_rows = sweep(step_settings(), STEP_ATTACKS, STEP_BENIGN, args.seeds, args.reps,
                          print, store, args.workers)
        fault_rows = sweep(fault_settings(), FAULT_ATTACKS, FAULT_BENIGN, args.seeds,
                           args.reps, print, store, args.workers)
    probe = run_attack(SingleStep.name, SingleStep.kind, "password", Level.SHIM, seed=0,
                       policy_config=PolicyConfig(jitter=False))
    region = (probe.notes.get("length_counts") or ["?"])[0]
    wall = time.perf_counter() - start
    data = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "wall_s": round(wall), "cores": os.cpu_count() or 1,
                     "load": round(os.getloadavg()[0], 1), "code": code_version(),
                     "commit": git_commit()},
            "seeds": args.seeds, "reps": args.reps, "region": region,
            "step": [row_to_dict(r) for r in step_rows],
            "fault": [row_to_dict(r) for r in fault_rows],
            "defences": defence_costs(args.reps)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.svg.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    args.out.write_text(document(data))
    args.svg.write_text(svg_chart([
        ("Step policy: min_progress", "min_progress", step_rows,
         [k for k, _, _ in STEP_ATTACKS]),
        ("Fault policy: fault_budget", "fault_budget", fault_rows,
         [k for k, _, _ in FAULT_ATTACKS])]))
    print(f"wrote {args.out} and {args.svg} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
