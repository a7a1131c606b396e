/* modexp: left-to-right square-and-multiply with a secret 64-bit exponent.
 *
 * Secret: the exponent, 64 bits, read from the secrets page (the owner provides it at
 * launch; the top bit is forced to 1 so the first step is known).  The square and the
 * multiply routines each sit on their own code page (.text.page_sq, .text.page_mul), and
 * the multiply is only called for 1 bits: the page sequence is <sq, mul> for a 1 and <sq>
 * for a 0, which is what the page-fault and single-stepping attacks recover. */
#include "modexp_common.h"

__attribute__((noinline, section(".text.page_sq"))) u64 modexp_square(u64 x)
{
    return mulmod(x, x, MODEXP_MODULUS);
}

__attribute__((noinline, section(".text.page_mul"))) u64 modexp_multiply(u64 x, u64 b)
{
    return mulmod(x, b, MODEXP_MODULUS);
}

int main(void)
{
    u64 e = secret_u64() | (1UL << 63);
    u64 x = 1;
    for (int i = 63; i >= 0; i--) {
        x = modexp_square(x);
        if ((e >> i) & 1)
            x = modexp_multiply(x, MODEXP_BASE);
    }
    report(x);
    return 0;
}
