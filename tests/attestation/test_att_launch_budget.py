"""Bounded relaunches (issue 15): one release per nonce, N launches per window counted in
the owner's persistent ledger, audited, failing closed on a damaged ledger; launch
secrets open for one launch only."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvmm.abi.guest import (
    OWNER_CHALLENGE,
    OWNER_EVIDENCE,
    OWNER_LAUNCH_SECRET,
    OWNER_REFUSED,
    SECRETS_GPA,
)
from tvmm.abi.key_release import encode_public_key, report_data_for
from tvmm.abi.launch_secret import wrap
from tvmm.abi.report import AttestationReport
from tvmm.abi.types import Level, Result
from tvmm.hw.root_of_trust import Chip
from tvmm.owner.broker import KeyBroker, PolicyError, ReleasePolicy
from tvmm.owner.endpoint import OwnerEndpoint
from tvmm.owner.ledger import (
    AuditRecord,
    LaunchBudget,
    LaunchLedger,
    LedgerError,
    budget_state,
)
from tvmm.owner.verify import CertChain, VerificationError, VerifyFailure
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome

GUEST_KEY = ec.derive_private_key(0xC0FFEE_1234, ec.SECP384R1())
T0 = 1_800_000_000.0
HOUR = 3600

MakeReport = Callable[..., AttestationReport]


def point() -> bytes:
    return encode_public_key(GUEST_KEY.public_key())


def policy(expected: bytes, launches: int | None = 3, window_s: int = HOUR) -> ReleasePolicy:
    budget = f"launches = {launches}\nwindow_s = {window_s}\n" if launches is not None else ""
    return ReleasePolicy.from_toml(f'measurement = "{expected.hex()}"\n{budget}')


@pytest.fixture()
def ledger(tmp_path: Path) -> LaunchLedger:
    return LaunchLedger(tmp_path / "owner" / "modexp.ledger")


def attempt(broker: KeyBroker, chip: Chip, chain: CertChain, make_report: MakeReport,
            now: float) -> VerifyFailure | None:
    """One launch's attested release at ``now``: a fresh nonce, a report binding it."""
    nonce = broker.challenge()
    report = chip.sign_report(make_report(report_data=report_data_for(nonce, point())))
    try:
        broker.release(report, chain, nonce, point(), b"volume key", now=now)
    except VerificationError as exc:
        return exc.reason
    return None


# --- the policy ---------------------------------------------------------------------------


def test_policy_reads_the_launch_budget() -> None:
    p = ReleasePolicy.from_toml(f'measurement = "{"11" * 48}"\nlaunches = 3\nwindow_s = 60\n')
    assert p.budget == LaunchBudget(3, 60)
    assert ReleasePolicy.from_toml(f'measurement = "{"11" * 48}"\nlaunches = 2\n'
                                   ).budget == LaunchBudget(2, 3600)
    assert ReleasePolicy.from_toml(f'measurement = "{"11" * 48}"\n').budget is None


@pytest.mark.parametrize("extra", ["launches = 0", "launches = -1", "launches = 1.5",
                                   'launches = "3"', "launches = true",
                                   "launches = 3\nwindow_s = 0", "window_s = 60"])
def test_a_bad_budget_is_a_policy_error(extra: str) -> None:
    with pytest.raises(PolicyError):
        ReleasePolicy.from_toml(f'measurement = "{"11" * 48}"\n{extra}\n')


def test_a_budget_needs_a_ledger(own_chain: CertChain, expected_measurement: bytes) -> None:
    with pytest.raises(PolicyError):
        KeyBroker(policy(expected_measurement), own_chain.ark)


# --- one release per nonce ------------------------------------------------------------------


