"""The owner's launch secret used for another launch: an outside red team's two attacks
(launch-secret-downgrade, launch-secret-tamper), kept as regressions.

Both take the blob the victim's owner releases for one launch (``ctx.fresh_secret_blob``:
wrapped to the platform's launch key, relayed by the host at ADD_PAGES) and spend it on a
launch of the host's choosing:

- downgrade: the victim's own image at ``plain``, where the host reads every page in
  plaintext; it reads the secrets page (u64 length ‖ secret) before FINALIZE and after;
- tamper: at the run's own level, the image with ``puts`` patched to print the secrets
  page (tampered_launch.tamper); the first console write is the secret.

Before the fix both read all 64 bits of modexp's exponent at every level, undetected: the
TEE opened the blob at ADD_PAGES into whatever launch carried it.  Now the blob is bound
to the launch digest the owner predicts for its image at the run's level (every level
has its own digest), the TEE keeps the secret out of the guest until FINALIZE, and
FINALIZE refuses (DENIED, ``launch_secret``) a launch whose digest is another: the secret
is discarded, the refusal is on the TEE's record, the judge calls it blocked.

At ``plain`` the downgrade is no downgrade (the run is at plain: its owner binds the
secret to a plain launch, whose every page the host reads, as memory-scan does): n/a.
"""

from __future__ import annotations

from tvmm.abi.guest import SECRETS_GPA, SHARED_BASE, SHARED_SIZE
from tvmm.abi.types import DEFAULT_POLICY, Level
from tvmm.host.client import HostCallError
from tvmm.host.devices import InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm.launch_plan import plan_launch
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, not_applicable
from tvmm_tools.attacks.memory_scan import secret_of_page
from tvmm_tools.attacks.tampered_launch import MAX_EXITS, _RawConsole, tamper

PUBLISHED = ("SEV's LAUNCH_SECRET comes after LAUNCH_MEASURE and is wrapped under that "
             "launch's session keys: a packet opens in no other launch (AMD SEV API, "
             "LAUNCH_SECRET); docs/attacks.md, launch secrets")


class LaunchSecretDowngrade(Attack):
    name = "launch-secret-downgrade"
    summary = "the owner's launch secret launched at plain; read the secrets page"
    victims = ("modexp",)
    kind = "confidentiality"
    published = PUBLISHED

    def run(self, ctx: AttackContext) -> Outcome:
        if ctx.level == Level.PLAIN:
            return not_applicable("the run is at plain: nothing to downgrade (the host reads "
                                  "every page there: memory-scan)")
        blob = ctx.fresh_secret_blob()
        if not blob:
            return Outcome(notes={"detail": "the owner released no launch secret"})
        client = ctx.client
        plan = plan_launch(ctx.image, ctx.memory, secret_blob=blob)
        vm = client.create_vm(Level.PLAIN, ctx.memory, SHARED_BASE, SHARED_SIZE,
                              DEFAULT_POLICY)
        ctx.record("downgrade", vm=vm, level=Level.PLAIN.value)
        for step in plan.steps:
            client.add_pages(vm, step.gpa, step.page_type, step.count, step.data,
                             step.executable)
        before = secret_of_page(client.read_page(vm, SECRETS_GPA))  # added, not finalized
        try:
            client.finalize(vm, plan.entry)
            finalize = "finalized"
        except HostCallError as exc:
            finalize = f"FINALIZE refused: {exc.result.name} ({exc.operand})"
        after = secret_of_page(client.read_page(vm, SECRETS_GPA))
        guess = after or before
        return Outcome(guess=guess, notes={
            "vm": vm, "finalize": finalize,
            "detail": f"the owner's blob launched at plain: {finalize}; secrets page "
                      f"{'holds ' + str(len(guess)) + ' bytes' if guess else 'empty'} "
                      f"(before FINALIZE: {'the secret' if before else 'empty'})"})


class LaunchSecretTamper(Attack):
    name = "launch-secret-tamper"
    summary = "the owner's launch secret with a puts-patched image at the run's level"
    victims = ("modexp",)
    kind = "confidentiality"
    published = PUBLISHED

    def run(self, ctx: AttackContext) -> Outcome:
        tampered, page = tamper(ctx.image)
        console = _RawConsole()
        host = HonestHypervisor(ctx.client, Devices(console=console, input=InputDevice([])))
        ctx.record("tamper", page=page, symbol="puts")
        try:
            host.launch(tampered, ctx.level, ctx.memory, secret_blob=ctx.fresh_secret_blob())
        except HostCallError as exc:
            return Outcome(hosts=[host], notes={
                "tampered_page": page,
                "detail": f"puts page {page:#x} patched, launched at {ctx.level.value} with "
                          f"the owner's blob: {exc}; nothing ran"})
        result = host.run(max_exits=MAX_EXITS)
        guess = console.writes[0] if console.writes else None
        return Outcome(guess=guess, hosts=[host], exits=sum(host.exits.values()), notes={
            "tampered_page": page,
            "detail": f"puts page {page:#x} patched, launched at {ctx.level.value} with the "
                      f"owner's blob; first write {guess.hex() if guess else None}; "
                      f"{result.how}"})
