"""The claim an issuer signs about one guest build: what it is and how it was made.

Encoded as a CBOR map with text keys (deterministic encoding, RFC 8949 §4.2), decoded
strictly: exactly the known keys, each of its type and size.  The launch digest is the one
``tvmm measure`` predicts for the image at its level (48 bytes, SHA-384)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import cbor2

from tvmm.transparency.errors import TransparencyError

CONTENT_TYPE = "application/vnd.tvmm.claim+cbor"
MAX_TEXT = 256
MAX_BUILD_ITEMS = 32
MAX_SVN = 0xFFFFFFFF


@dataclass(frozen=True)
class Claim:
    launch_digest: bytes  # 48 bytes: the measurement a report of this build carries
    name: str  # the guest's name, e.g. "hello"
    feed: str  # the release feed the issuer publishes on, e.g. "tvmm/samples"
    svn: int  # security version: a policy may demand at least this
    sources_digest: bytes  # 32 bytes: SHA-256 over the build's sources
    level: str = ""  # the protection level the digest is for
    build: dict[str, str] = field(default_factory=dict)  # compiler, flags, …

    def __post_init__(self) -> None:
        _check(isinstance(self.launch_digest, bytes) and len(self.launch_digest) == 48,
               "launch_digest must be 48 bytes")
        _check(isinstance(self.sources_digest, bytes) and len(self.sources_digest) == 32,
               "sources_digest must be 32 bytes")
        for key in ("name", "feed", "level"):
            value = getattr(self, key)
            _check(isinstance(value, str) and len(value) <= MAX_TEXT,
                   f"{key} must be text of at most {MAX_TEXT} characters")
        _check(bool(self.name) and bool(self.feed), "name and feed must not be empty")
        _check(type(self.svn) is int and 0 <= self.svn <= MAX_SVN,
               f"svn must be an integer 0..{MAX_SVN}")
        _check(isinstance(self.build, dict) and len(self.build) <= MAX_BUILD_ITEMS
               and all(isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_TEXT
                       and len(v) <= 4 * MAX_TEXT for k, v in self.build.items()),
               f"build must map at most {MAX_BUILD_ITEMS} text keys to text")

    def to_cbor(self) -> bytes:
        return cbor2.dumps({
            "launch_digest": self.launch_digest, "name": self.name, "feed": self.feed,
            "svn": self.svn, "sources_digest": self.sources_digest, "level": self.level,
            "build": dict(sorted(self.build.items())),
        }, canonical=True)

    @classmethod
    def from_cbor(cls, data: bytes) -> Claim:
        try:
            document = cbor2.loads(data)
        except Exception as exc:  # cbor2 raises several types on malformed input
            raise TransparencyError("malformed", f"claim is not CBOR: {exc}") from None
        keys = {"launch_digest", "name", "feed", "svn", "sources_digest", "level", "build"}
        _check(isinstance(document, Mapping) and set(document) == keys,
               f"claim must be a map of exactly {sorted(keys)}")
        build = document["build"]
        try:
            claim = cls(**{**document, "build": dict(build) if isinstance(build, Mapping)
                           else build})
        except TypeError as exc:
            raise TransparencyError("malformed", str(exc)) from None
        _check(claim.to_cbor() == data, "claim is not in deterministic CBOR encoding")
        return claim


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise TransparencyError("malformed", message)
