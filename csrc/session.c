/* session.c: allocation of the shared session and the monotonic clock. */
#define _GNU_SOURCE
#include "session.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

int64_t qz_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static size_t session_size(uint32_t n)
{
    return sizeof(struct qz_session) + (size_t)n * sizeof(struct qz_fs);
}

/*
 * The mapping is shared so that a forked guardian sees the same states; it is
 * anonymous so that nothing of it lives on a filesystem that may be frozen.
 */
struct qz_session *qz_session_new(const int *fds, uint32_t n)
{
    struct qz_session *s;
    uint32_t i;

    if (n == 0 || n > 4096) {
        errno = EINVAL;
        return NULL;
    }
    s = mmap(NULL, session_size(n), PROT_READ | PROT_WRITE,
             MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED)
        return NULL;
    memset(s, 0, session_size(n));
    s->n = n;
    s->failed_index = -1;
    s->guardian_pid = -1;
    s->guardian_pidfd = -1;
    s->guardian_sock = -1;
    s->guardian_status = -1;
    s->report_fd = -1;
    s->keep_fd = -1;
    s->restore_fd = -1;
    for (i = 0; i < n; i++)
        s->fs[i].fd = fds[i];
    return s;
}

void qz_session_free(struct qz_session *s)
{
    if (s != NULL)
        munmap(s, session_size(s->n));
}

int32_t qz_fs_state(struct qz_session *s, uint32_t i)
{
    if (i >= s->n)
        return -EINVAL;
    return qz_load(&s->fs[i].state);
}
