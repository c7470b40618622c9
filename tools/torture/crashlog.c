// crashlog: an LD_PRELOAD shim that records every write, fsync and
// namespace change a process makes below $CRASHLOG_ROOT into $CRASHLOG_OUT,
// so that tools/torture can rebuild the files as they would be after a
// power cut at any point (see crash_replay in torture.py).
//
// Build: gcc -O2 -shared -fPIC -o crashlog.so crashlog.c -ldl -lpthread
//
// Log: one header line per operation, writes followed by their bytes:
//   O <handle> f|d <path>      a file or directory opened (absolute path;
//                              an O_TRUNC open is followed by T <handle> 0)
//   W <handle> <offset> <len>  then <len> bytes
//   T <handle> <len>           ftruncate
//   S <handle>                 fsync / fdatasync
//   R <old> <new>              rename (also renameat/renameat2)
//   L <old> <new>              hard link
//   U <path>                   unlink
//   M <path>                   mkdir
//   D <path>                   rmdir
//   P                          the process wrote to stdout (its answer)
//   X <what>                   a call this shim cannot model (the replay refuses)
// Paths never contain a newline here (omesh's store names are hex).

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAXFD 65536
static unsigned long handles[MAXFD]; // 0: not tracked
static unsigned long next_handle = 1;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int logfd = -1;
static char root[PATH_MAX];
static size_t rootlen;
static int ready;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);

static void init(void) {
    if (ready) return;
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    const char *r = getenv("CRASHLOG_ROOT"), *o = getenv("CRASHLOG_OUT");
    if (r && o) {
        int (*ro)(const char *, int, ...) = dlsym(RTLD_NEXT, "open");
        logfd = ro(o, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        strncpy(root, r, sizeof root - 1);
        rootlen = strlen(root);
    }
    ready = 1;
}

static void out(const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = real_write(logfd, c, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            abort(); // a log that lost a record would make the replay lie
        }
        c += w;
        n -= (size_t)w;
    }
}

static void line(const char *fmt, ...) {
    char buf[2 * PATH_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    out(buf, (size_t)n);
}

// absolute form of a path relative to dirfd (AT_FDCWD or a directory)
static int absolute(int dirfd, const char *p, char *dst) {
    if (p[0] == '/') {
        snprintf(dst, PATH_MAX, "%s", p);
    } else {
        char base[PATH_MAX], link[64];
        ssize_t n;
        if (dirfd == AT_FDCWD) {
            if (!getcwd(base, sizeof base)) return 0;
        } else {
            snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
            n = readlink(link, base, sizeof base - 1);
            if (n < 0) return 0;
            base[n] = 0;
        }
        snprintf(dst, PATH_MAX, "%s/%s", base, p);
    }
    return 1;
}

static int inside(const char *abs) {
    return logfd >= 0 && strncmp(abs, root, rootlen) == 0 && (abs[rootlen] == '/' || abs[rootlen] == 0);
}

static void track_open(int fd, int truncated) {
    if (fd < 0 || fd >= MAXFD || logfd < 0) return;
    char link[64], p[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, p, sizeof p - 1);
    if (n < 0) return;
    p[n] = 0;
    struct stat st;
    int dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
    pthread_mutex_lock(&mu);
    handles[fd] = 0;
    if (inside(p)) {
        handles[fd] = next_handle++;
        line("O %lu %c %s\n", handles[fd], dir ? 'd' : 'f', p);
        if (truncated && !dir) line("T %lu 0\n", handles[fd]);
    }
    pthread_mutex_unlock(&mu);
}

static unsigned long handle_of(int fd) { return (fd >= 0 && fd < MAXFD) ? handles[fd] : 0; }

#define REAL(name, ret, ...) \
    static ret (*real)(__VA_ARGS__); \
    if (!real) real = dlsym(RTLD_NEXT, name); \
    init();

static int do_open(const char *sym, int dirfd, const char *p, int flags, mode_t mode) {
    int fd;
    if (dirfd == -100000) {
        int (*r)(const char *, int, ...) = dlsym(RTLD_NEXT, sym);
        fd = r(p, flags, mode);
    } else {
        int (*r)(int, const char *, int, ...) = dlsym(RTLD_NEXT, sym);
        fd = r(dirfd, p, flags, mode);
    }
    int saved = errno;
    init();
    if (fd >= 0) track_open(fd, (flags & O_TRUNC) != 0);
    errno = saved;
    return fd;
}

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *p, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    return do_open("open", -100000, p, flags, m);
}
int open64(const char *p, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    return do_open("open64", -100000, p, flags, m);
}
int openat(int d, const char *p, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    return do_open("openat", d, p, flags, m);
}
int openat64(int d, const char *p, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    return do_open("openat64", d, p, flags, m);
}

