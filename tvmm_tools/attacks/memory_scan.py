"""Memory scan: read every guest page the host can reach and look for the secret.

The host lets the victim run to its end under an honest schedule, then reads all of guest
memory page by page (READ_PAGE).  Where memory is not encrypted (``plain``) the secrets
page at its public GPA holds the owner's secret in the documented layout (u64 length,
then the bytes), whatever the victim; copies elsewhere are located too.  From ``sev`` up
every private page comes back as AES-XTS ciphertext (at ``shim`` as all ones: ciphertext
hiding): the secrets page no longer parses and the attack makes no guess at all (a random
guess would score by chance, not by leakage).
"""

from __future__ import annotations

import struct

from tvmm.abi.guest import PAGE_SIZE, SECRETS_GPA
from tvmm_tools.attacks._profile import declared_secret_bytes
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome, not_applicable

_WORD = struct.Struct("<Q")


class MemoryScan(Attack):
    name = "memory-scan"
    summary = "read every page the host can reach after the run and search it for the secret"
    victims = ("modexp", "modexp-ct", "password", "kvstore")
    kind = "confidentiality"
    published = ("No published figure: the baseline of docs/attacks.md §1 — leaks at plain, "
                 "ciphertext only from sev up (docs/threat-model.md).")

    def run(self, ctx: AttackContext) -> Outcome:
        if declared_secret_bytes(ctx.guest) == 0:
            return not_applicable("the victim declares no secret")
        host = ctx.host()
        ctx.launch(host)
        result = host.run(max_exits=10_000)
        ctx.record("scan", pages=ctx.memory // PAGE_SIZE)
        pages = {gpa: ctx.client.read_page(host.vm, gpa)
                 for gpa in range(0, ctx.memory, PAGE_SIZE)}
        guess = secret_of_page(pages[SECRETS_GPA])
        where = [gpa for gpa, page in pages.items() if guess and guess in page]
        detail = (f"secret found in {len(where)} page(s): "
                  + ", ".join(f"{gpa:#x}" for gpa in where[:8]) if guess is not None else
                  f"{len(pages)} pages read: no plausible secrets page (ciphertext)")
        return Outcome(guess=guess, hosts=[host], exits=sum(result.exits.values()),
                       notes={"detail": detail, "pages_read": len(pages),
                              "found_in": [hex(g) for g in where]})


def secret_of_page(page: bytes) -> bytes | None:
    """The secret if ``page`` parses as a plaintext secrets page, else None."""
    (length,) = _WORD.unpack_from(page)
    if not 0 < length <= PAGE_SIZE - 8 or any(page[8 + length :]):
        return None
    return page[8 : 8 + length]
