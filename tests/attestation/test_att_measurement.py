"""Launch digest: stored known answers (from sev-snp-measure) and a second implementation."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
