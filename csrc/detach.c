/* detach.c: see detach.h. */
#define _GNU_SOURCE
#include "detach.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void close_others(const int *keep, size_t nkeep)
{
    unsigned int next = 3;
    size_t i;

    for (i = 0; i < nkeep; i++) {
        unsigned int k = (unsigned int)keep[i];

        if (k < next)
            continue;
        if (k > next && syscall(SYS_close_range, next, k - 1, 0) != 0)
            for (unsigned int fd = next; fd < k; fd++)
                close((int)fd);
        next = k + 1;
    }
    if (syscall(SYS_close_range, next, ~0U, 0) != 0)
        for (unsigned int fd = next; fd < 65536; fd++)
            close((int)fd);
}

void qz_detach(int devnull, const int *keep, size_t nkeep, const char *name)
{
    struct sigaction ign, dfl;
    int sig;

    setsid();
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sig == SIGCHLD || sig == SIGSEGV || sig == SIGBUS ||
            sig == SIGFPE || sig == SIGILL || sig == SIGABRT ||
            sig == SIGTRAP || sig == SIGSYS)
            sigaction(sig, &dfl, NULL);
        else
            sigaction(sig, &ign, NULL);
    }
    {
        sigset_t none;

        /* Dispositions are set: now signals may arrive (the parent blocked them). */
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
    }
    prctl(PR_SET_NAME, name, 0, 0, 0);
    /* Deadlines are met to the microsecond, not to the default 50 us slack. */
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
    /* Never hold the caller's stdout pipe open, nor its terminal. */
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
    close_others(keep, nkeep);
}

int qz_wait_ready(int sock)
{
    struct pollfd pfd = { .fd = sock, .events = POLLIN };
    struct timespec ts = { .tv_sec = 5, .tv_nsec = 0 };
    char msg = 0;
    int rc;

    do
        rc = ppoll(&pfd, 1, &ts, NULL);
    while (rc < 0 && errno == EINTR);
    if (rc <= 0)
        return rc == 0 ? ETIMEDOUT : errno;
    if (recv(sock, &msg, 1, MSG_DONTWAIT) != 1 || msg != QZ_MSG_READY)
        return ECHILD;
    return 0;
}
