"""The migration page stream: AES-256-GCM bundles with per-stream counters and an end commit.

A suspended checkpoint and a live migration are the same thing on the wire: a stream of
bundles that the untrusted host carries (to a file, or over TCP to another node).  After
TDX's migration design, every bundle has a clear header that is the associated data of
its AEAD, so the host can route bundles but not forge, replay, reorder, drop or splice them:

    header (32 bytes, little-endian)
      0  4  magic  b"TVMB"
      4  1  kind   1 HEAD (VM metadata), 2 PAGES, 3 STATE (vCPU), 4 END (commit)
      5  1  version 2
      6  2  reserved, zero
      8  8  stream id   (chosen by the trusted agents; binds the bundle to one session)
     16  8  counter     (0, 1, 2, ... per stream: replay and reorder are refused)
     24  4  items       (pages in a PAGES bundle, 0 otherwise)
     28  4  payload length (ciphertext without the tag)
    32  ..  AES-256-GCM(key, nonce = counter (8 LE) ‖ b"TVMB", payload, AD = header) ‖ tag

A PAGES payload is the pages' contents, then their indices (u32 each, same order).

The nonce is derived from the counter: a session key encrypts one stream only, so a
(key, nonce) pair never repeats.  ``parse_header`` is the one parser of untrusted bundle
bytes; it checks everything it can without the key and raises ``StreamError`` naming the
field.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"TVMB"
VERSION = 2  # 2: a PAGES payload carries its indices after the pages
HEADER = struct.Struct("<4sBBHQQII")
TAG = 16
MAX_ITEMS = 256  # pages per PAGES bundle: 1 MiB of guest memory
MAX_PAYLOAD = MAX_ITEMS * (4096 + 4) + 1024
assert HEADER.size == 32


class Kind(IntEnum):
    HEAD = 1
    PAGES = 2
    STATE = 3
    END = 4


class StreamError(ValueError):
    """Bundle bytes are malformed; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Header:
    kind: Kind
    stream: int
    counter: int
    items: int
    length: int

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, self.kind, VERSION, 0, self.stream, self.counter,
                           self.items, self.length)


def parse_header(data: bytes) -> Header:
    """Decode and check the clear header of a bundle (not its authenticity)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StreamError("bundle", "not bytes")
    if len(data) < HEADER.size + TAG:
        raise StreamError("bundle", f"{len(data)} bytes is shorter than header and tag")
    magic, kind, version, reserved, stream, counter, items, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StreamError("magic", "not a migration bundle")
    if version != VERSION:
        raise StreamError("version", f"unknown bundle version {version}")
    if reserved:
        raise StreamError("reserved", "reserved bytes are not zero")
    try:
        kind = Kind(kind)
    except ValueError:
        raise StreamError("kind", f"unknown bundle kind {kind}") from None
    if length > MAX_PAYLOAD:
        raise StreamError("length", f"payload of {length} bytes exceeds {MAX_PAYLOAD}")
    if len(data) != HEADER.size + length + TAG:
        raise StreamError("length", f"bundle is {len(data)} bytes, header says "
                          f"{HEADER.size + length + TAG}")
    if kind == Kind.PAGES and not 1 <= items <= MAX_ITEMS:
        raise StreamError("items", f"{items} pages is outside [1, {MAX_ITEMS}]")
    if kind != Kind.PAGES and items:
        raise StreamError("items", f"a {kind.name} bundle carries no pages")
    return Header(kind, stream, counter, items, length)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(8, "little") + MAGIC


class StreamCipher:
    """Seal and open bundles of one stream under its session key.

    Both directions write in place: a bundle is one allocation, into which its payload
    is encrypted part by part (``seal_parts``: a run of pages straight from guest RAM);
    an opened payload lands in a buffer this TEE owns and reuses (``decrypt_into``), so
    it is valid until the next ``open``."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a stream key is 32 bytes (AES-256)")
        self._key = key
        self._aead = AESGCM(key)
        self._plain: bytearray | None = None  # allocated by the first open (import side)

    def seal_parts(self, kind: Kind, stream: int, counter: int,
                   parts: Sequence[bytes | memoryview], items: int = 0) -> bytearray:
        """The bundle of the payload ``b"".join(parts)``, without joining: GCM encrypts
        one part after the other into the bundle (the same bytes as one AESGCM call)."""
        length = sum(len(part) for part in parts)
        header = Header(kind, stream, counter, items, length).pack()
        bundle = bytearray(HEADER.size + length + TAG)
        bundle[: HEADER.size] = header
        encryptor = Cipher(algorithms.AES(self._key), modes.GCM(_nonce(counter))).encryptor()
        encryptor.authenticate_additional_data(header)
        out, pos = memoryview(bundle), HEADER.size
        for part in parts:  # update_into wants 15 bytes past its output: the tag's room
            pos += encryptor.update_into(part, out[pos : pos + len(part) + 15])
        encryptor.finalize()
        out[pos:] = encryptor.tag
        return bundle

    def open(self, data: bytes) -> tuple[Header, memoryview]:
        """(header, payload); StreamError("tag") if the bundle does not authenticate.
        The payload is a view of this cipher's buffer: read it before the next ``open``."""
        header = parse_header(data)
        raw = memoryview(data)
        if self._plain is None:
            self._plain = bytearray(MAX_PAYLOAD)
        payload = memoryview(self._plain)[: header.length]
        try:
            self._aead.decrypt_into(_nonce(header.counter), raw[HEADER.size :],
                                    raw[: HEADER.size], payload)
        except InvalidTag:
            raise StreamError("tag", "bundle does not authenticate") from None
        return header, payload


def unpack_pages(payload: memoryview, items: int, npages: int
                 ) -> list[tuple[int, memoryview]]:
    """Runs of consecutive pages of a PAGES payload: (first index, their contents), for one
    write each.  The payload is the pages' contents, then ``items`` u32 page indices in the
    same order (the exporter learns which pages go out while it copies them)."""
    if items < 1:
        raise StreamError("items", "a PAGES payload carries at least one page")
    if len(payload) != items * (4096 + 4):
        raise StreamError("payload", f"{len(payload)} bytes do not hold {items} pages")
    indices = struct.unpack_from(f"<{items}I", payload, items * 4096)
    if max(indices) >= npages:
        raise StreamError("page", f"page index {max(indices)} is outside guest memory")
    out, start = [], 0
    for i in range(1, items + 1):
        if i == items or indices[i] != indices[i - 1] + 1:
            out.append((indices[start], payload[start * 4096 : i * 4096]))
            start = i
    return out
