/* The guest runtime: hypercalls, console, block and input I/O, interrupts.
 *
 * Below the `shim` level there is nothing in the TEE to move I/O through shared memory, so
 * the runtime does it itself with a naive bounce driver (as many real guest drivers did):
 * copy into a fixed shared slot, hypercall, read the host's reply from the slot.  When the
 * boot info says a shim is present, I/O hypercalls pass private buffers and the shim
 * bounces, checks and copies exactly once. */
#include "tvmm.h"

struct idt_gate { u16 off0, sel; u8 ist, type; u16 off1; u32 off2, zero; };
extern struct idt_gate idt[256];
extern u64 isr_stubs[256];
static irq_handler handlers[256];

/* Fixed slots of the naive driver (below the shim). */
#define SLOT(n) ((volatile u8 *)(TVMM_SHARED_BASE + (n) * TVMM_SLOT_SIZE))
#define SLOT_CONSOLE 0
#define SLOT_INPUT   1
#define SLOT_BLOCK   2  /* block I/O uses slots 2..5 (8 KiB) */
#define BLOCK_SLOTS  4
#define SLOT_OWNER   6  /* the owner channel uses slots 6..9 (8 KiB) */
#define OWNER_SLOTS  4

/* Reply header the naive driver reads from the shared slot after an input/block read. */
struct io_reply { u32 len; u32 status; };

i64 hypercall(u64 nr, u64 a0, u64 a1, u64 a2)
{
    i64 ret;
    __asm__ volatile("vmcall" : "=a"(ret) : "a"(nr), "D"(a0), "S"(a1), "d"(a2) : "memory");
    return ret;
}

void tvmm_exit(int status)
{
    hypercall(HC_EXIT, (u64)(i64)status, 0, 0);
    for (;;) __asm__ volatile("hlt");
}

const struct boot_info *boot_info(void) { return (const struct boot_info *)TVMM_BOOT_INFO; }

/* The secrets page is filled at launch (the SEV-style launch secret) or, when it is empty
 * the first time the guest looks, by attested key release from the guest owner. */
static int key_release_tried;

const struct secrets_page *secrets(void)
{
    const struct secrets_page *s = (const struct secrets_page *)TVMM_SECRETS;
    if (s->len == 0 && !key_release_tried) {
        key_release_tried = 1;
        key_release();
    }
    return s;
}

u64 secret_u64(void)
{
    u64 v = 0;
    const struct secrets_page *s = secrets();
    for (u64 i = 0; i < 8 && i < s->len; i++) v |= (u64)s->data[i] << (8 * i);
    return v;
}

static int shim_present(void) { return (boot_info()->features & TVMM_FEATURE_SHIM) != 0; }

void *memcpy(void *d, const void *s, size_t n)
{
    u8 *dd = d; const u8 *ss = s;
    while (n--) *dd++ = *ss++;
    return d;
}

void *memset(void *d, int c, size_t n)
{
    u8 *dd = d;
    while (n--) *dd++ = (u8)c;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y) return *x - *y;
    return 0;
}

size_t strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

i64 console_write(const void *buf, size_t len)
{
    i64 r;
    if (shim_present()) {
        while ((r = hypercall(HC_CONSOLE_WRITE, (u64)buf, len, 0)) == E_AGAIN) {}
        return r;
    }
    size_t done = 0;
    while (done < len) {
        size_t n = len - done > TVMM_SLOT_SIZE ? TVMM_SLOT_SIZE : len - done;
        memcpy((void *)SLOT(SLOT_CONSOLE), (const u8 *)buf + done, n);
        r = hypercall(HC_CONSOLE_WRITE, (u64)SLOT(SLOT_CONSOLE), n, 0);
        if (r < 0) return r;
        done += n;
    }
    return (i64)done;
}

void puts(const char *s) { console_write(s, strlen(s)); }

void put_u64(u64 v)
{
    char b[21]; int i = 20; b[i] = 0;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    puts(b + i);
}

void put_hex(u64 v)
{
    char b[19]; b[0] = '0'; b[1] = 'x';
    for (int i = 0; i < 16; i++) b[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 15];
    b[18] = 0;
    puts(b);
}

/* The naive driver's read: check the host's length once, then copy using the length it
 * reads again from shared memory (a double fetch, as in "A Tale of Two Worlds").  The shim
 * path below never has this bug. */
static i64 naive_read(u64 nr, u64 arg, volatile u8 *slot, size_t slot_cap, void *buf, size_t cap)
{
    volatile struct io_reply *reply = (volatile struct io_reply *)slot;
    i64 r = hypercall(nr, arg, (u64)slot, cap);
    if (r < 0) return r;
    if (reply->len > cap || reply->len > slot_cap - sizeof(struct io_reply)) return E_IO;
    u32 n = reply->len;            /* the checked value ... */
    (void)n;
    memcpy(buf, (const void *)(slot + sizeof(struct io_reply)), reply->len); /* ... refetched */
    return reply->len;
}