def test_a_second_release_to_the_same_nonce_is_refused(
    own_chain: CertChain, chip: Chip, make_report: MakeReport, expected_measurement: bytes,
    ledger: LaunchLedger,
) -> None:
    """Replaying a released exchange, byte for byte, gets nothing and is audited."""
    owner = OwnerEndpoint(policy(expected_measurement), b"volume key",
                          trust_anchor=lambda: own_chain.ark, chain=lambda: own_chain,
                          ledger=ledger, clock=lambda: T0)
    nonce = owner(OWNER_CHALLENGE)
    report = chip.sign_report(make_report(report_data=report_data_for(nonce, point())))
    evidence = OWNER_EVIDENCE + nonce + point() + report
    assert owner(evidence).startswith(b"TVKR")
    assert owner(evidence) == OWNER_REFUSED + b"nonce"
    assert [(r.released, r.reason) for r in owner.releases] == [(True, None),
                                                                 (False, VerifyFailure.NONCE)]
    assert [(r.released, r.reason) for r in ledger.records()] == [(True, ""), (False, "nonce")]
    assert ledger.records()[1].nonce == nonce.hex()
    assert owner.budget().used == 1
    assert owner(b"junk") == OWNER_REFUSED + b"malformed"  # audited too
    assert ledger.records()[-1].reason == "malformed"


def test_a_restarted_broker_releases_to_a_nonce_once(
    own_chain: CertChain, chip: Chip, make_report: MakeReport, expected_measurement: bytes,
    ledger: LaunchLedger,
) -> None:
    """A broker restarted on the same ledger that issues the same nonce again (tvmm attest
    --nonce) does not release to it twice: the ledger remembers the nonce."""
    nonce = bytes(range(32))
    for expected in (None, VerifyFailure.NONCE):
        broker = KeyBroker(policy(expected_measurement, launches=None), own_chain.ark, ledger)
        broker.challenge_with(nonce)
        report = chip.sign_report(make_report(report_data=report_data_for(nonce, point())))
        try:
            broker.release(report, own_chain, nonce, point(), b"k", now=T0)
            got = None
        except VerificationError as exc:
            got = exc.reason
        assert got == expected
    assert [(r.released, r.reason) for r in ledger.records()] == [(True, ""), (False, "nonce")]


# --- the budget ------------------------------------------------------------------------------


def test_n_plus_one_launches_in_a_window_the_last_refused_and_audited(
    own_chain: CertChain, chip: Chip, make_report: MakeReport, expected_measurement: bytes,
    ledger: LaunchLedger,
) -> None:
    broker = KeyBroker(policy(expected_measurement, launches=3), own_chain.ark, ledger)
    got = [attempt(broker, chip, own_chain, make_report, T0 + 60 * i) for i in range(4)]
    assert got == [None, None, None, VerifyFailure.LAUNCH_BUDGET]
    last = ledger.records()[-1]
    assert (last.time, last.released, last.reason) == (T0 + 180, False, "launch_budget")
    assert last.measurement == expected_measurement.hex() and last.path == "attested"
    state = broker.budget_state(T0 + 180)
    assert (state.used, state.left, state.next_at) == (3, 0, T0 + HOUR)


def test_after_the_window_a_launch_is_allowed_again(
    own_chain: CertChain, chip: Chip, make_report: MakeReport, expected_measurement: bytes,
    ledger: LaunchLedger,
) -> None:
    broker = KeyBroker(policy(expected_measurement, launches=2), own_chain.ark, ledger)
    assert attempt(broker, chip, own_chain, make_report, T0) is None
    assert attempt(broker, chip, own_chain, make_report, T0 + 10) is None
    assert attempt(broker, chip, own_chain, make_report, T0 + HOUR - 1) == \
        VerifyFailure.LAUNCH_BUDGET
    assert attempt(broker, chip, own_chain, make_report, T0 + HOUR) is None  # T0 has left
    assert attempt(broker, chip, own_chain, make_report, T0 + HOUR + 5) == \
        VerifyFailure.LAUNCH_BUDGET  # T0 + 10 has not
    assert broker.budget_state(T0 + 2 * HOUR + 1).left == 2


def test_refusals_do_not_spend_the_budget(
    own_chain: CertChain, chip: Chip, make_report: MakeReport, expected_measurement: bytes,
    ledger: LaunchLedger,
) -> None:
    broker = KeyBroker(policy(expected_measurement, launches=1), own_chain.ark, ledger)
    nonce = broker.challenge()
    report = chip.sign_report(make_report(report_data=report_data_for(nonce, point()),
                                          measurement=b"\x22" * 48))
    with pytest.raises(VerificationError) as refused:
        broker.release(report, own_chain, nonce, point(), b"k", now=T0)
    assert refused.value.reason == VerifyFailure.MEASUREMENT
    assert ledger.records()[0].measurement == "22" * 48  # claimed, audited
    assert attempt(broker, chip, own_chain, make_report, T0 + 1) is None


