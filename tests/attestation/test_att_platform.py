"""Attestation on the running platform: the predicted launch digest is FINALIZE's, reports
come from booted guests and verify, key release works end to end through the host at every
level, and a tampered image is refused (scenario 11)."""

from __future__ import annotations

import random
import struct
from dataclasses import replace

import pytest

from shim import attestation
from shim.launch import predict
from tvmm.abi.guest import (
    OWNER_CHALLENGE,
    REPORT_SIZE,
    SECRETS_GPA,
    SHARED_BASE,
    GuestError,
    Hypercall,
)
from tvmm.abi.key_release import report_data_for
from tvmm.abi.messages import ExitRecord
from tvmm.abi.report import parse
from tvmm.abi.types import DEFAULT_POLICY, POLICY_DEBUG, Field, Level
from tvmm.host.devices import Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.hw.measurement import PageType
from tvmm.judge import run_attack
from tvmm.launch_plan import plan_launch
from tvmm.machine import (
    DEFAULT_MEMORY,
    boot,
    chip_chain,
    expected_measurement,
    make_machine,
    owner_endpoint,
    wrap_secret,
)
from tvmm.matrix import outcome_class
from tvmm.owner.broker import ReleasePolicy
from tvmm.owner.verify import Expectations, VerificationError, VerifyFailure, verify_evidence
from tvmm.samples import SAMPLES, build_sample, expected_console_ok, resolve
from tvmm_tools.attacks.base import AttackContext
from tvmm_tools.attacks.tampered_launch import TamperedLaunch, tamper

LEVELS = list(Level)
SIGNED = [Level.SNP, Level.SHIM]  # the levels with an SEV-SNP guest: signed reports
UNSIGNED = [Level.PLAIN, Level.SEV, Level.SEV_ES]
SECRET_CALLS = {Hypercall.ATTEST, Hypercall.KEY_REQUEST, Hypercall.SECRET_KEY}


@pytest.fixture(scope="module")
def images():
    return {name: build_sample(name) for name in SAMPLES}


def _secret(guest: str, seed: int) -> bytes:
    return SAMPLES[guest].make_secret(random.Random(seed))


def _verify(report: bytes, expectations: Expectations):
    chain = chip_chain()
    return verify_evidence(report, chain.ark, chain.ask, chain.vcek, expectations)


# -- tvmm measure == FINALIZE -----------------------------------------------------------------
@pytest.mark.parametrize("memory", [DEFAULT_MEMORY, 8 << 20])
@pytest.mark.parametrize("guest", list(SAMPLES))
def test_predicted_digest_is_finalizes(images, guest, memory):
    image = images[guest]
    level = SIGNED[len(guest) % 2]  # snp or shim, spread over the samples
    predicted = predict(plan_launch(image, memory), level)
    machine = make_machine(seed=1, image=image, level=level)
    host = HonestHypervisor(machine.client)
    digest = host.launch(image, level, memory,
                         secret_blob=wrap_secret(machine, _secret(guest, 1), image, level,
                                                 memory))
    assert digest == predicted.digest == expected_measurement(image, memory, level)
    measured = machine.platform.vm(host.vm).digest.pages
    assert measured == predicted.pages  # the exact page list, not only the end of the chain
    kinds = [page.page_type for page in measured]
    assert kinds[:2] == [PageType.CPUID, PageType.SECRETS] and kinds[-1] == PageType.VMSA
    assert all(page.contents_digest == bytes(48) for page in measured[:2])


def test_digest_depends_on_every_input(images):
    image = images["modexp"]
    base = expected_measurement(image)
    assert expected_measurement(image, 8 << 20) != base  # the initial RSP is measured
    assert expected_measurement(replace(image, entry=image.entry + 1)) != base  # and RIP
    assert expected_measurement(tamper(image)[0]) != base  # and every image byte


def test_every_level_has_its_own_digest(images):
    """The level is measured (SEV_FEATURES in the VMSA page, and the level word below snp):
    an owner who predicts the shim launch's digest does not accept the same image launched
    at snp, and the reverse; a launch secret bound to a sev launch opens in no plain one."""
    image = images["modexp"]
    digests = {level: expected_measurement(image, DEFAULT_MEMORY, level) for level in Level}
    assert digests[Level.SNP] != digests[Level.SHIM]
    assert len(set(digests.values())) == len(Level)
    for level in Level:
        machine = make_machine(seed=1, image=image, level=level)
        host = HonestHypervisor(machine.client)
        assert host.launch(image, level, DEFAULT_MEMORY) == digests[level]


