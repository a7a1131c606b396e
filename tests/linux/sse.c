/* SSE, x87, MXCSR and TLS kept live across many exits, for the register-state tests
 * (tests/linux/test_linux_regstate.py): vector accumulators stay in XMM registers through
 * the loop, the rounding mode is changed (MXCSR and the x87 control word), and a counter
 * lives in thread-local storage (the FS base).  Built with musl-gcc -static -O2.  If any
 * of that state is lost or altered across a suspend, a migration or an exit, the printed
 * digest changes. */
#include <emmintrin.h>
#include <fenv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static __thread unsigned long tls_steps = 7;

int main(int argc, char **argv)
{
    unsigned long rounds = argc > 1 ? strtoul(argv[1], 0, 10) : 400000;
    unsigned long report = rounds / 8 ? rounds / 8 : 1;
    fesetround(FE_UPWARD);  /* MXCSR.RC and FCW.RC: a reset rounding mode changes the sums */
    __m128i a = _mm_set_epi32(1, 2, 3, 4), b = _mm_set_epi32(0x9e3779b9, 5, 7, 11);
    __m128d d = _mm_setzero_pd(), third = _mm_set1_pd(1.0 / 3.0);
    long double x = 0.0L;
    for (unsigned long i = 1; i <= rounds; i++) {
        a = _mm_add_epi32(a, b);
        b = _mm_xor_si128(b, _mm_slli_epi32(a, 3));
        d = _mm_add_pd(d, _mm_div_pd(third, _mm_set1_pd((double)i)));
        x += 1.0L / (long double)i;
        tls_steps += (unsigned long)_mm_cvtsi128_si32(a) & 1;
        if (i % report == 0) {
            unsigned int w[4];
            double dd[2];
            _mm_storeu_si128((__m128i *)w, a);
            _mm_storeu_pd(dd, d);
            char line[160];
            snprintf(line, sizeof line, "%lu: %08x%08x%08x%08x %a %La tls=%lu\n", i, w[0], w[1],
                     w[2], w[3], dd[0], x, tls_steps);
            fputs(line, stdout);
            fflush(stdout);
        }
    }
    return 0;
}
