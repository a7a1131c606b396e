"""tvmm transparency: a ledger of what may run, receipts, and audits.

    tvmm transparency keygen issuer.pem                     an issuer's (or any) P-384 key
    tvmm transparency init LEDGER --issuer issuer.pem --feed tvmm/samples
    tvmm transparency claim hello --level snp --feed tvmm/samples --svn 3 \\
        --issuer-key issuer.pem -o hello.stmt               build, measure, sign
    tvmm transparency register hello.stmt --ledger LEDGER -o hello.receipt
    tvmm transparency verify hello.stmt hello.receipt --service-key LEDGER/service.pub.pem
    tvmm transparency policy --service-key LEDGER/service.pub.pem --issuer issuer.pub.pem \\
        --feed tvmm/samples --min-svn 3 -o release.toml     a broker policy by receipt
    tvmm transparency claim --program ./prog --args 'a b' --feed F --svn 3 \\
        --issuer-key issuer.pem -o prog.stmt                a Linux program (tvmm run)
    tvmm transparency audit --ledger LEDGER --state auditor.json [--light]

LEDGER is a directory (a ledger on this machine, its key in service.pem) or HOST:PORT, a
ledger process in the perimeter (``tvmm transparency serve``: measured, attested, its key
derived in its chip and its database sealed); ``ledger-key`` fetches that one's key and
checks the attestation that binds it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path

from shim.launch import predict
from tvmm import guestlinux
from tvmm.abi.state_dir import default_state_dir
from tvmm.abi.types import Level
from tvmm.commands.ledger_remote import is_remote, ledger_key, remote
from tvmm.commands.output import console, emit_json, fail, writable_file
from tvmm.commands.program import add_program_options, build_program, program_argv_files
from tvmm.guestbuild import GuestBuildError, build_inputs
from tvmm.guestimage import GuestImage, GuestImageError
from tvmm.guestlinux import LinuxImageError
from tvmm.launch_plan import plan_launch
from tvmm.machine import DEFAULT_MEMORY
from tvmm.samples import resolve, source_files
from tvmm.transparency import keys, merkle
from tvmm.transparency.claims import Claim
from tvmm.transparency.errors import TransparencyError
from tvmm.transparency.heads import verify_head
from tvmm.transparency.log import TransparencyLog
from tvmm.transparency.receipts import verify_receipt
from tvmm.transparency.service import LedgerService, toml_string
from tvmm.transparency.statements import parse_statement, sign_statement


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transparency", help="a ledger of registered guest builds: "
                                            "statements, receipts, audits")
    verbs = p.add_subparsers(dest="verb", required=True)
    k = verbs.add_parser("keygen", help="a new P-384 signing key (PEM) and its public half")
    k.add_argument("out", type=writable_file)
    k.set_defaults(run=run_keygen)
    i = verbs.add_parser("init", help="a new ledger in a directory")
    i.add_argument("ledger", type=Path)
    i.add_argument("--issuer", type=Path, action="append", required=True,
                   help="an issuer's key (PEM); repeat for several")
    i.add_argument("--feed", action="append", required=True, help="a feed they may publish on")
    i.set_defaults(run=run_init)
    c = verbs.add_parser("claim", help="build and measure a guest, sign a statement about it")
    c.add_argument("guest", nargs="?", help="sample name or .c file")
    add_program_options(c)
    c.add_argument("--level", choices=[Level.SNP.value, Level.SHIM.value], default="snp")
    c.add_argument("--memory", type=lambda s: int(s, 0),
                   help="guest memory (default 4 MiB; with --program what tvmm run gives it)")
    c.add_argument("--feed", required=True)
    c.add_argument("--svn", type=int, required=True)
    c.add_argument("--issuer-key", type=Path, required=True)
    c.add_argument("-o", "--out", type=writable_file, required=True)
    c.set_defaults(run=run_claim)
    r = verbs.add_parser("register", help="submit a statement; write its receipt")
    r.add_argument("statement", type=Path)
    r.add_argument("--ledger", required=True, help="a ledger directory or HOST:PORT")
    r.add_argument("-o", "--out", type=writable_file, required=True)
    r.add_argument("--state-dir", type=Path, help="(HOST:PORT) the perimeter's state dir")
    r.set_defaults(run=run_register)
    sv = verbs.add_parser("serve", help="run a ledger in the perimeter: an attested process "
                                        "whose key and state are sealed to its chip")
    sv.add_argument("--name", default="ledger")
    sv.add_argument("--port", type=int, default=0)
    sv.add_argument("--issuer", type=Path, action="append", default=[],
                    help="(first start) an issuer's public key it admits")
    sv.add_argument("--feed", action="append", default=[],
                    help="(first start) a feed those issuers may publish on")
    sv.add_argument("--state-dir", type=Path)
    sv.set_defaults(run=run_serve)
    lk = verbs.add_parser("ledger-key", help="fetch a perimeter ledger's key and check the "
                                             "attestation that binds it")
    lk.add_argument("--ledger", required=True, help="HOST:PORT")
    lk.add_argument("-o", "--out", type=writable_file, required=True)
    lk.add_argument("--state-dir", type=Path)
    lk.set_defaults(run=run_ledger_key)
    v = verbs.add_parser("verify", help="check a receipt offline with the service's key")
    v.add_argument("statement", type=Path)
    v.add_argument("receipt", type=Path)
    v.add_argument("--service-key", type=Path, required=True)
    v.add_argument("--json", action="store_true")
    v.set_defaults(run=run_verify)
    pol = verbs.add_parser("policy", help="write a key-release policy that accepts any "
                                          "registered build")
    pol.add_argument("--service-key", type=Path, required=True)
    pol.add_argument("--issuer", type=Path, required=True)
    pol.add_argument("--feed", required=True)
    pol.add_argument("--min-svn", type=int, default=0)
    pol.add_argument("-o", "--out", type=writable_file, required=True)
    pol.set_defaults(run=run_policy)
    a = verbs.add_parser("audit", help="check the log against every tree head seen before")
    a.add_argument("--ledger", required=True, help="a ledger directory or HOST:PORT")
    a.add_argument("--service-key", type=Path,
                   help="the service's public key (default: LEDGER/service.pub.pem, or for "
                        "HOST:PORT the attested key)")
    a.add_argument("--state-dir", type=Path, help="(HOST:PORT) the perimeter's state dir")
    a.add_argument("--state", type=writable_file,
                   help="the auditor's memory of heads (JSON)")
    a.add_argument("--light", action="store_true",
                   help="fetch no entries: check by RFC 9162 consistency proofs that the "
                        "newest signed head extends every head remembered in --state")
    a.add_argument("--json", action="store_true")
    a.set_defaults(run=run_audit)


def run_keygen(args: argparse.Namespace) -> int:
    if args.out.exists():
        return fail(f"{args.out}: exists; not overwriting a key")
    key = keys.new_key()
    public = args.out.with_suffix(".pub.pem")
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(keys.private_pem(key))
        public.write_bytes(keys.public_pem(key.public_key()))
    except OSError as exc:
        return fail(_os_error(exc))
    console.print(f"{args.out} (private), {public} (public); key id "
                  f"{keys.key_id(key.public_key()).hex()[:16]}…")
    return 0


def run_init(args: argparse.Namespace) -> int:
    try:
        service = LedgerService.create(args.ledger, [(p, args.feed) for p in args.issuer])
    except TransparencyError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(_os_error(exc))
    console.print(f"ledger {args.ledger}: service key {args.ledger / 'service.pub.pem'}, "
                  f"{len(service.issuers)} issuer(s) on {', '.join(args.feed)}")
    service.close()
    return 0


def run_claim(args: argparse.Namespace) -> int:
    if (args.guest is None) == (args.program is None):
        return fail("claim a guest or a --program, one of them")
    try:
        issuer = keys.load_private(args.issuer_key)
        level = Level(args.level)
        if args.program is not None:
            image, memory, sources_digest, build = _linux_build(args)
        else:
            image, _sample = resolve(args.guest)
            inputs = build_inputs(source_files(args.guest))
            memory = args.memory or DEFAULT_MEMORY
            sources_digest = inputs.sources_digest
            build = {"compiler": inputs.compiler, "flags": inputs.flags}
        digest = predict(plan_launch(image, memory), level).digest
        claim = Claim(digest, image.name, args.feed, args.svn, sources_digest, level.value,
                      {**build, "memory": hex(memory), "elf_sha256": image.sha256})
    except (GuestBuildError, GuestImageError, LinuxImageError, KeyError, OSError,
            TransparencyError) as exc:
        return fail(str(exc).strip("'\""))
    if (problem := _write(args.out, sign_statement(claim, issuer))) is not None:
        return fail(problem)
    console.print(f"{args.out}: {image.name} svn {args.svn} on {args.feed}, launch digest "
                  f"at {level.value} {digest.hex()[:32]}…", soft_wrap=True)
    return 0


def _linux_build(args: argparse.Namespace) -> tuple[GuestImage, int, bytes, dict[str, str]]:
    """A Linux program's image as tvmm run launches it (the personality with its root
    file system), its memory, and its build inputs: the personality's (compiler, flags,
    sources — the guest cache's key) and the root file system (program, files, argv),
    which is measured as part of the image."""
    linux, image = build_program(args)
    argv, files = program_argv_files(args)
    inputs = build_inputs(list(guestlinux.LIBOS_SOURCES))
    rootfs = guestlinux.pack_rootfs(args.program, argv, files)
    sources = hashlib.sha256(inputs.sources_digest + rootfs).digest()
    return image, args.memory or linux.memory, sources, {
        "compiler": inputs.compiler, "flags": inputs.flags, "personality": "linux",
        "program_sha256": hashlib.sha256(args.program.read_bytes()).hexdigest(),
        "args": shlex.join(argv)}


def run_register(args: argparse.Namespace) -> int:
    try:
        raw = args.statement.read_bytes()
        ledger = (remote(args.ledger, args.state_dir) if is_remote(args.ledger)
                  else LedgerService.open(args.ledger))
    except OSError as exc:
        return fail(_os_error(exc))
    except TransparencyError as exc:
        return fail(str(exc))
    try:
        index, receipt = ledger.register(raw)
    except TransparencyError as exc:
        return _refused(exc)
    finally:
        if isinstance(ledger, LedgerService):
            ledger.close()
    if (problem := _write(args.out, receipt)) is not None:
        return fail(f"registered as entry {index}, but the receipt was not written: "
                    f"{problem}")
    console.print(f"registered as entry {index}; receipt {args.out}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """The ledger's own process (never this one: a perimeter process loads only measured
    code); it prints one JSON line when it serves, and serves until Ctrl-C."""
    argv = [sys.executable, "-m", "tvmm.perimeter.service", "ledger", "--name", args.name,
            "--port", str(args.port), "--state-dir", str(args.state_dir or default_state_dir())]
    for path in args.issuer:
        argv += ["--issuer", str(path)]
    for feed in args.feed:
        argv += ["--feed", feed]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 1  # not reached


def run_ledger_key(args: argparse.Namespace) -> int:
    if not is_remote(args.ledger):
        return fail(f"{args.ledger}: give a perimeter ledger's HOST:PORT (a local ledger's "
                    "key is its service.pub.pem)")
    try:
        public = ledger_key(remote(args.ledger, args.state_dir), args.state_dir)
    except TransparencyError as exc:
        return _refused(exc)
    if (problem := _write(args.out, keys.public_pem(public))) is not None:
        return fail(problem)
    console.print(f"{args.out}: the key of the ledger at {args.ledger}, held by the "
                  f"perimeter's measured code (attested); key id "
                  f"{keys.key_id(public).hex()[:16]}…")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        statement, receipt = args.statement.read_bytes(), args.receipt.read_bytes()
        service = keys.load_public(args.service_key)
        proof = verify_receipt(statement, receipt, service)
        claim = parse_statement(statement).claim
    except OSError as exc:
        return fail(_os_error(exc))
    except TransparencyError as exc:
        return fail(f"refused: {exc}", 1)
    result = {"valid": True, "index": proof.index, "tree_size": proof.size,
              "name": claim.name, "feed": claim.feed, "svn": claim.svn, "level": claim.level,
              "launch_digest": claim.launch_digest.hex()}
    if args.json:
        emit_json(result)
    else:
        console.print(f"valid: {claim.name} svn {claim.svn} on {claim.feed} is entry "
                      f"{proof.index} of a tree of {proof.size}; launch digest "
                      f"{claim.launch_digest.hex()}", soft_wrap=True)
    return 0


def run_policy(args: argparse.Namespace) -> int:
    try:
        service = keys.load_public(args.service_key)
        issuer = keys.load_public(args.issuer)
    except TransparencyError as exc:
        return fail(str(exc))
    text = (f"# release to any build of issuer {keys.key_id(issuer).hex()[:16]}… on "
            f"{args.feed} with SVN >= {args.min_svn}, registered in the ledger whose key is "
            f"{keys.key_id(service).hex()[:16]}…\nversion = 1\n[transparency]\n"
            f"service_key = '''\n{keys.public_pem(service).decode()}'''\n"
            f"issuer_key = '''\n{keys.public_pem(issuer).decode()}'''\n"
            f"feed = {toml_string(args.feed)}\nmin_svn = {args.min_svn}\n")
    if (problem := _write(args.out, text.encode())) is not None:
        return fail(problem)
    console.print(f"release policy: {args.out}")
    return 0


def run_audit(args: argparse.Namespace) -> int:
    """Recompute every signed head's root from the entries, and check the heads the
    auditor saw before are still in this log (same size, same root): an operator who
    edits, drops or reorders entries, or forks the log, fails one of the two.

    A ledger directory needs only its log.db and the service's public key: anyone given a
    copy of the published log audits it without the ledger's private key."""
    if args.light:
        return _light_audit(args)
    try:
        seen = _load_state(args.state)
        if is_remote(args.ledger):
            far = remote(args.ledger, args.state_dir)
            service = (keys.load_public(args.service_key) if args.service_key
                       else ledger_key(far, args.state_dir))
            raw_heads, entries = [far.head()], far.entries()
        else:
            raw_heads, entries = read_published(Path(args.ledger))
            service = keys.load_public(args.service_key
                                       or Path(args.ledger) / "service.pub.pem")
    except OSError as exc:
        return fail(_os_error(exc))
    except TransparencyError as exc:
        return fail(str(exc))
    problems: list[str] = []
    heads: list = []
    try:
        heads = [verify_head(raw, service) for raw in raw_heads]
        problems = audit_log(heads, entries, seen)
    except TransparencyError as exc:
        problems.append(str(exc))
    if not problems and args.state is not None and heads:
        newest = heads[-1]
        seen[newest.size] = newest.root
        text = json.dumps({str(s): r.hex() for s, r in sorted(seen.items())}, indent=1)
        if (problem := _write(args.state, text.encode())) is not None:
            return fail(problem)
    if args.json:
        emit_json({"ledger": str(args.ledger), "entries": len(entries), "heads": len(heads),
                   "consistent": not problems, "problems": problems})
    elif problems:
        for line in problems:
            console.print(f"[bold red]inconsistent[/]: {line}", soft_wrap=True)
    else:
        console.print(f"consistent: {len(entries)} entries, {len(heads)} signed heads checked"
                      + (f", {len(seen)} heads remembered in {args.state}" if args.state else ""))
    return 1 if problems else 0


