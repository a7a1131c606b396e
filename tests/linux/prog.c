/* A program of our own for the Linux personality's tests: plain libc, built with
 * musl-gcc -static (and gcc -static).  Exercises argv, stdin, a tmpfs file, a large
 * malloc (mmap), the owner's secret as a file, and an unsupported call; `prog rdtsc` reads
 * the time-stamp counter twice and exits. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static unsigned long long rdtsc(void)
{
    unsigned lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (unsigned long long)hi << 32 | lo;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "rdtsc") == 0) {
        unsigned long long a = rdtsc(), b = rdtsc();
        printf("tsc %llu %llu\n", a, b);
        return 0;
    }
    printf("argc=%d", argc);
    for (int i = 1; i < argc; i++) printf(" [%s]", argv[i]);
    printf("\n");
    char line[256];
    unsigned lines = 0, bytes = 0;
    while (fgets(line, sizeof line, stdin)) { lines++; bytes += strlen(line); }
    printf("stdin lines=%u bytes=%u\n", lines, bytes);
    FILE *f = fopen("/tmp/note", "w");
    if (!f) { perror("fopen"); return 2; }
    fprintf(f, "written %d\n", 42);
    fclose(f);
    f = fopen("/tmp/note", "r");
    if (!f || !fgets(line, sizeof line, f)) { perror("reread"); return 3; }
    printf("tmpfs: %s", line);
    fclose(f);
    size_t n = 8 << 20;
    unsigned char *big = malloc(n);
    if (!big) return 4;
    unsigned long sum = 0;
    for (size_t i = 0; i < n; i += 4096) { big[i] = (unsigned char)(i >> 12); sum += big[i]; }
    printf("malloc 8 MiB ok sum=%lu\n", sum);
    free(big);
    int fd = open("/run/secrets/key", O_RDONLY);
    if (fd >= 0) {
        unsigned char key[64];
        ssize_t k = read(fd, key, sizeof key);
        unsigned s = 0;
        for (ssize_t i = 0; i < k; i++) s += key[i];
        printf("secret bytes=%zd sum=%u\n", k, s);
        close(fd);
    } else {
        printf("no secret\n");
    }
    /* the tmpfs and descriptors: mkdir, rename, ftruncate, lseek, dup2, getdents, chdir */
    if (mkdir("/tmp/d", 0755) != 0 || rename("/tmp/note", "/tmp/d/n") != 0) return 5;
    fd = open("/tmp/d/n", O_RDWR);
    if (fd < 0 || ftruncate(fd, 4) != 0 || lseek(fd, 0, SEEK_END) != 4) return 6;
    int fd2 = dup2(fd, 9);
    char four[5] = {0};
    if (fd2 != 9 || pread(9, four, 4, 0) != 4) return 7;
    close(fd); close(9);
    DIR *dir = opendir("/tmp/d");
    struct dirent *de;
    int entries = 0;
    while (dir && (de = readdir(dir))) entries++;
    if (dir) closedir(dir);
    char cwd[64];
    if (chdir("/tmp/d") != 0 || !getcwd(cwd, sizeof cwd) || unlink("n") != 0) return 8;
    printf("fs: %s entries=%d cwd=%s gone=%d\n", four, entries, cwd, access("n", F_OK) != 0);
    /* a pipe within the one process */
    int p[2];
    char got[16] = {0};
    if (pipe(p) != 0 || write(p[1], "through", 7) != 7 || read(p[0], got, sizeof got) != 7)
        return 10;
    close(p[1]);
    printf("pipe: %s eof=%zd\n", got, read(p[0], got, 1));
    unsigned char sx[256];  /* struct statx, read raw: stx_size at 40, stx_mode at 28 */
    long rc = syscall(SYS_statx, AT_FDCWD, "/run/secrets", 0, 0x7ff, sx);
    printf("statx: %ld dir=%d\n", rc, (*(unsigned short *)(sx + 28) & S_IFMT) == S_IFDIR);
    if (argc > 1 && strcmp(argv[1], "unsupported") == 0) {
        printf("socket=%ld\n", syscall(SYS_socket, 2, 1, 0));
        syscall(SYS_socket, 2, 1, 0);  /* named once, counted twice */
        syscall(SYS_bind, 0, 0, 0);
        syscall(600);  /* past every table: counted, named "unknown" */
    }
    return argc > 1 && strcmp(argv[1], "fail") == 0 ? 9 : 0;
}
