"""Victims of real library code (issue 18 part 5): Debian's static libgcrypt and mbedTLS
behind small drivers (guests/victims/gcry_modexp.c, mbedtls_modexp.c), built with
``gcc -static`` and run by the Linux personality.  `.ci/run` installs the libraries.

Each prints 2^x mod 2^255-19 for its secret exponent x at every level, as Python computes
it; the attacks find the program's pages in the public image; a declaration that names
libraries is checked.  The attack cells themselves run in the matrix (slow rows, -m bench;
figures: python -m tvmm_tools.real_code --write-docs)."""

from __future__ import annotations

import random

import pytest

from tvmm import guestlinux
from tvmm.abi.types import Level
from tvmm.guestimage import GuestImageError
from tvmm.machine import boot
from tvmm.samples import VICTIMS, declared, resolve
from tvmm_tools.attacks._profile import LIVELOCK, Tracer, code_pages, data_pages

REAL = ("gcry_modexp", "mbedtls_modexp")
P = 2**255 - 19


def _expected(secret: bytes) -> str:
    x = int.from_bytes(secret, "little") | 1 << (8 * len(secret) - 1)  # top bit set
    return f"result={pow(2, x, P):X}"


@pytest.mark.parametrize("level", list(Level))
@pytest.mark.parametrize("name", REAL)
def test_real_victim_prints_the_honest_result(name, level):
    seed = 5
    report = boot(name, level, seed=seed)
    secret = VICTIMS[name].make_secret(random.Random(seed))
    assert report.how == "exit" and report.status == 0, report.detail
    assert _expected(secret) in report.console
    assert report.violations == []


@pytest.mark.parametrize("level", list(Level))
def test_spellcheck_finds_every_word_of_the_passphrase(level):
    report = boot("spellcheck", level, seed=5)
    assert report.how == "exit" and report.status == 0, report.detail
    assert "result=4/4" in report.console


def test_the_real_victims_are_declared_linux_programs():
    assert VICTIMS["spellcheck"].linux and not VICTIMS["spellcheck"].libraries  # libc only
    for name in REAL:
        victim = VICTIMS[name]
        assert victim.linux and victim.libraries and victim.packages
        assert len(victim.make_secret(random.Random(1))) == 4
        _image, sample = resolve(name)
        assert sample.memory > 32 << 20  # the Linux image's memory, not the default


def test_the_attacks_find_the_program_in_the_public_image():
    image, _ = resolve("gcry_modexp")
    program = guestlinux.program_map(image)
    powm = next(a for a, _n, sym in program.symbols if sym == "_gcry_mpi_powm")
    code, data = code_pages(image), data_pages(image)
    assert powm & ~0xFFF in program.code and powm & ~0xFFF in code
    assert set(program.data) <= set(data) and not set(code) & set(data)
    assert all(p < guestlinux.ROOTFS_BASE for p in data)  # not the root file system's pages
    hello, _ = resolve("hello")
    assert guestlinux.program_map(hello) is None


@pytest.mark.parametrize("text, why", [
    ('secret_bytes = 4\nlibraries = ["gcrypt"]\n', "go with linux = true"),
    ('secret_bytes = 4\nlinux = "yes"\n', "linux must be true or false"),
    ('secret_bytes = 4\nlinux = true\nlibraries = "gcrypt"\n', "list of names"),
    ('secret_bytes = 4\nlinux = true\npackages = ["a b"]\n', "list of names"),
])
def test_a_bad_linux_declaration_is_a_clear_error(tmp_path, text, why):
    (tmp_path / "v.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "v.toml").write_text(text)
    with pytest.raises(GuestImageError, match=why):
        declared(tmp_path / "v.c")


def test_a_linux_guest_of_ones_own_runs_by_path(tmp_path):
    (tmp_path / "mine.c").write_text(
        '#include <stdio.h>\nint main(void) { FILE *f = fopen("/run/secrets/key", "rb");\n'
        '  int c = fgetc(f); printf("result=%d\\n", c); return 0; }\n')
    (tmp_path / "mine.toml").write_text("secret_bytes = 1\nlinux = true\n")
    report = boot(str(tmp_path / "mine.c"), Level.SNP, secret=b"\x2a")
    assert "result=42" in report.console


def test_a_missing_library_names_its_package(tmp_path):
    (tmp_path / "v.c").write_text("int main(void) { return 0; }\n")
    with pytest.raises(guestlinux.LinuxImageError,
                       match=r"libnosuchlib\.a not found: install libnosuch-dev"):
        guestlinux.build_program(tmp_path / "v.c", ("nosuchlib",), ("libnosuch-dev",))


class _Probe(Tracer):
    """A Tracer without a platform: only its page bookkeeping is exercised."""

    def __init__(self, code: list[int]) -> None:  # noqa: D107 - no hypervisor behind it
        self.code, self.units = code, {}
        self.alternation = (0, 0, 0)


def test_a_straddling_instruction_joins_its_two_pages():
    probe = _Probe([0x1000, 0x2000, 0x5000])
    for k in range(LIVELOCK + 1):  # calls and returns between two pages: not yet a livelock
        probe._note_alternation(0x2000 if k % 2 else 0x1000)
    assert probe.units == {}
    probe._note_alternation(0x2000 if (LIVELOCK + 1) % 2 else 0x1000)
    assert probe.units == {0x1000: (0x1000, 0x2000), 0x2000: (0x1000, 0x2000)}
    far = _Probe([0x1000, 0x5000])  # pages that are not adjacent never join
    for _ in range(2 * LIVELOCK):
        far._note_alternation(0x1000)
        far._note_alternation(0x5000)
    assert far.units == {}


def test_the_real_code_table_shows_every_cell_and_the_published_figures():
    from tvmm.judge import Verdict
    from tvmm_tools import real_code

    verdicts = [Verdict(attack=a, guest=v, level=lv.value, kind="confidentiality",
                        n_bits=32.0, bits_correct=0.0, leaked_bits=2.0 if a == "single-step"
                        else 0.0, full_recovery=False, detected=lv is Level.SHIM,
                        detected_after_exits=None, integrity_violated=False, blocked=False,
                        exits=1, wall_s=0.0, detail="d")
                for v in real_code.VICTIMS for a in real_code.ATTACKS for lv in Level]
    varieties = [real_code.Variety(v, 6, 5, (1, 2, 3, 4, 5, 5)) for v in real_code.VICTIMS]
    text = real_code.to_markdown(verdicts, 1.0, varieties)
    assert "| single-step | gcry_modexp | **2 b** | **2 b** | **2 b** | **2 b** | detected (2 b) |" \
        in text
    assert "| mbedtls_modexp | 6 | 5 | 1, 2, 3, 4, 5, 5 |" in text
    assert "Shinde et al." in text and "Schwarz et al." in text and "Xu, Cui" in text
    assert len([line for line in text.splitlines() if line.startswith("| page-fault |")]) == \
        6 * len(real_code.VICTIMS)
