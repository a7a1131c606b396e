/* kvstore: a small key-value store persisted on the block device.
 *
 * Secret: the 32-byte storage key in the secrets page.  Records leave private memory only
 * encrypted with ChaCha20 under that key (a fresh nonce per flush) and carry a keyed
 * checksum, so the host's disk file holds ciphertext only.  Each boot loads the store (or
 * starts empty), counts the boot, runs a put/flush/reload/verify workload, and prints a
 * summary.  Exits 0 when every record read back matches, 2 on a corrupted store. */
#include "tvmm.h"

#define NREC 64
#define KEYLEN 16
#define VALLEN 40
#define STORE_SECTORS 10   /* header + records fit in 5 KiB */

struct record { u8 used; u8 key[KEYLEN]; u8 val[VALLEN]; u8 pad[7]; };
struct store { u64 magic; u64 boots; u64 count; u64 check; struct record rec[NREC]; };
struct disk { u64 magic; u64 nonce; u8 body[sizeof(struct store)]; };
#define MAGIC 0x31564b4d4d5654UL

static struct store st;
static struct disk dk;
static u32 key[8];

static u32 rotl(u32 x, int n) { return (x << n) | (x >> (32 - n)); }
#define QR(a, b, c, d) a += b; d ^= a; d = rotl(d, 16); c += d; b ^= c; b = rotl(b, 12); \
                       a += b; d ^= a; d = rotl(d, 8);  c += d; b ^= c; b = rotl(b, 7)

static void chacha_block(u32 out[16], u64 nonce, u32 counter)
{
    u32 s[16] = { 0x61707865, 0x3320646e, 0x79622d32, 0x6b206574 };
    for (int i = 0; i < 8; i++) s[4 + i] = key[i];
    s[12] = counter; s[13] = 0; s[14] = (u32)nonce; s[15] = (u32)(nonce >> 32);
    u32 x[16];
    for (int i = 0; i < 16; i++) x[i] = s[i];
    for (int i = 0; i < 10; i++) {
        QR(x[0], x[4], x[8], x[12]); QR(x[1], x[5], x[9], x[13]);
        QR(x[2], x[6], x[10], x[14]); QR(x[3], x[7], x[11], x[15]);
        QR(x[0], x[5], x[10], x[15]); QR(x[1], x[6], x[11], x[12]);
        QR(x[2], x[7], x[8], x[13]); QR(x[3], x[4], x[9], x[14]);
    }
    for (int i = 0; i < 16; i++) out[i] = x[i] + s[i];
}

static void chacha_xor(u8 *buf, u64 len, u64 nonce)
{
    u32 ks[16];
    for (u64 off = 0; off < len; off += 64) {
        chacha_block(ks, nonce, (u32)(off / 64 + 1));
        const u8 *k = (const u8 *)ks;
        for (u64 i = 0; i < 64 && off + i < len; i++) buf[off + i] ^= k[i];
    }
}

static u64 checksum(const struct store *s)
{
    u32 ks[16];
    chacha_block(ks, 0xffffffffffffffffUL, 0);   /* a key-derived starting value */
    u64 h = ((u64)ks[0] << 32) | ks[1];
    const u8 *p = (const u8 *)s->rec;
    for (u64 i = 0; i < sizeof s->rec; i++) { h ^= p[i]; h *= 0x100000001b3UL; }
    return h ^ s->boots ^ (s->count << 32);
}

static int load(void)
{
    if (block_read(0, &dk, sizeof dk) != (i64)sizeof dk || dk.magic != MAGIC) return 0;
    chacha_xor(dk.body, sizeof dk.body, dk.nonce);
    memcpy(&st, dk.body, sizeof st);
    return st.magic == MAGIC && st.check == checksum(&st) ? 1 : -1;
}

static void flush(void)
{
    st.magic = MAGIC;
    st.check = checksum(&st);
    dk.magic = MAGIC;
    dk.nonce = st.boots * 1000003UL + st.count * 7919UL + 1;
    memcpy(dk.body, &st, sizeof st);
    chacha_xor(dk.body, sizeof dk.body, dk.nonce);
    block_write(0, &dk, sizeof dk);
}

static void make_key(u8 *k, u64 i)
{
    memset(k, 0, KEYLEN);
    memcpy(k, "key-", 4);
    k[4] = (u8)('0' + i / 10); k[5] = (u8)('0' + i % 10);
}

static void make_val(u8 *v, u64 i, u64 boot)
{
    for (u64 j = 0; j < VALLEN; j++) v[j] = (u8)('a' + (i * 7 + j + boot) % 26);
}

static void put(u64 i, u64 boot)
{
    u8 k[KEYLEN];
    make_key(k, i);
    struct record *free_rec = 0;
    for (int r = 0; r < NREC; r++) {
        if (st.rec[r].used && !memcmp(st.rec[r].key, k, KEYLEN)) { free_rec = &st.rec[r]; break; }
        if (!st.rec[r].used && !free_rec) free_rec = &st.rec[r];
    }
    if (!free_rec) return;
    if (!free_rec->used) st.count++;
    free_rec->used = 1;
    memcpy(free_rec->key, k, KEYLEN);
    make_val(free_rec->val, i, boot);
    flush();
}

int main(void)
{
    const struct secrets_page *s = secrets();
    for (int i = 0; i < 8; i++) {
        u32 w = 0;
        for (int b = 0; b < 4; b++) w |= (u32)(s->len > (u64)(4 * i + b) ? s->data[4 * i + b] : 0) << (8 * b);
        key[i] = w;
    }
    int loaded = load();
    if (loaded < 0) { puts("kvstore: store corrupted or wrong key\n"); return 2; }
    if (!loaded) memset(&st, 0, sizeof st);
    st.boots++;
    u64 boot = st.boots;
    for (u64 i = 0; i < 40; i++) put(i, boot);
    memset(&st, 0, sizeof st);
    if (load() != 1) { puts("kvstore: reload failed\n"); return 2; }
    u64 good = 0;
    for (u64 i = 0; i < 40; i++) {
        u8 k[KEYLEN], v[VALLEN];
        make_key(k, i); make_val(v, i, boot);
        for (int r = 0; r < NREC; r++)
            if (st.rec[r].used && !memcmp(st.rec[r].key, k, KEYLEN) && !memcmp(st.rec[r].val, v, VALLEN)) { good++; break; }
    }
    puts("kvstore: boots="); put_u64(st.boots);
    puts(" keys="); put_u64(st.count);
    puts(" verified="); put_u64(good);
    puts(good == 40 ? " ok\n" : " MISMATCH\n");
    return good == 40 ? 0 : 2;
}
