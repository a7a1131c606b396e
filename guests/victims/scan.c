/* scan: loop counts that depend on the secret (an early-exit compare).
 *
 * Secret: 64 bits from the secrets page, read as 8 bytes.  Each byte is found by
 * comparing it with the candidates 0, 1, 2, ... and leaving the loop at the first match,
 * so the loop runs byte + 1 times: the instructions retired per byte tell its value.
 * Prints result=<hex>, a checksum of the loop counts. */
#include "tvmm.h"

__attribute__((noinline)) u64 find_byte(u64 byte)
{
    u64 k;
    for (k = 0; k < 256; k++) {
        __asm__ volatile("" : "+r"(k)); /* keep the loop: no closed form */
        if (k == byte)
            break;
    }
    return k;
}

int main(void)
{
    u64 s = secret_u64();
    u64 x = 0xa4093822299f31d0UL;
    for (int j = 0; j < 8; j++) {
        u64 k = find_byte((s >> (8 * j)) & 0xff);
        x = (x ^ k) * 0x100000001b3UL;
    }
    puts("result=");
    put_hex(x);
    puts("\n");
    return 0;
}
