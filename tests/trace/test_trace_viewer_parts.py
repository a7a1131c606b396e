"""The viewer's pieces that need no terminal: filters, search, the page-access map, the
guest image, one-line summaries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tvmm.abi.trace_events import EventKind, Position, TraceEvent, TraceHeader
from tvmm.trace.reader import TraceReader
from tvmm.trace.synthetic import MUL_PAGE, SQR_PAGE, guest_elf_bytes, write_synthetic_trace
from tvmm.tui.event_text import row_text, summary
from tvmm.tui.filter_spec import FilterSpec, apply_filter, parse_filter
from tvmm.tui.guest_image import GuestImage
from tvmm.tui.host_learned import Exposure, fault_exposure, findings, registers_in_clear
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


# -- scanning a block at a time (bounded memory) gives what one pass gave ---------------------


@pytest.fixture
def small_blocks(reader: TraceReader):
    """Ranges of ~4 KiB instead of 64 MiB: every line boundary case is crossed many times."""
    reader.block_bytes = 4096
    yield reader
    reader.block_bytes = TraceReader.block_bytes


def test_blocks_cover_every_line_once(small_blocks: TraceReader) -> None:
    reader = small_blocks
    starts = []
    last = None
    for lo, hi in reader.blocks():
        assert reader.buffer[lo : lo + 1] == b"\n" and reader.buffer[hi : hi + 1] == b"\n"
        assert last is None or lo == last
        starts += [lo + m.start() + 1 for m in re.finditer(rb"\n(?=\{)", reader.buffer[lo:hi])]
        last = hi
    assert starts == [reader.offset(i) for i in range(len(reader))]
    middle = list(reader.blocks(100, 200))
    assert middle[0][0] == reader.offset(100) - 1 and middle[-1][1] == reader.offset(200) - 1


@pytest.mark.parametrize("text", ["npf", "name=step_*", "level=snp", "exit name=timer"])
def test_filters_in_small_blocks_agree(small_blocks: TraceReader, events, text: str) -> None:
    whole = TraceReader(small_blocks.path)
    assert list(apply_filter(small_blocks, parse_filter(text))) == list(
        apply_filter(whole, parse_filter(text))
    )


def test_search_and_page_map_in_small_blocks_agree(small_blocks: TraceReader) -> None:
    whole = TraceReader(small_blocks.path)
    rows = whole.indices()
    for query, after in (("modexp_mul", -1), ("modexp_mul", 1500), ("0x402000", 10), ("zzz", 5)):
        assert find_text(small_blocks, query, after, rows) == find_text(whole, query, after, rows)
    assert scan_page_faults(small_blocks) == scan_page_faults(whole)
    assert scan_page_faults(small_blocks, start=500, stop=900) == scan_page_faults(
        whole, start=500, stop=900
    )
    seen: list[float] = []
    find_text(small_blocks, "no such text", -1, rows, progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == 1.0
    assert find_text(small_blocks, "modexp_mul", -1, rows, cancelled=lambda: True) is None


# -- what the host learned: every outside number, whatever its key ----------------------------


_KEYS = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=12)


@given(gpa=st.integers(0x1000, (1 << 40) - 1), key=_KEYS, nested=st.booleans(),
       form=st.sampled_from(["exact", "number", "page address"]))
def test_any_field_that_carries_the_fault_address_is_found(
    gpa: int, key: str, nested: bool, form: str
) -> None:
    """No hand list of field names: a field of any name, at any depth, that holds the
    address, its page number or its page's address is a leak of that much."""
    given_value = {"exact": gpa, "number": gpa >> 12, "page address": gpa & ~0xFFF}[form]
    if form == "page address" and given_value == gpa:
        form = "exact"
    fields = {"other": -5, key: given_value}  # a number no address relates to
    outside = {"reason": "npf", "fields": {"inner": [fields]} if nested else fields}
    best = fault_exposure(findings({"fault_gpa": gpa}, outside))
    assert best is not None
    assert best.exposure == (Exposure.EXACT if form == "exact" else Exposure.PAGE)
    assert best.key.endswith(key)


def test_hidden_only_when_no_field_relates() -> None:
    inside = {"fault_gpa": 0x2013A8, "rip": 0x2013A8, "retired": 5}
    assert fault_exposure(findings(inside, {"fields": {"status": 0}, "state": "2013a8"})) is None
    coarse = fault_exposure(findings(inside, {"fields": {"region": 0x200000}}))
    assert coarse is not None and coarse.exposure is Exposure.COARSENED
    counted = findings(inside, {"fields": {"retired": 1}}, delta=1)
    assert [f.fact for f in counted] == ["instructions since the previous exit"]


def test_registers_in_clear_follow_the_blob_layout() -> None:
    regs = {"rax": 0x1234, "rbx": 0, "rip": 0x401000}
    slots = b"".join(v.to_bytes(8, "little") + b"\xff" * 8 for v in regs.values())
    assert registers_in_clear({"regs": regs}, slots.hex()) == (3, 3)
    packed = b"".join(v.to_bytes(8, "little") for v in regs.values())
    assert registers_in_clear({"regs": regs}, packed.hex()) == (3, 3)
    assert registers_in_clear({"regs": regs}, (b"\x55" * 48).hex()) == (0, 3)
    assert registers_in_clear({"regs": regs}, "zz") is None


def test_page_map_of_lines_in_another_key_order(reader: TraceReader, tmp_path: Path) -> None:
    """Lines another producer wrote with sorted keys are parsed one by one, same map."""
    import json

    lines = reader.path.read_bytes().splitlines()
    sorted_keys = [lines[0]] + [json.dumps(json.loads(x), sort_keys=True).encode()
                                for x in lines[1:]]
    other = tmp_path / "sorted.jsonl"
    other.write_bytes(b"\n".join(sorted_keys) + b"\n")
    theirs, ours = scan_page_faults(TraceReader(other)), scan_page_faults(reader)
    assert (theirs.faults, theirs.sequence) == (ours.faults, ours.sequence) and ours.faults
