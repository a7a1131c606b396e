/* compute: a compute-bound benchmark guest (no I/O in the hot loop).
 * An xorshift/multiply mix over a 4 KiB table, then one line of output. */
#include "tvmm.h"

static u64 table[512];

int main(void)
{
    u64 x = 0x9e3779b97f4a7c15UL, acc = 0;
    for (int i = 0; i < 512; i++) table[i] = x = x * 6364136223846793005UL + 1442695040888963407UL;
    for (u64 round = 0; round < 2000000; round++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        u64 *slot = &table[x & 511];
        *slot = (*slot + x) * 0x100000001b3UL;
        acc += *slot >> 32;
    }
    puts("compute=");
    put_hex(acc);
    puts("\n");
    return 0;
}
