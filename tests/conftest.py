"""Test-wide settings: hypothesis is derandomized (seeded from each test) so that every run
can be replayed; set TVMM_HYPOTHESIS=explore to search with fresh randomness."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("replayable", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("TVMM_HYPOTHESIS", "replayable"))
