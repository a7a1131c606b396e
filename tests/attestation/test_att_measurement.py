"""Launch digest: stored known answers (from sev-snp-measure) and a second implementation;
measuring a loaded image against the pure chain; the loader against the segments."""

from __future__ import annotations

import hashlib
import json
import random
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim.launch import vmsa_page
from tvmm.abi.guest import BOOT_INFO_GPA, SECRETS_GPA
from tvmm.abi.types import Level
from tvmm.guestimage import GuestImageError, load_elf
from tvmm.hw.measurement import (
    MEASUREMENT_VERSION,
    PAGE_SIZE,
    VMSA_GPA,
    LaunchDigest,
    MeasuredPage,
    PageType,
    launch_digest,
    page_info,
)
from tvmm_tools.bench_measure import Image, Segment, measure, memory_for, write_elf, write_image

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "measurement.json"


def load_vectors() -> list[dict]:
    """The known-answer file: each vector lists pages and the digest after each one."""
    document = json.loads(VECTORS.read_text())
    assert document["measurement_version"] == MEASUREMENT_VERSION
    return document["vectors"]


def vector_pages(vector: dict) -> list[tuple[int, PageType, bytes | None]]:
    pages = []
    for page in vector["pages"]:
        data = None
        if "fill_hex" in page:
            pattern = bytes.fromhex(page["fill_hex"])
            data = (pattern * (PAGE_SIZE // len(pattern) + 1))[:PAGE_SIZE]
        pages.append((int(page["gpa"], 16), PageType[page["type"]], data))
    return pages


def reference_digest(pages: list[tuple[int, int, bytes | None]]) -> bytes:
    """Straight from the spec text, sharing no code with tvmm.hw.measurement."""
    digest = bytes(48)
    for gpa, page_type, data in pages:
        contents = hashlib.sha384(data).digest() if page_type in (1, 2) else bytes(48)
        measured_gpa = 0xFFFFFFFFF000 if page_type == 2 else gpa
        info = (
            digest
            + contents
            + (0x70).to_bytes(2, "little")
            + bytes([page_type, 0, 0, 0, 0, 0])
            + measured_gpa.to_bytes(8, "little")
        )
        assert len(info) == 0x70
        digest = hashlib.sha384(info).digest()
    return digest


@pytest.mark.parametrize("vector", load_vectors(), ids=lambda v: v["name"])
def test_known_answer_vectors(vector: dict) -> None:
    pages = vector_pages(vector)
    assert launch_digest(pages).hex() == vector["digest"]
    chain = LaunchDigest()
    after = [chain.add_page(*page).digest_after.hex() for page in pages]
    assert after == vector["digests_after"]
    assert chain.digest.hex() == vector["digest"]
    assert reference_digest(pages).hex() == vector["digest"]


def test_empty_launch_is_48_zero_bytes() -> None:
    assert launch_digest([]) == bytes(48)
    assert LaunchDigest().pages == ()


def test_page_info_layout() -> None:
    info = page_info(b"\x01" * 48, b"\x02" * 48, PageType.CPUID, 0x1122334455667000)
    assert len(info) == 0x70
    assert info[:0x30] == b"\x01" * 48
    assert info[0x30:0x60] == b"\x02" * 48
    assert info[0x60:0x62] == b"\x70\x00"
    assert info[0x62] == 6
    assert info[0x63:0x68] == bytes(5)  # is_imi, VMPL3/2/1 permissions, reserved
    assert info[0x68:] == (0x1122334455667000).to_bytes(8, "little")


page_strategy = st.tuples(
    st.integers(0, (1 << 52) - 1).map(lambda n: n * PAGE_SIZE),
    st.sampled_from(list(PageType)),
    st.integers(0, 2**32 - 1),
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(page_strategy, max_size=6))
def test_matches_reference_implementation(specs: list[tuple[int, PageType, int]]) -> None:
    pages = [
        (gpa, page_type, random.Random(seed).randbytes(PAGE_SIZE)) for gpa, page_type, seed in specs
    ]
    expected = reference_digest([(gpa, int(t), data) for gpa, t, data in pages])
    assert launch_digest(pages) == expected
    chain = LaunchDigest()
    for page in pages:
        chain.add_page(*page)
    assert chain.digest == expected
    assert [p.digest_after for p in chain.pages][-1:] == ([expected] if pages else [])


def test_pages_lists_every_hashed_page() -> None:
    data = bytes(range(256)) * 16
    chain = LaunchDigest()
    first = chain.add_page(0x1000, PageType.NORMAL, data)
    second = chain.add_page(0x5000, PageType.VMSA, data)
    third = chain.add_page(0x2000, PageType.SECRETS, None)
    assert chain.pages == (first, second, third)
    assert first == MeasuredPage(
        0x1000, PageType.NORMAL, hashlib.sha384(data).digest(), first.digest_after
    )
    assert second.gpa == VMSA_GPA  # measured at the fixed VMSA address, not 0x5000
    assert third.contents_digest == bytes(48)
    assert chain.digest == third.digest_after


@pytest.mark.parametrize(
    "page_type", [PageType.ZERO, PageType.UNMEASURED, PageType.SECRETS, PageType.CPUID]
)
def test_unmeasured_types_ignore_contents(page_type: PageType) -> None:
    assert launch_digest([(0, page_type, None)]) == launch_digest([(0, page_type, b"x" * 4096)])


def test_bulk_and_single_paths_agree_for_any_buffer_type() -> None:
    rng = random.Random(7)
    image = rng.randbytes(8 * PAGE_SIZE)
    view = memoryview(image)
    pages = [
        (i * PAGE_SIZE, PageType.NORMAL, view[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])
        for i in range(8)
    ]
    mixed = pages[:3] + [(0x9000, PageType.ZERO, None), (0, PageType.VMSA, bytearray(4096))]
    single = LaunchDigest()
    for gpa, page_type, data in mixed:
        single.add_page(gpa, page_type, bytes(data) if data is not None else None)
    bulk = LaunchDigest()
    assert bulk.extend(mixed) == single.digest
    assert bulk.pages == single.pages


def test_initial_digest_continues_a_chain() -> None:
    pages = [(0, PageType.NORMAL, bytes(4096)), (0x1000, PageType.ZERO, None)]
    first = LaunchDigest()
    first.add_page(*pages[0])
    resumed = LaunchDigest(first.digest)
    resumed.add_page(*pages[1])
    assert resumed.digest == launch_digest(pages)


@pytest.mark.parametrize(
    ("gpa", "page_type", "data"),
    [
        (0x1001, PageType.NORMAL, bytes(4096)),  # not page-aligned
        (-4096, PageType.ZERO, None),
        (1 << 64, PageType.ZERO, None),
        (True, PageType.ZERO, None),  # a bool is not a GPA
        (0, PageType.NORMAL, bytes(4095)),
        (0, PageType.NORMAL, None),
        (0, PageType.VMSA, bytes(4097)),
        (0, 7, None),  # no such page type
        (0, 0, None),
    ],
)
def test_rejects_bad_pages(gpa: int, page_type: int, data: bytes | None) -> None:
    chain = LaunchDigest()
    with pytest.raises(ValueError):
        chain.add_page(gpa, page_type, data)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LaunchDigest().extend([(0, PageType.NORMAL, bytes(4096)), (gpa, page_type, data)])  # type: ignore[list-item]
    assert chain.digest == bytes(48) and chain.pages == ()


def test_rejects_bad_initial_digest() -> None:
    with pytest.raises(ValueError):
        LaunchDigest(bytes(47))


def test_int_page_type_is_accepted() -> None:
    assert launch_digest([(0, 3, None)]) == launch_digest([(0, PageType.ZERO, None)])  # type: ignore[list-item]


# -- runs of pages read in place (LaunchDigest.add_run) ------------------------------------
@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(0, (1 << 40) - 1), st.integers(0, 9), st.integers(0, 2**32 - 1))
def test_add_run_is_add_page_per_page(page: int, count: int, seed: int) -> None:
    gpa = page * PAGE_SIZE
    data = random.Random(seed).randbytes(count * PAGE_SIZE)
    pages = [(gpa + i * PAGE_SIZE, PageType.NORMAL, data[i * PAGE_SIZE : (i + 1) * PAGE_SIZE])
             for i in range(count)]
    single = LaunchDigest()
    for p in pages:
        single.add_page(*p)
    run = LaunchDigest()
    assert run.add_run(gpa, memoryview(data)) == single.digest
    assert run.pages == single.pages and len(run) == count
    assert run.digest == reference_digest([(g, int(t), d) for g, t, d in pages])


@pytest.mark.parametrize(
    ("gpa", "size"),
    [
        (0x1001, PAGE_SIZE),  # not page-aligned
        (0, PAGE_SIZE + 1),  # not whole pages
        (-PAGE_SIZE, PAGE_SIZE),
        ((1 << 64) - PAGE_SIZE, 2 * PAGE_SIZE),  # runs past the top of the 64-bit space
        (True, PAGE_SIZE),
    ],
)
def test_add_run_rejects_bad_runs(gpa: int, size: int) -> None:
    chain = LaunchDigest()
    chain.add_page(0, PageType.ZERO, None)
    before = chain.digest
    with pytest.raises(ValueError):
        chain.add_run(gpa, bytes(size))
    assert chain.digest == before and len(chain) == 1


# -- measuring an image: load_elf + plan_launch + predict ------------------------------------
def _expected_launch(image: Image, memory: int) -> bytes:
    """The pure chain for a launch of ``image``: boot info, secrets, every page, VMSA."""
    pages: list[tuple[int, int, bytes | None]] = [
        (BOOT_INFO_GPA, int(PageType.CPUID), None), (SECRETS_GPA, int(PageType.SECRETS), None)
    ]
    pages += [(image.first_gpa + i * PAGE_SIZE, int(PageType.NORMAL), bytes(page))
              for i, page in enumerate(image.pages)]
    pages.append((VMSA_GPA, int(PageType.VMSA), vmsa_page(image.entry, memory, Level.SNP)))
    return reference_digest(pages)


def test_measure_of_a_multi_mib_image_is_the_pure_chain(tmp_path: Path) -> None:
    image = write_image(tmp_path / "image.elf", mib=4, seed=7)
    memory = memory_for(image)
    assert measure(image.path, memory) == _expected_launch(image, memory)
    loaded = load_elf(image.path)
    assert loaded.page_count == len(image.pages)
    assert b"".join(p.data for p in loaded.pages) == image.contents


def test_a_launch_of_a_multi_mib_image_finalizes_to_the_pure_chain(tmp_path: Path) -> None:
    """The platform's ADD_PAGES path (runs joined once for the call) agrees with measure."""
    from tvmm.abi.types import Level
    from tvmm.host.hypervisor import HonestHypervisor
    from tvmm.machine import make_machine

    image = write_image(tmp_path / "image.elf", mib=4, seed=7)
    memory = memory_for(image)
    loaded = load_elf(image.path)
    machine = make_machine(seed=1, image=loaded, level=Level.SNP)
    digest = HonestHypervisor(machine.client).launch(loaded, Level.SNP, memory)
    assert digest == _expected_launch(image, memory)


def test_measure_copies_no_page(tmp_path: Path) -> None:
    """Loading and measuring read the pages where the file mapping holds them: before,
    the loader copied the file and every page, and joined each run once per page (a
    32 MiB image took 46 s)."""
    image = write_image(tmp_path / "image.elf", mib=8, seed=7)
    memory = memory_for(image)
    tracemalloc.start()
    try:
        digest = measure(image.path, memory)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == _expected_launch(image, memory)
    assert peak < len(image.contents) // 8  # the page log is 112 bytes a page


# -- the loader: pages as the segments lay them out -------------------------------------
def _reference_pages(segments: list[Segment]) -> list[tuple[int, bytes, bool]]:
    """Each segment's pages zero-filled, then its bytes written, in segment order."""
    pages: dict[int, bytearray] = {}
    executable: set[int] = set()
    for seg in segments:
        if seg.memsz == 0:
            continue
        for gpa in range(seg.vaddr & ~(PAGE_SIZE - 1), seg.vaddr + seg.memsz, PAGE_SIZE):
            pages.setdefault(gpa, bytearray(PAGE_SIZE))
            if seg.executable:
                executable.add(gpa)
        for i, byte in enumerate(seg.data):
            addr = seg.vaddr + i
            pages[addr & ~(PAGE_SIZE - 1)][addr & (PAGE_SIZE - 1)] = byte
    return [(gpa, bytes(pages[gpa]), gpa in executable) for gpa in sorted(pages)]


segment_strategy = st.builds(
    lambda page, offset, size, extra, executable, seed: Segment(
        0x400000 + page * PAGE_SIZE + offset,
        random.Random(seed).randbytes(size),
        size + extra,
        executable,
    ),
    st.integers(0, 12),
    st.sampled_from([0, 0, 1, 0x800, 0xFFF]),
    st.sampled_from([0, 1, 100, PAGE_SIZE - 1, PAGE_SIZE, 3 * PAGE_SIZE, 3 * PAGE_SIZE + 5]),
    st.sampled_from([0, 0, 7, PAGE_SIZE, 2 * PAGE_SIZE + 3]),
    st.booleans(),
    st.integers(0, 2**16),
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(segment_strategy, min_size=1, max_size=4))
def test_loader_pages_match_the_segments(tmp_path_factory: pytest.TempPathFactory,
                                         segments: list[Segment]) -> None:
    path = tmp_path_factory.mktemp("elf") / "guest.elf"
    write_elf(path, 0x400000, segments)
    expected = _reference_pages(segments)
    if not expected:
        with pytest.raises(GuestImageError):
            load_elf(path)
        return
    image = load_elf(path)
    assert [(p.gpa, p.data, p.executable) for p in image.pages] == expected
    runs = image.runs()  # contiguous, alternating executability, the same bytes
    assert b"".join(b"".join(r.parts) for r in runs) == b"".join(d for _, d, _ in expected)
    for run, following in zip(runs, runs[1:], strict=False):
        end = run.gpa + run.count * PAGE_SIZE
        assert following.gpa > end or following.executable != run.executable


def test_loader_refuses_more_file_bytes_than_memory(tmp_path: Path) -> None:
    path = tmp_path / "guest.elf"
    write_elf(path, 0x400000, [Segment(0x400000, bytes(100), 50, True)])
    with pytest.raises(GuestImageError):
        load_elf(path)


def test_loader_refuses_an_image_larger_than_any_guest(tmp_path: Path) -> None:
    path = tmp_path / "guest.elf"  # 2 GiB of bss: zeros the loader would have to allocate
    write_elf(path, 0x400000, [Segment(0x400000, b"\xf4", 2 << 30, True)])
    with pytest.raises(GuestImageError):
        load_elf(path)


def test_loader_reads_a_short_file_as_far_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "guest.elf"
    data = bytes(range(256)) * 32  # two pages
    write_elf(path, 0x400000, [Segment(0x400000, data, len(data), True)])
    with open(path, "r+b") as f:  # cut the file one page into the segment's bytes
        f.truncate(2 * PAGE_SIZE)
    pages = load_elf(path).pages
    assert [p.data for p in pages] == [data[:PAGE_SIZE], bytes(PAGE_SIZE)]