int close(int fd) {
    REAL("close", int, int);
    if (fd >= 0 && fd < MAXFD) handles[fd] = 0;
    return real(fd);
}

static void log_write(int fd, const void *buf, ssize_t n, off64_t off) {
    unsigned long h = handle_of(fd);
    if (fd == 1 && logfd >= 0 && n > 0) {
        pthread_mutex_lock(&mu);
        line("P\n");
        pthread_mutex_unlock(&mu);
    }
    if (!h || n <= 0) return;
    pthread_mutex_lock(&mu);
    line("W %lu %lld %zd\n", h, (long long)off, n);
    out(buf, (size_t)n);
    pthread_mutex_unlock(&mu);
}

ssize_t write(int fd, const void *buf, size_t n) {
    init();
    unsigned long h = handle_of(fd);
    off64_t before = h ? lseek64(fd, 0, SEEK_CUR) : 0;
    ssize_t r = real_write(fd, buf, n);
    int saved = errno;
    if (r > 0 && h) {
        // O_APPEND writes land at the end: the offset is where it ended
        off64_t after = lseek64(fd, 0, SEEK_CUR);
        before = after - r;
    }
    log_write(fd, buf, r, before);
    errno = saved;
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    init();
    ssize_t r = real_pwrite64(fd, buf, n, off);
    int saved = errno;
    log_write(fd, buf, r, off);
    errno = saved;
    return r;
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return pwrite64(fd, buf, n, off); }

static ssize_t vec(int fd, const struct iovec *iov, int cnt, off64_t off, int positional) {
    init();
    size_t total = 0;
    for (int i = 0; i < cnt; i++) total += iov[i].iov_len;
    char *flat = malloc(total ? total : 1);
    size_t at = 0;
    for (int i = 0; i < cnt; i++) { memcpy(flat + at, iov[i].iov_base, iov[i].iov_len); at += iov[i].iov_len; }
    ssize_t r = positional ? pwrite64(fd, flat, total, off) : write(fd, flat, total);
    free(flat);
    return r;
}
ssize_t writev(int fd, const struct iovec *iov, int cnt) { return vec(fd, iov, cnt, 0, 0); }
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) { return vec(fd, iov, cnt, off, 1); }
ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off) { return vec(fd, iov, cnt, off, 1); }

static void log_h(const char *op, int fd) {
    unsigned long h = handle_of(fd);
    if (!h) return;
    pthread_mutex_lock(&mu);
    line("%s %lu\n", op, h);
    pthread_mutex_unlock(&mu);
}

int fsync(int fd) {
    REAL("fsync", int, int);
    int r = real(fd);
    if (r == 0) log_h("S", fd);
    return r;
}
int fdatasync(int fd) {
    REAL("fdatasync", int, int);
    int r = real(fd);
    if (r == 0) log_h("S", fd);
    return r;
}

int ftruncate64(int fd, off64_t len) {
    REAL("ftruncate64", int, int, off64_t);
    int r = real(fd, len);
    unsigned long h = handle_of(fd);
    if (r == 0 && h) {
        pthread_mutex_lock(&mu);
        line("T %lu %lld\n", h, (long long)len);
        pthread_mutex_unlock(&mu);
    }
    return r;
}
int ftruncate(int fd, off_t len) { return ftruncate64(fd, len); }

