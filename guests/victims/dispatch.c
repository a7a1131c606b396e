/* dispatch: an interpreter-style victim, written by the first outside red team (given
 * only the docs; its attack is tests/attacks/redteam/shim_relaunch.py).  The 64-bit secret
 * is read two bits at a time (32 symbols, low to high); each symbol selects one of four
 * handlers through a table of function pointers (one indirect call site).  Each handler
 * sits on a code page of its own and mixes a running state.  Prints state=<hex> (not
 * result=: the red team's attack reads it as they wrote it). */
#include "tvmm.h"

typedef u64 (*handler_t)(u64, u64);

__attribute__((noinline, aligned(4096))) static u64 op_add(u64 x, u64 i)
{
    return (x + 0x9e3779b97f4a7c15UL) ^ (i << 7);
}

__attribute__((noinline, aligned(4096))) static u64 op_rot(u64 x, u64 i)
{
    return ((x << 13) | (x >> 51)) + i;
}

__attribute__((noinline, aligned(4096))) static u64 op_mul(u64 x, u64 i)
{
    return x * 0xbf58476d1ce4e5b9UL + i;
}

__attribute__((noinline, aligned(4096))) static u64 op_xor(u64 x, u64 i)
{
    return x ^ (x >> 31) ^ (0x94d049bb133111ebUL * (i + 1));
}

static handler_t const table[4] = { op_add, op_rot, op_mul, op_xor };

int main(void)
{
    u64 s = secret_u64();
    u64 x = 0x0123456789abcdefUL;
    for (u64 i = 0; i < 32; i++) {
        x = table[(s >> (2 * i)) & 3](x, i);
    }
    puts("state=");
    put_hex(x);
    puts("\n");
    return 0;
}
