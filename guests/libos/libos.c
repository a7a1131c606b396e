/* The personality's start: SYSCALL set up, the program loaded from the measured root file
 * system, its initial stack (argv, envp, auxv) built, and a jump to its entry. */
#include "libos.h"

#define EFER_MSR   0xC0000080U
#define STAR_MSR   0xC0000081U
#define LSTAR_MSR  0xC0000082U
#define FMASK_MSR  0xC0000084U

extern void syscall_entry(void);
extern void enter_program(u64 entry, u64 sp) __attribute__((noreturn));

static u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}

void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}

static void enable_sse(void)
{
    u64 cr0, cr4;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    cr0 = (cr0 & ~(1UL << 2)) | (1UL << 1);  /* EM off, MP on */
    __asm__ volatile("mov %0, %%cr0" : : "r"(cr0));
    __asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
    cr4 |= (1UL << 9) | (1UL << 10);         /* OSFXSR, OSXMMEXCPT */
    __asm__ volatile("mov %0, %%cr4" : : "r"(cr4));
}

__attribute__((noreturn)) static void die(const char *why, const char *what)
{
    log_line(why, what, "");
    tvmm_exit(127);
}

/* ELF64 as far as a static loader needs it. */
struct ehdr {
    u8 ident[16]; u16 type, machine; u32 version; u64 entry, phoff, shoff;
    u32 flags; u16 ehsize, phentsize, phnum, shentsize, shnum, shstrndx;
};
struct phdr { u32 type, flags; u64 offset, vaddr, paddr, filesz, memsz, align; };
#define PF_X 1
#define PT_LOAD 1
#define PT_INTERP 3
#define PT_PHDR 6
#define ET_EXEC 2
#define ET_DYN 3

struct loaded { u64 entry, phdr, phnum, end; };

/* Tell the modeled CPU that code was written at [start, start + len) (a model-specific
 * CPUID leaf, docs/linux.md): it traps the RDTSCs there as it trapped the measured
 * code's at launch, so the program reads the virtual TSC, never the host's clock. */
#define CODE_LOADED_LEAF 0x40000F00u
static void code_loaded(u64 start, u64 len)
{
    u64 a = CODE_LOADED_LEAF, b = start, c = len, d;
    __asm__ volatile("cpuid" : "+a"(a), "+b"(b), "+c"(c), "=d"(d) : : "memory");
    if (a == 0xFFFFFFFFu) die("the CPU refused to trap the program's code: ", "program");
}

static struct loaded load_program(const struct rfs_entry *e)
{
    struct loaded out = {0, 0, 0, 0};
    const struct ehdr *h = (const struct ehdr *)rfs_bytes(e->data, sizeof *h);
    if (!h || memcmp(h->ident, "\177ELF", 4) != 0) die("not an ELF file: ", "program");
    if (h->ident[4] != 2 || h->machine != 62) die("not an x86-64 ELF: ", "program");
    if (h->type != ET_EXEC && h->type != ET_DYN) die("not an executable: ", "program");
    if (h->phentsize != sizeof(struct phdr)) die("bad program headers: ", "program");
    const struct phdr *ph = (const struct phdr *)rfs_bytes(e->data + h->phoff,
                                                           (u64)h->phnum * sizeof *ph);
    if (!ph || h->phoff > e->size) die("bad program headers: ", "program");
    u64 bias = h->type == ET_DYN ? PROG_BASE : 0;
    u64 lo = ~0UL, first_off = 0;
    for (u32 i = 0; i < h->phnum; i++) {
        if (ph[i].type == PT_INTERP) die("dynamically linked: build with -static", "");
        if (ph[i].type != PT_LOAD || !ph[i].memsz) continue;
        u64 va = ph[i].vaddr + bias, end = va + ph[i].memsz;
        if (ph[i].filesz > ph[i].memsz || ph[i].offset > e->size ||
            ph[i].filesz > e->size - ph[i].offset || end < va ||
            va < PROG_BASE || end > ROOTFS_BASE)
            die("a segment does not fit below the root file system: ", "program");
        if (va < lo) { lo = va; first_off = ph[i].offset; }
        copy((void *)va, rfs_bytes(e->data + ph[i].offset, ph[i].filesz), ph[i].filesz);
        zero((void *)(va + ph[i].filesz), ph[i].memsz - ph[i].filesz);
        if ((ph[i].flags & PF_X) && ph[i].filesz) code_loaded(va, ph[i].filesz);
        if (end > out.end) out.end = end;
    }
    if (!out.end) die("nothing to load: ", "program");
    out.entry = h->entry + bias;
    out.phnum = h->phnum;
    out.phdr = lo - (first_off & (PAGE - 1)) + h->phoff;  /* headers inside the first segment */
    for (u32 i = 0; i < h->phnum; i++)
        if (ph[i].type == PT_PHDR) out.phdr = ph[i].vaddr + bias;
    if (out.phdr < lo || out.phdr + (u64)h->phnum * sizeof *ph > out.end) {
        /* Headers not loaded: give the program a copy on its stack region instead. */
        out.phdr = 0;
    }
    return out;
}

