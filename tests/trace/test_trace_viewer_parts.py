"""The viewer's pieces that need no terminal: filters, search, the page-access map, the
guest image, one-line summaries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tvmm.abi.trace_events import EventKind, Position, TraceEvent, TraceHeader
from tvmm.trace.reader import TraceReader
from tvmm.trace.synthetic import MUL_PAGE, SQR_PAGE, guest_elf_bytes, write_synthetic_trace
from tvmm.tui.event_text import row_text, summary
from tvmm.tui.filter_spec import FilterSpec, apply_filter, parse_filter
from tvmm.tui.guest_image import GuestImage
from tvmm.tui.page_access import scan_page_faults
from tvmm.tui.registers import Change, diff
from tvmm.tui.text_search import find_text


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> TraceReader:
    tmp = tmp_path_factory.mktemp("parts")
    return TraceReader(
        write_synthetic_trace(tmp / "s.jsonl", 2000, seed=21, elf_path=tmp / "guest.elf")
    )


@pytest.fixture(scope="module")
def events(reader: TraceReader) -> list[TraceEvent]:
    return list(reader.iter_events())


def test_parse_filter_words() -> None:
    assert parse_filter("") == FilterSpec()
    spec = parse_filter("exit, policy name=step_* level=snp npf")
    assert spec.kinds == {EventKind.EXIT, EventKind.POLICY}
    assert spec.names == ("step_*", "npf") and spec.levels == ("snp",)
    assert parse_filter("-attack").kinds == set(EventKind) - {EventKind.ATTACK}
    for bad in ("colour=red", "-weather", "name="):
        with pytest.raises(ValueError):
            parse_filter(bad)


@pytest.mark.parametrize(
    "text",
    [
        "exit",
        "npf",
        "name=step_*",
        "policy attack",
        "level=snp",
        "exit name=timer",
        "exit -exit",
        "name=nothing",
    ],
)
def test_filters_agree_with_reading_every_event(
    reader: TraceReader, events: list[TraceEvent], text: str
) -> None:
    spec = parse_filter(text)
    from fnmatch import fnmatchcase

    def keep(e: TraceEvent) -> bool:
        if spec.kinds is not None and e.kind not in spec.kinds:
            return False
        if spec.names and not any(fnmatchcase(e.name, g) for g in spec.names):
            return False
        levels = {v.get("level") for v in (e.inside or {}, e.outside or {})}
        return not spec.levels or bool(levels & set(spec.levels))

    assert list(apply_filter(reader, spec)) == [i for i, e in enumerate(events) if keep(e)]


def test_search_finds_text_and_hex_numbers(reader: TraceReader, events: list[TraceEvent]) -> None:
    rows = reader.indices()
    first_mul = next(
        i
        for i, e in enumerate(events)
        if (e.inside or {}).get("symbol", "").startswith("modexp_mul")
    )
    assert find_text(reader, "MODEXP_MUL", -1, rows) == first_mul
    decimal = re.compile(rb"(?<![0-9])%d(?![0-9])" % SQR_PAGE)  # traces store decimal
    first_sqr_page = next(i for i in range(len(reader)) if decimal.search(reader.raw(i)))
    assert find_text(reader, hex(SQR_PAGE), -1, rows) == first_sqr_page
    after = find_text(reader, "modexp_mul", first_mul, rows)
    assert after is not None and after > first_mul
    assert find_text(reader, "no such text anywhere", 0, rows) is None
    exits = reader.indices({EventKind.EXIT})
    assert find_text(reader, "unmap_page", -1, exits) is None  # hidden by the filter
    assert find_text(reader, "cancelled", -1, rows, cancelled=lambda: True) is None


def test_page_access_map(reader: TraceReader, events: list[TraceEvent]) -> None:
    access = scan_page_faults(reader)
    npf = [(i, e) for i, e in enumerate(events) if e.kind is EventKind.EXIT and e.name == "npf"]
    assert access.faults == len(npf)
    assert access.sequence[:50] == tuple(e.inside["fault_gpa"] >> 12 for _, e in npf[:50])
    pages = {p.page: p for p in access.pages}
    sqr = pages[SQR_PAGE >> 12]
    assert access.label(SQR_PAGE >> 12) == "A"  # the first page to fault
    assert sqr.first_event == npf[0][0]
    assert sqr.count == sum(1 for _, e in npf if e.inside["fault_gpa"] >> 12 == SQR_PAGE >> 12)
    assert pages[MUL_PAGE >> 12].symbol.startswith("modexp_mul")


def test_guest_image_symbols_and_disassembly(tmp_path: Path) -> None:
    elf = tmp_path / "g.elf"
    elf.write_bytes(guest_elf_bytes())
    header = TraceHeader("g", "plain", 0, {}, elf=str(elf))
    image = GuestImage.load(header)
    assert image.has_code and image.note == ""
    assert image.symbolize(0x402007) == "modexp_sqr+0x7"
    assert image.symbolize(0x403000) == "modexp_mul"
    around = image.disassemble_around(0x40200C, before=2, after=1)
    assert [(i.address, i.mnemonic) for i in around] == [
        (0x402007, "mov"),
        (0x40200A, "xor"),
        (0x40200C, "div"),
        (0x40200F, "mov"),
    ]
    assert image.disassemble_around(0x900000) == []


def test_guest_image_refuses_a_different_elf(tmp_path: Path) -> None:
    elf = tmp_path / "g.elf"
    elf.write_bytes(guest_elf_bytes())
    header = TraceHeader(
        "g",
        "plain",
        0,
        {},
        elf="g.elf",
        elf_sha256="00" * 32,
        symbols=[(0x1000, 0x10, "from_header")],
    )
    image = GuestImage.load(header, tmp_path)
    assert not image.has_code and "not the ELF that was traced" in image.note
    assert image.symbolize(0x1004) == "from_header+0x4"
    missing = GuestImage.load(TraceHeader("g", "plain", 0, {}, elf="nowhere.elf"), tmp_path)
    assert "not found" in missing.note
    garbage = tmp_path / "garbage.elf"
    garbage.write_bytes(b"not an elf")
    assert (
        "not a usable ELF"
        in GuestImage.load(TraceHeader("g", "plain", 0, {}, elf=str(garbage))).note
    )


@pytest.mark.parametrize("kind", list(EventKind))
def test_summaries_survive_missing_and_odd_keys(kind: EventKind) -> None:
    for inside, outside in (
        (None, None),
        ({}, {}),
        ({"rip": "x", "vector": None, "text": 5}, {"fields": [1], "slot": "?"}),
    ):
        event = TraceEvent(Position(1), kind, "name", inside, outside)
        assert isinstance(summary(event), str)
        assert "name" in row_text(event).plain


def test_register_diff_in_architectural_order() -> None:
    old = {"rip": 1, "rax": 5, "rbx": 7, "xmm0": 1}
    new = {"rip": 2, "rax": 5, "rbx": 8, "r15": 0}
    assert diff(old, new) == [
        Change("rbx", 7, 8),
        Change("r15", None, 0),
        Change("rip", 1, 2),
        Change("xmm0", 1, None),
    ]
