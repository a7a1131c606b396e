/* modexp-ct: the same result as modexp, computed in constant time (the control victim).
 *
 * Secret: the same 64-bit exponent.  A Montgomery ladder that squares and multiplies on
 * every bit, selecting with masks instead of branches: the instruction count, the
 * control flow and the pages touched do not depend on the exponent.  (Its registers still
 * hold secret-dependent values: the ciphertext-dictionary attack can see them where the
 * register state is encrypted deterministically.) */
#include "modexp_common.h"

__attribute__((noinline, section(".text.page_ct"))) u64 ladder(u64 e)
{
    u64 r0 = 1, r1 = MODEXP_BASE;
    for (int i = 63; i >= 0; i--) {
        u64 mask = 0 - ((e >> i) & 1);          /* all ones for a 1 bit */
        u64 swap = (r0 ^ r1) & mask;
        r0 ^= swap; r1 ^= swap;                 /* constant-time conditional swap */
        r1 = mulmod(r0, r1, MODEXP_MODULUS);
        r0 = mulmod(r0, r0, MODEXP_MODULUS);
        swap = (r0 ^ r1) & mask;
        r0 ^= swap; r1 ^= swap;
        __asm__ volatile("" : "+r"(r0), "+r"(r1), "+r"(mask));
    }
    return r0;
}

int main(void)
{
    report(ladder(secret_u64() | (1UL << 63)));
    return 0;
}
