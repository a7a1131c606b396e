/* Shared by modexp and modexp-ct: the public modulus and base, and a 64-bit modular
 * multiply (mul then div, so the quotient always fits: a, b < m). */
#ifndef MODEXP_COMMON_H
#define MODEXP_COMMON_H
#include "tvmm.h"

#define MODEXP_MODULUS 0xffffffffffffffc5UL /* the largest 64-bit prime */
#define MODEXP_BASE 0x5deece66dUL

static inline __attribute__((always_inline)) u64 mulmod(u64 a, u64 b, u64 m)
{
    u64 q, r;
    __asm__("mulq %3\n\tdivq %4" : "=a"(q), "=&d"(r) : "a"(a), "r"(b), "r"(m) : "cc");
    (void)q;
    return r;
}

static void report(u64 result)
{
    puts("result=");
    put_hex(result);
    puts("\n");
}
#endif
