/* gcry_modexp: libgcrypt's modular exponentiation (gcry_mpi_powm), unmodified, linked
 * statically from Debian's libgcrypt20-dev, as a Linux program (docs/linux.md).
 *
 * Secret: the exponent x, read from /run/secrets/key (the owner's released secret), its
 * bytes little-endian with the top bit set, as a fixed-length exponent has it (as the
 * sample modexp's) (its .toml declares 4: a 32-bit exponent keeps a single-stepped run
 * within the attacks' exit budgets).  Computes y = 2^x mod p, p = 2^255 - 19 (a small
 * modulus keeps the runs short; which code runs when depends on x, not on p's size) and
 * prints result=<hex of y>.
 * Everything up to reading the secret (library start-up, p and g) happens before it, so
 * what depends on x is gcry_mpi_powm alone. */
#include <gcrypt.h>
#include <stdio.h>

static const char P[] = "7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFED";

int main(void)
{
    unsigned char secret[512], be[512];
    gcry_mpi_t p, g, x, y;
    unsigned char *out;
    size_t n, i;
    FILE *f;

    if (!gcry_check_version(NULL))
        return 2;
    gcry_control(GCRYCTL_DISABLE_SECMEM, 0);
    gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
    if (gcry_mpi_scan(&p, GCRYMPI_FMT_HEX, P, 0, NULL))
        return 2;
    g = gcry_mpi_set_ui(NULL, 2);
    y = gcry_mpi_new(1024);

    f = fopen("/run/secrets/key", "rb");
    if (!f)
        return 3;
    n = fread(secret, 1, sizeof secret, f);
    fclose(f);
    if (n == 0)
        return 3;
    for (i = 0; i < n; i++)
        be[i] = secret[n - 1 - i];
    be[0] |= 0x80; /* a full-length exponent: its top bit set */
    if (gcry_mpi_scan(&x, GCRYMPI_FMT_USG, be, n, NULL))
        return 2;

    gcry_mpi_powm(y, g, x, p);

    if (gcry_mpi_aprint(GCRYMPI_FMT_HEX, &out, NULL, y))
        return 2;
    printf("result=%s\n", (char *)out);
    return 0;
}
