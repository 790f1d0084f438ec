/*
 * launch.c: see launch.h.
 *
 * The child runs on the caller's memory until it execs, like a vfork child:
 * it makes system calls only, on its own stack, and leaves its errno in its
 * argument block when the exec fails.
 */
#define _GNU_SOURCE
#include "launch.h"
#include "detach.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int helper_fd = -1;

void qz_set_helper_fd(int fd)
{
    helper_fd = fd;
}

struct launch_args {
    char *const *argv;
    const int *keep;
    size_t nkeep;
    int devnull;
    int err;
};

static int launch_child(void *arg)
{
    struct launch_args *a = arg;
    static char *const no_env[] = { NULL };
    size_t i;

    /* The helper's fd stays open through qz_detach: it is close-on-exec anyway. */
    qz_detach(a->devnull, a->keep, a->nkeep, a->argv[0]);
    for (i = 0; i < a->nkeep; i++)
        if (a->keep[i] != helper_fd && fcntl(a->keep[i], F_SETFD, 0) != 0) {
            a->err = errno;
            _exit(127);
        }
    syscall(SYS_execveat, helper_fd, "", a->argv, no_env, AT_EMPTY_PATH);
    a->err = errno;
    _exit(127);
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;

    return (x > y) - (x < y);
}

#define LAUNCH_STACK (64 * 1024)

int qz_launch_helper(char *const argv[], int devnull, const int *keep, size_t nkeep)
{
    struct launch_args args = { argv, NULL, nkeep + 1, devnull, 0 };
    sigset_t all, old;
    int *fds, status, err;
    char *stack;
    pid_t pid;

    if (helper_fd < 0)
        return -ENOEXEC;
    fds = malloc((nkeep + 1) * sizeof(*fds));
    if (fds == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < nkeep; i++)
        fds[i] = keep[i];
    fds[nkeep] = helper_fd;
    qsort(fds, nkeep + 1, sizeof(*fds), cmp_int);
    args.keep = fds;
    stack = mmap(NULL, LAUNCH_STACK, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        err = errno;
        free(fds);
        return -err;
    }
    /* No handler of the caller's may run in the child on shared memory. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid = clone(launch_child, stack + LAUNCH_STACK, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
    err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, LAUNCH_STACK);
    free(fds);
    if (pid < 0)
        return -err;
    if (args.err != 0) {
        /* It never became the helper: reap it and say why. */
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        return -args.err;
    }
    return pid;
}