static void logpair(const char *op, int d1, const char *a, int d2, const char *b) {
    char x[PATH_MAX], y[PATH_MAX];
    if (!absolute(d1, a, x) || !absolute(d2, b, y)) return;
    if (!inside(x) && !inside(y)) return;
    pthread_mutex_lock(&mu);
    line("%s %s %s\n", op, x, y);
    pthread_mutex_unlock(&mu);
}
static void logone(const char *op, int d, const char *a) {
    char x[PATH_MAX];
    if (!absolute(d, a, x) || !inside(x)) return;
    pthread_mutex_lock(&mu);
    line("%s %s\n", op, x);
    pthread_mutex_unlock(&mu);
}

int rename(const char *a, const char *b) {
    REAL("rename", int, const char *, const char *);
    int r = real(a, b);
    if (r == 0) logpair("R", AT_FDCWD, a, AT_FDCWD, b);
    return r;
}
int renameat(int d1, const char *a, int d2, const char *b) {
    REAL("renameat", int, int, const char *, int, const char *);
    int r = real(d1, a, d2, b);
    if (r == 0) logpair("R", d1, a, d2, b);
    return r;
}
int renameat2(int d1, const char *a, int d2, const char *b, unsigned int fl) {
    REAL("renameat2", int, int, const char *, int, const char *, unsigned int);
    int r = real(d1, a, d2, b, fl);
    if (r == 0) logpair(fl & RENAME_EXCHANGE ? "X exchange" : "R", d1, a, d2, b);
    return r;
}
int link(const char *a, const char *b) {
    REAL("link", int, const char *, const char *);
    int r = real(a, b);
    if (r == 0) logpair("L", AT_FDCWD, a, AT_FDCWD, b);
    return r;
}
int linkat(int d1, const char *a, int d2, const char *b, int fl) {
    REAL("linkat", int, int, const char *, int, const char *, int);
    int r = real(d1, a, d2, b, fl);
    if (r == 0) logpair("L", d1, a, d2, b);
    return r;
}
int unlink(const char *a) {
    REAL("unlink", int, const char *);
    int r = real(a);
    if (r == 0) logone("U", AT_FDCWD, a);
    return r;
}
int unlinkat(int d, const char *a, int fl) {
    REAL("unlinkat", int, int, const char *, int);
    int r = real(d, a, fl);
    if (r == 0) logone(fl & AT_REMOVEDIR ? "D" : "U", d, a);
    return r;
}
int rmdir(const char *a) {
    REAL("rmdir", int, const char *);
    int r = real(a);
    if (r == 0) logone("D", AT_FDCWD, a);
    return r;
}
int mkdir(const char *a, mode_t m) {
    REAL("mkdir", int, const char *, mode_t);
    int r = real(a, m);
    if (r == 0) logone("M", AT_FDCWD, a);
    return r;
}
int mkdirat(int d, const char *a, mode_t m) {
    REAL("mkdirat", int, int, const char *, mode_t);
    int r = real(d, a, m);
    if (r == 0) logone("M", d, a);
    return r;
}
int fallocate64(int fd, int mode, off64_t off, off64_t len) {
    REAL("fallocate64", int, int, int, off64_t, off64_t);
    int r = real(fd, mode, off, len);
    if (r == 0 && handle_of(fd)) log_h("X fallocate", fd);
    return r;
}
int fallocate(int fd, int mode, off_t off, off_t len) { return fallocate64(fd, mode, off, len); }
ssize_t copy_file_range(int a, loff_t *ao, int b, loff_t *bo, size_t n, unsigned int fl) {
    REAL("copy_file_range", ssize_t, int, loff_t *, int, loff_t *, size_t, unsigned int);
    ssize_t r = real(a, ao, b, bo, n, fl);
    if (r > 0 && handle_of(b)) log_h("X copy_file_range", b);
    return r;
}
