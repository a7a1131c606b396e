/* Files: the measured read-only root file system, a tmpfs in guest memory, the console
 * (stdout, stderr), the input device (stdin) and the owner's secret (/run/secrets/key).
 * Paths are made absolute and normal (".", "..", "//") before any lookup. */
#include "libos.h"

const struct rfs_header *rootfs;
static const struct rfs_entry *entries;

const u8 *rfs_bytes(u64 off, u64 len)
{
    if (off > rootfs->size || len > rootfs->size - off) return 0;
    return (const u8 *)(ROOTFS_BASE + off);
}

const char *rfs_string(u64 off)
{
    if (off >= rootfs->size) return 0;
    const char *s = (const char *)(ROOTFS_BASE + off);
    size_t n = strnlen_(s, rootfs->size - off);
    return n < rootfs->size - off ? s : 0;
}

void fs_init(const struct rfs_header *h)
{
    rootfs = h;
    entries = (const struct rfs_entry *)rfs_bytes(sizeof *h, (u64)h->nfiles * sizeof *entries);
    if (!entries) { log_line("bad root file system", "", ""); tvmm_exit(127); }
}

const struct rfs_entry *rfs_lookup(const char *path)
{
    for (u32 i = 0; i < rootfs->nfiles; i++) {
        const char *p = rfs_string(entries[i].path);
        if (p && streq(p, path) && rfs_bytes(entries[i].data, entries[i].size)) return &entries[i];
    }
    return 0;
}

/* -- the tmpfs ---------------------------------------------------------------------- */
#define PATH_MAX_ 256
#define NTMP 64
struct tnode { int used; u32 mode; char path[PATH_MAX_]; u8 *data; u64 size, cap; };
static struct tnode tmp[NTMP];

static struct tnode *tmp_lookup(const char *path)
{
    for (int i = 0; i < NTMP; i++)
        if (tmp[i].used && streq(tmp[i].path, path)) return &tmp[i];
    return 0;
}

static struct tnode *tmp_create(const char *path, u32 mode)
{
    for (int i = 0; i < NTMP; i++)
        if (!tmp[i].used) {
            zero(&tmp[i], sizeof tmp[i]);
            tmp[i].used = 1;
            tmp[i].mode = mode;
            copy(tmp[i].path, path, strlen(path) + 1);
            return &tmp[i];
        }
    return 0;
}

static i64 tmp_reserve(struct tnode *t, u64 size)
{
    if (size <= t->cap) return 0;
    if (size > (256UL << 20)) return -EFBIG;
    u64 cap = t->cap ? t->cap : PAGE;
    while (cap < size) cap *= 2;
    u8 *d = mm_alloc(cap);
    if (!d) return -ENOSPC;
    copy(d, t->data, t->size);
    if (t->data) mm_free(t->data, t->cap);
    t->data = d;
    t->cap = cap;
    return 0;
}

/* -- paths -------------------------------------------------------------------------- */
static char cwd[PATH_MAX_] = "/";

/* `path` relative to the working directory, as a normal absolute path in `out`. */
static i64 resolve(const char *path, char *out)
{
    char buf[2 * PATH_MAX_];
    if (!path) return -EFAULT;
    size_t n = strnlen_(path, PATH_MAX_);
    if (n >= PATH_MAX_) return -ENAMETOOLONG;
    if (n == 0) return -ENOENT;
    size_t at = 0;
    if (path[0] != '/') { at = strlen(cwd); copy(buf, cwd, at); buf[at++] = '/'; }
    copy(buf + at, path, n + 1);
    size_t o = 0;
    const char *p = buf;
    while (*p) {
        while (*p == '/') p++;
        const char *s = p;
        while (*p && *p != '/') p++;
        size_t len = (size_t)(p - s);
        if (len == 0 || (len == 1 && s[0] == '.')) continue;
        if (len == 2 && s[0] == '.' && s[1] == '.') {
            while (o > 0 && out[o - 1] != '/') o--;
            if (o > 0) o--;
            continue;
        }
        if (o + 1 + len >= PATH_MAX_) return -ENAMETOOLONG;
        out[o++] = '/';
        copy(out + o, s, len);
        o += len;
    }
    if (o == 0) out[o++] = '/';
    out[o] = 0;
    return 0;
}

static int is_dir(const char *path)
{
    const struct rfs_entry *e = rfs_lookup(path);
    if (e) return (e->mode & S_IFMT) == S_IFDIR;
    struct tnode *t = tmp_lookup(path);
    return t && (t->mode & S_IFMT) == S_IFDIR;
}

static void parent_of(const char *path, char *out)
{
    size_t n = strlen(path);
    while (n > 0 && path[n - 1] != '/') n--;
    if (n > 1) n--;
    copy(out, path, n);
    out[n] = 0;
}