def _light_audit(args: argparse.Namespace) -> int:
    """A monitor's check: the newest head, and a consistency proof from each remembered
    head to it (about log2 n hashes each, no entries); then the newest head is remembered."""
    if args.state is None:
        return fail("--light checks the heads remembered in --state: give --state (a "
                    "full audit first fills it)")
    log = None
    newest = None
    problems: list[str] = []
    try:
        seen = _load_state(args.state)
        if is_remote(args.ledger):
            far = remote(args.ledger, args.state_dir)
            service = (keys.load_public(args.service_key) if args.service_key
                       else ledger_key(far, args.state_dir))
            newest_raw, prove = far.head(), far.consistency
        else:
            directory = Path(args.ledger)
            read_published(directory, entries=False)  # the same checks and messages
            service = keys.load_public(args.service_key or directory / "service.pub.pem")
            log = TransparencyLog(directory / "log.db")
            heads = log.heads()
            if not heads:
                raise TransparencyError("store", f"{directory}: the log has no signed head")
            newest_raw, prove = heads[-1], log.consistency
        try:
            newest = verify_head(newest_raw, service)
            problems = consistency_problems(newest, seen, prove)
        except TransparencyError as exc:
            problems.append(str(exc))
    except OSError as exc:
        return fail(_os_error(exc))
    except TransparencyError as exc:
        return fail(str(exc))
    finally:
        if log is not None:
            log.close()
    if not problems and newest is not None:
        seen[newest.size] = newest.root
        text = json.dumps({str(s): r.hex() for s, r in sorted(seen.items())}, indent=1)
        if (problem := _write(args.state, text.encode())) is not None:
            return fail(problem)
    if args.json:
        emit_json({"ledger": str(args.ledger), "newest": newest.size if newest else None,
                   "remembered": len(seen), "consistent": not problems,
                   "problems": problems})
    elif problems:
        for line in problems:
            console.print(f"[bold red]inconsistent[/]: {line}", soft_wrap=True)
    else:
        console.print(f"consistent: the newest head (size {newest.size}) extends every head "
                      f"remembered in {args.state} (consistency proofs, no entries fetched)",
                      soft_wrap=True)
    return 1 if problems else 0


