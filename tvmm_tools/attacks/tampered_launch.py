"""Scenario 11 — tampered launch: the host changes one page of the image before launch.

The image is public, so the host can rewrite it before ADD_PAGES.  This attack patches the
runtime's ``puts`` (one 4 KiB page) into

    mov edi, SECRETS_GPA + 8     ; the secret's bytes
    mov rsi, [SECRETS_GPA]       ; its length
    jmp console_write            ; "print" them: the host's console receives the secret

launches the patched image with an empty secrets page, so that the guest asks its owner
for the secret (attested key release, docs/attestation.md), relays the guest's messages
to the owner's key broker faithfully, and reads what the guest then "prints".

What stops it: the TEE measures what the host added, so the report carries the patched
image's launch digest, not the one the owner predicted from the genuine image; the
broker refuses (VerifyFailure.MEASUREMENT), the guest never gets the secret, and the patch
prints nothing.  The outcome is "blocked" at every level — measurement does not depend on
the protection level.  Kind "confidentiality": the tampering is a means; what the host is
after, and what the judge scores, is the secret (guess None when the broker refused,
notes["blocked"] only when it really did: its answer said so).

Published: the SEV-SNP ABI's launch digest (SNP_LAUNCH_UPDATE / PAGE_INFO) exists for
exactly this; the first SEV's unattested launch secret is what such a host would defeat
(docs/attacks.md §11).
"""

from __future__ import annotations

import struct

from tvmm.abi.guest import (
    GUEST_KEY_SIZE,
    NONCE_SIZE,
    OWNER_EVIDENCE,
    OWNER_REFUSED,
    PAGE_SIZE,
    REPORT_SIZE,
    SECRETS_GPA,
)
from tvmm.guestimage import GuestImage, ImagePage
from tvmm.host.devices import Console, InputDevice
from tvmm.host.hypervisor import Devices, HonestHypervisor
from tvmm_tools.attacks.base import Attack, AttackContext, Outcome

REPORT_MEASUREMENT = slice(0x90, 0x90 + 48)  # ATTESTATION_REPORT.MEASUREMENT (public layout)
MAX_EXITS = 5_000


def leak_payload(at: int, console_write: int) -> bytes:
    """The patch for a function at ``at``: console_write(secret bytes, secret length)."""
    jump_from = at + 5 + 8 + 5
    return (
        b"\xbf" + struct.pack("<I", SECRETS_GPA + 8)  # mov edi, imm32
        + b"\x48\x8b\x34\x25" + struct.pack("<I", SECRETS_GPA)  # mov rsi, [disp32]
        + b"\xe9" + struct.pack("<i", console_write - jump_from)  # jmp rel32
    )


def tamper(image: GuestImage) -> tuple[GuestImage, int]:
    """The image with ``puts`` replaced by the leak; the one page changed."""
    target, size = _symbol(image, "puts")
    patch = leak_payload(target, _symbol(image, "console_write")[0])
    if size < len(patch):
        raise ValueError(f"puts is {size} bytes, the patch needs {len(patch)}")
    page_gpa = target & ~(PAGE_SIZE - 1)
    pages = []
    for page in image.pages:
        if page.gpa == page_gpa:
            offset = target - page_gpa
            data = page.data[:offset] + patch + page.data[offset + len(patch):]
            page = ImagePage(page.gpa, data, page.executable)
        pages.append(page)
    return image.with_pages(tuple(pages), f"{image.name}+tampered"), page_gpa


def _symbol(image: GuestImage, name: str) -> tuple[int, int]:
    for start, size, sym in image.symbols:
        if sym == name:
            return start, size
    raise KeyError(name)


class _RawConsole(Console):
    """The console, keeping each write's bytes (the leak is binary)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        super().write(data)


class _Relay(HonestHypervisor):
    """Honest in everything, the owner channel included; it keeps what it relayed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relayed: list[tuple[bytes, bytes | None]] = []

    def relay_owner(self, message: bytes) -> bytes | None:
        answer = super().relay_owner(message)
        self.relayed.append((message, answer))
        return answer


class TamperedLaunch(Attack):
    name = "tampered-launch"
    summary = ("patches puts (one image page) to print the secret, launches it and asks the "
               "owner's key broker for the secret; the report's measurement must give it away")
    victims = ("modexp", "password", "kvstore")
    kind = "confidentiality"
    published = ("SEV-SNP measures every launched page into the report (PAGE_INFO chain); "
                 "an owner who releases only to the predicted measurement refuses a "
                 "tampered image (docs/attacks.md §11)")

    def run(self, ctx: AttackContext) -> Outcome:
        tampered, page = tamper(ctx.image)
        console = _RawConsole()
        devices = Devices(console=console, input=InputDevice(["attempt"]), owner=ctx.owner,
                          receipt=ctx.receipt)
        host = _Relay(ctx.client, devices)
        ctx.record("tamper", page=page, symbol="puts")
        digest = host.launch(tampered, ctx.level, ctx.memory)  # no launch secret: ask
        result = host.run(max_exits=MAX_EXITS)
        evidence, answer = _evidence(host.relayed)
        refused = answer is not None and answer.startswith(OWNER_REFUSED)
        reason = answer[len(OWNER_REFUSED):].decode("ascii", "replace") if refused else None
        measurement = evidence[-REPORT_SIZE:][REPORT_MEASUREMENT] if evidence else b""
        ctx.record("owner_answer", refused=refused, reason=reason,
                   report_measurement=measurement.hex())
        guess = None
        if not refused and console.writes:  # released: the patched puts printed the secret
            guess = console.writes[0]
        notes: dict[str, object] = {
            "tampered_page": page, "finalize_digest": digest.hex(),
            "report_measurement": measurement.hex(), "refusal": reason, "how": result.how,
        }
        if refused:
            notes["blocked"] = True
            notes["detail"] = (f"page {page:#x} patched; report measurement "
                               f"{measurement.hex()[:16]}… ≠ the owner's; broker refused "
                               f"({reason}); no secret reached the guest")
        elif evidence is None:
            notes["detail"] = "the guest never sent evidence to its owner"
        else:
            notes["detail"] = "the broker released the secret to a tampered image"
        return Outcome(guess=guess, hosts=[host], exits=sum(host.exits.values()), notes=notes)



class TamperedLaunchLedger(TamperedLaunch):
    """The same tampering against an owner who releases by transparency policy: any build
    its issuer registered in a ledger, the host presenting the genuine build's statement and
    receipt.  The receipt is valid; the report's measurement is not the registered launch
    digest, so the broker refuses (measurement) — a ledger widens what may run only to
    what was registered."""

    name = "tampered-launch-ledger"
    summary = "tampered launch against release by a transparency ledger's receipt"
    owner_policy = "ledger"

def _evidence(relayed: list[tuple[bytes, bytes | None]]) -> tuple[bytes | None, bytes | None]:
    size = len(OWNER_EVIDENCE) + NONCE_SIZE + GUEST_KEY_SIZE + REPORT_SIZE
    for message, answer in relayed:
        if message.startswith(OWNER_EVIDENCE) and len(message) == size:
            return message, answer
    return None, None