/* -- open files --------------------------------------------------------------------- */
enum kind { K_NONE, K_STDIN, K_CONSOLE, K_RFS, K_DIR, K_TMP, K_SECRET, K_NULL, K_PIPE_R,
            K_PIPE_W };
#define NFILES 64
#define NFDS 64
struct pipe { u8 *buf; u64 head, len; int writers, readers; };
#define PIPE_SIZE 65536UL
struct file { int refs; enum kind kind; int flags; u64 off; const struct rfs_entry *e;
              struct tnode *t; struct pipe *p; char path[PATH_MAX_]; };
static struct file files[NFILES];
static struct file *fds[NFDS];
static int fd_cloexec[NFDS];

#define SECRET_PATH "/run/secrets/key"

static struct file *new_file(enum kind kind)
{
    for (int i = 0; i < NFILES; i++)
        if (!files[i].refs) {
            zero(&files[i], sizeof files[i]);
            files[i].refs = 1;
            files[i].kind = kind;
            return &files[i];
        }
    return 0;
}

static i64 install(struct file *f, int from)
{
    for (int fd = from; fd < NFDS; fd++)
        if (!fds[fd]) { fds[fd] = f; fd_cloexec[fd] = 0; return fd; }
    f->refs--;
    return -EMFILE;
}

/* Descriptors are ints in the ABI: only the register's low half counts. */
static struct file *get(u64 fd) { fd = (u32)fd; return fd < NFDS ? fds[fd] : 0; }

void fs_std(void)
{
    fds[0] = new_file(K_STDIN);
    fds[1] = new_file(K_CONSOLE);
    fds[2] = fds[1];
    fds[2]->refs++;
}

#define O_ACCMODE 3
#define O_WRONLY 1
#define O_RDWR 2
#define O_CREAT 0100
#define O_EXCL 0200
#define O_TRUNC 01000
#define O_APPEND 02000
#define O_DIRECTORY 0200000
#define O_CLOEXEC 02000000
#define AT_FDCWD (-100)

static i64 at_path(i64 dirfd_arg, const char *path, char *out)
{
    int dirfd = (int)dirfd_arg;  /* an int in the ABI: the upper half of the register is not */
    if (path && path[0] != '/' && dirfd != AT_FDCWD) {
        struct file *d = get((u64)dirfd);
        if (!d) return -EBADF;
        if (d->kind != K_DIR) return -ENOTDIR;
        char joined[2 * PATH_MAX_];
        size_t a = strlen(d->path), b = strnlen_(path, PATH_MAX_);
        if (b >= PATH_MAX_) return -ENAMETOOLONG;
        copy(joined, d->path, a);
        joined[a] = '/';
        copy(joined + a + 1, path, b + 1);
        return resolve(joined, out);
    }
    return resolve(path, out);
}

i64 sys_openat(u64 dirfd, u64 upath, u64 flags, u64 mode, u64 a4, u64 a5)
{
    (void)a4; (void)a5;
    char path[PATH_MAX_];
    i64 r = at_path((i64)dirfd, (const char *)upath, path);
    if (r < 0) return r;
    int writing = (flags & O_ACCMODE) != 0;
    struct file *f;
    if (streq(path, "/dev/null")) {
        f = new_file(K_NULL);
    } else if (streq(path, SECRET_PATH)) {
        if (writing) return -EROFS;
        if (secrets()->len == 0) return -ENOENT;  /* asked for: released, or refused */
        f = new_file(K_SECRET);
    } else if (rfs_lookup(path)) {
        const struct rfs_entry *e = rfs_lookup(path);
        int dir = (e->mode & S_IFMT) == S_IFDIR;
        if ((flags & O_CREAT) && (flags & O_EXCL)) return -EEXIST;
        if (writing) return dir ? -EISDIR : -EROFS;
        if ((flags & O_DIRECTORY) && !dir) return -ENOTDIR;
        f = new_file(dir ? K_DIR : K_RFS);
        if (f) f->e = e;
    } else {
        struct tnode *t = tmp_lookup(path);
        if (t && (flags & O_CREAT) && (flags & O_EXCL)) return -EEXIST;
        if (!t) {
            char parent[PATH_MAX_];
            if (!(flags & O_CREAT)) return -ENOENT;
            parent_of(path, parent);
            if (!is_dir(parent)) return -ENOENT;
            t = tmp_create(path, S_IFREG | (mode & 0777));
            if (!t) return -ENOSPC;
        }
        int dir = (t->mode & S_IFMT) == S_IFDIR;
        if (dir && writing) return -EISDIR;
        if ((flags & O_DIRECTORY) && !dir) return -ENOTDIR;
        if (!dir && (flags & O_TRUNC) && writing) t->size = 0;
        f = new_file(dir ? K_DIR : K_TMP);
        if (f) f->t = t;
    }
    if (!f) return -EMFILE;
    f->flags = (int)flags;
    copy(f->path, path, strlen(path) + 1);
    r = install(f, 0);
    if (r >= 0 && (flags & O_CLOEXEC)) fd_cloexec[r] = 1;
    return r;
}

