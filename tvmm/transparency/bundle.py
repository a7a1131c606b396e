"""What a host presents with a guest's evidence so a broker can release by policy: the
signed statement and its receipt.  u32 little-endian length of the statement ‖ statement ‖
receipt — neither is trusted; the broker verifies both."""

from __future__ import annotations

import struct

from tvmm.transparency.errors import TransparencyError

MAX_BUNDLE = 1 << 20


def pack(statement: bytes, receipt: bytes) -> bytes:
    return struct.pack("<I", len(statement)) + statement + receipt


def unpack(bundle: bytes) -> tuple[bytes, bytes]:
    if len(bundle) > MAX_BUNDLE or len(bundle) < 4:
        raise TransparencyError("malformed", "a transparency bundle is 4 to "
                                             f"{MAX_BUNDLE} bytes")
    (n,) = struct.unpack_from("<I", bundle)
    if n > len(bundle) - 4:
        raise TransparencyError("malformed", "the bundle's statement runs past its end")
    return bundle[4: 4 + n], bundle[4 + n:]
