"""Red team 1's helpers, as they wrote them (from /work/redteam/common.py, 2026-12-02).

Victim-specific: the addresses below are facts of guests/victims/dispatch.c's image as
built then (handler pages 0x202000..0x204000, main 0x205000, .rodata 0x206000); a change of
the toolchain or the victim's layout moves them, and then the attack must be re-targeted.
"""
# Shared helpers for the dispatch attacks (public image facts, the guest's state function, MITM).
M64 = (1 << 64) - 1
ADD, ROT, MUL, XOR = 0, 1, 2, 3
PAGE_OF = {ADD: 0x202000, ROT: 0x203000, MUL: 0x204000}      # op_xor shares main's page 0x205000
SYM_OF_PAGE = {v: k for k, v in PAGE_OF.items()}
MAIN_PAGE, RODATA_PAGE, STACK_PAGE = 0x205000, 0x206000, 0x3FF000
TABLE = 0x206840
X0 = 0x0123456789ABCDEF


def op(s, x, i):
    if s == ADD:
        return ((x + 0x9E3779B97F4A7C15) & M64) ^ ((i << 7) & M64)
    if s == ROT:
        return ((((x << 13) | (x >> 51)) & M64) + i) & M64
    if s == MUL:
        return (x * 0xBF58476D1CE4E5B9 + i) & M64
    return x ^ (x >> 31) ^ ((0x94D049BB133111EB * (i + 1)) & M64)


INV_MUL = pow(0xBF58476D1CE4E5B9, -1, 1 << 64)


def unxorshift31(y):
    x = y
    for _ in range(3):
        x = y ^ (x >> 31)
    return x & M64


def inv(s, y, i):
    if s == ADD:
        return ((y ^ ((i << 7) & M64)) - 0x9E3779B97F4A7C15) & M64
    if s == ROT:
        z = (y - i) & M64
        return ((z >> 13) | (z << 51)) & M64
    if s == MUL:
        return ((y - i) * INV_MUL) & M64
    return unxorshift31(y ^ ((0x94D049BB133111EB * (i + 1)) & M64))


def final_state(syms):
    x = X0
    for i, s in enumerate(syms):
        x = op(s, x, i)
    return x


def syms_to_secret(syms):
    v = 0
    for i, s in enumerate(syms):
        v |= s << (2 * i)
    return v.to_bytes(8, "little")


def parse_state(console):
    for line in console.splitlines():
        if line.startswith("state="):
            return int(line[6:].strip(), 16)
    return None


def mitm_interleave(nonxor, final, n=32):
    """All symbol strings of length n whose non-xor subsequence is ``nonxor`` (xors anywhere
    else) and whose state ends at ``final``: meet in the middle at n//2."""
    k = len(nonxor)
    h = n // 2
    fwd = {}  # (state, used) -> list of prefixes
    def f(i, x, used, path):
        if i == h:
            fwd.setdefault((x, used), []).append(tuple(path))
            return
        rem = n - i
        if used < k and (k - used) <= rem:
            path.append(nonxor[used]); f(i + 1, op(nonxor[used], x, i), used + 1, path); path.pop()
        if (k - used) <= rem - 1:
            path.append(XOR); f(i + 1, op(XOR, x, i), used, path); path.pop()
    f(0, X0, 0, [])
    out = []
    def b(i, y, used_back, path):  # positions i..n-1 decided, y = state before position i
        if i == h:
            key = (y, k - used_back)
            for pre in fwd.get(key, ()):
                out.append(list(pre) + path[::-1])
            return
        j = i - 1
        if used_back < k and (k - used_back) <= j + 1:
            s = nonxor[k - 1 - used_back]
            path.append(s); b(i - 1, inv(s, y, j), used_back + 1, path); path.pop()
        if (k - used_back) <= j:
            path.append(XOR); b(i - 1, inv(XOR, y, j), used_back, path); path.pop()
    b(n, final, 0, [])
    return out