def consistency_problems(newest, seen: dict[int, bytes], prove) -> list[str]:
    """What is wrong with ``newest`` (a verified head) against the heads seen before, by
    the ledger's consistency proofs (``prove(size1, size2)``); empty when it extends
    every one of them."""
    problems = []
    for size, root in sorted(seen.items()):
        if size == 0:
            continue  # every log extends the empty one
        if size > newest.size:
            problems.append(f"a head of size {size} seen before is beyond the newest head "
                            f"({newest.size}): the log was cut or rolled back")
            continue
        try:
            merkle.verify_consistency(size, newest.size, root, newest.root,
                                      prove(size, newest.size))
        except TransparencyError as exc:
            problems.append(f"the head of size {size} seen before: {exc}")
    return problems


def read_published(directory: Path, *, entries: bool = True
                   ) -> tuple[list[bytes], list[bytes]]:
    """The signed heads and the entries of a ledger directory's log (or a copy of it);
    with ``entries=False`` only the checks that it is one."""
    if not directory.is_dir():
        raise TransparencyError("store", f"{directory}: no such ledger directory")
    if not (directory / "log.db").is_file():
        raise TransparencyError("store", f"{directory}: no log.db here (a ledger directory "
                                         "or a copy of its log.db and service.pub.pem)")
    if not entries:
        return [], []
    log = TransparencyLog(directory / "log.db")
    try:
        return log.heads(), [log.entry(i) for i in range(log.size)]
    finally:
        log.close()


