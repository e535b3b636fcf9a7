/* restrict_suid_sgid: run a program as systemd runs a service with RestrictSUIDSGID=yes.
 *
 * Usage: restrict_suid_sgid PROGRAM [ARGS...]
 *
 * systemd's RestrictSUIDSGID=yes installs a seccomp filter that fails with EPERM every
 * call that would give a file or directory the set-user-ID or set-group-ID bit: the chmod
 * family, mkdir and mknod with such a mode, and open/openat/creat that create a file with
 * one. This program installs the same refusals (a classic BPF filter, no libseccomp) and
 * execs PROGRAM under them; the filter is inherited by every child and cannot be lifted.
 * The tests (tests/service/test_sgid_restricted.py) build it with gcc and start
 * ``till-agent run`` under it, which is how the shipped unit runs the agent.
 *
 * Exit status: 125 when the filter cannot be installed, 127 when PROGRAM cannot be run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#else
#error "restrict_suid_sgid knows x86_64 and aarch64 only"
#endif

#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452 /* Linux 6.6; the same number on every architecture */
#endif

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG_LOW(n) (offsetof(struct seccomp_data, args[n]))
#else
#define ARG_LOW(n) (offsetof(struct seccomp_data, args[n]) + 4)
#endif

#define SXID (S_ISUID | S_ISGID)
#define CREATES (O_CREAT | (O_TMPFILE & ~O_DIRECTORY))
#define LOAD(offset) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (offset))
#define LOAD_NR LOAD(offsetof(struct seccomp_data, nr))
#define REFUSE BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM)

/* Five instructions: when the call is nr and its argument mode has S_ISUID or S_ISGID,
 * refuse; else go on to the next check with the call's number loaded again. */
#define MODE_ARG(nr, mode)                                \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 3),      \
        LOAD(ARG_LOW(mode)),                              \
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, SXID, 0, 1), \
        REFUSE, LOAD_NR

/* Seven instructions: the same, only when the argument flags create a file. */
#define CREATING(nr, flags, mode)                            \
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 5),         \
        LOAD(ARG_LOW(flags)),                                \
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CREATES, 0, 3), \
        LOAD(ARG_LOW(mode)),                                 \
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, SXID, 0, 1),    \
        REFUSE, LOAD_NR

static struct sock_filter filter[] = {
    LOAD(offsetof(struct seccomp_data, arch)),
    /* another ABI's numbers mean other calls: refuse it all (nothing here uses one) */
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 1, 0),
    REFUSE,
    LOAD_NR,
#ifdef SYS_chmod
    MODE_ARG(SYS_chmod, 1),
#endif
    MODE_ARG(SYS_fchmod, 1),
    MODE_ARG(SYS_fchmodat, 2),
    MODE_ARG(SYS_fchmodat2, 2),
#ifdef SYS_mkdir
    MODE_ARG(SYS_mkdir, 1),
#endif
    MODE_ARG(SYS_mkdirat, 2),
#ifdef SYS_mknod
    MODE_ARG(SYS_mknod, 1),
#endif
    MODE_ARG(SYS_mknodat, 2),
#ifdef SYS_creat
    MODE_ARG(SYS_creat, 1),
#endif
#ifdef SYS_open
    CREATING(SYS_open, 1, 2),
#endif
    CREATING(SYS_openat, 2, 3),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};

int main(int argc, char **argv) {
    struct sock_fprog program = {
        .len = (unsigned short)(sizeof filter / sizeof filter[0]),
        .filter = filter,
    };
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROGRAM [ARGS...]\n", argv[0]);
        return 125;
    }
    /* an unprivileged process may install a filter only without gaining privileges */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) {
        perror("restrict_suid_sgid: seccomp");
        return 125;
    }
    execvp(argv[1], argv + 1);
    perror("restrict_suid_sgid: exec");
    return 127;
}
