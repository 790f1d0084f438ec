/* session.c: allocation of the shared session and the monotonic clock. */
#define _GNU_SOURCE
#include "session.h"
#include "freeze.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

int64_t qz_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int no_pidfd;

void qz_set_no_pidfd(int on)
{
    no_pidfd = on != 0;
}

int qz_no_pidfd(void)
{
    return no_pidfd;
}

size_t qz_session_size(uint32_t n)
{
    return sizeof(struct qz_session) + (size_t)n * sizeof(struct qz_fs);
}

/*
 * The session lives in a shared mapping of a memfd: the guardian (its own
 * program, see launch.h) maps the same memfd and sees the same states. A
 * memfd is memory, so nothing of it lives on a filesystem that may be frozen.
 */
struct qz_session *qz_session_new(const int *fds, uint32_t n)
{
    struct qz_session *s;
    uint32_t i;
    int fd, err;

    if (n == 0 || n > QZ_MAX_FILESYSTEMS) {
        errno = EINVAL;
        return NULL;
    }
    fd = memfd_create("quiesce-session", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    if (ftruncate(fd, (off_t)qz_session_size(n)) != 0) {
        err = errno;
        close(fd);
        errno = err;
        return NULL;
    }
    s = mmap(NULL, qz_session_size(n), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (s == MAP_FAILED) {
        err = errno;
        close(fd);
        errno = err;
        return NULL;
    }
    memset(s, 0, qz_session_size(n));
    s->mem_fd = fd;
    s->n = n;
    s->failed_index = -1;
    s->guardian_pid = -1;
    s->guardian_pidfd = -1;
    s->guardian_sock = -1;
    s->guardian_status = -1;
    s->report_fd = -1;
    s->keep_fd = -1;
    s->proof_fd = -1;
    s->ledger_dirfd = -1;
    s->restore_fd = -1;
    for (i = 0; i < n; i++)
        s->fs[i].fd = fds[i];
    return s;
}

void qz_session_free(struct qz_session *s)
{
    if (s == NULL)
        return;
    qz_pool_stop(s);
    close(s->mem_fd);
    munmap(s, qz_session_size(s->n));
}

int32_t qz_fs_state(struct qz_session *s, uint32_t i)
{
    if (i >= s->n)
        return -EINVAL;
    return qz_load(&s->fs[i].state);
}

int qz_wait_until(struct pollfd *pfd, unsigned int n, int timer_fd,
                  int64_t deadline_ns)
{
    struct pollfd all[8];
    struct timespec rel, *timeout = NULL;
    unsigned int i, m = n;
    int rc, timer_ready = 0;

    if (n > 7)
        return -EINVAL;
    memcpy(all, pfd, n * sizeof(*pfd));
    if (deadline_ns >= 0 && timer_fd >= 0) {
        struct itimerspec its;

        memset(&its, 0, sizeof(its));
        /* 0 would disarm the timer: a deadline already past is 1 ns. */
        its.it_value.tv_sec = deadline_ns / 1000000000LL;
        its.it_value.tv_nsec = deadline_ns % 1000000000LL;
        if (deadline_ns <= 0)
            its.it_value.tv_nsec = 1;
        if (timerfd_settime(timer_fd, TFD_TIMER_ABSTIME, &its, NULL) != 0)
            return -errno;
        all[m].fd = timer_fd;
        all[m].events = POLLIN;
        all[m].revents = 0;
        m++;
    } else if (deadline_ns >= 0) {
        int64_t left = deadline_ns - qz_now_ns();

        if (left < 0)
            left = 0;
        rel.tv_sec = left / 1000000000LL;
        rel.tv_nsec = left % 1000000000LL;
        timeout = &rel;
    }
    rc = ppoll(all, m, timeout, NULL);
    if (rc < 0)
        return -errno;
    if (m > n && all[n].revents) {
        uint64_t ticks;

        timer_ready = 1;
        if (read(timer_fd, &ticks, sizeof(ticks)) < 0) {
            /* EAGAIN: re-armed meanwhile; nothing to consume. */
        }
    }
    memcpy(pfd, all, n * sizeof(*pfd));
    for (i = 0; i < n; i++)
        if (pfd[i].revents)
            return 1;
    return timer_ready || rc == 0 ? 0 : 1;
}
