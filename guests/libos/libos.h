/* The Linux personality: a library OS inside the guest, measured with it.
 *
 * An unmodified static x86-64 Linux program runs in the same guest as this code.  Its
 * `syscall` enters syscall_entry (LSTAR) with no exit to the host; the personality serves
 * the call from guest memory (the measured root file system, a tmpfs, brk and mmap) and
 * reaches the host only through the runtime's narrow calls (console, input, exit).
 *
 * Guest memory (identity mapped; the layout is mirrored in tvmm/guestlinux.py):
 *   0x200000  this personality (text, data, bss: < 2 MiB)
 *   0x400000  the program's segments (ET_EXEC as linked; ET_DYN at this base); brk after
 *   ROOTFS_BASE  the root file system image, read-only, measured at launch
 *   after it  the mmap area, then the program's stack, then this personality's boot stack
 */
#ifndef LIBOS_H
#define LIBOS_H

#include "tvmm.h"

#define PROG_BASE     0x400000UL
#define ROOTFS_BASE   0x2000000UL   /* 32 MiB: programs load below it */
#define BOOT_STACK    0x10000UL     /* the top 64 KiB: start.S's stack, dead once the program runs */
#define USER_STACK    0x800000UL    /* 8 MiB for the program's stack */
#define PAGE          4096UL

/* The root file system image (tvmm/guestlinux.py packs it), at ROOTFS_BASE:
 * header, then nfiles entries, then argc + nenv string offsets, then strings and data.
 * Offsets are from ROOTFS_BASE; every one is checked against `size` before use. */
#define RFS_MAGIC 0x3153464f53554e4cUL  /* "LNUSOFS1" */
struct rfs_header {
    u64 magic;
    u64 size;        /* bytes of the whole image */
    u32 nfiles;
    u32 program;     /* index of the program's entry */
    u32 argc;
    u32 nenv;
    u64 vectors;     /* offset of argc + nenv u64 string offsets */
};
struct rfs_entry {
    u64 path;        /* offset of a NUL-terminated absolute path */
    u64 data;        /* offset of the file's bytes */
    u64 size;
    u32 mode;        /* S_IFREG | permissions, or S_IFDIR */
    u32 reserved;
};

/* errno values (Linux). */
#define EPERM 1
#define ENOENT 2
#define EBADF 9
#define ECHILD 10
#define EAGAIN 11
#define ENOMEM 12
#define EACCES 13
#define EFAULT 14
#define EEXIST 17
#define ENOTDIR 20
#define EISDIR 21
#define EINVAL 22
#define EMFILE 24
#define ENOTTY 25
#define EFBIG 27
#define ENOSPC 28
#define ESPIPE 29
#define EROFS 30
#define EPIPE 32
#define ERANGE 34
#define ENAMETOOLONG 36
#define ENOSYS 38
#define ENOTEMPTY 39

#define S_IFMT  0170000
#define S_IFDIR 0040000
#define S_IFREG 0100000
#define S_IFCHR 0020000
#define S_IFIFO 0010000

typedef i64 (*syscall_fn)(u64, u64, u64, u64, u64, u64);

/* fs.c */
void fs_init(const struct rfs_header *h);
const struct rfs_entry *rfs_lookup(const char *path);
const u8 *rfs_bytes(u64 off, u64 len);   /* NULL unless [off, off+len) lies in the image */
const char *rfs_string(u64 off);          /* NULL unless a NUL-terminated string lies there */
extern const struct rfs_header *rootfs;

/* mm.c */
void mm_init(u64 prog_end, u64 mmap_lo, u64 mmap_hi);
void *mm_alloc(u64 len);                  /* zeroed pages from the mmap area, or NULL */
void mm_free(void *p, u64 len);

/* util */
void *copy(void *d, const void *s, size_t n);
void zero(void *d, size_t n);
int streq(const char *a, const char *b);
size_t strnlen_(const char *s, size_t max);
void log_line(const char *a, const char *b, const char *c);

#endif
