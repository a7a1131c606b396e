/* Memory: brk after the program, mmap in the area between the root file system and the
 * program's stack.  Guest memory is identity mapped and there is no paging: protections
 * are recorded nowhere (mprotect succeeds), and a mapping is pages of that area.
 *
 * The mmap area is a first-fit allocator over a page bitmap.  Pages never handed out are
 * zero (guest memory starts zeroed); a freed page is zeroed when it is handed out again. */
#include "libos.h"

static u64 brk_start, brk_cur, area_lo, area_hi;
#define MAX_PAGES (1UL << 18)           /* 1 GiB of pages */
static u8 used[MAX_PAGES / 8];
static u8 dirty[MAX_PAGES / 8];
static u64 npages;

void mm_init(u64 prog_end, u64 lo, u64 hi)
{
    brk_start = brk_cur = (prog_end + PAGE - 1) & ~(PAGE - 1);
    area_lo = lo;
    area_hi = hi;
    npages = (hi - lo) / PAGE;
    if (npages > MAX_PAGES) npages = MAX_PAGES;
}

static int bit(const u8 *m, u64 i) { return (m[i >> 3] >> (i & 7)) & 1; }
static void set(u8 *m, u64 i, int v)
{
    if (v) m[i >> 3] |= (u8)(1 << (i & 7)); else m[i >> 3] &= (u8)~(1 << (i & 7));
}

void *mm_alloc(u64 len)
{
    u64 want = (len + PAGE - 1) / PAGE, run = 0;
    if (!want || want > npages) return 0;
    for (u64 i = 0; i < npages; i++) {
        run = bit(used, i) ? 0 : run + 1;
        if (run == want) {
            u64 first = i + 1 - want;
            for (u64 j = first; j <= i; j++) {
                set(used, j, 1);
                if (bit(dirty, j)) { zero((void *)(area_lo + j * PAGE), PAGE); set(dirty, j, 0); }
            }
            return (void *)(area_lo + first * PAGE);
        }
    }
    return 0;
}

void mm_free(void *p, u64 len)
{
    u64 a = (u64)p;
    if (a < area_lo || a >= area_hi) return;
    u64 first = (a - area_lo) / PAGE, n = (len + PAGE - 1) / PAGE;
    for (u64 j = first; j < first + n && j < npages; j++)
        if (bit(used, j)) { set(used, j, 0); set(dirty, j, 1); }
}

i64 sys_brk(u64 want, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    if (want < brk_start || want > ROOTFS_BASE) return (i64)brk_cur;
    u64 old = (brk_cur + PAGE - 1) & ~(PAGE - 1), end = (want + PAGE - 1) & ~(PAGE - 1);
    if (end > old) zero((void *)old, end - old);  /* pages given back and taken again */
    brk_cur = want;
    return (i64)brk_cur;
}

#define MAP_SHARED 1
#define MAP_PRIVATE 2
#define MAP_FIXED 0x10
#define MAP_ANONYMOUS 0x20

i64 fs_map(u64 fd, u64 off, u8 *to, u64 len);

i64 sys_mmap(u64 addr, u64 len, u64 prot, u64 flags, u64 fd, u64 off)
{
    (void)prot;
    if (!len || (off & (PAGE - 1))) return -EINVAL;
    if (flags & MAP_FIXED) {
        /* Only inside an existing mapping (glibc and musl use it there). */
        if ((addr & (PAGE - 1)) || addr < area_lo || addr + len > area_hi) return -ENOMEM;
        if (!(flags & MAP_ANONYMOUS)) { i64 r = fs_map(fd, off, (u8 *)addr, len); if (r < 0) return r; }
        else zero((void *)addr, len);
        return (i64)addr;
    }
    if ((flags & MAP_SHARED) && !(flags & MAP_ANONYMOUS)) return -EACCES;  /* read-only files */
    u8 *p = mm_alloc(len);
    if (!p) return -ENOMEM;
    if (!(flags & MAP_ANONYMOUS)) {
        i64 r = fs_map(fd, off, p, len);
        if (r < 0) { mm_free(p, len); return r; }
    }
    return (i64)p;
}

i64 sys_munmap(u64 addr, u64 len, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a2; (void)a3; (void)a4; (void)a5;
    if (addr & (PAGE - 1)) return -EINVAL;
    mm_free((void *)addr, len);
    return 0;
}

i64 sys_mprotect(u64 addr, u64 len, u64 prot, u64 a3, u64 a4, u64 a5)
{
    (void)len; (void)prot; (void)a3; (void)a4; (void)a5;
    return addr & (PAGE - 1) ? -EINVAL : 0;
}

#define MREMAP_MAYMOVE 1

i64 sys_mremap(u64 old, u64 oldlen, u64 newlen, u64 flags, u64 a4, u64 a5)
{
    (void)a4; (void)a5;
    if ((old & (PAGE - 1)) || !newlen) return -EINVAL;
    u64 o = (oldlen + PAGE - 1) & ~(PAGE - 1), n = (newlen + PAGE - 1) & ~(PAGE - 1);
    if (n <= o) { mm_free((void *)(old + n), o - n); return (i64)old; }
    if (!(flags & MREMAP_MAYMOVE)) return -ENOMEM;
    u8 *p = mm_alloc(n);
    if (!p) return -ENOMEM;
    copy(p, (const void *)old, o);
    mm_free((void *)old, o);
    return (i64)p;
}

i64 sys_madvise(u64 addr, u64 len, u64 advice, u64 a3, u64 a4, u64 a5)
{
    (void)addr; (void)len; (void)advice; (void)a3; (void)a4; (void)a5;
    return 0;
}