def test_the_budget_survives_a_broker_restart(
    own_chain: CertChain, chip: Chip, make_report: MakeReport, expected_measurement: bytes,
    tmp_path: Path,
) -> None:
    path = tmp_path / "owner" / "modexp.ledger"
    first = KeyBroker(policy(expected_measurement, launches=2), own_chain.ark,
                      LaunchLedger(path))
    assert attempt(first, chip, own_chain, make_report, T0) is None
    assert attempt(first, chip, own_chain, make_report, T0 + 1) is None
    restarted = KeyBroker(policy(expected_measurement, launches=2), own_chain.ark,
                          LaunchLedger(path))
    assert restarted.budget_state(T0 + 2).left == 0
    assert attempt(restarted, chip, own_chain, make_report, T0 + 2) == \
        VerifyFailure.LAUNCH_BUDGET


def test_brokers_sharing_a_ledger_do_not_overspend(tmp_path: Path) -> None:
    """Eight brokers (each its own LaunchLedger on one file) admit at once: exactly the
    budget is released, every decision recorded (the lock serialises read-check-write)."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "shared.ledger"
    LaunchLedger(path).records()  # made before: the race is on the count
    budget = LaunchBudget(3, HOUR)

    def one(i: int) -> str:
        return LaunchLedger(path).admit(budget, AuditRecord(T0 + i, f"{i:02x}", "", "launch",
                                                            True))

    with ThreadPoolExecutor(8) as pool:
        reasons = list(pool.map(one, range(8)))
    assert sorted(reasons) == [""] * 3 + ["launch_budget"] * 5
    records = LaunchLedger(path).records()
    assert len(records) == 8 and sum(r.released for r in records) == 3


# --- a damaged ledger fails closed -----------------------------------------------------------


def _spent_ledger(own_chain: CertChain, chip: Chip, make_report: MakeReport,
                  expected: bytes, ledger: LaunchLedger) -> KeyBroker:
    broker = KeyBroker(policy(expected, launches=2), own_chain.ark, ledger)
    for i in range(2):
        assert attempt(broker, chip, own_chain, make_report, T0 + i) is None
    return broker


def _drop_last_release(text: str) -> str:
    document = json.loads(text)
    document["records"] = document["records"][:-1]
    return json.dumps(document)


def _rewrite_time(text: str) -> str:
    document = json.loads(text)
    document["records"][0]["time"] = 0
    return json.dumps(document)


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],  # truncated mid-record
    lambda text: "",  # truncated to nothing
    _drop_last_release,  # a whole record cut, the rest intact
    _rewrite_time,  # a release moved out of the window
    lambda text: json.dumps({"version": 1, "records": [], "mac": "00" * 32}),  # reset
])
def test_a_tampered_or_truncated_ledger_releases_nothing(
    own_chain: CertChain, chip: Chip, make_report: MakeReport, expected_measurement: bytes,
    ledger: LaunchLedger, damage: Callable[[str], str],
) -> None:
    broker = _spent_ledger(own_chain, chip, make_report, expected_measurement, ledger)
    ledger.path.write_text(damage(ledger.path.read_text()))
    later = T0 + 10 * HOUR  # the budget would allow it, were the ledger sound
    assert attempt(broker, chip, own_chain, make_report, later) == VerifyFailure.LEDGER
    with pytest.raises(LedgerError):
        broker.budget_state(later)
    with pytest.raises(LedgerError):  # still refused: never reset to zero
        ledger.records()


def test_a_deleted_ledger_is_not_a_fresh_one(
    own_chain: CertChain, chip: Chip, make_report: MakeReport, expected_measurement: bytes,
    ledger: LaunchLedger,
) -> None:
    broker = _spent_ledger(own_chain, chip, make_report, expected_measurement, ledger)
    ledger.path.unlink()
    assert attempt(broker, chip, own_chain, make_report, T0 + 10 * HOUR) == VerifyFailure.LEDGER
    assert not ledger.path.exists()


def test_ledger_files_are_the_owners_alone(ledger: LaunchLedger) -> None:
    ledger.refuse(AuditRecord(T0, "", "", "attested", False, "malformed"))
    assert ledger.path.stat().st_mode & 0o777 == 0o600
    assert ledger.key_path.stat().st_mode & 0o777 == 0o600


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_any_ledger_bytes_are_refused_or_read(tmp_path: Path, data: bytes) -> None:
    """The ledger parser on arbitrary bytes: LedgerError, never another exception."""
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "fuzz.ledger"  # fresh per example
    ledger = LaunchLedger(path)
    ledger.records()  # makes the key and an empty ledger
    path.write_bytes(data)
    with pytest.raises(LedgerError):
        ledger.records()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 10 * HOUR), max_size=12), st.integers(1, 5),
       st.integers(1, 2 * HOUR), st.integers(0, 10 * HOUR))
def test_budget_state_counts_the_window(times: list[int], launches: int, window: int,
                                        now: int) -> None:
    """Releases in (now - window, ∞) count; when none is left, next_at is the first time
    one is, and the moment before it none is."""
    records = [AuditRecord(float(t), "", "", "launch", True) for t in times]
    budget = LaunchBudget(launches, window)
    state = budget_state(records, budget, now)
    in_window = [t for t in times if now - window < t]
    assert state.used == len(in_window)
    assert state.left == max(0, launches - len(in_window))
    assert (state.next_at is None) == (state.left > 0)
    if state.next_at is not None:
        assert budget_state(records, budget, state.next_at).left >= 1
        assert budget_state(records, budget, max(now, state.next_at - 0.5)).left == 0


# --- launch secrets: one blob, one launch; each one counted ------------------------------------


def test_a_launch_secret_opens_for_one_launch_only() -> None:
    from tvmm.host.client import HostCallError
    from tvmm.host.hypervisor import Devices, HonestHypervisor
    from tvmm.machine import expected_measurement, make_machine
    from tvmm.samples import build_sample

    machine = make_machine(seed=3)
    image = build_sample("modexp")
    digest = expected_measurement(image, 4 << 20, Level.SEV)
    blob = wrap(b"\x01" * 8, machine.platform.launch_public_key, digest)
    first = HonestHypervisor(machine.client, Devices())
    first.launch(image, Level.SEV, 4 << 20, secret_blob=blob)
    with pytest.raises(HostCallError) as refused:
        HonestHypervisor(machine.client, Devices()).launch(image, Level.SEV, 4 << 20,
                                                           secret_blob=blob)
    assert (refused.value.result, refused.value.operand) == (Result.BAD_OPERAND, "data")
    fresh = wrap(b"\x01" * 8, machine.platform.launch_public_key, digest)
    HonestHypervisor(machine.client, Devices()).launch(image, Level.SEV, 4 << 20,
                                                       secret_blob=fresh)


def test_launch_secrets_spend_the_same_budget(
    expected_measurement: bytes, ledger: LaunchLedger,
) -> None:
    platform_key = ec.derive_private_key(77, ec.SECP384R1()).public_key()
    now = [T0]
    def unused() -> CertChain:  # launch secrets need no chip chain: nothing to verify
        raise AssertionError("the chip's chain was fetched for a launch secret")

    owner = OwnerEndpoint(policy(expected_measurement, launches=2), b"volume key",
                          trust_anchor=unused, chain=unused,  # type: ignore[arg-type]
                          launch_key=lambda: platform_key,
                          launch_digest=expected_measurement,
                          ledger=ledger, clock=lambda: now[0])
    answers = [owner(OWNER_LAUNCH_SECRET) for _ in range(3)]
    assert [a[:4] for a in answers] == [b"TVLS", b"TVLS", OWNER_REFUSED]
    assert answers[2] == OWNER_REFUSED + b"launch_budget"
    assert answers[0] != answers[1]
    assert [(r.path, r.reason) for r in owner.releases] == [
        ("launch", None), ("launch", None), ("launch", VerifyFailure.LAUNCH_BUDGET)]
    assert [(r.path, r.released, r.reason) for r in ledger.records()] == [
        ("launch", True, ""), ("launch", True, ""), ("launch", False, "launch_budget")]
    now[0] = T0 + HOUR
    assert owner(OWNER_LAUNCH_SECRET).startswith(b"TVLS")


class _Relauncher(Attack):
    """Launches the victim four times at plain and reads its secrets page each time."""

    name = "relauncher"
    summary = "relaunch the victim; read the secrets page (plaintext at plain) each time"
    victims = ("modexp",)
    kind = "confidentiality"

    def run(self, ctx: AttackContext) -> Outcome:
        hosts, pages = [], []
        for _ in range(4):
            host = ctx.host()
            ctx.launch(host)
            pages.append(ctx.client.read_page(host.vm, SECRETS_GPA))
            hosts.append(host)
        with_secret = [int.from_bytes(page[:8], "little") > 0 for page in pages]
        return Outcome(guess=pages[0][8:16], hosts=hosts, notes={"with_secret": with_secret})


def test_the_judge_bounds_an_attackers_relaunches(tmp_path: Path) -> None:
    """Each launch asks the owner for a launch secret; past the budget it gets none."""
    from tvmm.judge import run_attack
    from tvmm.machine import expected_measurement
    from tvmm.samples import build_sample

    measurement = expected_measurement(build_sample("modexp"))
    ledger = LaunchLedger(tmp_path / "modexp.ledger")
    verdict = run_attack(_Relauncher(), "modexp", Level.PLAIN, seed=5,
                         release_policy=policy(measurement, launches=2), ledger=ledger)
    assert verdict.notes["with_secret"] == [True, True, False, False]
    assert verdict.full_recovery  # the first launch's plaintext page: plain leaks it
    assert [(r.path, r.released, r.reason) for r in ledger.records()] == [
        ("launch", True, ""), ("launch", True, ""),
        ("launch", False, "launch_budget"), ("launch", False, "launch_budget")]


# --- the command line --------------------------------------------------------------------------


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict]:
    from tvmm.cli import main

    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_attest_shows_the_budget_and_owner_audit_prints_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from tvmm.cli import main

    policy_file, ledger_file = tmp_path / "p.toml", tmp_path / "modexp.ledger"
    code, _ = _json(capsys, ["measure", "modexp", "--policy-out", str(policy_file),
                             "--launches", "1", "--window", "600"])
    assert code == 0 and "launches = 1\nwindow_s = 600\n" in policy_file.read_text()
    attest = ["attest", "modexp", "--release-policy", str(policy_file), "--ledger",
              str(ledger_file)]
    code, first = _json(capsys, [*attest, "--out", str(tmp_path / "a")])
    assert code == 0 and first["released"]
    assert (first["budget"]["launches"], first["budget"]["left"]) == (1, 0)
    code, second = _json(capsys, [*attest, "--out", str(tmp_path / "b"), "--seed", "1"])
    assert code == 1 and second["refusal"] == "launch_budget"
    code, audit = _json(capsys, ["owner", "audit", str(ledger_file), "--policy",
                                 str(policy_file)])
    assert code == 0 and audit["budget"]["left"] == 0
    assert [(r["released"], r["reason"]) for r in audit["records"]] == [
        (True, ""), (False, "launch_budget")]
    assert audit["records"][0]["nonce"] == first["nonce"]
    code, later = _json(capsys, ["owner", "audit", str(ledger_file), "--policy",
                                 str(policy_file), "--now", str(audit["records"][0]["time"] + 600)])
    assert later["budget"]["left"] == 1
    ledger_file.write_bytes(ledger_file.read_bytes()[:-20])  # cut
    assert main(["owner", "audit", str(ledger_file)]) == 1
    code, cut = _json(capsys, [*attest, "--out", str(tmp_path / "c"), "--seed", "2"])
    assert code == 1 and cut["refusal"] == "ledger" and "error" in cut["budget"]
    assert main(["attest", "modexp", "--release-policy", str(policy_file),
                 "--out", str(tmp_path / "d")]) == 2  # a budget without a ledger
