/* password: checks candidate passwords, read from the input device, against a secret one
 * with an early-exit byte compare, and prints "granted" or "denied" for each.
 *
 * Secret: the password (the secrets page, up to 32 bytes).  The compare returns at the
 * first differing byte, so its length in instructions tells how many leading bytes
 * matched: single-stepping recovers the password byte by byte.  Up to 4096 attempts;
 * exits 0 when granted, 1 otherwise. */
#include "tvmm.h"

#define MAX_PW 32

__attribute__((noinline)) int check_password(const u8 *guess, u64 len, const u8 *pw, u64 pwlen)
{
    if (len != pwlen) return 0;
    for (u64 i = 0; i < len; i++)
        if (guess[i] != pw[i]) return 0;
    return 1;
}

/* The input buffer sits right before the session flag: a driver that copies more than it
 * checked (the double fetch of the naive runtime driver) overwrites the flag. */
static struct {
    u8 guess[64];
    volatile u64 authenticated;
} session;

int main(void)
{
    const struct secrets_page *s = secrets();
    u64 pwlen = s->len > MAX_PW ? MAX_PW : s->len;
    for (int attempt = 0; attempt < 4096; attempt++) {
        i64 n = input_read(session.guess, sizeof session.guess);
        if (n <= 0) break;
        while (n > 0 && (session.guess[n - 1] == '\n' || session.guess[n - 1] == '\r')) n--;
        int ok = check_password(session.guess, (u64)n, s->data, pwlen);
        if (ok)
            session.authenticated = 1;
        if (session.authenticated) {
            puts("granted\n");
            return 0;
        }
        puts("denied\n");
    }
    return 1;
}
