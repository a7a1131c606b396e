"""Helpers the integrity attacks share: recognising exits, and calibrating on the
attacker's own copy of the public image.

The image is public, so an attacker may launch it itself — at ``plain``, where it sees
everything, with no secret (an empty secrets page) — and measure on that copy what it
cannot see at the victim: how many instructions separate two points of the code.  Those
counts depend on the code path, not on the secret, when the attacker picks inputs that
take the same path whatever the secret is.  Calibration VMs are destroyed afterwards and
never handed to the judge.
"""

from __future__ import annotations

from tvmm.abi.guest import Hypercall
from tvmm.abi.messages import ExitRecord
from tvmm.abi.types import Device, ExitReason, Field, Level
from tvmm.host.hypervisor import HonestHypervisor
from tvmm_tools.attacks.base import AttackContext

MAX_STEPS = 5_000  # a calibration that single-steps longer than this has lost its way


def is_input_request(rec: ExitRecord) -> bool:
    """The guest asks for a line of input (its own hypercall below the shim, a device
    request on a bounce slot at the shim)."""
    return rec.reason == ExitReason.HYPERCALL and (
        rec.get(Field.NR) == Hypercall.INPUT_READ or rec.get(Field.DEVICE) == Device.INPUT)


def is_console_request(rec: ExitRecord) -> bool:
    return rec.reason == ExitReason.HYPERCALL and (
        rec.get(Field.NR) == Hypercall.CONSOLE_WRITE or rec.get(Field.DEVICE) == Device.CONSOLE)


def launch_own_copy(ctx: AttackContext, host: HonestHypervisor) -> None:
    """Launch the public image at ``plain`` with an empty secrets page: the attacker's
    own VM, on which it may look at everything."""
    host.launch(ctx.image, Level.PLAIN, ctx.memory, secret_blob=b"")


def symbol_range(ctx: AttackContext, name: str) -> range:
    """[start, start + size) of a function of the public image."""
    for start, size, sym in ctx.image.symbols:
        if sym == name:
            return range(start, start + max(size, 1))
    raise KeyError(name)


def finish(host: HonestHypervisor) -> None:
    """Tear down a calibration VM (the victim's VMs are left for the judge)."""
    host.destroy()