i64 sys_open(u64 path, u64 flags, u64 mode, u64 a3, u64 a4, u64 a5)
{
    return sys_openat((u64)AT_FDCWD, path, flags, mode, a3, a4 + a5 * 0);
}

static void release(struct file *f)
{
    if (!f || f->refs <= 0) return;
    if (--f->refs == 0 && f->p) {
        if (f->kind == K_PIPE_R) f->p->readers--; else f->p->writers--;
        if (!f->p->readers && !f->p->writers) { mm_free(f->p->buf, PIPE_SIZE); f->p->buf = 0; }
    }
}

i64 sys_close(u64 fd, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    fd = (u32)fd;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    release(f);
    fds[fd] = 0;
    return 0;
}

/* The bytes of a readable regular file, and their length. */
static const u8 *contents(struct file *f, u64 *size)
{
    switch (f->kind) {
    case K_RFS: *size = f->e->size; return rfs_bytes(f->e->data, f->e->size);
    case K_TMP: *size = f->t->size; return f->t->data;
    case K_SECRET: {
        const struct secrets_page *s = secrets();
        *size = s->len <= sizeof s->data ? s->len : 0;
        return s->data;
    }
    default: *size = 0; return 0;
    }
}

/* stdin: a line of the input device at a time, kept here so that a program reading a byte
 * at a time (a shell's `read`) loses nothing of it. */
static u8 in_buf[4096];
static u64 in_at, in_len;

static i64 read_stdin(u8 *buf, u64 len)
{
    if (len == 0) return 0;
    if (in_at == in_len) {
        i64 r = input_read(in_buf, sizeof in_buf);
        if (r < 0) return -5;                        /* EIO: host errors are not passed on */
        if ((u64)r > sizeof in_buf) return -5;       /* nor more than was asked for */
        in_at = 0;
        in_len = (u64)r;
        if (!r) return 0;                            /* end of input */
    }
    u64 n = in_len - in_at < len ? in_len - in_at : len;
    copy(buf, in_buf + in_at, n);
    in_at += n;
    return (i64)n;
}

static i64 read_at(struct file *f, u8 *buf, u64 len, u64 off)
{
    if (f->kind == K_STDIN) return read_stdin(buf, len);
    if (f->kind == K_PIPE_R) {
        /* One process: nobody could fill an empty pipe while the reader waits. */
        struct pipe *p = f->p;
        if (!p->len) return p->writers ? -EAGAIN : 0;
        u64 n = p->len < len ? p->len : len;
        for (u64 i = 0; i < n; i++) buf[i] = p->buf[(p->head + i) % PIPE_SIZE];
        p->head = (p->head + n) % PIPE_SIZE;
        p->len -= n;
        return (i64)n;
    }
    if (f->kind == K_PIPE_W) return -EBADF;
    if (f->kind == K_DIR) return -EISDIR;
    if (f->kind == K_CONSOLE) return -EBADF;
    if (f->kind == K_NULL) return 0;
    u64 size;
    const u8 *data = contents(f, &size);
    if (off >= size) return 0;
    u64 n = size - off < len ? size - off : len;
    copy(buf, data + off, n);
    return (i64)n;
}

i64 sys_read(u64 fd, u64 buf, u64 len, u64 a3, u64 a4, u64 a5)
{
    (void)a3; (void)a4; (void)a5;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    if ((f->flags & O_ACCMODE) == O_WRONLY && f->kind != K_STDIN) return -EBADF;
    i64 r = read_at(f, (u8 *)buf, len, f->off);
    if (r > 0) f->off += (u64)r;
    return r;
}

i64 sys_pread64(u64 fd, u64 buf, u64 len, u64 off, u64 a4, u64 a5)
{
    (void)a4; (void)a5;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    if (f->kind == K_STDIN || f->kind == K_CONSOLE || f->p) return -ESPIPE;
    return read_at(f, (u8 *)buf, len, off);
}

