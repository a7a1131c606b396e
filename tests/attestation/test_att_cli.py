"""tvmm measure / attest / verify, as a user runs them."""

from __future__ import annotations

import json

import pytest

from tvmm.abi.types import Level
from tvmm.cli import main
from tvmm.machine import boot

NONCE = "5a" * 32
MILAN_ARK_SHA256 = "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"


@pytest.fixture
def attacker_dir(tmp_path, chip, own_report):
    """A chain and report made entirely by someone else: a manufacturer of their own (the
    session's second state directory, not $TVMM_STATE_DIR), self-consistent throughout."""
    chip.write_chain(tmp_path)
    (tmp_path / "report.bin").write_bytes(own_report)
    return tmp_path


def test_verify_refuses_a_chain_whose_root_is_not_pinned(attacker_dir, capsys):
    """Before, this printed "verified" (exit 0) with a yellow note: fail closed instead."""
    code, refused = _json(capsys, ["verify", "--chain", str(attacker_dir)])
    assert code == 1 and refused["verified"] is False and refused["reason"] == "chain_ark"
    assert main(["verify", "--chain", str(attacker_dir)]) == 1
    out = capsys.readouterr().out
    assert "verified" not in out and len(out.strip().splitlines()) == 1  # one line: the reason
    for ark in ("amd-milan", "amd-genoa"):
        code, refused = _json(capsys, ["verify", "--chain", str(attacker_dir), "--ark", ark])
        assert code == 1 and refused["reason"] == "chain_ark"


def test_verify_trusts_an_explicitly_pinned_root(attacker_dir, state_dir, capsys):
    code, verified = _json(capsys, ["verify", "--chain", str(attacker_dir), "--ark",
                                    str(attacker_dir / "ark.pem")])
    assert code == 0 and verified["ark"] == str(attacker_dir / "ark.pem")
    code, verified = _json(capsys, ["verify", "--chain", str(attacker_dir), "--state-dir",
                                    str(state_dir)])
    assert code == 0 and verified["ark"] == "tvmm"


def _json(capsys, argv: list[str]) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("level", ["snp", "shim"])
def test_measure_predicts_finalize(capsys, level):
    code, measured = _json(capsys, ["measure", "modexp", "--pages", "--level", level])
    assert code == 0 and measured["level"] == level
    booted = boot("modexp", Level(level), seed=0)
    assert measured["measurement"] == booted.launch_digest
    pages = measured["pages"]
    assert [p["type"] for p in pages[:2]] == ["CPUID", "SECRETS"] and pages[-1]["type"] == "VMSA"
    assert pages[-1]["gpa"] == 0xFFFFFFFFF000 and pages[-1]["digest_after"] == booted.launch_digest
    assert len(pages) == measured["page_count"]


def test_measure_writes_a_release_policy(tmp_path, capsys):
    policy = tmp_path / "policy.toml"
    code, measured = _json(capsys, ["measure", "password", "--policy-out", str(policy)])
    assert code == 0 and f'measurement = "{measured["measurement"]}"' in policy.read_text()
    evidence = tmp_path / "ev"
    assert main(["attest", "password", "--out", str(evidence), "--release-policy",
                 str(policy)]) == 0
    capsys.readouterr()
    code, result = _json(capsys, ["verify", str(evidence / "report.bin"), "--chain",
                                  str(evidence), "--policy", str(policy)])
    assert code == 0 and result["verified"]


def test_measure_level_is_measured(capsys):
    digests = {level.value: _json(capsys, ["measure", "modexp", "--level", level.value]
                                  )[1]["measurement"] for level in Level}
    assert len(set(digests.values())) == len(Level)  # what a launch secret is bound to
    assert digests["plain"] == boot("modexp", Level.PLAIN, seed=0).launch_digest
    code, default = _json(capsys, ["measure", "modexp"])
    assert default["measurement"] == digests["snp"]


