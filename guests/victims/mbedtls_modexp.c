/* mbedtls_modexp: mbedTLS's mbedtls_mpi_exp_mod, unmodified, linked statically from
 * Debian's libmbedtls-dev, as a Linux program (docs/linux.md).
 *
 * Secret: the exponent x, read from /run/secrets/key (the owner's released secret), its
 * bytes little-endian with the top bit set, as a fixed-length exponent has it (as the
 * sample modexp's) (its .toml declares 4: a 32-bit exponent keeps a single-stepped run
 * within the attacks' exit budgets).  Computes y = 2^x mod p, p = 2^255 - 19 (a small
 * modulus keeps the runs short; which code runs when depends on x, not on p's size) and
 * prints result=<hex of y>.
 * p and g are set up before the secret is read, so what depends on x is
 * mbedtls_mpi_exp_mod alone. */
#include <mbedtls/bignum.h>
#include <stdio.h>

static const char P[] = "7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFED";

int main(void)
{
    unsigned char secret[512];
    char out[512];
    mbedtls_mpi p, g, x, y, rr;
    size_t n, olen;
    FILE *f;

    mbedtls_mpi_init(&p);
    mbedtls_mpi_init(&g);
    mbedtls_mpi_init(&x);
    mbedtls_mpi_init(&y);
    mbedtls_mpi_init(&rr);
    if (mbedtls_mpi_read_string(&p, 16, P) || mbedtls_mpi_lset(&g, 2))
        return 2;

    f = fopen("/run/secrets/key", "rb");
    if (!f)
        return 3;
    n = fread(secret, 1, sizeof secret, f);
    fclose(f);
    if (n == 0)
        return 3;
    secret[n - 1] |= 0x80; /* a full-length exponent: its top bit set */
    if (mbedtls_mpi_read_binary_le(&x, secret, n))
        return 2;

    if (mbedtls_mpi_exp_mod(&y, &g, &x, &p, &rr))
        return 2;

    if (mbedtls_mpi_write_string(&y, 16, out, sizeof out, &olen))
        return 2;
    printf("result=%s\n", out);
    return 0;
}
