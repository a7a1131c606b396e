/* ttable_unrolled: ttable with its 16 lookups a round unrolled, each at its own RIP.
 *
 * Secret: 64 bits from the secrets page, read as 16 nibbles.  The table has 16 entries of
 * 1 KiB (128 words), page-aligned: entry n lies on page n / 4 of the table, so every
 * lookup tells a page-granular observer the top two bits of its nibble (32 bits in all).
 * Four rounds of 16 lookups; the table is filled at start by a public xorshift.  Prints
 * result=<hex>.  The same computation as ttable: only the code differs, each lookup of a
 * round is an instruction of its own (four faults at most per RIP), which is what a
 * fault limit counted per RIP (the TDX rule) does not see. */
#include "tvmm.h"

#define ENTRIES 16
#define WORDS 128 /* 1 KiB an entry: four entries a page */
#define ROUNDS 4

static u64 table[ENTRIES][WORDS] __attribute__((aligned(4096)));

int main(void)
{
    u64 r = 0x2545f4914f6cdd1dUL;
    for (int n = 0; n < ENTRIES; n++)
        for (int w = 0; w < WORDS; w++) {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            table[n][w] = r;
        }
    u64 s = secret_u64();
    u64 x = 0x13198a2e03707344UL;
    for (int round = 0; round < ROUNDS; round++)
        _Pragma("GCC unroll 16") for (int j = 0; j < 16; j++) {
            u64 nibble = (s >> (4 * j)) & 15;
            x = ((x << 7) | (x >> 57)) ^ table[nibble][(8 * j + round) & (WORDS - 1)];
        }
    puts("result=");
    put_hex(x);
    puts("\n");
    return 0;
}
