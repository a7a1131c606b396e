/* hypercalls: a guest that fuzzes the platform from inside.
 *
 * It issues `rounds` hypercalls with random numbers (the defined ones, undefined ones
 * and any 64-bit value) and random arguments (addresses in its own buffer, in the shared
 * region, on the secrets page, anywhere; lengths small, page-sized, huge), drawn from a
 * xorshift64 generator seeded from the secrets page: seed (u64) || rounds (u64) || a mask
 * every argument is ANDed with (u64), a launch secret the fuzzer wraps (tvmm_tools/fuzz/guest.py).  HC_EXIT is drawn too, rarely: the VM
 * then ends with the status drawn.  Whatever it asks, the TEE must not raise and the VM
 * must end as documented (exit, fault, killed).  */
#include "tvmm.h"

static u8 scratch[4 * 4096] __attribute__((aligned(4096)));
static u64 rng;
static u64 mask = ~0UL;

static u64 next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static u64 gpa(void)
{
    switch (next() % 8) {
    case 0: case 1: case 2: case 3:
        return (u64)scratch + next() % sizeof scratch;
    case 4:
        return TVMM_SHARED_BASE + next() % TVMM_SHARED_SIZE;
    case 5:
        return TVMM_SECRETS + next() % 4096;
    case 6:
        return next();
    default:
        return next() % (boot_info()->ram_size + 0x2000);
    }
}

static u64 length(void)
{
    switch (next() % 4) {
    case 0: return next() % 64;
    case 1: return next() % 4097;
    case 2: return next() % 0x20000;
    default: return next();
    }
}

static u64 argument(void)
{
    switch (next() % 3) {
    case 0: return gpa();
    case 1: return length();
    default: return next() % 300;  /* vectors, sectors, small statuses */
    }
}

int main(void)
{
    const struct secrets_page *sp = (const struct secrets_page *)TVMM_SECRETS;
    const u64 *words = (const u64 *)sp->data;
    u64 rounds = sp->len >= 16 ? words[1] : 100;
    rng = sp->len >= 8 ? words[0] : 1;
    if (sp->len >= 24)
        mask = words[2];
    if (rng == 0)
        rng = 1;
    for (u64 i = 0; i < rounds; i++) {
        u64 nr = next() % 12;
        if (next() % 32 == 0)
            nr = next() & mask;
        if (nr == HC_EXIT && next() % 128)
            continue;
        u64 a0 = argument() & mask, a1 = argument() & mask, a2 = argument() & mask;
        hypercall(nr, a0, a1, a2);
    }
    puts("fuzz done\n");
    return 0;
}