static i64 write_at(struct file *f, const u8 *buf, u64 len, u64 off)
{
    if (f->kind == K_CONSOLE) {
        u64 done = 0;
        while (done < len) {
            i64 r = console_write(buf + done, len - done);
            if (r <= 0 || (u64)r > len - done) return done ? (i64)done : -5;
            done += (u64)r;
        }
        return (i64)len;
    }
    if (f->kind == K_NULL) return (i64)len;
    if (f->kind == K_PIPE_W) {
        struct pipe *p = f->p;
        if (!p->readers) return -EPIPE;
        u64 n = PIPE_SIZE - p->len < len ? PIPE_SIZE - p->len : len;
        if (!n) return -EAGAIN;  /* full, and no other process to drain it */
        for (u64 i = 0; i < n; i++) p->buf[(p->head + p->len + i) % PIPE_SIZE] = buf[i];
        p->len += n;
        return (i64)n;
    }
    if (f->kind != K_TMP || (f->flags & O_ACCMODE) == 0) return -EBADF;
    if (off + len < off) return -EFBIG;
    i64 r = tmp_reserve(f->t, off + len);
    if (r < 0) return r;
    if (off > f->t->size) zero(f->t->data + f->t->size, off - f->t->size);
    copy(f->t->data + off, buf, len);
    if (off + len > f->t->size) f->t->size = off + len;
    return (i64)len;
}

i64 sys_write(u64 fd, u64 buf, u64 len, u64 a3, u64 a4, u64 a5)
{
    (void)a3; (void)a4; (void)a5;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    if (f->kind == K_TMP && (f->flags & O_APPEND)) f->off = f->t->size;
    i64 r = write_at(f, (const u8 *)buf, len, f->off);
    if (r > 0 && f->kind != K_CONSOLE && f->kind != K_PIPE_W) f->off += (u64)r;
    return r;
}

i64 sys_pwrite64(u64 fd, u64 buf, u64 len, u64 off, u64 a4, u64 a5)
{
    (void)a4; (void)a5;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    if (f->kind == K_CONSOLE || f->p) return -ESPIPE;
    return write_at(f, (const u8 *)buf, len, off);
}

struct iovec { u64 base, len; };

i64 sys_readv(u64 fd, u64 iov, u64 n, u64 a3, u64 a4, u64 a5)
{
    const struct iovec *v = (const struct iovec *)iov;
    i64 total = 0;
    if (n > 1024) return -EINVAL;
    for (u64 i = 0; i < n; i++) {
        if (!v[i].len) continue;
        i64 r = sys_read(fd, v[i].base, v[i].len, a3, a4, a5);
        if (r < 0) return total ? total : r;
        total += r;
        if ((u64)r < v[i].len) break;
    }
    return total;
}

i64 sys_writev(u64 fd, u64 iov, u64 n, u64 a3, u64 a4, u64 a5)
{
    const struct iovec *v = (const struct iovec *)iov;
    i64 total = 0;
    if (n > 1024) return -EINVAL;
    for (u64 i = 0; i < n; i++) {
        if (!v[i].len) continue;
        i64 r = sys_write(fd, v[i].base, v[i].len, a3, a4, a5);
        if (r < 0) return total ? total : r;
        total += r;
    }
    return total;
}

i64 sys_lseek(u64 fd, u64 off, u64 whence, u64 a3, u64 a4, u64 a5)
{
    (void)a3; (void)a4; (void)a5;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    if (f->kind == K_STDIN || f->kind == K_CONSOLE || f->p) return -ESPIPE;
    u64 size;
    contents(f, &size);
    i64 base = whence == 0 ? 0 : whence == 1 ? (i64)f->off : whence == 2 ? (i64)size : -1;
    if (base < 0 && whence > 2) return -EINVAL;
    i64 at = base + (i64)off;
    if (at < 0) return -EINVAL;
    f->off = (u64)at;
    return at;
}

struct kstat {
    u64 dev, ino, nlink; u32 mode, uid, gid, pad0; u64 rdev; i64 size, blksize, blocks;
    u64 atime, atime_ns, mtime, mtime_ns, ctime, ctime_ns; i64 unused[3];
};

static u64 ino_of(const void *p) { return ((u64)p >> 4) & 0xffffff; }

static i64 fill_stat(struct kstat *st, enum kind kind, const struct rfs_entry *e,
                     struct tnode *t)
{
    zero(st, sizeof *st);
    st->dev = 1;
    st->nlink = 1;
    st->blksize = 4096;
    switch (kind) {
    case K_STDIN: case K_CONSOLE: case K_NULL: st->mode = S_IFCHR | 0620; st->ino = 1 + kind; break;
    case K_PIPE_R: case K_PIPE_W: st->mode = S_IFIFO | 0600; st->ino = 16 + kind; break;
    case K_SECRET: st->mode = S_IFREG | 0400; st->size = (i64)secrets()->len; st->ino = 3; break;
    case K_RFS: case K_DIR:
        if (e) { st->mode = e->mode; st->size = (i64)e->size; st->ino = ino_of(e); break; }
        __attribute__((fallthrough));  /* a tmpfs directory */
    case K_TMP:
        if (!t) return -EBADF;
        st->mode = t->mode; st->size = (i64)t->size; st->ino = ino_of(t); break;
    default: return -EBADF;
    }
    st->blocks = (st->size + 511) / 512;
    return 0;
}

