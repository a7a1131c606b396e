"""Where a machine's tvmm state lives: ``$TVMM_STATE_DIR``, else ``~/.local/state/tvmm``.

One rule for every side: the modeled manufacturer and chips keep their keys and publish
their certificates there (tvmm.hw.root_of_trust), the owner's verifier reads the modeled
ARK from it (tvmm.owner.roots), the perimeter and the operator keep their files in it.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """``$TVMM_STATE_DIR``, else ``~/.local/state/tvmm``."""
    configured = os.environ.get("TVMM_STATE_DIR")
    return Path(configured) if configured else Path.home() / ".local" / "state" / "tvmm"
