"""Test-wide settings: hypothesis is derandomized (seeded from each test) so that every run
can be replayed; set TVMM_HYPOTHESIS=explore to search with fresh randomness.  The modeled
root of trust (chip and manufacturer keys) lives in a temporary TVMM_STATE_DIR, never in
the user's ~/.local/state/tvmm: booting a guest attests by default."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

settings.register_profile("replayable", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("TVMM_HYPOTHESIS", "replayable"))


@pytest.fixture(scope="session", autouse=True)
def _tvmm_state_dir(tmp_path_factory: pytest.TempPathFactory):
    """One temporary state directory per test session (its RSA-4096 keys take seconds)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TVMM_STATE_DIR", str(tmp_path_factory.mktemp("tvmm-state-dir")))
        yield