i64 input_read(void *buf, size_t cap)
{
    i64 r;
    if (shim_present()) {
        while ((r = hypercall(HC_INPUT_READ, (u64)buf, cap, 0)) == E_AGAIN) {}
        return r;
    }
    return naive_read(HC_INPUT_READ, 0, SLOT(SLOT_INPUT), TVMM_SLOT_SIZE, buf, cap);
}

i64 block_read(u64 sector, void *buf, size_t len)
{
    i64 r;
    if (shim_present()) {
        while ((r = hypercall(HC_BLOCK_READ, sector, (u64)buf, len)) == E_AGAIN) {}
        return r;
    }
    if (len > BLOCK_SLOTS * TVMM_SLOT_SIZE - sizeof(struct io_reply)) return E_INVAL;
    return naive_read(HC_BLOCK_READ, sector, SLOT(SLOT_BLOCK), BLOCK_SLOTS * TVMM_SLOT_SIZE,
                      buf, len);
}

i64 block_write(u64 sector, const void *buf, size_t len)
{
    i64 r;
    if (shim_present()) {
        while ((r = hypercall(HC_BLOCK_WRITE, sector, (u64)buf, len)) == E_AGAIN) {}
        return r;
    }
    if (len > BLOCK_SLOTS * TVMM_SLOT_SIZE) return E_INVAL;
    memcpy((void *)SLOT(SLOT_BLOCK), buf, len);
    return hypercall(HC_BLOCK_WRITE, sector, (u64)SLOT(SLOT_BLOCK), len);
}

/* Interrupts. */
void idt_setup(void)
{
    for (int v = 0; v < 256; v++) {
        u64 a = isr_stubs[v];
        idt[v] = (struct idt_gate){ (u16)a, 0x08, 0, 0x8e, (u16)(a >> 16), (u32)(a >> 32), 0 };
    }
}

/* Vector 0x80 is a legacy system-call gate, meant for the guest's own `int $0x80`: like
 * Linux it puts its result in rax.  Nothing registers it for external delivery. */
static void syscall_gate(struct irq_frame *f) { f->rax = (u64)E_NOSYS; }

void isr_dispatch(struct irq_frame *f)
{
    if (f->vector == 0x80) { syscall_gate(f); return; }
    irq_handler h = handlers[f->vector & 0xff];
    if (h) h(f);
}

void irq_register(u8 vector, irq_handler h)
{
    handlers[vector] = h;
    hypercall(HC_IRQ_REGISTER, vector, 0, 0);
}

void irq_enable(void) { __asm__ volatile("sti"); }
void irq_disable(void) { __asm__ volatile("cli"); }

/* Attestation and key release (docs/attestation.md).  The secure processor serves the
 * report and keeps the guest's private key; the guest only moves public bytes. */
i64 attest(const void *report_data, void *report)
{
    return hypercall(HC_ATTEST, (u64)report_data, (u64)report, 0);
}

/* Send `len` bytes of `buf` to the guest owner; its answer (at most `cap` bytes) replaces
 * them.  Below the shim the runtime bounces through its own slots and reads the host's
 * length once; at the shim the shim bounces and checks. */
i64 owner_exchange(void *buf, size_t len, size_t cap)
{
    i64 r;
    if (len > cap) return E_INVAL;
    if (shim_present()) {
        while ((r = hypercall(HC_OWNER_EXCHANGE, (u64)buf, len, cap)) == E_AGAIN) {}
        return r;
    }
    volatile u8 *slot = SLOT(SLOT_OWNER);
    if (cap > OWNER_SLOTS * TVMM_SLOT_SIZE - sizeof(struct io_reply)) return E_INVAL;
    memcpy((void *)slot, buf, len);
    r = hypercall(HC_OWNER_EXCHANGE, (u64)slot, len, cap);
    if (r < 0) return r;
    u32 n = ((volatile struct io_reply *)slot)->len;  /* fetched once, then checked */
    if (n > cap) return E_IO;
    memcpy(buf, (const void *)(slot + sizeof(struct io_reply)), n);
    return n;
}

/* challenge -> nonce; HC_KEY_REQUEST(nonce) -> key || report; evidence -> wrapped secret;
 * HC_SECRET_KEY(wrapped) -> the secrets page. */
i64 key_release(void)
{
    u8 buf[TVMM_OWNER_BUFFER];
    u8 nonce[TVMM_NONCE_SIZE];
    i64 n, r;
    memcpy(buf, "TVKC", 4);
    n = owner_exchange(buf, 4, sizeof buf);
    if (n != TVMM_NONCE_SIZE) return n < 0 ? n : E_IO;
    memcpy(nonce, buf, sizeof nonce);
    memcpy(buf, "TVKE", 4);
    memcpy(buf + 4, nonce, sizeof nonce);
    r = hypercall(HC_KEY_REQUEST, (u64)nonce, (u64)(buf + 4 + sizeof nonce), 0);
    if (r < 0) return r;
    n = owner_exchange(buf, 4 + sizeof nonce + TVMM_KEY_EVIDENCE, sizeof buf);
    if (n < 0) return n;
    if (n >= 4 && memcmp(buf, "TVKX", 4) == 0) return E_ACCES;
    r = hypercall(HC_SECRET_KEY, (u64)buf, (u64)n, 0);
    memset(buf, 0, sizeof buf);
    return r;
}
