"""SEV-SNP launch digest: the PAGE_INFO hash chain the PSP extends on every SNP_LAUNCH_UPDATE.

Compatibility with AMD's published scheme is the point: a guest owner (or a tool such as
sev-snp-measure) must be able to predict our measurement from the image alone. Each added
page extends the digest as

    digest = SHA-384(PAGE_INFO)

where PAGE_INFO is 0x70 bytes, all integers little-endian:

    0x00  48  previous digest (48 zero bytes before the first page)
    0x30  48  contents digest: SHA-384 of the 4096-byte page for NORMAL and VMSA pages,
              48 zero bytes for ZERO, UNMEASURED, SECRETS and CPUID pages
    0x60   2  length = 0x70
    0x62   1  page type (PageType)
    0x63   1  is_imi (0: we model no migration-agent images)
    0x64   3  VMPL3, VMPL2, VMPL1 permissions (0: every page is launched at VMPL0 only)
    0x67   1  reserved, 0
    0x68   8  GPA (VMSA pages are always measured at 0xFFFFFFFFF000)

This module is pure: no I/O, no time, no randomness. Bump MEASUREMENT_VERSION whenever
the bytes hashed for a given page list change, because stored expectations would break.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from tvmm.abi.types import PageType  # SNP_LAUNCH_UPDATE page types, as PAGE_INFO hashes them

MEASUREMENT_VERSION = 1

PAGE_SIZE = 4096
DIGEST_SIZE = 48
VMSA_GPA = 0xFFFFFFFFF000
PAGE_INFO_SIZE = 0x70

_PAGE_INFO = struct.Struct("<48s48sHBBBBBBQ")
assert _PAGE_INFO.size == PAGE_INFO_SIZE, "PAGE_INFO must be 0x70 bytes"

_ZERO_DIGEST = bytes(DIGEST_SIZE)
# A NORMAL page's PAGE_INFO differs from the next one's only in the digests and the GPA:
# packing the constant middle as one field halves struct's work in the bulk loops.
_pack_normal = struct.Struct("<48s48s8sQ").pack
_NORMAL_MIDDLE = _PAGE_INFO.pack(
    bytes(48), bytes(48), PAGE_INFO_SIZE, PageType.NORMAL, 0, 0, 0, 0, 0, 0
)[0x60:0x68]
# Set bits of a GPA that is negative, at or above 2**64, or not page-aligned.
_GPA_INVALID = ~((1 << 64) - PAGE_SIZE)
_pack = _PAGE_INFO.pack
_sha384 = hashlib.sha384


_NORMAL = PageType.NORMAL


@dataclass(frozen=True, slots=True)
class MeasuredPage:
    """One link of the chain: what was hashed for a page and the digest it produced."""

    gpa: int
    page_type: PageType
    contents_digest: bytes
    digest_after: bytes


def page_info(previous: bytes, contents_digest: bytes, page_type: PageType, gpa: int) -> bytes:
    """The 0x70-byte PAGE_INFO for one page (exposed so other tools can check our bytes)."""
    return _pack(previous, contents_digest, PAGE_INFO_SIZE, page_type, 0, 0, 0, 0, 0, gpa)


class LaunchDigest:
    """The running launch digest of one guest, extended page by page as the PSP does."""

    __slots__ = ("_digest", "_infos")

    def __init__(self, initial: bytes = _ZERO_DIGEST) -> None:
        if not isinstance(initial, bytes | bytearray) or len(initial) != DIGEST_SIZE:
            raise ValueError(f"initial digest must be {DIGEST_SIZE} bytes")
        self._digest = bytes(initial)
        # The page log is each page's PAGE_INFO, not MeasuredPage objects: one object per
        # page costs about as much as the PAGE_INFO hash itself, while most callers only
        # want the final digest. A PAGE_INFO holds the page's GPA, type and contents
        # digest, and the digest before it (the one after it is the next one's "before").
        self._infos: list[bytes] = []

    @property
    def digest(self) -> bytes:
        """The current 48-byte digest (the MEASUREMENT field once launch finishes)."""
        return self._digest

    def __len__(self) -> int:
        """How many pages were hashed."""
        return len(self._infos)

    @property
    def pages(self) -> tuple[MeasuredPage, ...]:
        """Every page hashed so far, in order."""
        infos = self._infos
        after = [info[:DIGEST_SIZE] for info in infos[1:]] + [self._digest] if infos else []
        return tuple(
            MeasuredPage(
                int.from_bytes(info[0x68:], "little"),
                PageType(info[0x62]),
                info[DIGEST_SIZE : 2 * DIGEST_SIZE],
                digest,
            )
            for info, digest in zip(infos, after, strict=True)
        )

    def add_page(self, gpa: int, page_type: PageType, data: bytes | None) -> MeasuredPage:
        """Extend the digest with one page.

        ``data`` must be exactly 4096 bytes for NORMAL and VMSA pages; it is ignored for
        the other types, whose contents the PSP does not measure. For VMSA pages the
        measured GPA is always VMSA_GPA, whatever ``gpa`` the page lives at.
        """
        if type(gpa) is not int or gpa & _GPA_INVALID:
            raise ValueError(f"gpa {gpa!r} is not a page-aligned integer in [0, 2**64)")
        if page_type.__class__ is not PageType:
            page_type = PageType(page_type)
        if page_type is PageType.NORMAL or page_type is PageType.VMSA:
            if _nbytes(data) != PAGE_SIZE:
                raise ValueError(f"{page_type.name} page data must be exactly {PAGE_SIZE} bytes")
            contents = _sha384(data).digest()  # type: ignore[arg-type]
            if page_type is PageType.VMSA:
                gpa = VMSA_GPA
        else:
            contents = _ZERO_DIGEST
        info = _pack(self._digest, contents, PAGE_INFO_SIZE, page_type, 0, 0, 0, 0, 0, gpa)
        digest = _sha384(info).digest()
        self._digest = digest
        self._infos.append(info)
        return MeasuredPage(gpa, page_type, contents, digest)

    def add_run(self, gpa: int, data: bytes | memoryview) -> bytes:
        """Add the NORMAL pages of one contiguous run at ``gpa``, read in place from
        ``data`` (a whole number of pages); return the new digest.

        The same chain as add_page per page, checked once for the run: the loop hashes
        views of ``data`` and costs little more than hashing the pages (see
        docs/performance.md). On a bad run nothing is added.
        """
        view = memoryview(data)
        size = view.nbytes
        if type(gpa) is not int or gpa & _GPA_INVALID or gpa + size > 1 << 64:
            raise ValueError(f"gpa {gpa!r} is not a page-aligned run start in [0, 2**64)")
        if size % PAGE_SIZE:
            raise ValueError(f"a run of NORMAL pages must be a multiple of {PAGE_SIZE} bytes")
        view = view.cast("B")
        digest, append, pack, sha384 = self._digest, self._infos.append, _pack_normal, _sha384
        middle = _NORMAL_MIDDLE
        for at in range(0, size, PAGE_SIZE):
            info = pack(digest, sha384(view[at : at + PAGE_SIZE]).digest(), middle, gpa + at)
            digest = sha384(info).digest()
            append(info)
        self._digest = digest
        return digest

    def extend(self, pages: Iterable[tuple[int, PageType, bytes | None]]) -> bytes:
        """Add many (gpa, type, data) pages, as add_page would; return the new digest.

        The loop is inlined for well-formed NORMAL pages (the bulk of any image) so that
        the chain costs little more than hashing the pages; anything else, including
        every error, goes through add_page.
        """
        digest = self._digest
        append = self._infos.append
        for gpa, page_type, data in pages:
            if (
                page_type is _NORMAL
                and type(gpa) is int
                and not gpa & _GPA_INVALID
                and (len(data) if type(data) is bytes else _nbytes(data)) == PAGE_SIZE
            ):
                info = _pack_normal(digest, _sha384(data).digest(), _NORMAL_MIDDLE, gpa)
                digest = _sha384(info).digest()
                append(info)
            else:
                self._digest = digest
                digest = self.add_page(gpa, page_type, data).digest_after
        self._digest = digest
        return digest


def _nbytes(data: object) -> int:
    """Size in bytes of a bytes-like page (memoryview slices of guest memory too); -1 if none."""
    if type(data) is bytes:
        return len(data)
    if type(data) is memoryview:
        return data.nbytes
    try:
        return memoryview(data).nbytes  # type: ignore[arg-type]
    except TypeError:
        return -1


def launch_digest(pages: Iterable[tuple[int, PageType, bytes | None]]) -> bytes:
    """The final digest of a launch that adds ``pages`` (gpa, type, data) in order."""
    return LaunchDigest().extend(pages)
