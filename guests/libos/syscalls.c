/* The system call table and the calls that are neither files nor memory.
 *
 * SYSCALLS is the one table: dispatch is built from it and docs/linux.md's table is checked
 * against it (tests/core/test_core_linux.py).  Each line: number, name, handler, what it
 * does here.  Every other number returns -ENOSYS and is named once on the console. */
#include "libos.h"
#include "sysnames.h"

#define H(name) i64 name(u64, u64, u64, u64, u64, u64)
H(sys_read); H(sys_write); H(sys_open); H(sys_close); H(sys_stat); H(sys_fstat);
H(sys_lseek); H(sys_mmap); H(sys_mprotect); H(sys_munmap); H(sys_brk); H(sys_ioctl);
H(sys_pread64); H(sys_pwrite64); H(sys_readv); H(sys_writev); H(sys_access); H(sys_mremap);
H(sys_madvise); H(sys_dup); H(sys_dup2); H(sys_fcntl); H(sys_fsync); H(sys_ftruncate);
H(sys_getcwd); H(sys_chdir); H(sys_rename); H(sys_mkdir); H(sys_rmdir); H(sys_unlink);
H(sys_readlink); H(sys_getdents64); H(sys_openat); H(sys_mkdirat); H(sys_unlinkat);
H(sys_renameat); H(sys_readlinkat); H(sys_faccessat); H(sys_newfstatat); H(sys_dup3);

