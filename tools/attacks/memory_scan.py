"""Memory scan: read every guest page the host can reach and look for the secret.

The host lets the victim run to its end under an honest schedule, then reads all of guest
memory page by page (READ_PAGE).  Where memory is not encrypted (``plain``) the secrets
page at its public GPA holds the owner's secret in the documented layout (u64 length,
then the bytes); copies elsewhere are located too.  From ``sev`` up every private page
comes back as AES-XTS ciphertext (at ``shim`` as all ones: ciphertext hiding): the secrets
page no longer parses, no word of memory reproduces the printed modexp result, and the
attack makes no guess at all (a random guess would score by chance, not by leakage).
"""

from __future__ import annotations

import struct

from tools.attacks._decode import (
    EXPONENT_BITS,
    exponent_checks,
    printed_result,
)
from tools.attacks.base import Attack, AttackContext, Outcome
from tvmm.abi.guest import PAGE_SIZE, SECRETS_GPA
from tvmm.host.devices import InputDevice
from tvmm.samples import PASSWORD_ALPHABET

_WORD = struct.Struct("<Q")
_RANDOM_LOOKING = 64  # fewer zero bytes than this in a page: it looks like ciphertext


class MemoryScan(Attack):
    name = "memory-scan"
    summary = "read every page the host can reach after the run and search it for the secret"
    victims = ("modexp", "modexp-ct", "password", "kvstore")
    kind = "confidentiality"
    published = ("No published figure: the baseline of docs/attacks.md §1 — leaks at plain, "
                 "ciphertext only from sev up (docs/threat-model.md).")

    def run(self, ctx: AttackContext) -> Outcome:
        host = ctx.host()
        if ctx.guest == "password":
            host.devices.input = InputDevice(["guess"])
        ctx.launch(host)
        result = host.run(max_exits=10_000)
        ctx.record("scan", pages=ctx.memory // PAGE_SIZE)
        pages = {gpa: ctx.client.read_page(host.vm, gpa)
                 for gpa in range(0, ctx.memory, PAGE_SIZE)}
        guess, where = _decode(ctx.guest, pages, printed_result(host.devices.console.text))
        detail = (f"secret found in {len(where)} page(s): "
                  + ", ".join(f"{gpa:#x}" for gpa in where[:8]) if guess is not None else
                  f"{len(pages)} pages read: no plausible secrets page, nothing verifies "
                  "(ciphertext)")
        return Outcome(guess=guess, hosts=[host], exits=sum(result.exits.values()),
                       notes={"detail": detail, "pages_read": len(pages),
                              "found_in": [hex(g) for g in where]})


def _secrets_page(page: bytes) -> bytes | None:
    """The secret if ``page`` parses as a plaintext secrets page, else None."""
    (length,) = _WORD.unpack_from(page)
    if not 0 < length <= PAGE_SIZE - 8 or any(page[8 + length :]):
        return None
    return page[8 : 8 + length]


def _decode(guest: str, pages: dict[int, bytes], result: int | None
            ) -> tuple[bytes | None, list[int]]:
    candidate = _secrets_page(pages[SECRETS_GPA])
    if guest in ("modexp", "modexp-ct"):
        return _exponent(pages, candidate, result)
    if candidate is None:
        return None, []
    if guest == "password" and not all(chr(b) in PASSWORD_ALPHABET for b in candidate):
        return None, []
    return candidate, [gpa for gpa, page in pages.items() if candidate in page]


def _exponent(pages: dict[int, bytes], candidate: bytes | None, result: int | None
              ) -> tuple[bytes | None, list[int]]:
    """An exponent that reproduces the printed result: the secrets page's first word, or
    any aligned word of memory with the top bit set (the stack and registers spill)."""
    nbytes = EXPONENT_BITS // 8
    found: bytes | None = None
    if candidate is not None and len(candidate) >= nbytes:
        value = int.from_bytes(candidate[:nbytes], "little") | 1 << 63
        if result is None or exponent_checks(value, result):
            found = value.to_bytes(nbytes, "little")
    if found is None and result is not None:
        for page in pages.values():
            if page.count(0) < _RANDOM_LOOKING:
                continue  # ciphertext (or random data): no word of it is a plaintext
            for (word,) in _WORD.iter_unpack(page):
                if word >> 63 and exponent_checks(word, result):
                    found = word.to_bytes(nbytes, "little")
                    break
            if found is not None:
                break
    if found is None:
        return None, []
    return found, [gpa for gpa, page in pages.items() if found in page]