i64 sys_fstat(u64 fd, u64 st, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a2; (void)a3; (void)a4; (void)a5;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    return fill_stat((struct kstat *)st, f->kind, f->e, f->t);
}

#define AT_EMPTY_PATH 0x1000

i64 sys_newfstatat(u64 dirfd, u64 upath, u64 st, u64 flags, u64 a4, u64 a5)
{
    (void)a4; (void)a5;
    const char *p = (const char *)upath;
    if ((flags & AT_EMPTY_PATH) && p && p[0] == 0) return sys_fstat(dirfd, st, 0, 0, 0, 0);
    char path[PATH_MAX_];
    i64 r = at_path((i64)dirfd, p, path);
    if (r < 0) return r;
    if (streq(path, "/dev/null")) return fill_stat((struct kstat *)st, K_NULL, 0, 0);
    if (streq(path, SECRET_PATH))
        return secrets()->len ? fill_stat((struct kstat *)st, K_SECRET, 0, 0) : -ENOENT;
    const struct rfs_entry *e = rfs_lookup(path);
    if (e) return fill_stat((struct kstat *)st, K_RFS, e, 0);
    struct tnode *t = tmp_lookup(path);
    if (t) return fill_stat((struct kstat *)st, K_TMP, 0, t);
    return -ENOENT;
}

i64 sys_stat(u64 path, u64 st, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a2; (void)a3; (void)a4; (void)a5;
    return sys_newfstatat((u64)AT_FDCWD, path, st, 0, 0, 0);
}

i64 sys_faccessat(u64 dirfd, u64 upath, u64 mode, u64 a3, u64 a4, u64 a5)
{
    (void)a3; (void)a4; (void)a5;
    struct kstat st;
    i64 r = sys_newfstatat(dirfd, upath, (u64)&st, 0, 0, 0);
    if (r < 0) return r;
    if ((mode & 2) && (st.mode & S_IFMT) == S_IFREG && !tmp_lookup((const char *)upath))
        return -EROFS;
    return 0;
}

i64 sys_access(u64 path, u64 mode, u64 a2, u64 a3, u64 a4, u64 a5)
{
    return sys_faccessat((u64)AT_FDCWD, path, mode, a2, a3, a4 + a5 * 0);
}

struct dirent64 { u64 ino; i64 off; u16 reclen; u8 type; char name[]; };

static i64 emit(u8 *buf, u64 cap, u64 *used, u64 ino, i64 next, u8 type, const char *name)
{
    size_t n = strlen(name);
    u64 rec = (sizeof(struct dirent64) + n + 1 + 7) & ~7UL;
    if (*used + rec > cap) return 0;
    struct dirent64 *d = (struct dirent64 *)(buf + *used);
    d->ino = ino; d->off = next; d->reclen = (u16)rec; d->type = type;
    copy(d->name, name, n + 1);
    *used += rec;
    return 1;
}

/* The child name of `path` under directory `dir`, or NULL. */
static const char *child(const char *dir, const char *path)
{
    size_t n = strlen(dir);
    if (n == 1) n = 0;  /* "/" */
    if (memcmp(dir, path, n) != 0 || path[n] != '/' || !path[n + 1]) return 0;
    const char *name = path + n + 1;
    for (const char *c = name; *c; c++) if (*c == '/') return 0;
    return name;
}

i64 sys_getdents64(u64 fd, u64 ubuf, u64 cap, u64 a3, u64 a4, u64 a5)
{
    (void)a3; (void)a4; (void)a5;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    if (f->kind != K_DIR) return -ENOTDIR;
    u8 *buf = (u8 *)ubuf;
    u64 used = 0;
    /* Positions: 0 ".", 1 "..", 2.. the root file system's entries, then the tmpfs's. */
    for (u64 pos = f->off; pos < 2 + rootfs->nfiles + NTMP; pos++) {
        const char *name = 0, *path = 0;
        u32 mode = 0;
        if (pos < 2) { name = pos ? ".." : "."; mode = S_IFDIR; }
        else if (pos < 2 + rootfs->nfiles) {
            path = rfs_string(entries[pos - 2].path);
            mode = entries[pos - 2].mode;
        } else if (tmp[pos - 2 - rootfs->nfiles].used) {
            path = tmp[pos - 2 - rootfs->nfiles].path;
            mode = tmp[pos - 2 - rootfs->nfiles].mode;
        }
        if (path) name = child(f->path, path);
        if (!name) continue;
        u8 type = (mode & S_IFMT) == S_IFDIR ? 4 : 8;
        if (!emit(buf, cap, &used, pos + 1, (i64)pos + 1, type, name)) {
            if (!used) return -EINVAL;
            f->off = pos;
            return (i64)used;
        }
    }
    f->off = 2 + rootfs->nfiles + NTMP;
    return (i64)used;
}

