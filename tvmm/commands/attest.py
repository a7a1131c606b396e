"""tvmm measure / attest / verify: predict a launch digest, collect evidence, check it.

    tvmm measure modexp --pages          the digest FINALIZE will return, and every page hashed
    tvmm attest modexp --out evidence/   boot with key release; write the report and chain
    tvmm verify evidence/report.bin --chain evidence/ --measurement HEX --nonce HEX
    tvmm verify --chain tests/vectors/snp-milan --measurement HEX   (real AMD evidence)

verify trusts a chain only if its root is pinned (tvmm.owner.roots): AMD's Milan or Genoa
ARK, the modeled manufacturer's in the state directory, or the one certificate --ark names.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from rich.table import Table

from shim.launch import predict
from tvmm.abi.guest import NONCE_SIZE
from tvmm.abi.key_release import KeyReleaseFormatError, report_data_for
from tvmm.abi.report import AttestationReport
from tvmm.abi.types import DEFAULT_POLICY, POLICY_DEBUG, Level
from tvmm.commands.output import console, emit_json, fail
from tvmm.commands.program import add_program_options, build_program
from tvmm.guestbuild import GuestBuildError
from tvmm.guestimage import GuestImageError
from tvmm.harness.boot import boot
from tvmm.harness.launcher import HarnessError
from tvmm.hw.measurement import MEASUREMENT_VERSION, PageType
from tvmm.launch_plan import plan_launch
from tvmm.machine import DEFAULT_MEMORY, chip_chain, owner_endpoint
from tvmm.owner.broker import PolicyError, load_policy
from tvmm.owner.ledger import LaunchBudget, LaunchLedger
from tvmm.owner.roots import (
    BUILT_IN,
    MODELED,
    built_in,
    fingerprint,
    modeled,
    pinned_root,
    pinned_roots,
)
from tvmm.owner.verify import (
    Expectations,
    VerificationError,
    VerifyFailure,
    load_certificate,
    load_chain_dir,
    load_report,
    verify_evidence,
)
from tvmm.samples import resolve
from tvmm.transparency import bundle
from tvmm.transparency.errors import TransparencyError
from tvmm.transparency.statements import parse_statement

GUEST_KEY_FILE = "guest_key.bin"
REPORT_FILE = "report.bin"
EVIDENCE_FILE = "evidence.json"


def add(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("measure", help="predict a guest's launch digest without booting it")
    m.add_argument("guest", nargs="?", help="sample name, .c file or ELF")
    add_program_options(m)
    m.add_argument("--memory", type=lambda s: int(s, 0), default=None,
                   help="guest memory in bytes (the initial RSP is measured; default 4 MiB, "
                   "with --program what tvmm run gives it)")
    m.add_argument("--level", choices=[lv.value for lv in Level], default="snp",
                   help="the level the guest will run at (measured: SEV_FEATURES and the level "
                   "word in the VMSA); only snp and shim have signed reports, below them the "
                   "digest is what a launch secret is bound to")
    m.add_argument("--pages", action="store_true", help="list every page hashed, in order")
    m.add_argument("--policy-out", type=Path, metavar="TOML",
                   help="write a key-release policy for this measurement")
    m.add_argument("--launches", type=int, metavar="N",
                   help="with --policy-out: release the secret to at most N launches ...")
    m.add_argument("--window", type=int, default=3600, metavar="SECONDS",
                   help="... in any window of this many seconds (default 3600)")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(run=run_measure)

    a = sub.add_parser("attest", help="boot a guest with attested key release; save the "
                       "report, the guest key and the certificate chain")
    a.add_argument("guest")
    a.add_argument("--out", type=Path, required=True, help="evidence directory")
    a.add_argument("--level", choices=[lv.value for lv in Level], default="snp")
    a.add_argument("--seed", type=int, default=0,
                   help="seed for the public choices (the sample's secret); keys come from the OS")
    a.add_argument("--memory", type=lambda s: int(s, 0), default=DEFAULT_MEMORY)
    a.add_argument("--nonce", type=_hex_arg(NONCE_SIZE), help="the broker's challenge "
                   "(64 hex digits; default: a fresh one)")
    a.add_argument("--input", action="append", default=[], metavar="LINE")
    a.add_argument("--debug-policy", action="store_true",
                   help="launch with the debug policy bit (the broker will refuse)")
    a.add_argument("--release-policy", type=Path, metavar="TOML",
                   help="the broker's release policy (default: the measurement predicted at --level)")
    a.add_argument("--state-dir", type=Path, help="chip keys (default: $TVMM_STATE_DIR)")
    a.add_argument("--ledger", type=Path, metavar="FILE",
                   help="the owner's launch ledger: releases counted against the release "
                   "policy's launch budget and audited (needed when the policy sets launches)")
    a.add_argument("--present", nargs=2, type=Path, metavar=("STATEMENT", "RECEIPT"),
                   help="as the host, present the build's transparency statement and "
                        "receipt with the evidence (for a [transparency] release policy)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(run=run_attest)

    v = sub.add_parser("verify", help="verify an SEV-SNP report against its chain and "
                       "your expectations")
    v.add_argument("report", nargs="?", type=Path,
                   help="report (raw, or .hex); default: report.bin or the one *.hex in --chain")
    v.add_argument("--chain", type=Path, required=True,
                   help="directory with ark.pem, ask.pem and vcek.pem / vcek*.der")
    v.add_argument("--ark", metavar="NAME|FILE",
                   help=f"the one root to trust: {', '.join(BUILT_IN)}, {MODELED} (the modeled "
                   "manufacturer in the state directory) or a certificate file (default: any "
                   "of these three)")
    v.add_argument("--state-dir", type=Path,
                   help="where the modeled manufacturer's ARK is (default: $TVMM_STATE_DIR)")
    v.add_argument("--measurement", type=_hex_arg(48), help="expected launch digest (96 hex)")
    v.add_argument("--nonce", type=_hex_arg(NONCE_SIZE),
                   help="the nonce bound in report_data with the guest key")
    v.add_argument("--guest-key", type=Path,
                   help=f"the guest's public key (default: {GUEST_KEY_FILE} beside the report)")
    v.add_argument("--report-data", type=_hex_arg(64, exact=False),
                   help="expected report_data (up to 128 hex digits, zero-padded)")
    v.add_argument("--policy", type=Path, metavar="TOML",
                   help="a key-release policy: measurement, debug, TCB minimum, ...")
    v.add_argument("--allow-debug", action="store_true")
    v.add_argument("--json", action="store_true")
    v.set_defaults(run=run_verify)


def _hex_arg(size: int, *, exact: bool = True):
    def parse(text: str) -> bytes:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise argparse.ArgumentTypeError("not hexadecimal") from None
        if len(raw) != size if exact else len(raw) > size:
            want = f"{2 * size}" if exact else f"at most {2 * size}"
            raise argparse.ArgumentTypeError(f"{want} hex digits expected, got {len(text)}")
        return raw.ljust(size, b"\0")

    return parse


# -- measure ------------------------------------------------------------------------------
def run_measure(args: argparse.Namespace) -> int:
    if (args.guest is None) == (args.program is None):
        return fail("measure a guest or a --program, one of them")
    try:
        if args.program is not None:
            linux, image = build_program(args)
            args.memory = args.memory or linux.memory
        else:
            image, _sample = resolve(args.guest)
            args.memory = args.memory or DEFAULT_MEMORY
    except (GuestBuildError, GuestImageError, KeyError, OSError, HarnessError,
            ValueError) as exc:
        return fail(str(exc).strip("'\""))
    level = Level(args.level)
    chain = predict(plan_launch(image, args.memory), level)
    digest = chain.digest.hex()
    pages = [  # only when asked: a dict per page costs more than hashing the page
        {"index": i, "gpa": page.gpa, "type": page.page_type.name,
         "contents_sha384": page.contents_digest.hex(), "digest_after": page.digest_after.hex()}
        for i, page in enumerate(chain.pages)
    ] if args.pages else []
    if args.policy_out:
        budget = ""
        if args.launches is not None:
            try:
                LaunchBudget(args.launches, args.window)
            except ValueError as exc:
                return fail(str(exc))
            budget = f"launches = {args.launches}\nwindow_s = {args.window}\n"
        args.policy_out.write_text(
            f'# key-release policy for {image.name} ({image.sha256[:16]}…) launched at '
            f'{level.value}, memory {args.memory:#x}\nversion = 1\nmeasurement = "{digest}"\n'
            + budget)
    if args.json:
        emit_json({"guest": image.name, "elf_sha256": image.sha256, "level": level.value,
                   "memory": args.memory,
                   "measurement_version": MEASUREMENT_VERSION, "measurement": digest,
                   "page_count": len(chain), **({"pages": pages} if args.pages else {})})
        return 0
    console.print(f"[bold]{image.name}[/] launch digest at {level.value} (SEV-SNP PAGE_INFO "
                  f"chain, {len(chain)} pages, memory {args.memory:#x}):")
    console.print(digest, soft_wrap=True)
    if args.pages:
        table = Table(show_header=True, box=None)
        for column in ("#", "gpa", "type", "contents SHA-384", "digest after"):
            table.add_column(column)
        for page in pages:
            zero = page["type"] not in (PageType.NORMAL.name, PageType.VMSA.name)
            table.add_row(str(page["index"]), f"{page['gpa']:#x}", page["type"],
                          "zeros (not measured)" if zero else page["contents_sha384"][:24] + "…",
                          page["digest_after"][:24] + "…")
        console.print(table)
    if args.policy_out:
        console.print(f"release policy: {args.policy_out}")
    return 0


# -- attest -------------------------------------------------------------------------------
def run_attest(args: argparse.Namespace) -> int:
    try:
        image, sample = resolve(args.guest)
        release_policy = load_policy(args.release_policy) if args.release_policy else None
        presented = (bundle.pack(args.present[0].read_bytes(), args.present[1].read_bytes())
                     if args.present else None)
    except (GuestBuildError, GuestImageError, KeyError, OSError, PolicyError) as exc:
        return fail(str(exc).strip("'\""))
    level = Level(args.level)
    # The owner's end of the host's link, kept here to read what the host relayed.
    secret = sample.make_secret(random.Random(args.seed)) if sample else b""
    try:
        owner = owner_endpoint(image, secret, memory=args.memory,
                               policy=release_policy, nonce=args.nonce,
                               state_dir=args.state_dir, level=level,
                               ledger=LaunchLedger(args.ledger) if args.ledger else None)
    except PolicyError as exc:
        return fail(f"{args.release_policy}: {exc} (--ledger FILE)")
    policy = DEFAULT_POLICY | (POLICY_DEBUG if args.debug_policy else 0)
    try:
        report = boot(args.guest, level, seed=args.seed, memory=args.memory, secret=secret,
                      input_lines=args.input, owner=owner, state_dir=args.state_dir,
                      guest_policy=policy, secret_path="attested", receipt=presented)
    except (GuestBuildError, GuestImageError, KeyError, OSError, HarnessError) as exc:
        return fail(str(exc).strip("'\""))
    if not owner.releases:
        return fail(f"{image.name} never asked its owner for a secret, so there is no report "
                    "(only guests that read the secrets page, or call attest(), make one)")
    attempt = owner.releases[-1]
    expected = (owner.policy.measurement.hex() if owner.policy.measurement
                else _registered_digest(args.present))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_FILE).write_bytes(attempt.report)
    (out / GUEST_KEY_FILE).write_bytes(attempt.guest_key)
    chain = chip_chain(args.state_dir)
    for name, cert in (("ark.pem", chain.ark), ("ask.pem", chain.ask), ("vcek.pem", chain.vcek)):
        (out / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    summary = {
        "guest": image.name, "level": level.value, "measurement": report.launch_digest,
        "expected_measurement": expected or "any build registered under the policy",
        "nonce": attempt.nonce.hex(),
        "guest_key": attempt.guest_key.hex(),
        "report_data": report_data_for(attempt.nonce, attempt.guest_key).hex(),
        "released": attempt.released,
        "refusal": attempt.reason.value if attempt.reason else None,
        "refusal_detail": attempt.detail or None,
        "guest_status": report.status,
        "budget": report.key_release["budget"] if report.key_release else None,
        "files": sorted({p.name for p in out.iterdir()} | {EVIDENCE_FILE}),
    }
    (out / EVIDENCE_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        emit_json({**summary, "out": str(out)})
    else:
        broker = ("released the secret" if attempt.released
                  else f"[bold red]refused[/]: {summary['refusal']}"
                  + (f" ({attempt.detail.removeprefix(summary['refusal'] + ': ')})"
                     if attempt.detail else ""))
        if attempt.reason == VerifyFailure.SIGNING_KEY and level not in (Level.SNP, Level.SHIM):
            broker += f" (no SEV-SNP guest at {level.value}: its report is unsigned)"
        for name, value in (
            ("guest", f"{image.name} at {level.value}, {report.how} status {report.status}"),
            ("launch digest", summary["measurement"]),
            ("nonce", summary["nonce"]),
            ("report_data", summary["report_data"] + "  = SHA-384(nonce ‖ guest key) ‖ 0¹⁶"),
            ("key broker", broker),
            ("launch budget", _budget_text(summary["budget"])),
            ("evidence", f"{out}/ " + ", ".join(summary["files"])),
        ):
            console.print(f"[bold]{name:>13}[/]  {value}", soft_wrap=True)
        # under a transparency policy the digest to check is the presented claim's (the
        # broker verified its receipt); nothing presented, nothing to name
        pin = f" --measurement {expected}" if expected else ""
        console.print(f"check it: tvmm verify {out / REPORT_FILE} --chain {out}{pin} "
                      f"--nonce {summary['nonce']}", soft_wrap=True)
    return 0 if attempt.released else 1


def _registered_digest(present: list[Path] | None) -> str | None:
    """The launch digest the presented statement claims (unverified here: the broker
    verified it, or refused), for the line that tells the user how to check the report."""
    if not present:
        return None
    try:
        return parse_statement(present[0].read_bytes()).claim.launch_digest.hex()
    except (OSError, TransparencyError):
        return None


def _budget_text(budget: dict | None) -> str:
    if not budget:
        return "-"
    if "error" in budget:
        return f"[bold red]ledger unusable[/]: {budget['error']}"
    if budget["launches"] is None:
        return f"none set ({budget['used']} released)"
    return (f"{budget['left']} of {budget['launches']} launches left in {budget['window_s']} s"
            + (f" (next at {budget['next_at']:.0f})" if budget["next_at"] else ""))


# -- verify -------------------------------------------------------------------------------
def run_verify(args: argparse.Namespace) -> int:
    if not args.chain.is_dir():
        why = "not a directory" if args.chain.exists() else "no such directory"
        return fail(f"--chain {args.chain}: {why}")
    try:
        chain = load_chain_dir(args.chain)
        report_path = args.report or _find_report(args.chain)
        report_bytes = load_report(report_path)
        roots = _roots(args.ark, args.state_dir)
        expectations = _expectations(args, report_path)
    except VerificationError as exc:
        return _refused(args, exc)
    except (OSError, ValueError, KeyError, PolicyError, KeyReleaseFormatError) as exc:
        return fail(str(exc).strip("'\""))
    try:
        root = pinned_root(chain.ark, roots)
        report = verify_evidence(report_bytes, roots[root], chain.ask, chain.vcek, expectations)
    except VerificationError as exc:
        return _refused(args, exc)
    checked = [f"chain ARK ({root}, pinned) → ASK → VCEK", "report signature (VCEK, low-s)",
               "VCEK TCB and chip id"]
    checked += [name for name in ("measurement", "report_data", "host_data")
                if getattr(expectations, name) is not None]
    checked += ["policy (debug, migration agent, SMT, ...)", "VMPL"]
    result = {"verified": True, "report": str(report_path), "ark": root,
              "ark_sha256": fingerprint(roots[root]), "checked": checked,
              "fields": _fields(report)}
    if args.json:
        emit_json(result)
        return 0
    console.print(f"[bold green]verified[/] {report_path}")
    lines = dict(result["fields"])
    lines["checked"] = "; ".join(checked)
    lines["ARK"] = f"{root}, SHA-256 {result['ark_sha256']}"
    if expectations.measurement is None:
        lines["note"] = "[yellow]measurement not checked: pass --measurement[/]"
    for name, value in lines.items():
        console.print(f"[bold]{name:>13}[/]  {value}", soft_wrap=True)
    return 0


def _roots(ark: str | None, state_dir: Path | None) -> dict[str, x509.Certificate]:
    """The roots this run trusts: all pinned ones, or the one --ark names."""
    if ark is None:
        return pinned_roots(state_dir)
    if ark in BUILT_IN:
        return {ark: built_in(ark)}
    if ark == MODELED:
        cert = modeled(state_dir)
        if cert is None:
            raise FileNotFoundError("--ark tvmm: the state directory has no modeled manufacturer")
        return {MODELED: cert}
    return {ark: load_certificate(Path(ark).read_bytes(), VerifyFailure.CHAIN_ARK)}


def _find_report(directory: Path) -> Path:
    if (directory / REPORT_FILE).is_file():
        return directory / REPORT_FILE
    found = sorted(directory.glob("*.hex"))
    if len(found) != 1:
        raise FileNotFoundError(f"name the report: {directory} has no {REPORT_FILE} and "
                                f"{len(found)} *.hex files")
    return found[0]


def _expectations(args: argparse.Namespace, report_path: Path) -> Expectations:
    report_data = args.report_data
    if args.nonce is not None:
        if report_data is not None:
            raise ValueError("give --nonce or --report-data, not both")
        key_path = args.guest_key or report_path.parent / GUEST_KEY_FILE
        if not key_path.is_file():
            raise FileNotFoundError(f"--nonce needs the guest's public key: no {key_path} "
                                    "(pass --guest-key)")
        report_data = report_data_for(args.nonce, key_path.read_bytes())
    if args.policy is not None:
        expected = load_policy(args.policy).expectations(report_data or bytes(64))
        expected = dataclasses.replace(expected, report_data=report_data)
        if args.measurement is not None:
            expected = dataclasses.replace(expected, measurement=args.measurement)
        return expected
    return Expectations(measurement=args.measurement, report_data=report_data,
                        allow_debug=args.allow_debug)


def _refused(args: argparse.Namespace, exc: VerificationError) -> int:
    if args.json:
        emit_json({"verified": False, "reason": exc.reason.value, "message": exc.detail})
    else:
        console.print(f"[bold red]refused[/] ({exc.reason.value}): {exc.detail}", soft_wrap=True)
    return 1


def _fields(report: AttestationReport) -> dict[str, object]:
    p = report.policy
    flags = [name for name, on in (("smt", p.smt), ("migrate_ma", p.migrate_ma),
                                   ("debug", p.debug), ("single_socket", p.single_socket)) if on]
    tcb = report.reported_tcb
    return {
        "version": report.version,
        "policy": f"{p.to_u64():#x} (abi {p.abi_major}.{p.abi_minor}"
                  + (f"; {', '.join(flags)}" if flags else "") + ")",
        "vmpl": report.vmpl,
        "measurement": report.measurement.hex(),
        "report_data": report.report_data.hex(),
        "host_data": report.host_data.hex(),
        "chip_id": report.chip_id.hex(),
        "reported_tcb": f"bl {tcb.boot_loader}, tee {tcb.tee}, snp {tcb.snp}, "
                        f"ucode {tcb.microcode}",
    }
