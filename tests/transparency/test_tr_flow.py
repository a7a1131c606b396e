"""The whole flow as a user runs it: keys, a ledger, claims, receipts, release by policy,
audits that catch a tampering operator, and builds that reproduce."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import sqlite3
from pathlib import Path

import pytest

from tvmm.cli import main
from tvmm.guestbuild import build
from tvmm.owner.broker import load_policy
from tvmm.transparency import merkle

SAMPLES = Path(__file__).resolve().parents[2] / "guests" / "samples"


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> Path:
    """A ledger with modexp registered at SVN 3 and SVN 2, and an unregistered SVN 4."""
    d = tmp_path_factory.mktemp("tr")
    assert run("transparency", "keygen", d / "issuer.pem") == 0
    assert run("transparency", "keygen", d / "stranger.pem") == 0
    assert run("transparency", "init", d / "ledger", "--issuer", d / "issuer.pub.pem",
               "--feed", "tvmm/samples") == 0
    for svn in (3, 2, 4):
        assert run("transparency", "claim", "modexp", "--feed", "tvmm/samples", "--svn", svn,
                   "--issuer-key", d / "issuer.pem", "-o", d / f"m{svn}.stmt") == 0
    for svn in (3, 2):
        assert run("transparency", "register", d / f"m{svn}.stmt", "--ledger", d / "ledger",
                   "-o", d / f"m{svn}.receipt") == 0
    assert run("transparency", "policy", "--service-key", d / "ledger" / "service.pub.pem",
               "--issuer", d / "issuer.pub.pem", "--feed", "tvmm/samples", "--min-svn", 3,
               "-o", d / "release.toml") == 0
    return d


def test_register_refuses_a_stranger_and_a_foreign_feed(ledger: Path, capsys) -> None:
    d = ledger
    assert run("transparency", "claim", "hello", "--feed", "tvmm/samples", "--svn", 1,
               "--issuer-key", d / "stranger.pem", "-o", d / "s.stmt") == 0
    assert run("transparency", "register", d / "s.stmt", "--ledger", d / "ledger",
               "-o", d / "s.receipt") == 1
    assert "issuer" in capsys.readouterr().err
    assert run("transparency", "claim", "hello", "--feed", "other", "--svn", 1,
               "--issuer-key", d / "issuer.pem", "-o", d / "f.stmt") == 0
    assert run("transparency", "register", d / "f.stmt", "--ledger", d / "ledger",
               "-o", d / "f.receipt") == 1
    assert "feed" in capsys.readouterr().err


def test_offline_verify_accepts_and_refuses_a_changed_byte(ledger: Path, capsys) -> None:
    d = ledger
    key = d / "ledger" / "service.pub.pem"
    assert run("transparency", "verify", d / "m3.stmt", d / "m3.receipt",
               "--service-key", key, "--json") == 0
    assert json.loads(capsys.readouterr().out)["svn"] == 3
    for name in ("m3.stmt", "m3.receipt"):
        changed = bytearray((d / name).read_bytes())
        changed[len(changed) // 2] ^= 1
        (d / f"x-{name}").write_bytes(bytes(changed))
    assert run("transparency", "verify", d / "x-m3.stmt", d / "m3.receipt",
               "--service-key", key) == 1
    assert run("transparency", "verify", d / "m3.stmt", d / "x-m3.receipt",
               "--service-key", key) == 1
    assert "refused" in capsys.readouterr().err


def test_the_broker_releases_by_policy(ledger: Path, capsys) -> None:
    d = ledger
    last: dict = {}

    def attest(*present: str) -> str:
        args = ["attest", "modexp", "--level", "snp", "--out", d / "ev", "--json",
                "--release-policy", d / "release.toml"]
        if present:
            args += ["--present", *(d / p for p in present)]
        code = run(*args)
        out = json.loads(capsys.readouterr().out)
        last.clear()
        last.update(out)
        assert (code == 0) == out["released"]
        return out["refusal"] or "released"
    assert attest("m3.stmt", "m3.receipt") == "released"
    assert attest("m2.stmt", "m2.receipt") == "transparency"  # SVN 2 < 3
    assert "SVN 2 is below the policy's 3" in last["refusal_detail"]
    # how to check the report: against the digest the presented claim registered
    assert last["expected_measurement"] == last["measurement"]
    assert attest("m4.stmt", "m3.receipt") == "transparency"  # never registered
    assert attest() == "transparency"  # nothing presented


def copy_ledger(d: Path, name: str) -> Path:
    """A copy of the ledger that its operator, who owns the disk, may edit at will (the
    log's append-only triggers are dropped first, as such an operator would)."""
    target = d / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(d / "ledger", target)
    with sqlite3.connect(target / "log.db") as db:
        db.execute("DROP TRIGGER leaf_no_delete")
        db.execute("DROP TRIGGER leaf_no_update")
    return target


def test_audit_catches_an_edited_or_truncated_log(ledger: Path, capsys) -> None:
    d = ledger
    state = d / "auditor.json"
    assert run("transparency", "audit", "--ledger", d / "ledger", "--state", state) == 0
    edited = copy_ledger(d, "edited")
    with sqlite3.connect(edited / "log.db") as db:  # the entry and its stored leaf hash
        db.execute("UPDATE leaf SET entry = ?, hash = ? WHERE id = 1",
                   (b"swapped", merkle.leaf_hash(b"swapped")))
    assert run("transparency", "audit", "--ledger", edited,
               "--service-key", d / "ledger" / "service.pub.pem") == 1
    assert "changed" in capsys.readouterr().out
    truncated = copy_ledger(d, "truncated")
    with sqlite3.connect(truncated / "log.db") as db:
        db.execute("DELETE FROM leaf WHERE id = (SELECT MAX(id) FROM leaf)")
    assert run("transparency", "audit", "--ledger", truncated, "--state", state,
               "--service-key", d / "ledger" / "service.pub.pem") == 1


def test_audit_catches_a_fork(ledger: Path, tmp_path, capsys) -> None:
    """The operator answers one auditor from a log rewritten from the start (its own
    service key, so every head it signs verifies): the heads that auditor saw before
    do not fit it."""
    d = ledger
    state = tmp_path / "auditor.json"
    assert run("transparency", "audit", "--ledger", d / "ledger", "--state", state) == 0
    forked = copy_ledger(d, "forked")
    with sqlite3.connect(forked / "log.db") as db:
        db.execute("DELETE FROM leaf")
        db.execute("DELETE FROM sqlite_sequence")
        db.execute("DELETE FROM head")
    assert run("transparency", "register", d / "m2.stmt", "--ledger", forked,
               "-o", tmp_path / "r") == 0
    assert run("transparency", "register", d / "m3.stmt", "--ledger", forked,
               "-o", tmp_path / "r") == 0
    assert run("transparency", "audit", "--ledger", forked, "--state", state) == 1
    assert "forked or rewritten" in capsys.readouterr().out
    # a monitor that fetches no entries: the forked log's newest head does not extend the
    # head it remembers (RFC 9162 consistency proof), the genuine one's does
    light = tmp_path / "light.json"
    light.write_text(state.read_text())
    assert run("transparency", "audit", "--ledger", forked, "--state", light, "--light") == 1
    assert "fork: " in capsys.readouterr().out
    assert run("transparency", "audit", "--ledger", d / "ledger", "--state", light,
               "--light") == 0
    truncated = copy_ledger(d, "cut")  # the last entry and the heads that name it dropped
    with sqlite3.connect(truncated / "log.db") as db:
        size = db.execute("SELECT COUNT(*) FROM leaf").fetchone()[0]
        db.execute("DELETE FROM leaf WHERE id = ?", (size,))
        db.execute("DELETE FROM head WHERE size = ?", (size,))
    assert run("transparency", "audit", "--ledger", truncated, "--state", light, "--light",
               "--service-key", d / "ledger" / "service.pub.pem") == 1
    assert "cut or rolled back" in capsys.readouterr().out


def test_a_guest_builds_the_same_twice(tmp_path, monkeypatch) -> None:
    digests = []
    for n in (1, 2):
        where = tmp_path / f"src{n}"
        where.mkdir()
        shutil.copy(SAMPLES / "hello.c", where / "hello.c")
        monkeypatch.setenv("TVMM_CACHE_DIR", str(tmp_path / f"cache{n}"))
        digests.append(hashlib.sha256(build([where / "hello.c"]).read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_bad_inputs_are_one_line_and_change_nothing(ledger: Path, tmp_path, capsys) -> None:
    """A truncated receipt, a wrong key file, a missing ledger or output directory, a
    perimeter that is not there: one 'error:' line each, no traceback, and a register
    whose receipt cannot be written appends nothing."""
    d = ledger
    (tmp_path / "trunc.receipt").write_bytes((d / "m3.receipt").read_bytes()[:40])
    (tmp_path / "text.pem").write_text("not a key\n")
    size = len(list((d / "ledger").glob("*")))  # the ledger's files, and its log below
    before = _log_size(d / "ledger")
    key = d / "ledger" / "service.pub.pem"
    cases = [
        (1, ["verify", d / "m3.stmt", tmp_path / "trunc.receipt", "--service-key", key],
         "malformed"),
        (1, ["verify", d / "m3.stmt", d / "m3.receipt", "--service-key", tmp_path / "text.pem"],
         "not a PEM key"),
        (1, ["verify", d / "m3.stmt", d / "m3.receipt", "--service-key", d / "issuer.pub.pem"],
         "names key"),
        (2, ["verify", tmp_path / "none.stmt", d / "m3.receipt", "--service-key", key],
         "No such file"),
        (2, ["register", d / "m3.stmt", "--ledger", tmp_path / "none", "-o", tmp_path / "r"],
         "no ledger here"),
        (2, ["register", d / "m3.stmt", "--ledger", d / "ledger",
             "-o", tmp_path / "none" / "r"], "no such directory"),
        (2, ["audit", "--ledger", tmp_path / "none"], "no such ledger directory"),
        (2, ["audit", "--ledger", d / "ledger", "--state", tmp_path / "none" / "a.json"],
         "no such directory"),
        (2, ["audit", "--ledger", d / "ledger", "--state", tmp_path / "text.pem"],
         "not an auditor's state file"),
        (2, ["claim", "hello", "--feed", "f", "--svn", 1, "--issuer-key", d / "issuer.pub.pem",
             "-o", tmp_path / "s"], "holds no private key"),
        (2, ["ledger-key", "--ledger", "127.0.0.1:9", "-o", tmp_path / "k",
             "--state-dir", tmp_path / "no-state"], "no perimeter"),
        (2, ["audit", "--ledger", "127.0.0.1:9", "--state-dir", tmp_path / "no-state"],
         "no perimeter"),
    ]
    for code, argv, words in cases:
        try:
            got = run("transparency", *argv)
        except SystemExit as exc:  # argparse's own one-line error
            got = exc.code
        out = capsys.readouterr()
        text = out.out + out.err
        errors = [line for line in text.splitlines() if "error:" in line]
        # one line, unbroken at 80 columns (argparse's usage lines come before its own)
        assert len(errors) == 1 and words in errors[0] and got == code, (argv, got, text)
        assert "Traceback" not in text, (argv, text)
    assert _log_size(d / "ledger") == before
    assert len(list((d / "ledger").glob("*"))) == size


def _log_size(directory: Path) -> int:
    with sqlite3.connect(directory / "log.db") as db:
        return db.execute("SELECT COUNT(*) FROM leaf").fetchone()[0]


def test_anyone_audits_a_published_copy_without_the_ledgers_key(ledger: Path, tmp_path,
                                                                capsys) -> None:
    """An auditor given log.db and the public key (never service.pem) checks it, and an
    entry edited in that copy is caught."""
    d = ledger
    published = tmp_path / "published"
    published.mkdir()
    shutil.copy(d / "ledger" / "log.db", published / "log.db")
    shutil.copy(d / "ledger" / "service.pub.pem", published / "service.pub.pem")
    assert run("transparency", "audit", "--ledger", published, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["consistent"] and report["entries"] == _log_size(d / "ledger") > 0
    assert not (published / "service.pem").exists()
    with sqlite3.connect(published / "log.db") as db:
        db.execute("DROP TRIGGER leaf_no_update")
        db.execute("UPDATE leaf SET entry = ?, hash = ? WHERE id = 1",
                   (b"swapped", merkle.leaf_hash(b"swapped")))
    assert run("transparency", "audit", "--ledger", published) == 1
    assert "changed" in capsys.readouterr().out


def test_a_feed_is_quoted_in_the_policies_written(ledger: Path, tmp_path) -> None:
    d = ledger
    feed = 'vendor "x"\\feed'
    assert run("transparency", "policy", "--service-key", d / "ledger" / "service.pub.pem",
               "--issuer", d / "issuer.pub.pem", "--feed", feed,
               "-o", tmp_path / "p.toml") == 0
    assert load_policy(tmp_path / "p.toml").transparency.feed == feed
    assert run("transparency", "init", tmp_path / "l", "--issuer", d / "issuer.pub.pem",
               "--feed", feed) == 0
    assert run("transparency", "claim", "hello", "--feed", feed, "--svn", 1,
               "--issuer-key", d / "issuer.pem", "-o", tmp_path / "h.stmt") == 0
    assert run("transparency", "register", tmp_path / "h.stmt", "--ledger", tmp_path / "l",
               "-o", tmp_path / "h.receipt") == 0


DOC = Path(__file__).resolve().parents[2] / "docs" / "attestation.md"


def worked_example() -> list[tuple[str, str]]:
    """The commands of attestation.md's worked example, each with its '# →' outcome."""
    text = DOC.read_text().split("### Worked example", 1)[1].split("\n#", 1)[0]
    found = []
    for line in text.splitlines():
        if line.startswith("    tvmm "):
            command, _, outcome = line.strip().partition("# →")
            found.append((command, outcome.strip()))
    return found


def test_the_worked_example_in_attestation_md_runs_as_written(tmp_path, monkeypatch,
                                                                capsys) -> None:
    """Line by line, in an empty directory, as a new user would paste it: each command
    succeeds, and each with an outcome prints it (refusals with status 1)."""
    monkeypatch.chdir(tmp_path)
    steps = worked_example()
    assert len(steps) >= 10 and sum(1 for _, o in steps if o.startswith("refused")) >= 3
    for command, outcome in steps:
        argv = shlex.split(command, comments=True)
        assert argv[0] == "tvmm"
        code = main(argv[1:])
        out = " ".join(capsys.readouterr().out.split())
        assert code == (1 if outcome.startswith("refused") else 0), (command, out)
        for piece in outcome.split(" (")[0].split("…"):
            assert piece.strip() in out, (command, piece, out)
