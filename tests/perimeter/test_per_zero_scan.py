"""The exporter's zero-page search against the plain definition, on every kind of page
(all zero, one stray byte anywhere — the first one too —, runs of zeros that straddle
page boundaries)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shim.management.export import _zero_pages
from tvmm.hw.vcpu import PAGE

ZERO = bytes(PAGE)


@st.composite
def _page(draw) -> bytes:
    kind = draw(st.sampled_from(["zero", "byte", "tail", "head"]))
    page = bytearray(PAGE)
    if kind == "byte":  # one non-zero byte anywhere
        page[draw(st.integers(0, PAGE - 1))] = draw(st.integers(1, 255))
    elif kind == "tail":  # zeros up to a cut, then data: a zero run ends inside the page
        cut = draw(st.integers(0, PAGE - 1))
        page[cut:] = b"\x01" * (PAGE - cut)
    elif kind == "head":  # data, then zeros: a zero run starts inside the page
        cut = draw(st.integers(1, PAGE))
        page[:cut] = b"\x02" * cut
    return bytes(page)


@settings(max_examples=300, deadline=None)
@given(st.lists(_page(), min_size=1, max_size=10))
def test_zero_pages_are_exactly_the_all_zero_pages(pages: list[bytes]) -> None:
    chunk = memoryview(b"".join(pages)).toreadonly()  # a view, as of guest RAM
    assert _zero_pages(chunk) == {i for i, page in enumerate(pages) if page == ZERO}
