/* The power-cut model of tests/powercut.py, preloaded (LD_PRELOAD) into a till process:
 * after every successful fsync() or fdatasync() of a watched file, the whole file is
 * copied into the directory POWERCUT_SHADOW. The copies are what a power cut at
 * any later moment leaves on disk: everything a file held at its last sync and nothing
 * written after it (the page cache is lost). The copy is made before the sync returns to
 * SQLite, so whatever the process did after a sync (answer a POS) finds it in the copy.
 *
 * Watched: the files whose name starts with POWERCUT_WATCH (the till database, its WAL and
 * its rollback journal), never the -shm index (SQLite rebuilds it from the WAL).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static void copy_out(int fd, const char *tmp, const char *dst) {
    static char buf[1 << 16];
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out < 0) abort();
    for (off_t off = 0;;) {
        ssize_t got = pread(fd, buf, sizeof buf, off);
        if (got < 0) abort();
        if (got == 0) break;
        for (ssize_t done = 0; done < got;) {
            ssize_t put = write(out, buf + done, (size_t)(got - done));
            if (put < 0) abort();
            done += put;
        }
        off += got;
    }
    if (close(out) != 0 || rename(tmp, dst) != 0) abort();
}

static void snapshot(int fd) {
    const char *shadow = getenv("POWERCUT_SHADOW");
    const char *watch = getenv("POWERCUT_WATCH");
    if (shadow == NULL || watch == NULL) return;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return;
    path[n] = '\0';
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (strncmp(base, watch, strlen(watch)) != 0 || strstr(base, "-shm") != NULL) return;
    char tmp[2 * PATH_MAX], dst[2 * PATH_MAX];
    snprintf(dst, sizeof dst, "%s/%s", shadow, base);
    snprintf(tmp, sizeof tmp, "%s/.%s.%d.tmp", shadow, base, (int)getpid());
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;  /* one copy at a time */
    int saved = errno;
    pthread_mutex_lock(&lock);
    copy_out(fd, tmp, dst);
    pthread_mutex_unlock(&lock);
    errno = saved;
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int rc = real(fd);
    if (rc == 0) snapshot(fd);
    return rc;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int rc = real(fd);
    if (rc == 0) snapshot(fd);
    return rc;
}