extern const char *program_path;

i64 sys_readlinkat(u64 dirfd, u64 upath, u64 buf, u64 cap, u64 a4, u64 a5)
{
    (void)a4; (void)a5;
    char path[PATH_MAX_];
    i64 r = at_path((i64)dirfd, (const char *)upath, path);
    if (r < 0) return r;
    if (!streq(path, "/proc/self/exe")) return rfs_lookup(path) || tmp_lookup(path) ? -EINVAL : -ENOENT;
    size_t n = strlen(program_path);
    if (n > cap) n = cap;
    copy((void *)buf, program_path, n);
    return (i64)n;
}

i64 sys_readlink(u64 path, u64 buf, u64 cap, u64 a3, u64 a4, u64 a5)
{
    return sys_readlinkat((u64)AT_FDCWD, path, buf, cap, a3, a4 + a5 * 0);
}

i64 sys_getcwd(u64 buf, u64 cap, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a2; (void)a3; (void)a4; (void)a5;
    size_t n = strlen(cwd) + 1;
    if (n > cap) return -ERANGE;
    copy((void *)buf, cwd, n);
    return (i64)n;
}

i64 sys_chdir(u64 upath, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    char path[PATH_MAX_];
    i64 r = resolve((const char *)upath, path);
    if (r < 0) return r;
    if (!is_dir(path)) return rfs_lookup(path) || tmp_lookup(path) ? -ENOTDIR : -ENOENT;
    copy(cwd, path, strlen(path) + 1);
    return 0;
}

i64 sys_mkdirat(u64 dirfd, u64 upath, u64 mode, u64 a3, u64 a4, u64 a5)
{
    (void)a3; (void)a4; (void)a5;
    char path[PATH_MAX_], parent[PATH_MAX_];
    i64 r = at_path((i64)dirfd, (const char *)upath, path);
    if (r < 0) return r;
    if (rfs_lookup(path) || tmp_lookup(path)) return -EEXIST;
    parent_of(path, parent);
    if (!is_dir(parent)) return -ENOENT;
    return tmp_create(path, S_IFDIR | (mode & 0777)) ? 0 : -ENOSPC;
}

i64 sys_mkdir(u64 path, u64 mode, u64 a2, u64 a3, u64 a4, u64 a5)
{
    return sys_mkdirat((u64)AT_FDCWD, path, mode, a2, a3, a4 + a5 * 0);
}

static int busy(struct tnode *t)
{
    for (int i = 0; i < NFILES; i++) if (files[i].refs && files[i].t == t) return 1;
    return 0;
}

#define AT_REMOVEDIR 0x200

i64 sys_unlinkat(u64 dirfd, u64 upath, u64 flags, u64 a3, u64 a4, u64 a5)
{
    (void)a3; (void)a4; (void)a5;
    char path[PATH_MAX_];
    i64 r = at_path((i64)dirfd, (const char *)upath, path);
    if (r < 0) return r;
    if (rfs_lookup(path)) return -EROFS;
    struct tnode *t = tmp_lookup(path);
    if (!t) return -ENOENT;
    int dir = (t->mode & S_IFMT) == S_IFDIR;
    if (dir && !(flags & AT_REMOVEDIR)) return -EISDIR;
    if (!dir && (flags & AT_REMOVEDIR)) return -ENOTDIR;
    for (int i = 0; dir && i < NTMP; i++)
        if (tmp[i].used && child(path, tmp[i].path)) return -ENOTEMPTY;
    if (busy(t)) { t->path[0] = 0; return 0; }  /* open: gone by name, kept for its fds */
    if (t->data) mm_free(t->data, t->cap);
    t->used = 0;
    return 0;
}

i64 sys_unlink(u64 path, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    return sys_unlinkat((u64)AT_FDCWD, path, 0, a1 + a2 * 0, a3, a4 + a5 * 0);
}

i64 sys_rmdir(u64 path, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    return sys_unlinkat((u64)AT_FDCWD, path, AT_REMOVEDIR, a1 + a2 * 0, a3, a4 + a5 * 0);
}

