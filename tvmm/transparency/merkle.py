"""RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing and proof verification.

The log stores its tree with pymerkle (its SqliteTree hashes exactly as RFC 9162: leaves
SHA-256(0x00 ‖ entry), nodes SHA-256(0x01 ‖ left ‖ right), a left subtree of the largest
power of two below the size); tests check the two agree.  Verification is written here
from RFC 9162 §2.1.3.2 and §2.1.4.2 because a verifier must need nothing but the proof,
the entry and a public key — pymerkle's proofs are its own serialisation, not RFC 9162's
audit paths."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from tvmm.transparency.errors import TransparencyError

HASH_SIZE = 32
MAX_PATH = 64  # a tree of at most 2**64 leaves has paths of at most 64 hashes


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_of(entries: list[bytes]) -> bytes:
    """MTH(entries), RFC 9162 §2.1.1 (for tests and small audits)."""
    if not entries:
        return hashlib.sha256(b"").digest()
    if len(entries) == 1:
        return leaf_hash(entries[0])
    k = 1 << ((len(entries) - 1).bit_length() - 1)
    return node_hash(root_of(entries[:k]), root_of(entries[k:]))


def prefix_roots(entries: Iterable[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """MTH of the first n entries for each n in ``sizes`` (those the entries reach), in
    one pass over the entries: an audit of a log with a signed head per registration
    would otherwise rehash every prefix (quadratic).  The stack holds the roots of the
    perfect subtrees the entries so far split into, largest first (RFC 9162 §2.1.1)."""
    wanted = set(sizes)
    found = {0: hashlib.sha256(b"").digest()} if 0 in wanted else {}
    stack: list[bytes] = []
    for count, entry in enumerate(entries, 1):
        stack.append(leaf_hash(entry))
        merged = count
        while merged & 1 == 0:
            right = stack.pop()
            stack[-1] = node_hash(stack[-1], right)
            merged >>= 1
        if count in wanted:
            root = stack[-1]
            for left in reversed(stack[:-1]):
                root = node_hash(left, root)
            found[count] = root
    return found


def root_from_inclusion(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2), or TransparencyError."""
    _check_path(path)
    if not 0 <= index < size:
        raise TransparencyError("proof", f"leaf index {index} is outside a tree of {size}")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise TransparencyError("proof", "inclusion path is longer than the tree")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise TransparencyError("proof", "inclusion path is shorter than the tree")
    return r


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes,
                       path: list[bytes]) -> None:
    """Check that the tree of ``size2`` extends the tree of ``size1`` (RFC 9162 §2.1.4.2)."""
    _check_path(path)
    if not 0 < size1 <= size2:
        raise TransparencyError("proof", f"no consistency proof from {size1} to {size2}")
    if size1 == size2:
        if path or root1 != root2:
            raise TransparencyError("fork", "two heads of one size with different roots")
        return
    if size1 & (size1 - 1) == 0:  # a power of two: the old root is the first node
        path = [root1, *path]
    if not path:
        raise TransparencyError("proof", "empty consistency path")
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise TransparencyError("proof", "consistency path is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or fr != root1 or sr != root2:
        raise TransparencyError("fork", f"the tree of {size2} does not extend the tree of "
                                        f"{size1}: the log was forked or rewritten")


def _check_path(path: list[bytes]) -> None:
    if (not isinstance(path, list) or len(path) > MAX_PATH
            or not all(isinstance(p, bytes) and len(p) == HASH_SIZE for p in path)):
        raise TransparencyError("malformed", f"a proof is a list of at most {MAX_PATH} "
                                             f"{HASH_SIZE}-byte hashes")
