/* branches: per secret bit, a call to one of two functions on two different code pages.
 *
 * Secret: 64 bits from the secrets page.  For each bit, low to high, a 0 calls mix0 (on
 * the code page of .text.page_sq) and a 1 calls mix1 (on .text.page_mul): the sequence
 * of code pages fetched is the secret, one page a bit.  Prints result=<hex> (a checksum
 * an honest run is checked against). */
#include "tvmm.h"

__attribute__((noinline, section(".text.page_sq"))) u64 mix0(u64 x, u64 i)
{
    x ^= x >> 29;
    return x * 0x9e3779b97f4a7c15UL + i;
}

__attribute__((noinline, section(".text.page_mul"))) u64 mix1(u64 x, u64 i)
{
    x ^= x << 17;
    return x * 0xbf58476d1ce4e5b9UL + 3 * i + 1;
}

int main(void)
{
    u64 s = secret_u64();
    u64 x = 0x243f6a8885a308d3UL;
    for (u64 i = 0; i < 64; i++) {
        if ((s >> i) & 1)
            x = mix1(x, i);
        else
            x = mix0(x, i);
    }
    puts("result=");
    put_hex(x);
    puts("\n");
    return 0;
}
