/* stores: per secret bit, a store to one of two data pages.
 *
 * Secret: 64 bits from the secrets page.  For each bit, low to high, a 0 stores into
 * page zero and a 1 into page one (two page-aligned buffers of one page each): the
 * sequence of pages written is the secret.  Prints result=<hex>, a checksum read back
 * from both pages in a fixed order. */
#include "tvmm.h"

static volatile u64 page0[512] __attribute__((aligned(4096)));
static volatile u64 page1[512] __attribute__((aligned(4096)));

int main(void)
{
    u64 s = secret_u64();
    u64 x = 0x082efa98ec4e6c89UL;
    for (u64 i = 0; i < 64; i++) {
        x = x * 0x5851f42d4c957f2dUL + 0x14057b7ef767814fUL;
        if ((s >> i) & 1)
            page1[i] = x;
        else
            page0[i] = x;
    }
    u64 sum = 0;
    for (u64 i = 0; i < 64; i++)
        sum = (sum ^ page0[i] ^ (page1[i] << 1)) * 0x100000001b3UL;
    puts("result=");
    put_hex(sum);
    puts("\n");
    return 0;
}