def audit_log(heads: list, entries: list[bytes], seen: dict[int, bytes]) -> list[str]:
    """What is wrong with ``entries`` given the verified ``heads`` it came with and the
    heads an auditor saw before (size → root); empty when consistent."""
    problems = []
    roots = merkle.prefix_roots(entries, [h.size for h in heads] + list(seen))
    for h in heads:
        if h.size > len(entries):
            problems.append(f"head of size {h.size}: the log has only {len(entries)} "
                            "entries (truncated)")
        elif roots[h.size] != h.root:
            problems.append(f"head of size {h.size}: its root is not the entries' root "
                            "(entries were changed)")
    for size, root in sorted(seen.items()):
        if size > len(entries):
            problems.append(f"a head of size {size} seen before is beyond the log's end")
        elif roots[size] != root:
            problems.append(f"the head of size {size} seen before does not match the "
                            "log: it was forked or rewritten")
    return problems


def _load_state(path: Path | None) -> dict[int, bytes]:
    if path is None or not path.exists():
        return {}
    try:
        found = {int(s): bytes.fromhex(r) for s, r in json.loads(path.read_text()).items()}
    except OSError as exc:
        raise TransparencyError("state", _os_error(exc)) from None
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise TransparencyError("state", f"{path}: not an auditor's state file ({exc})"
                                ) from None
    if not all(size >= 0 and len(root) == 32 for size, root in found.items()):
        raise TransparencyError("state", f"{path}: not an auditor's state file (sizes and "
                                         "32-byte roots)")
    return found


def _os_error(exc: OSError) -> str:
    """One line for a file that could not be read or written (no errno tuple)."""
    name = exc.filename if exc.filename is not None else ""
    return f"{name}: {exc.strerror or exc}" if name else str(exc.strerror or exc)


def _write(path: Path, data: bytes) -> str | None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        return _os_error(exc)
    return None


def _refused(exc: TransparencyError) -> int:
    """A refusal (status 1), or a ledger that could not be reached at all (status 2)."""
    if exc.reason == "unreachable":
        return fail(str(exc))
    return fail(f"refused: {exc}", 1)