@pytest.mark.parametrize("level", ["plain", "sev", "sev-es"])
def test_attest_below_snp_gets_no_secret(tmp_path, capsys, level):
    """Before, `tvmm attest modexp --level plain` got the secret, with a report byte-identical
    to the snp one's. Now the report is unsigned and the broker refuses it."""
    code, attested = _json(capsys, ["attest", "modexp", "--out", str(tmp_path), "--level",
                                    level, "--nonce", NONCE])
    assert code == 1 and not attested["released"] and attested["refusal"] == "signing_key"
    code, refused = _json(capsys, ["verify", "--chain", str(tmp_path)])
    assert code == 1 and refused["reason"] == "signing_key"


@pytest.mark.parametrize("level", ["snp", "shim"])
def test_attest_then_verify(tmp_path, capsys, level):
    out = tmp_path / "evidence"
    code, attested = _json(capsys, ["attest", "modexp", "--out", str(out), "--nonce", NONCE,
                                    "--level", level])
    assert code == 0 and attested["released"] and attested["nonce"] == NONCE
    assert {"report.bin", "guest_key.bin", "ark.pem", "ask.pem", "vcek.pem",
            "evidence.json"} <= set(attested["files"])
    measurement = attested["expected_measurement"]
    assert attested["measurement"] == measurement
    argv = ["verify", str(out / "report.bin"), "--chain", str(out), "--measurement",
            measurement, "--nonce", NONCE]
    code, verified = _json(capsys, argv)
    assert code == 0 and verified["verified"] and verified["ark"] == "tvmm"  # the state dir's
    assert verified["fields"]["measurement"] == measurement
    code, pinned = _json(capsys, [*argv, "--ark", "tvmm"])
    assert code == 0 and pinned["ark"] == "tvmm"
    code, refused = _json(capsys, [*argv, "--ark", "amd-milan"])
    assert code == 1 and refused["reason"] == "chain_ark"
    code, refused = _json(capsys, [*argv[:-1], "ab" * 32])
    assert code == 1 and refused["reason"] == "report_data"
    code, refused = _json(capsys, [*argv[:4], "--measurement", "00" * 48])
    assert code == 1 and refused["reason"] == "measurement"


def test_attest_with_debug_policy_is_refused(tmp_path, capsys):
    code, attested = _json(capsys, ["attest", "modexp", "--out", str(tmp_path),
                                    "--debug-policy"])
    assert code == 1 and not attested["released"] and attested["refusal"] == "policy_debug"
    code, verified = _json(capsys, ["verify", "--chain", str(tmp_path)])
    assert code == 1 and verified["reason"] == "policy_debug"
    code, verified = _json(capsys, ["verify", "--chain", str(tmp_path), "--allow-debug"])
    assert code == 0


def test_attest_needs_a_guest_that_asks(tmp_path, capsys):
    assert main(["attest", "hello", "--out", str(tmp_path / "ev")]) == 2
    assert "never asked" in capsys.readouterr().err


def test_verify_real_milan_evidence(milan_dir, capsys):
    measurement = ("7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
                   "3e1a0dc39b2c60bd95b9c480cd81841f")
    code, verified = _json(capsys, ["verify", "--chain", str(milan_dir), "--measurement",
                                    measurement])
    assert code == 0 and verified["verified"] and verified["ark"] == "amd-milan"
    assert verified["ark_sha256"] == MILAN_ARK_SHA256
    assert verified["report"].endswith("report_milan.hex")
    for ark in ("amd-milan", str(milan_dir / "ark.pem")):
        code, verified = _json(capsys, ["verify", "--chain", str(milan_dir), "--ark", ark])
        assert code == 0 and verified["ark"] == ark
    code, refused = _json(capsys, ["verify", "--chain", str(milan_dir), "--ark", "amd-genoa"])
    assert code == 1 and refused["reason"] == "chain_ark"
    code, refused = _json(capsys, ["verify", str(milan_dir / "report_milan.hex"), "--chain",
                                   str(milan_dir), "--measurement", "11" * 48])
    assert code == 1 and refused["reason"] == "measurement"


def test_verify_usage_errors(tmp_path, capsys, milan_dir):
    assert main(["verify", "--chain", str(tmp_path)]) == 2  # no certificates
    assert main(["verify", "--chain", str(milan_dir), "--nonce", NONCE]) == 2  # no guest key
    with pytest.raises(SystemExit):
        main(["verify", "--chain", str(milan_dir), "--measurement", "abc"])
    capsys.readouterr()
