"""Pinned roots: the only ARKs a verifier built on them trusts.

A chain proves nothing by itself: anyone can make an ARK, an ASK and a VCEK that sign each
other and a report. What makes evidence genuine is that its root is one the owner pinned
beforehand. The pinned set is

- ``amd-milan``, ``amd-genoa``: AMD's real ARKs, shipped beside this file (public data,
  provenance in PROVENANCE.md here);
- ``tvmm``: the modeled manufacturer's ARK, read from the state directory if it has one
  (never created here: a verifier makes no keys);
- or exactly one certificate the caller names (``tvmm verify --ark FILE``).

``pinned_root`` compares the chain's ARK with the set byte for byte (DER) and answers the
name it matched, or refuses with CHAIN_ARK.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tvmm.abi.state_dir import default_state_dir
from tvmm.owner.verify import VerificationError, VerifyFailure, load_certificate

BUILT_IN = ("amd-milan", "amd-genoa")
MODELED = "tvmm"
_HERE = Path(__file__).resolve().parent


def built_in(name: str) -> x509.Certificate:
    """One of AMD's ARKs shipped with tvmm."""
    if name not in BUILT_IN:
        raise KeyError(f"no built-in root {name!r} (built in: {', '.join(BUILT_IN)})")
    return load_certificate((_HERE / f"{name}.pem").read_bytes(), VerifyFailure.CHAIN_ARK)


def modeled(state_dir: Path | str | None = None) -> x509.Certificate | None:
    """The modeled manufacturer's ARK in ``state_dir`` (default: $TVMM_STATE_DIR, else
    ~/.local/state/tvmm), or None if that state directory has no manufacturer yet."""
    root = Path(state_dir) if state_dir is not None else default_state_dir()
    path = root / "root_of_trust" / "ark.pem"
    if not path.is_file():
        return None
    return load_certificate(path.read_bytes(), VerifyFailure.CHAIN_ARK)


def pinned_roots(state_dir: Path | str | None = None) -> dict[str, x509.Certificate]:
    """Every root trusted by default: AMD's, then the modeled manufacturer's if present."""
    roots = {name: built_in(name) for name in BUILT_IN}
    ours = modeled(state_dir)
    if ours is not None:
        roots[MODELED] = ours
    return roots


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex: what PROVENANCE.md and `tvmm verify` print."""
    return hashlib.sha256(_der(cert)).hexdigest()


def pinned_root(ark: x509.Certificate, roots: dict[str, x509.Certificate]) -> str:
    """The name of the pinned root ``ark`` is; CHAIN_ARK if it is none of them."""
    der = _der(ark)
    for name, root in roots.items():
        if _der(root) == der:
            return name
    subject = ark.subject.rfc4514_string() or "(no subject)"
    raise VerificationError(
        VerifyFailure.CHAIN_ARK,
        f"the chain's root {subject} (SHA-256 {fingerprint(ark)[:16]}…) is not a pinned ARK "
        f"(pinned: {', '.join(roots) or 'none'})",
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
