/* tvmm guest ABI: memory layout, hypercalls and the runtime library.
 *
 * A guest is freestanding x86-64 code linked at TVMM_IMAGE_BASE (see guests/runtime/guest.ld).
 * It talks to the platform with `vmcall`: rax = hypercall number, rdi/rsi/rdx = arguments,
 * result in rax.  The same numbers are mirrored in tvmm/abi/guest.py.
 */
#ifndef TVMM_H
#define TVMM_H

typedef unsigned long u64;
typedef long i64;
typedef unsigned int u32;
typedef int i32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef unsigned long size_t;

/* Guest-physical layout (identity mapped: guest virtual == guest physical). */
#define TVMM_BOOT_INFO   0x1000UL   /* written by the TEE at launch (a CPUID-type page) */
#define TVMM_SECRETS     0x2000UL   /* the secrets page: filled at launch by the owner side */
#define TVMM_SHARED_BASE 0x100000UL /* bounce region shared with the host */
#define TVMM_SHARED_SIZE 0x40000UL  /* 128 slots of 2 KiB */
#define TVMM_SLOT_SIZE   0x800UL
#define TVMM_IMAGE_BASE  0x200000UL

/* Hypercall numbers (rax). */
#define HC_EXIT          0  /* rdi = status; never returns */
#define HC_CONSOLE_WRITE 1  /* rdi = gpa, rsi = len -> bytes written */
#define HC_BLOCK_READ    2  /* rdi = sector, rsi = gpa, rdx = len -> bytes read or <0 */
#define HC_BLOCK_WRITE   3  /* rdi = sector, rsi = gpa, rdx = len -> bytes written or <0 */
#define HC_INPUT_READ    4  /* rdi = gpa, rsi = capacity -> bytes read (a line of input) */
#define HC_IRQ_REGISTER  5  /* rdi = vector: the guest accepts it from outside */
#define HC_ATTEST        6  /* rdi = gpa of 64 bytes report data, rsi = gpa of 0x4A0 out */
#define HC_SECRET_KEY    7  /* rdi = gpa of wrapped secret, rsi = len -> unwrapped len
                               (into the secrets page, with the HC_KEY_REQUEST key) */
#define HC_KEY_REQUEST   8  /* rdi = gpa of the owner's 32-byte nonce, rsi = gpa of
                               TVMM_KEY_EVIDENCE out: key pair made inside the TEE; writes
                               its public key || a report binding nonce and key */
#define HC_OWNER_EXCHANGE 9 /* rdi = gpa, rsi = message len, rdx = capacity -> answer len:
                               a message to the guest owner, relayed by the host */

#define SECTOR_SIZE 512

/* Errors returned in rax (negative). */
#define E_AGAIN  (-11)  /* back-pressure: no bounce slot free, retry */
#define E_INVAL  (-22)
#define E_NOSYS  (-38)
#define E_IO     (-5)
#define E_ACCES  (-13)  /* the guest owner refused to release the secret */

/* Attestation and key release (docs/attestation.md). */
#define TVMM_REPORT_SIZE   0x4A0  /* an SEV-SNP ATTESTATION_REPORT */
#define TVMM_NONCE_SIZE    32
#define TVMM_GUEST_KEY     97     /* P-384 public key, SEC1 uncompressed */
#define TVMM_KEY_EVIDENCE  (TVMM_GUEST_KEY + TVMM_REPORT_SIZE)
#define TVMM_OWNER_BUFFER  4352   /* the largest wrapped secret fits */

/* Boot info written by the TEE; the guest reads it, the host never sees it. */
struct boot_info {
    u64 magic;          /* TVMM_BOOT_MAGIC */
    u64 features;       /* TVMM_FEATURE_* */
    u64 ram_size;
    u64 shared_base;
    u64 shared_size;
    u64 level;          /* 0 plain, 1 sev, 2 sev-es, 3 snp, 4 shim */
};
#define TVMM_BOOT_MAGIC 0x31544f4f424d5654UL /* "TVMBOOT1" */
#define TVMM_FEATURE_SHIM 1UL  /* the shim serves I/O hypercalls on private buffers */

/* Secrets page layout: the owner puts the guest's secret here (length-prefixed). */
struct secrets_page {
    u64 len;
    u8 data[4096 - 8];
};

/* Interrupt frame built by the runtime's stubs (see runtime/start.S). */
struct irq_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8;
    u64 rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error;
    u64 rip, cs, rflags, rsp, ss;
};
typedef void (*irq_handler)(struct irq_frame *);

/* Runtime library (guests/runtime). */
i64 hypercall(u64 nr, u64 a0, u64 a1, u64 a2);
void tvmm_exit(int status) __attribute__((noreturn));
i64 console_write(const void *buf, size_t len);
void puts(const char *s);
void put_u64(u64 v);
void put_hex(u64 v);
i64 input_read(void *buf, size_t cap);
i64 block_read(u64 sector, void *buf, size_t len);
i64 block_write(u64 sector, const void *buf, size_t len);
void irq_register(u8 vector, irq_handler h);
void irq_enable(void);
void irq_disable(void);
const struct boot_info *boot_info(void);
const struct secrets_page *secrets(void);  /* empty at launch: asks the owner (key_release) */
u64 secret_u64(void);
i64 attest(const void *report_data, void *report);  /* 64 bytes in, TVMM_REPORT_SIZE out */
i64 owner_exchange(void *buf, size_t len, size_t cap);
i64 key_release(void);  /* attested key release into the secrets page: its length, or <0 */

void *memcpy(void *d, const void *s, size_t n);
void *memset(void *d, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

int main(void);

#endif
