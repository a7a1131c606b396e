"""The launch plan: the ADD_PAGES calls that launch a guest image, in order, and the
initial vCPU state FINALIZE measures.

One plan serves both sides, so they cannot drift: the honest host
(tvmm.host.hypervisor.HonestHypervisor.launch) issues exactly these calls, and the
owner's ``tvmm measure`` runs the same pages through the pure launch digest
(shim.launch.predict) without booting anything.  This module is neutral: it imports only
the ABI and the public image, never the TEE, so the host may use it (architecture
contract in pyproject.toml).

The plan, for a memory of M bytes:

    1. CPUID   at BOOT_INFO_GPA (0x1000): the TEE writes the boot info; measured as zeros
    2. SECRETS at SECRETS_GPA (0x2000): the owner's opaque launch blob, or nothing; zeros
    3. NORMAL  the image pages, in address order, one ADD_PAGES per contiguous run
    4. VMSA    at FINALIZE: the initial registers (RIP = entry, RSP = M, RFLAGS = 0x2,
               everything else 0) and the level's SEV_FEATURES (shim.launch), measured
               at GPA 0xFFFFFFFFF000
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tvmm.abi.guest import BOOT_INFO_GPA, PAGE_SIZE, SECRETS_GPA, initial_registers
from tvmm.abi.types import PageType
from tvmm.guestimage import GuestImage


@dataclass(frozen=True, slots=True)
class AddStep:
    """One ADD_PAGES call.  The contents are kept as the image's views (``parts``):
    measuring reads them in place, and only a launch joins them (``data``)."""

    gpa: int
    page_type: PageType
    count: int
    parts: tuple[bytes | memoryview, ...] = ()
    executable: bool = False

    @property
    def data(self) -> bytes:
        """The contents as the ADD_PAGES call carries them (one copy, made when asked)."""
        return b"".join(self.parts)


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    steps: tuple[AddStep, ...]
    entry: int
    memory_size: int

    def parts(self) -> Iterator[tuple[int, PageType, int, memoryview | None]]:
        """What the TEE measures before FINALIZE, in order, as (gpa, type, count, contents):
        contiguous pages whose contents are one view (measure them with
        LaunchDigest.add_run), or ``count`` pages of a type whose contents the PSP does not
        measure (None: it hashes zeros; the TEE fills the CPUID and SECRETS pages)."""
        for step in self.steps:
            if step.page_type != PageType.NORMAL:
                yield step.gpa, step.page_type, step.count, None
                continue
            gpa = step.gpa
            for part in step.parts:
                view = memoryview(part)
                yield gpa, step.page_type, len(view) // PAGE_SIZE, view
                gpa += len(view)

    def pages(self) -> Iterator[tuple[int, PageType, memoryview | None]]:
        """Every page the TEE measures before FINALIZE, as (gpa, type, contents), in order
        (``parts`` cut into pages)."""
        for gpa, page_type, count, view in self.parts():
            for i in range(count):
                page = view[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] if view is not None else None
                yield gpa + i * PAGE_SIZE, page_type, page

    def initial_registers(self) -> dict[str, int]:
        """The registers FINALIZE sets and measures; every register not named is 0."""
        return initial_registers(self.entry, self.memory_size)


def plan_launch(image: GuestImage, memory_size: int, *, secret_blob: bytes = b"") -> LaunchPlan:
    """The plan an honest host follows for ``image`` in ``memory_size`` bytes of memory.

    ``secret_blob`` (the SEV-style launch secret, opaque to the host) rides on the SECRETS
    page; it changes nothing in the measurement.
    """
    steps = [
        AddStep(BOOT_INFO_GPA, PageType.CPUID, 1),
        AddStep(SECRETS_GPA, PageType.SECRETS, 1, (secret_blob,)),
    ]
    for run in image.runs():
        steps.extend(_split(run.gpa, run.parts, run.executable))
    return LaunchPlan(tuple(steps), image.entry, memory_size)


MAX_STEP_BYTES = 4 << 20  # one ADD_PAGES call's contents: a frame of the links carries it


def _split(gpa: int, parts: tuple[bytes | memoryview, ...], executable: bool
           ) -> list[AddStep]:
    """A run's pages as ADD_PAGES calls of at most MAX_STEP_BYTES each, in order (the digest
    hashes page by page, so where a run is cut changes nothing in it)."""
    steps: list[AddStep] = []
    chunk: list[memoryview] = []
    size = 0
    for part in parts:
        view = memoryview(part)
        while len(view):
            take = min(len(view), MAX_STEP_BYTES - size)
            chunk.append(view[:take])
            view, size = view[take:], size + take
            if size == MAX_STEP_BYTES:
                steps.append(AddStep(gpa, PageType.NORMAL, size // PAGE_SIZE, tuple(chunk),
                                     executable))
                gpa, chunk, size = gpa + size, [], 0
    if size:
        steps.append(AddStep(gpa, PageType.NORMAL, size // PAGE_SIZE, tuple(chunk), executable))
    return steps