i64 sys_renameat(u64 olddir, u64 oldp, u64 newdir, u64 newp, u64 a4, u64 a5)
{
    (void)a4; (void)a5;
    char from[PATH_MAX_], to[PATH_MAX_], parent[PATH_MAX_];
    i64 r = at_path((i64)olddir, (const char *)oldp, from);
    if (r < 0) return r;
    r = at_path((i64)newdir, (const char *)newp, to);
    if (r < 0) return r;
    if (rfs_lookup(from) || rfs_lookup(to)) return -EROFS;
    struct tnode *t = tmp_lookup(from);
    if (!t) return -ENOENT;
    parent_of(to, parent);
    if (!is_dir(parent)) return -ENOENT;
    struct tnode *old = tmp_lookup(to);
    if (old && old != t) {
        if ((old->mode & S_IFMT) == S_IFDIR) return -EISDIR;
        if (!busy(old)) { if (old->data) mm_free(old->data, old->cap); old->used = 0; }
        else old->path[0] = 0;
    }
    copy(t->path, to, strlen(to) + 1);
    return 0;
}

i64 sys_rename(u64 oldp, u64 newp, u64 a2, u64 a3, u64 a4, u64 a5)
{
    return sys_renameat((u64)AT_FDCWD, oldp, (u64)AT_FDCWD, newp, a2 + a3 * 0, a4 + a5 * 0);
}

i64 sys_ftruncate(u64 fd, u64 len, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a2; (void)a3; (void)a4; (void)a5;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    if (f->kind != K_TMP || (f->flags & O_ACCMODE) == 0) return f->kind == K_RFS ? -EROFS : -EINVAL;
    i64 r = tmp_reserve(f->t, len);
    if (r < 0) return r;
    if (len > f->t->size) zero(f->t->data + f->t->size, len - f->t->size);
    f->t->size = len;
    return 0;
}

i64 sys_fsync(u64 fd, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    return get(fd) ? 0 : -EBADF;
}

static i64 dup_to(struct file *f, u64 to, int cloexec)
{
    to = (u32)to;
    if (to >= NFDS) return -EBADF;
    if (fds[to] == f) return (i64)to;
    if (fds[to]) release(fds[to]);
    fds[to] = f;
    f->refs++;
    fd_cloexec[to] = cloexec;
    return (i64)to;
}

i64 sys_dup(u64 fd, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a1; (void)a2; (void)a3; (void)a4; (void)a5;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    f->refs++;
    return install(f, 0);
}

i64 sys_dup3(u64 fd, u64 to, u64 flags, u64 a3, u64 a4, u64 a5)
{
    (void)a3; (void)a4; (void)a5;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    if ((u32)fd == (u32)to) return -EINVAL;
    return dup_to(f, to, (flags & O_CLOEXEC) != 0);
}

i64 sys_dup2(u64 fd, u64 to, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a2; (void)a3; (void)a4; (void)a5;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    return dup_to(f, to, 0);
}

#define F_DUPFD 0
#define F_GETFD 1
#define F_SETFD 2
#define F_GETFL 3
#define F_SETFL 4
#define F_DUPFD_CLOEXEC 1030

i64 sys_fcntl(u64 fd, u64 cmd, u64 arg, u64 a3, u64 a4, u64 a5)
{
    (void)a3; (void)a4; (void)a5;
    fd = (u32)fd;
    struct file *f = get(fd);
    if (!f) return -EBADF;
    switch (cmd) {
    case F_DUPFD: case F_DUPFD_CLOEXEC: {
        if (arg >= NFDS) return -EINVAL;
        f->refs++;
        i64 r = install(f, (int)arg);
        if (r >= 0) fd_cloexec[r] = cmd == F_DUPFD_CLOEXEC;
        return r;
    }
    case F_GETFD: return fd_cloexec[fd];
    case F_SETFD: fd_cloexec[fd] = (int)(arg & 1); return 0;
    case F_GETFL: return f->flags & ~O_CLOEXEC;
    case F_SETFL: f->flags = (f->flags & ~O_APPEND) | (int)(arg & O_APPEND); return 0;
    default: return -EINVAL;
    }
}

#define TCGETS 0x5401

i64 sys_ioctl(u64 fd, u64 req, u64 arg, u64 a3, u64 a4, u64 a5)
{
    (void)req; (void)arg; (void)a3; (void)a4; (void)a5;
    return get(fd) ? -ENOTTY : -EBADF;  /* no terminals: TCGETS and the rest say so */
}

/* A private mapping of a file: its bytes copied into fresh pages. */
i64 fs_map(u64 fd, u64 off, u8 *to, u64 len)
{
    struct file *f = get(fd);
    if (!f) return -EBADF;
    if (f->kind != K_RFS && f->kind != K_TMP && f->kind != K_SECRET) return -EACCES;
    u64 size;
    const u8 *data = contents(f, &size);
    if (off < size) copy(to, data + off, size - off < len ? size - off : len);
    return 0;
}

