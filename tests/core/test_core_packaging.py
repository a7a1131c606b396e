"""A non-editable install boots every guest: the wheel carries guests/ (sources, runtime,
headers, linker script, victims, the Linux personality) and the installed package finds it
there.

Cheap enough for the default suite: the wheel is built without an isolated build env when
setuptools can make wheels itself (the test extra asks for it), installed with
``--no-deps --no-index --target`` (its dependencies are this environment's), and the guests
are booted in one interpreter that imports nothing from this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = Path("/bin/busybox")  # a static Linux program for the personality (tests/linux)
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist",
                              ".*_cache", ".hypothesis", "fuzz-findings", "*.jsonl*", "*.elf")

BOOT_ALL = textwrap.dedent("""
    import sys
    from pathlib import Path
    import tvmm
    from tvmm import guestbuild
    from tvmm.abi.types import Level
    from tvmm.machine import boot
    from tvmm.samples import SAMPLES, VICTIMS
    site = Path(sys.argv[1]).resolve()
    assert Path(tvmm.__file__).resolve().is_relative_to(site), tvmm.__file__
    assert guestbuild.GUESTS_DIR.is_relative_to(site), guestbuild.GUESTS_DIR
    for name, sample in SAMPLES.items():
        lines = ["guess", "letmein"] if name == "password" else []  # as tvmm boot gives it
        report = boot(name, Level.PLAIN, input_lines=lines)
        assert report.how == "exit", (name, report.how, report.detail)
        assert sample.expect in report.console, (name, report.console)
    victim = next(iter(VICTIMS))
    report = boot(victim, Level.PLAIN)
    assert report.how == "exit", (victim, report.how, report.detail)
    from tvmm import guestlinux  # the Linux personality (guests/libos), built from the wheel
    assert guestlinux.LIBOS_DIR.is_relative_to(site), guestlinux.LIBOS_DIR
    image = guestlinux.build(Path(sys.argv[2]), ["echo", "libos ok"], [])
    report = boot(str(image.path), Level.PLAIN, memory=image.memory)
    assert (report.how, report.console) == ("exit", "libos ok\\n"), (report.how, report.detail)
    print("booted", len(SAMPLES), "samples,", victim, "and a Linux program")
""")


def _setuptools_makes_wheels() -> bool:
    try:
        major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    except Exception:  # noqa: BLE001 - not installed, or an odd version string
        return False
    return (major, minor) >= (70, 1)


def test_a_wheel_installed_elsewhere_boots_every_guest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SKIP)  # the checkout stays untouched
    # without a setuptools that makes wheels, pip builds in an isolated env (slower)
    isolation = ["--no-build-isolation"] if _setuptools_makes_wheels() else []
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", *isolation, "-w", str(tmp_path / "dist"),
                    str(src)], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("tvmm-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, cwd=tmp_path)
    assert (site / "tvmm" / "guests" / "runtime" / "guest.ld").is_file()
    libos = site / "tvmm" / "guests" / "libos"
    assert {p.name for p in libos.iterdir()} >= {"entry.S", "libos.h", "sysnames.h", "syscalls.c"}
    assert BUSYBOX.is_file(), "apt-get install busybox-static (.ci/run does)"
    assert not (site / "tvmm" / "guests").is_symlink()  # the files themselves
    env = {**os.environ, "PYTHONPATH": str(site), "TVMM_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", BOOT_ALL, str(site), str(BUSYBOX)],
                          cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "booted" in proc.stdout