#define AT_NULL 0
#define AT_PHDR 3
#define AT_PHENT 4
#define AT_PHNUM 5
#define AT_PAGESZ 6
#define AT_BASE 7
#define AT_FLAGS 8
#define AT_ENTRY 9
#define AT_UID 11
#define AT_EUID 12
#define AT_GID 13
#define AT_EGID 14
#define AT_PLATFORM 15
#define AT_HWCAP 16
#define AT_CLKTCK 17
#define AT_SECURE 23
#define AT_RANDOM 25
#define AT_EXECFN 31

extern void random_bytes(u8 *out, size_t n);
void fs_std(void);
void syscalls_init(void);

static char *push_string(char **sp, const char *s)
{
    size_t n = strlen(s) + 1;
    *sp -= n;
    copy(*sp, s, n);
    return *sp;
}

/* The initial stack as Linux's binfmt_elf builds it: argc, argv, NULL, envp, NULL, auxv;
 * the strings and AT_RANDOM's 16 bytes above them. */
static u64 build_stack(u64 top, const struct loaded *p, const char *execfn)
{
    const struct rfs_header *h = rootfs;
    const u64 *vec = (const u64 *)rfs_bytes(h->vectors, (u64)(h->argc + h->nenv) * 8);
    if (!vec || h->argc == 0 || h->argc > 4096 || h->nenv > 4096) die("bad argument vector", "");
    static char *argv[4097], *envp[4097];
    char *sp = (char *)top;
    for (u32 i = 0; i < h->argc + h->nenv; i++) {
        const char *s = rfs_string(vec[i]);
        if (!s) die("bad argument string", "");
        char *at = push_string(&sp, s);
        if (i < h->argc) argv[i] = at; else envp[i - h->argc] = at;
    }
    char *fn = push_string(&sp, execfn);
    char *platform = push_string(&sp, "x86_64");
    sp = (char *)((u64)sp & ~15UL);
    sp -= 16;
    random_bytes((u8 *)sp, 16);
    u8 *rnd = (u8 *)sp;
    u64 aux[][2] = {
        {AT_PHDR, p->phdr}, {AT_PHENT, 56}, {AT_PHNUM, p->phnum}, {AT_PAGESZ, PAGE},
        {AT_BASE, 0}, {AT_FLAGS, 0}, {AT_ENTRY, p->entry}, {AT_UID, 0}, {AT_EUID, 0},
        {AT_GID, 0}, {AT_EGID, 0}, {AT_HWCAP, 0x0781ABFD}, {AT_CLKTCK, 100},
        {AT_SECURE, 0}, {AT_RANDOM, (u64)rnd}, {AT_EXECFN, (u64)fn},
        {AT_PLATFORM, (u64)platform}, {AT_NULL, 0},
    };
    u64 words = 1 + h->argc + 1 + h->nenv + 1 + 2 * (sizeof aux / sizeof aux[0]);
    u64 *w = (u64 *)(((u64)sp - 8 * words) & ~15UL);
    u64 *out = w;
    *w++ = h->argc;
    for (u32 i = 0; i < h->argc; i++) *w++ = (u64)argv[i];
    *w++ = 0;
    for (u32 i = 0; i < h->nenv; i++) *w++ = (u64)envp[i];
    *w++ = 0;
    for (u64 i = 0; i < sizeof aux / sizeof aux[0]; i++) { *w++ = aux[i][0]; *w++ = aux[i][1]; }
    return (u64)out;
}

const char *program_path;

int main(void)
{
    const struct boot_info *bi = boot_info();
    const struct rfs_header *h = (const struct rfs_header *)ROOTFS_BASE;
    u64 ram = bi->ram_size;
    if (h->magic != RFS_MAGIC || h->size > ram - ROOTFS_BASE) die("no root file system", "");
    fs_init(h);
    fs_std();
    syscalls_init();
    const struct rfs_entry *prog = h->program < h->nfiles ?
        (const struct rfs_entry *)rfs_bytes(sizeof *h + (u64)h->program * sizeof *prog,
                                            sizeof *prog) : 0;
    if (!prog) die("no program in the root file system", "");
    program_path = rfs_string(prog->path);
    if (!program_path) die("bad program path", "");
    struct loaded p = load_program(prog);
    u64 stack_top = ram - BOOT_STACK;
    u64 mmap_lo = (ROOTFS_BASE + h->size + 0x1fffffUL) & ~0x1fffffUL;
    u64 mmap_hi = stack_top - USER_STACK;
    if (mmap_hi <= mmap_lo) die("guest memory too small for the program's stack", "");
    mm_init(p.end, mmap_lo, mmap_hi);
    enable_sse();
    wrmsr(EFER_MSR, rdmsr(EFER_MSR) | 1);               /* SCE */
    wrmsr(STAR_MSR, (0x08UL << 32) | (0x08UL << 48));
    wrmsr(LSTAR_MSR, (u64)syscall_entry);
    wrmsr(FMASK_MSR, 0x700);                           /* TF, IF, DF cleared on entry */
    enter_program(p.entry, build_stack(stack_top, &p, program_path));
}