i64 sys_sendfile(u64 out, u64 in, u64 uoff, u64 count, u64 a4, u64 a5)
{
    (void)a4; (void)a5;
    static u8 buf[16384];
    struct file *src = get(in), *dst = get(out);
    if (!src || !dst) return -EBADF;
    u64 *offp = (u64 *)uoff, off = offp ? *offp : src->off;
    i64 total = 0;
    while ((u64)total < count) {
        u64 want = count - (u64)total < sizeof buf ? count - (u64)total : sizeof buf;
        i64 r = read_at(src, buf, want, off);
        if (r <= 0) { if (r < 0 && !total) return r; break; }
        i64 w = sys_write(out, (u64)buf, (u64)r, 0, 0, 0);
        if (w < 0) return total ? total : w;
        off += (u64)w;
        total += w;
        if (w < r) break;
    }
    if (offp) *offp = off; else src->off = off;
    return total;
}

struct pollfd { i32 fd; short events, revents; };
#define POLLIN 1
#define POLLOUT 4
#define POLLNVAL 0x20

/* Every descriptor is always ready: reads and writes never block here (stdin waits on the
 * input device inside read). */
i64 sys_poll(u64 ufds, u64 n, u64 timeout, u64 a3, u64 a4, u64 a5)
{
    (void)timeout; (void)a3; (void)a4; (void)a5;
    struct pollfd *p = (struct pollfd *)ufds;
    i64 ready = 0;
    if (n > NFDS * 4) return -EINVAL;
    for (u64 i = 0; i < n; i++) {
        if (p[i].fd < 0) { p[i].revents = 0; continue; }
        p[i].revents = get((u64)p[i].fd) ? (short)(p[i].events & (POLLIN | POLLOUT)) : POLLNVAL;
        if (p[i].revents) ready++;
    }
    return ready;
}

#define NPIPES 8
static struct pipe pipes[NPIPES];

i64 sys_pipe2(u64 ufds, u64 flags, u64 a2, u64 a3, u64 a4, u64 a5)
{
    (void)a2; (void)a3; (void)a4; (void)a5;
    struct pipe *p = 0;
    for (int i = 0; i < NPIPES && !p; i++) if (!pipes[i].buf) p = &pipes[i];
    if (!p) return -EMFILE;
    struct file *r = new_file(K_PIPE_R);
    if (!r) return -EMFILE;
    struct file *w = new_file(K_PIPE_W);
    if (!w) { r->refs = 0; return -EMFILE; }
    u8 *buf = mm_alloc(PIPE_SIZE);
    if (!buf) { r->refs = w->refs = 0; return -ENOMEM; }
    zero(p, sizeof *p);
    p->buf = buf;
    p->readers = p->writers = 1;
    r->p = w->p = p;
    r->flags = 0;
    w->flags = O_WRONLY;
    i64 rfd = install(r, 0);
    if (rfd < 0) { w->refs = 0; mm_free(buf, PIPE_SIZE); p->buf = 0; return rfd; }
    i64 wfd = install(w, 0);
    if (wfd < 0) { fds[rfd] = 0; r->refs = 0; mm_free(buf, PIPE_SIZE); p->buf = 0; return wfd; }
    if (flags & O_CLOEXEC) fd_cloexec[rfd] = fd_cloexec[wfd] = 1;
    ((i32 *)ufds)[0] = (i32)rfd;
    ((i32 *)ufds)[1] = (i32)wfd;
    return 0;
}

i64 sys_pipe(u64 ufds, u64 a1, u64 a2, u64 a3, u64 a4, u64 a5)
{
    return sys_pipe2(ufds, 0, a1 + a2 * 0, a3, a4, a5);
}

/* struct statx (Linux UAPI), as far as a program reads it. */
struct statx_ {
    u32 mask, blksize; u64 attributes; u32 nlink, uid, gid; u16 mode, pad0; u64 ino, size,
    blocks, attributes_mask; u8 times[64]; u32 rdev_major, rdev_minor, dev_major, dev_minor;
    u8 spare[112];
};
#define STATX_BASIC_STATS 0x7ffU

i64 sys_statx(u64 dirfd, u64 upath, u64 flags, u64 mask, u64 ubuf, u64 a5)
{
    (void)mask; (void)a5;
    struct kstat st;
    i64 r = sys_newfstatat(dirfd, upath, (u64)&st, flags & AT_EMPTY_PATH, 0, 0);
    if (r < 0) return r;
    struct statx_ *x = (struct statx_ *)ubuf;
    zero(x, sizeof *x);
    x->mask = STATX_BASIC_STATS;
    x->blksize = (u32)st.blksize;
    x->nlink = (u32)st.nlink;
    x->mode = (u16)st.mode;
    x->ino = st.ino;
    x->size = (u64)st.size;
    x->blocks = (u64)st.blocks;
    x->dev_minor = 1;
    return 0;
}