# -- reports from a booted guest ------------------------------------------------------------
ATTEST_GUEST = r"""
#include "tvmm.h"
static u8 data[64];
static u8 report[TVMM_REPORT_SIZE];
int main(void)
{
    for (int i = 0; i < 64; i++) data[i] = (u8)(7 * i + 1);
    if (attest(data, report) != 0) { puts("attest failed\n"); return 2; }
    i64 written = block_write(0, report, TVMM_REPORT_SIZE);
    i64 shared = attest((const void *)TVMM_SHARED_BASE, report);
    i64 stray = hypercall(HC_SECRET_KEY, (u64)report, 200, 0);
    puts(written == TVMM_REPORT_SIZE && shared == E_INVAL && stray == E_INVAL ? "ok\n" : "bad\n");
    return 0;
}
"""


class _Watching(HonestHypervisor):
    """Honest; remembers the hypercall numbers it saw."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.numbers: list[int | None] = []

    def on_exit(self, rec: ExitRecord) -> bool:
        self.numbers.append(rec.get(Field.NR))
        return super().on_exit(rec)


@pytest.mark.parametrize("level", LEVELS)
def test_guest_report_verifies(tmp_path, level):
    source = tmp_path / "attest_guest.c"
    source.write_text(ATTEST_GUEST)
    image, _ = resolve(str(source))
    machine = make_machine(seed=2, image=image, level=level)
    devices = Devices(Console())
    host = _Watching(machine.client, devices)
    digest = host.launch(image, level, DEFAULT_MEMORY)
    result = host.run(max_exits=100)
    assert result.how == "exit" and devices.console.text == "ok\n"
    raw = devices.block.read(0, REPORT_SIZE)
    assert not SECRET_CALLS & set(host.numbers)  # served inside: the host saw no exit
    expected = Expectations(measurement=expected_measurement(image, DEFAULT_MEMORY, level),
                            report_data=bytes((7 * i + 1) % 256 for i in range(64)))
    if level in UNSIGNED:  # no SEV-SNP guest: the report is unsigned and refused as such
        unsigned = parse(raw)
        assert unsigned.signing_key == 7 and unsigned.signature_r == unsigned.signature_s == 0
        assert unsigned.measurement == digest
        with pytest.raises(VerificationError) as refused:
            _verify(raw, expected)
        assert refused.value.reason == VerifyFailure.SIGNING_KEY
        return
    report = _verify(raw, expected)
    assert report.measurement == digest
    assert report.policy.to_u64() == DEFAULT_POLICY and not report.policy.debug
    assert (report.version, report.vmpl, report.signature_algo) == (2, 0, 1)
    assert report.host_data == bytes(32) and report.chip_id == machine.platform.chip.chip_id


# -- key release end to end -----------------------------------------------------------------
@pytest.mark.parametrize("level", SIGNED)
@pytest.mark.parametrize("guest", ["modexp", "password", "kvstore"])
def test_key_release_through_a_booted_vm(images, guest, level):
    secret = _secret(guest, 5)
    owner = owner_endpoint(images[guest], secret, level=level)
    result = boot(guest, level, seed=5, owner=owner)
    assert result.how == "exit" and result.violations == []
    assert expected_console_ok(guest, secret, result.console)
    assert result.key_release["released"] and len(owner.releases) == 1
    attempt = owner.releases[0]
    # The evidence the host relayed verifies on its own, with the owner's expectations.
    report = _verify(attempt.report, Expectations(
        measurement=expected_measurement(images[guest], DEFAULT_MEMORY, level),
        report_data=report_data_for(attempt.nonce, attempt.guest_key)))
    assert report.measurement.hex() == result.launch_digest
    # The nonce was consumed: replaying the same evidence is refused.
    replay = owner(b"TVKE" + attempt.nonce + attempt.guest_key + attempt.report)
    assert replay == b"TVKX" + VerifyFailure.NONCE.value.encode()


@pytest.mark.parametrize("level", UNSIGNED)
def test_no_secret_below_snp(images, level):
    """No TEE of the SNP kind, no signed report, no secret: not even for an owner who
    predicted this very launch (before, a plain launch got a report byte-identical to an
    snp one's and the secret with it)."""
    secret = _secret("modexp", 5)
    result = boot("modexp", level, seed=5, secret_path="attested")  # owner predicts this launch
    assert result.key_release["attempts"] == 1 and not result.key_release["released"]
    assert result.key_release["refusal"] == VerifyFailure.SIGNING_KEY.value
    assert not expected_console_ok("modexp", secret, result.console)  # computed without it
    snp = boot("modexp", Level.SNP, seed=5)
    assert snp.key_release["released"] and snp.launch_digest != result.launch_digest


def test_an_owner_who_requires_shim_refuses_snp_and_releases_to_shim(images):
    secret = _secret("password", 15)
    for launched, released in ((Level.SNP, False), (Level.SHIM, True)):
        owner = owner_endpoint(images["password"], secret, level=Level.SHIM)
        result = boot("password", launched, seed=15, owner=owner)
        assert result.key_release["released"] is released, launched
        assert result.key_release["refusal"] == (None if released else "measurement")
    snp_owner = owner_endpoint(images["password"], secret)  # requires snp (the default)
    assert not boot("password", Level.SHIM, seed=15, owner=snp_owner).key_release["released"]


def test_the_secret_reaches_only_the_secrets_page(images):
    """The unwrapped secret is written by the TEE where the guest reads it."""
    secret = _secret("password", 6)
    machine = make_machine(seed=6, image=images["password"], level=Level.SHIM)
    devices = Devices(Console(), input=InputDevice([secret.decode()]),
                      owner=owner_endpoint(images["password"], secret, level=Level.SHIM))
    host = HonestHypervisor(machine.client, devices)
    host.launch(images["password"], Level.SHIM, DEFAULT_MEMORY)
    assert host.run().status == 0 and devices.console.text == "granted\n"
    page = machine.platform.vm(host.vm).memory.read(SECRETS_GPA, 8 + len(secret))
    assert page == struct.pack("<Q", len(secret)) + secret


def test_launch_secret_path_still_works(images):
    result = boot("modexp", Level.SNP, seed=7, secret_path="launch")
    assert result.how == "exit" and result.key_release is None
    assert expected_console_ok("modexp", _secret("modexp", 7), result.console)
    with pytest.raises(ValueError):
        boot("modexp", Level.SNP, secret_path="bogus")


def test_debug_policy_is_in_the_report_and_refused(images):
    secret = _secret("modexp", 8)
    owner = owner_endpoint(images["modexp"], secret)
    result = boot("modexp", Level.SNP, seed=8, owner=owner, guest_policy=DEFAULT_POLICY
                  | POLICY_DEBUG)
    assert result.key_release == {**result.key_release, "released": False,
                                  "refusal": VerifyFailure.POLICY_DEBUG.value}
    assert parse(owner.releases[0].report).policy.debug
    assert not expected_console_ok("modexp", secret, result.console)  # computed without it
    lenient = owner_endpoint(images["modexp"], secret, policy=ReleasePolicy(
        measurement=expected_measurement(images["modexp"]), allow_debug=True))
    assert boot("modexp", Level.SNP, seed=8, owner=lenient,
                guest_policy=DEFAULT_POLICY | POLICY_DEBUG).key_release["released"]


def test_no_owner_link_leaves_the_secrets_page_empty(images):
    """A host without a link to the owner: the guest's request fails, nothing else."""
    machine = make_machine(seed=9, image=images["modexp"], level=Level.SHIM)
    host = HonestHypervisor(machine.client, Devices(Console()))
    host.launch(images["modexp"], Level.SHIM, DEFAULT_MEMORY)
    assert host.run().how == "exit"
    assert machine.platform.vm(host.vm).memory.read(SECRETS_GPA, 8) == bytes(8)


def test_secure_processor_refuses_bad_requests(images):
    machine = make_machine(seed=10, image=images["hello"], level=Level.SNP)
    host = HonestHypervisor(machine.client)
    host.launch(images["hello"], Level.SNP, DEFAULT_MEMORY)
    tee, vm = machine.platform.tee, machine.platform.vm(host.vm)
    scratch = 0x300000

    def call(nr: int, a0: int, a1: int) -> int:
        return int(attestation.serve(tee, vm, nr, a0, a1)[0])

    assert call(Hypercall.SECRET_KEY, scratch, 200) == GuestError.INVAL  # no key requested
    assert call(Hypercall.ATTEST, SHARED_BASE, scratch) == GuestError.INVAL  # shared data
    assert call(Hypercall.ATTEST, scratch, vm.memory.size - 16) == GuestError.INVAL
    assert call(Hypercall.KEY_REQUEST, scratch, SHARED_BASE) == GuestError.INVAL
    assert call(Hypercall.KEY_REQUEST, scratch, scratch + 0x1000) == 0
    vm.memory.write(scratch + 0x3000, b"TVKR" + bytes(300))
    assert call(Hypercall.SECRET_KEY, scratch + 0x3000, 304) == GuestError.IO  # does not open
    assert call(Hypercall.SECRET_KEY, scratch + 0x3000, 304) == GuestError.INVAL  # key gone
    assert vm.memory.read(SECRETS_GPA, 8) == bytes(8)


def test_owner_endpoint_refuses_what_is_not_evidence(images):
    owner = owner_endpoint(images["modexp"], b"s")
    assert owner(b"hello") == b"TVKX" + b"malformed"
    nonce = owner(OWNER_CHALLENGE)
    assert len(nonce) == 32 and owner.challenges == [nonce]


# -- scenario 11: tampered launch ------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
def test_tampered_launch_is_blocked(images, level):
    verdict = run_attack(TamperedLaunch(), "modexp", level, seed=12)
    assert outcome_class(verdict) == "blocked" and verdict.blocked
    assert verdict.leaked_bits == 0 and not verdict.detected
    notes = verdict.notes
    # Below snp the report is unsigned and refused before its measurement is looked at.
    assert notes["refusal"] == (VerifyFailure.MEASUREMENT if level in SIGNED
                                else VerifyFailure.SIGNING_KEY).value
    assert notes["report_measurement"] == notes["finalize_digest"]  # the report tells the truth
    assert notes["report_measurement"] != expected_measurement(images["modexp"]).hex()


def _context(images, guest: str, level: Level, owner) -> tuple[AttackContext, object]:
    machine = make_machine(seed=13, image=images[guest], level=level)
    ctx = AttackContext(
        client=machine.client, image=images[guest], guest=guest, level=level,
        rng=random.Random(13), memory=DEFAULT_MEMORY, secret_blob=b"",
        record=lambda *a, **k: None, devices=Devices, owner=owner)
    return ctx, machine


@pytest.mark.parametrize("guest", TamperedLaunch.victims)
def test_tampered_guest_never_sees_the_secret(images, guest):
    secret = _secret(guest, 13)
    ctx, machine = _context(images, guest, Level.SHIM,
                            owner_endpoint(images[guest], secret, level=Level.SHIM))
    outcome = TamperedLaunch().run(ctx)
    assert outcome.notes["blocked"] and outcome.guess is None
    vm = machine.platform.vm(outcome.hosts[0].vm)
    assert vm.memory.read(SECRETS_GPA, 8) == bytes(8)
    assert secret not in outcome.hosts[0].devices.console.text.encode("utf-8", "replace")


@pytest.mark.parametrize("level", SIGNED)
def test_tampered_launch_would_leak_to_a_gullible_owner(images, level):
    """The control: an owner that accepts the tampered measurement hands the patched guest
    the secret, and the patch prints it — so "blocked" above is the broker's doing."""
    secret = _secret("password", 14)
    tampered_digest = expected_measurement(tamper(images["password"])[0], DEFAULT_MEMORY, level)
    gullible = owner_endpoint(images["password"], secret,
                              policy=ReleasePolicy(measurement=tampered_digest))
    ctx, _ = _context(images, "password", level, gullible)
    outcome = TamperedLaunch().run(ctx)
    assert outcome.guess == secret and not outcome.notes.get("blocked")