static i64 sys_exit_group(u64 status, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_arch_prctl(u64 code, u64 addr, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_zero(u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_one(u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_nosys(u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_child(u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_echild(u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_sigaction(u64 sig, u64 act, u64 old, u64 size, u64 a4, u64 a5);
static i64 sys_sigprocmask(u64 how, u64 set, u64 old, u64 size, u64 a4, u64 a5);
static i64 sys_prlimit64(u64 pid, u64 res, u64 new, u64 old, u64 a4, u64 a5);
static i64 sys_getrandom(u64 buf, u64 len, u64 flags, u64 a3, u64 a4, u64 a5);
static i64 sys_clock_gettime(u64 clock, u64 ts, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_gettimeofday(u64 tv, u64 tz, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_uname(u64 buf, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_sched_getaffinity(u64 pid, u64 len, u64 mask, u64 a3, u64 a4, u64 a5);
static i64 sys_kill(u64 pid, u64 sig, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_tgkill(u64 tgid, u64 tid, u64 sig, u64 a3, u64 a4, u64 a5);
static i64 sys_umask(u64 mask, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
static i64 sys_prctl(u64 op, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5);
H(sys_sendfile); H(sys_poll); H(sys_pipe); H(sys_pipe2); H(sys_statx);

struct sysent { u32 nr; const char *name; syscall_fn fn; const char *doc; };

#define SYS(nr, name, fn, doc) { nr, #name, fn, doc },
static const struct sysent SYSCALLS[] = {
SYS(0, read, sys_read, "a file, a directory (EISDIR) or stdin: one line of the input device a call")
SYS(1, write, sys_write, "stdout and stderr to the console; tmpfs files; EROFS on the root file system")
SYS(2, open, sys_open, "as openat from the working directory")
SYS(3, close, sys_close, "closes a descriptor")
SYS(4, stat, sys_stat, "as newfstatat")
SYS(5, fstat, sys_fstat, "size, mode and an inode number; times are 0")
SYS(6, lstat, sys_stat, "as stat: there are no symbolic links")
SYS(7, poll, sys_poll, "every open descriptor is ready (nothing blocks); others POLLNVAL")
SYS(8, lseek, sys_lseek, "SEEK_SET, SEEK_CUR, SEEK_END; ESPIPE on stdin and the console")
SYS(9, mmap, sys_mmap, "anonymous and private file mappings (a copy); MAP_FIXED inside the mmap area; shared file mappings EACCES")
SYS(10, mprotect, sys_mprotect, "succeeds: there is no paging, so no protection")
SYS(11, munmap, sys_munmap, "frees the pages for reuse (zeroed when handed out again)")
SYS(12, brk, sys_brk, "grows or shrinks the heap after the program, up to the root file system")
SYS(13, rt_sigaction, sys_sigaction, "accepted and ignored: no signal is ever delivered")
SYS(14, rt_sigprocmask, sys_sigprocmask, "accepted; the old mask reads as empty")
SYS(16, ioctl, sys_ioctl, "ENOTTY (there are no terminals; TCGETS included)")
SYS(17, pread64, sys_pread64, "read at an offset")
SYS(18, pwrite64, sys_pwrite64, "write at an offset (tmpfs)")
SYS(19, readv, sys_readv, "read into each buffer in turn")
SYS(20, writev, sys_writev, "write each buffer in turn")
SYS(21, access, sys_access, "as faccessat")
SYS(25, mremap, sys_mremap, "shrinks in place, grows by moving (MREMAP_MAYMOVE)")
SYS(28, madvise, sys_madvise, "succeeds, does nothing")
SYS(22, pipe, sys_pipe, "as pipe2")
SYS(32, dup, sys_dup, "lowest free descriptor, sharing the offset")
SYS(33, dup2, sys_dup2, "onto a chosen descriptor")
SYS(39, getpid, sys_one, "1")
SYS(40, sendfile, sys_sendfile, "copies between descriptors through the personality")
SYS(56, clone, sys_child, "ENOSYS: one process, no threads")
SYS(57, fork, sys_child, "ENOSYS: one process")
SYS(58, vfork, sys_child, "ENOSYS: one process")
SYS(59, execve, sys_child, "ENOSYS: one program")
SYS(60, exit, sys_exit_group, "ends the guest with the status (one thread: as exit_group)")
SYS(61, wait4, sys_echild, "ECHILD: there are no children")
SYS(62, kill, sys_kill, "a signal to itself ends the guest with status 128 + signal; others ESRCH")
SYS(63, uname, sys_uname, "Linux 6.1.0-tvmm x86_64, node name tvmm")
SYS(72, fcntl, sys_fcntl, "F_DUPFD, F_DUPFD_CLOEXEC, F_GETFD, F_SETFD, F_GETFL, F_SETFL (O_APPEND)")
SYS(74, fsync, sys_fsync, "succeeds: files live in guest memory")
SYS(77, ftruncate, sys_ftruncate, "tmpfs files; EROFS on the root file system")
SYS(79, getcwd, sys_getcwd, "the working directory")
SYS(80, chdir, sys_chdir, "to a directory of the root file system or the tmpfs")
SYS(82, rename, sys_rename, "tmpfs files")
SYS(83, mkdir, sys_mkdir, "a tmpfs directory")
SYS(84, rmdir, sys_rmdir, "an empty tmpfs directory")
SYS(87, unlink, sys_unlink, "a tmpfs file (kept while open)")
SYS(89, readlink, sys_readlink, "/proc/self/exe: the program's path; EINVAL for files (no links)")
SYS(95, umask, sys_umask, "022, and the new mask is ignored")
SYS(96, gettimeofday, sys_gettimeofday, "virtual time (see clock_gettime)")
SYS(102, getuid, sys_zero, "0")
SYS(104, getgid, sys_zero, "0")
SYS(107, geteuid, sys_zero, "0")
SYS(108, getegid, sys_zero, "0")
SYS(110, getppid, sys_zero, "0")
SYS(131, sigaltstack, sys_zero, "accepted and ignored")
SYS(157, prctl, sys_prctl, "PR_SET_NAME and PR_GET_NAME (the name is kept); others EINVAL")
SYS(158, arch_prctl, sys_arch_prctl, "ARCH_SET_FS, ARCH_GET_FS, ARCH_SET_GS, ARCH_GET_GS (the FS and GS base MSRs)")
SYS(186, gettid, sys_one, "1")
SYS(200, tkill, sys_kill, "as kill")
SYS(201, time, sys_zero, "0 (the epoch: no wall clock reaches the guest)")
SYS(204, sched_getaffinity, sys_sched_getaffinity, "one CPU")
SYS(217, getdents64, sys_getdents64, "entries of a root file system or tmpfs directory, with . and ..")
SYS(218, set_tid_address, sys_one, "1, the only thread's id")
SYS(228, clock_gettime, sys_clock_gettime, "virtual time from the vCPU's virtual TSC, counted from 0")
SYS(230, clock_nanosleep, sys_zero, "returns at once")
SYS(35, nanosleep, sys_zero, "returns at once")
SYS(231, exit_group, sys_exit_group, "ends the guest with the status")
SYS(234, tgkill, sys_tgkill, "as kill")
SYS(257, openat, sys_openat, "root file system files read-only; O_CREAT makes tmpfs files; /run/secrets/key is the owner's released secret; /dev/null")
SYS(258, mkdirat, sys_mkdirat, "a tmpfs directory")
SYS(262, newfstatat, sys_newfstatat, "as fstat, by path; AT_EMPTY_PATH")
SYS(263, unlinkat, sys_unlinkat, "a tmpfs file, or directory with AT_REMOVEDIR")
SYS(264, renameat, sys_renameat, "tmpfs files")
SYS(267, readlinkat, sys_readlinkat, "as readlink")
SYS(269, faccessat, sys_faccessat, "exists: 0; W_OK on the root file system EROFS")
SYS(273, set_robust_list, sys_zero, "accepted: one thread, nothing to clean up")
SYS(292, dup3, sys_dup3, "as dup2, with O_CLOEXEC")
SYS(293, pipe2, sys_pipe2, "a 64 KiB pipe within the one process: an empty read with a writer open and a full write say EAGAIN (nothing else could drain or fill it)")
SYS(302, prlimit64, sys_prlimit64, "reads: RLIMIT_STACK 8 MiB, RLIMIT_NOFILE 64, others unlimited; sets are ignored")
SYS(318, getrandom, sys_getrandom, "bytes of the personality's generator (not yet cryptographic: see docs/linux.md)")
SYS(332, statx, sys_statx, "as newfstatat, in struct statx (basic fields; times 0)")
SYS(334, rseq, sys_nosys, "ENOSYS: glibc runs without restartable sequences")
};
#define NSYSCALLS (sizeof SYSCALLS / sizeof SYSCALLS[0])

#define NTABLE 512
static syscall_fn table[NTABLE];
static u8 reported[NTABLE];
static u32 unsupported_count[NTABLE];  /* -ENOSYS answers by number (NTABLE and up: total) */
u64 unsupported_calls;

void syscalls_init(void)
{
    for (u64 i = 0; i < NSYSCALLS; i++) table[SYSCALLS[i].nr] = SYSCALLS[i].fn;
}

static void put_dec(char *out, u64 v)
{
    char b[21]; int i = 20; b[i] = 0;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    copy(out, b + i, (size_t)(21 - i));
}

i64 syscall_dispatch(u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5, u64 nr)
{
    if (nr < NTABLE && table[nr]) return table[nr](a0, a1, a2, a3, a4, a5);
    unsupported_calls++;
    if (nr < NTABLE) unsupported_count[nr]++;
    if (nr >= NTABLE || !reported[nr]) {
        char num[32];
        if (nr < NTABLE) reported[nr] = 1;
        num[0] = ' '; num[1] = '(';
        put_dec(num + 2, nr);
        size_t n = strlen(num);
        copy(num + n, "): -ENOSYS", 11);
        const char *name = nr < NSYSNAMES && sysnames[nr] ? sysnames[nr] : "unknown";
        log_line("unsupported system call ", name, num);
    }
    return -ENOSYS;
}

/* Append s to the line at *n (the caller has checked the room). */
static void put(char *line, size_t *n, const char *s)
{
    size_t k = strlen(s);
    copy(line + *n, s, k + 1);
    *n += k;
}

/* At the program's end, one line that counts the calls answered -ENOSYS, by name:
 * "unsupported system calls made: 4 (socket 3, bind 1)".  The console is the host's only
 * view of them (no syscall leaves the guest): tvmm run's summary and the trace's end event
 * read the count back from this line.  Names that do not fit end the list with "...". */
static void report_unsupported(void)
{
    if (!unsupported_calls) return;
    char line[200], num[24], item[48];
    size_t n = 0, room = sizeof line - 7;  /* keeps ", ...)" and the NUL */
    u64 listed = 0;
    put_dec(num, unsupported_calls);
    put(line, &n, "unsupported system calls made: ");
    put(line, &n, num);
    put(line, &n, " (");
    for (u64 nr = 0; nr < NTABLE; nr++) {
        if (!unsupported_count[nr]) continue;
        const char *name = nr < NSYSNAMES && sysnames[nr] ? sysnames[nr] : "unknown";
        size_t k = strnlen_(name, 32);
        copy(item, name, k);
        item[k++] = ' ';
        put_dec(item + k, unsupported_count[nr]);
        if (n + (listed ? 2 : 0) + strlen(item) > room) break;
        if (listed) put(line, &n, ", ");
        put(line, &n, item);
        listed += unsupported_count[nr];
    }
    if (listed < unsupported_calls) {  /* did not fit, or numbers past the table */
        if (listed) put(line, &n, ", ");
        put(line, &n, "...");
    }
    put(line, &n, ")");
    log_line(line, "", "");
}

/* -- the calls -------------------------------------------------------------------- */
static i64 sys_exit_group(u64 status, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    report_unsupported();
    tvmm_exit((int)(status & 0xff));
}

void wrmsr(u32 msr, u64 v);
#define ARCH_SET_GS 0x1001
#define ARCH_SET_FS 0x1002
#define ARCH_GET_FS 0x1003
#define ARCH_GET_GS 0x1004
static u64 fs_base, gs_base;

static i64 sys_arch_prctl(u64 code, u64 addr, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a2; (void)a3; (void)a4; (void)a5;
    switch (code) {
    case ARCH_SET_FS: fs_base = addr; wrmsr(0xC0000100U, addr); return 0;
    case ARCH_SET_GS: gs_base = addr; wrmsr(0xC0000101U, addr); return 0;
    case ARCH_GET_FS: *(u64 *)addr = fs_base; return 0;
    case ARCH_GET_GS: *(u64 *)addr = gs_base; return 0;
    default: return -EINVAL;
    }
}

static i64 sys_zero(u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a0; (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    return 0;
}

static i64 sys_one(u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a0; (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    return 1;
}

static i64 sys_nosys(u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a0; (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    return -ENOSYS;
}

static i64 sys_echild(u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a0; (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    return -ECHILD;
}

static i64 sys_child(u64 a0, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a0; (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    return -ENOSYS;
}

static i64 sys_sigaction(u64 sig, u64 act, u64 old, u64 size, u64 a4, u64 a5)
{
    (void)sig; (void)act; (void)size; (void)a4; (void)a5;
    if (old) zero((void *)old, 32);
    return 0;
}

static i64 sys_sigprocmask(u64 how, u64 set, u64 old, u64 size, u64 a4, u64 a5)
{
    (void)how; (void)set; (void)a4; (void)a5;
    if (old) zero((void *)old, size <= 128 ? size : 128);
    return 0;
}

static i64 sys_prlimit64(u64 pid, u64 res, u64 new, u64 old, u64 a4, u64 a5)
{
    (void)pid; (void)new; (void)a4; (void)a5;
    if (old) {
        u64 *o = (u64 *)old;
        u64 v = res == 3 ? USER_STACK : res == 7 ? 64 : ~0UL;
        o[0] = v; o[1] = v;
    }
    return 0;
}

/* splitmix64 over a state seeded from the virtual TSC: a generator, not an entropy source
 * (none reaches the guest yet; docs/linux.md says so). */
static u64 rng_state;

static u64 rdtsc_(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

void random_bytes(u8 *out, size_t n)
{
    if (!rng_state) rng_state = 0x9e3779b97f4a7c15UL ^ rdtsc_();
    while (n) {
        u64 z = (rng_state += 0x9e3779b97f4a7c15UL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9UL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebUL;
        z ^= z >> 31;
        for (int i = 0; i < 8 && n; i++, n--) *out++ = (u8)(z >> (8 * i));
    }
}

static i64 sys_getrandom(u64 buf, u64 len, u64 flags, u64 a3, u64 a4, u64 a5)
{
    (void)flags; (void)a3; (void)a4; (void)a5;
    random_bytes((u8 *)buf, len);
    return (i64)len;
}

static i64 sys_clock_gettime(u64 clock, u64 ts, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)clock; (void)a2; (void)a3; (void)a4; (void)a5;
    u64 ns = rdtsc_() * 1000;
    u64 *t = (u64 *)ts;
    t[0] = ns / 1000000000UL;
    t[1] = ns % 1000000000UL;
    return 0;
}

static i64 sys_gettimeofday(u64 tv, u64 tz, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)tz; (void)a2; (void)a3; (void)a4; (void)a5;
    if (tv) {
        u64 us = rdtsc_();
        u64 *t = (u64 *)tv;
        t[0] = us / 1000000UL;
        t[1] = us % 1000000UL;
    }
    return 0;
}

static i64 sys_uname(u64 buf, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    static const char *const fields[6] = {
        "Linux", "tvmm", "6.1.0-tvmm", "#1 tvmm Linux personality", "x86_64", "(none)"};
    char *b = (char *)buf;
    zero(b, 6 * 65);
    for (int i = 0; i < 6; i++) copy(b + 65 * i, fields[i], strlen(fields[i]));
    return 0;
}

static i64 sys_sched_getaffinity(u64 pid, u64 len, u64 mask, u64 a3, u64 a4, u64 a5)
{
    (void)pid; (void)a3; (void)a4; (void)a5;
    if (len < 8) return -EINVAL;
    zero((void *)mask, 8);
    *(u8 *)mask = 1;
    return 8;
}

static i64 sys_kill(u64 pid, u64 sig, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a2; (void)a3; (void)a4; (void)a5;
    if (pid != 1 && pid != 0) return -3;  /* ESRCH */
    if (sig == 0) return 0;
    char num[24];
    put_dec(num, sig);
    log_line("killed by signal ", num, "");
    report_unsupported();
    tvmm_exit((int)(128 + (sig & 0x7f)));
}

static i64 sys_tgkill(u64 tgid, u64 tid, u64 sig, u64 a3, u64 a4, u64 a5)
{
    (void)tid;
    return sys_kill(tgid, sig, a3, a4, a5, 0);
}

#define PR_SET_NAME 15
#define PR_GET_NAME 16
static char task_name[16] = "main";

static i64 sys_prctl(u64 op, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a2; (void)a3; (void)a4; (void)a5;
    if (op == PR_SET_NAME) {
        size_t n = strnlen_((const char *)a1, 15);
        copy(task_name, (const void *)a1, n);
        task_name[n] = 0;
        return 0;
    }
    if (op == PR_GET_NAME) { copy((void *)a1, task_name, 16); return 0; }
    return -EINVAL;
}

static i64 sys_umask(u64 mask, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)mask; (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    return 022;
}

/* -- small helpers ------------------------------------------------------------------ */
void *copy(void *d, const void *s, size_t n)
{
    /* Unrolled by eight words: the program's segments (a static busybox is ~2 MB) are
     * copied into place at start, and each pass of an emulated loop costs a dispatch
     * (REP MOVSQ is one per word too). */
    u8 *dd = d; const u8 *ss = s;
    if ((((u64)dd | (u64)ss) & 7) == 0) {
        for (; n >= 64; n -= 64, dd += 64, ss += 64) {
            u64 *o = (u64 *)dd; const u64 *i = (const u64 *)ss;
            u64 a = i[0], b = i[1], c = i[2], e = i[3], f = i[4], g = i[5], h = i[6], k = i[7];
            o[0] = a; o[1] = b; o[2] = c; o[3] = e; o[4] = f; o[5] = g; o[6] = h; o[7] = k;
        }
        for (; n >= 8; n -= 8, dd += 8, ss += 8) *(u64 *)dd = *(const u64 *)ss;
    }
    while (n--) *dd++ = *ss++;
    return d;
}

void zero(void *d, size_t n)
{
    u8 *dd = d;
    for (; n && ((u64)dd & 7); n--) *dd++ = 0;
    for (; n >= 64; n -= 64, dd += 64) {
        u64 *o = (u64 *)dd;
        o[0] = 0; o[1] = 0; o[2] = 0; o[3] = 0; o[4] = 0; o[5] = 0; o[6] = 0; o[7] = 0;
    }
    for (; n >= 8; n -= 8, dd += 8) *(u64 *)dd = 0;
    while (n--) *dd++ = 0;
}

int streq(const char *a, const char *b)
{
    while (*a && *a == *b) { a++; b++; }
    return *a == *b;
}

size_t strnlen_(const char *s, size_t max)
{
    size_t n = 0;
    while (n < max && s[n]) n++;
    return n;
}

/* One line on the console, as the personality's own (the CLI shows these on stderr). */
void log_line(const char *a, const char *b, const char *c)
{
    char line[256];
    size_t n = 0;
    const char *parts[4] = {"tvmm-linux: ", a, b, c};
    for (int i = 0; i < 4; i++) {
        size_t k = strlen(parts[i]);
        if (n + k > sizeof line - 2) k = sizeof line - 2 - n;
        copy(line + n, parts[i], k);
        n += k;
    }
    line[n++] = '\n';
    console_write(line, n);
}
