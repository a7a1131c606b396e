"""The victim guests of guests/victims (issue 14 part 5): each boots by path at every level
with the result an honest run gives (computed here from the secret, independently of the
guest), is listed by `tvmm guests`, and has the code/data layout its leakage shape needs."""

from __future__ import annotations

import json
import random

import pytest

from tvmm.abi.types import Level
from tvmm.cli import main
from tvmm.guestimage import GuestImageError
from tvmm.machine import boot
from tvmm.samples import VICTIMS, VICTIMS_DIR, declared, resolve

M64 = (1 << 64) - 1
FNV = 0x100000001B3


def _branches(s: int) -> int:
    x = 0x243F6A8885A308D3
    for i in range(64):
        if (s >> i) & 1:
            x = ((x ^ (x << 17)) & M64) * 0xBF58476D1CE4E5B9 + 3 * i + 1
        else:
            x = (x ^ (x >> 29)) * 0x9E3779B97F4A7C15 + i
        x &= M64
    return x


def _ttable(s: int) -> int:
    r, table = 0x2545F4914F6CDD1D, []
    for _ in range(16):
        entry = []
        for _ in range(128):
            r ^= (r << 13) & M64
            r ^= r >> 7
            r ^= (r << 17) & M64
            entry.append(r)
        table.append(entry)
    x = 0x13198A2E03707344
    for rnd in range(4):
        for j in range(16):
            x = (((x << 7) | (x >> 57)) & M64) ^ table[(s >> (4 * j)) & 15][(8 * j + rnd) & 127]
    return x


def _scan(s: int) -> int:
    x = 0xA4093822299F31D0
    for j in range(8):
        x = ((x ^ ((s >> (8 * j)) & 0xFF)) * FNV) & M64
    return x


def _stores(s: int) -> int:
    x, pages = 0x082EFA98EC4E6C89, ([0] * 64, [0] * 64)
    for i in range(64):
        x = (x * 0x5851F42D4C957F2D + 0x14057B7EF767814F) & M64
        pages[(s >> i) & 1][i] = x
    total = 0
    for i in range(64):
        total = ((total ^ pages[0][i] ^ ((pages[1][i] << 1) & M64)) * FNV) & M64
    return total


def _dispatch(s: int) -> int:
    x = 0x0123456789ABCDEF
    for i in range(32):
        op = (s >> (2 * i)) & 3
        if op == 0:
            x = ((x + 0x9E3779B97F4A7C15) & M64) ^ ((i << 7) & M64)
        elif op == 1:
            x = ((((x << 13) | (x >> 51)) & M64) + i) & M64
        elif op == 2:
            x = (x * 0xBF58476D1CE4E5B9 + i) & M64
        else:
            x = x ^ (x >> 31) ^ ((0x94D049BB133111EB * (i + 1)) & M64)
    return x


REFERENCE = {"branches": _branches, "ttable": _ttable, "ttable_unrolled": _ttable,
             "scan": _scan, "stores": _stores, "dispatch": _dispatch}
PRINTS = {"dispatch": "state"}  # as its authors (the red team) wrote it; the others: result


FREESTANDING = {name for name, v in VICTIMS.items() if not v.linux}  # the others: tests/linux


def test_the_victims_are_the_declared_shapes():
    assert FREESTANDING == set(REFERENCE)
    for victim in (VICTIMS[name] for name in FREESTANDING):
        assert victim.summary  # the declaration's one-line description of the leak
        assert len(victim.make_secret(random.Random(1))) == 8


@pytest.mark.parametrize("level", [Level.PLAIN, Level.SNP, Level.SHIM])
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_victim_boots_by_path_with_the_honest_result(name, level):
    seed = 11
    report = boot(str(VICTIMS_DIR / f"{name}.c"), level, seed=seed)
    secret = VICTIMS[name].make_secret(random.Random(seed))
    assert report.how == "exit" and report.status == 0, report.detail
    value = REFERENCE[name](int.from_bytes(secret, "little"))
    assert f"{PRINTS.get(name, 'result')}={value:#018x}" in report.console
    assert report.violations == []


def test_guests_lists_the_victims(capsys):
    assert main(["guests", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows if r["kind"] == "victim"} == set(VICTIMS)
    assert set(VICTIMS) >= set(REFERENCE)
    assert {r["name"] for r in rows if r["kind"] == "sample"} >= {"hello", "modexp"}


def test_victim_boots_by_name_with_a_different_secret_per_seed():
    a, b = (boot("scan", Level.SNP, seed=seed).console for seed in (1, 2))
    assert a != b  # the secret is the seed's, not a constant


def _symbol(image, name: str) -> tuple[int, int]:
    return next((addr, size) for addr, size, sym in image.symbols if sym == name)


def test_layouts_put_each_secret_choice_on_its_own_page():
    branches, _ = resolve("branches")
    pages = {_symbol(branches, f)[0] >> 12 for f in ("mix0", "mix1", "main")}
    assert len(pages) == 3
    ttable, _ = resolve("ttable")
    addr, size = _symbol(ttable, "table")
    assert addr % 4096 == 0 and size == 4 * 4096
    dispatch, _ = resolve("dispatch")
    pages = {_symbol(dispatch, f)[0] >> 12 for f in ("op_add", "op_rot", "op_mul", "op_xor")}
    assert len(pages) == 4
    stores, _ = resolve("stores")
    assert _symbol(stores, "page0")[0] >> 12 != _symbol(stores, "page1")[0] >> 12


@pytest.mark.parametrize("text, why", [
    ("secret_bytes = -1\n", "secret_bytes"),
    ("secret_bytes = 5000\n", "secret_bytes"),
    ('secret_bytes = "8"\n', "secret_bytes"),
    ("secret_bytes = 8\ndescription = 3\n", "description"),
    ("secret_bytes = 8\nsize = 3\n", "unknown setting"),
    ("secret_bytes = \n", "TOML"),
    ('secret_bytes = 8\nform = "hex"\n', "form"),
    ('secret_bytes = 8\nform = "symbols"\n', "alphabet"),
    ('secret_bytes = 8\nform = "symbols"\nalphabet = "aab"\n', "alphabet"),
    ('secret_bytes = 8\nalphabet = "ab"\n', "alphabet goes with"),
    ('secret_bytes = 8\nvaries = "ticks="\n', "varies"),
])
def test_a_bad_declaration_is_a_clear_error(tmp_path, text, why):
    source = tmp_path / "mine.c"
    source.write_text("int main(void) { return 0; }\n")
    (tmp_path / "mine.toml").write_text(text)
    with pytest.raises(GuestImageError, match=why):
        declared(source)


def test_a_guest_without_a_declaration_has_no_secret(tmp_path):
    assert declared(tmp_path / "mine.c") is None


def test_a_declaration_of_symbols_draws_characters_of_its_alphabet(tmp_path):
    source = tmp_path / "pin.c"
    (tmp_path / "pin.toml").write_text(
        'secret_bytes = 6\nform = "symbols"\nalphabet = "0123456789"\nvaries = ["t="]\n')
    pin = declared(source)
    assert pin is not None and pin.form == "symbols" and pin.varies == ("t=",)
    secret = pin.make_secret(random.SystemRandom())
    assert len(secret) == 6 and set(secret.decode()) <= set("0123456789")
