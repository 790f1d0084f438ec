/*
 * freeze.c: the frozen window itself.
 *
 * Nothing here allocates, logs or waits on anything but the kernel between
 * the first FIFREEZE and the last FITHAW. The guardian watches the same
 * session; every transition out of QZ_FROZEN is a compare-and-swap so that a
 * filesystem is thawed by exactly one of the two processes.
 */
#define _GNU_SOURCE
#include "freeze.h"
#include "guardian.h"

#include <errno.h>
#include <linux/fs.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <unistd.h>

struct flush_job {
    struct qz_fs *fs;
};

static void flush_one(struct qz_fs *fs)
{
    fs->flush_start_ns = qz_now_ns();
    fs->flush_errno = syncfs(fs->fd) == 0 ? 0 : errno;
    fs->flush_end_ns = qz_now_ns();
}

static void *flush_thread(void *arg)
{
    flush_one(((struct flush_job *)arg)->fs);
    return NULL;
}

/*
 * syncfs() every target at once, so FIFREEZE finds little left to write. Each
 * filesystem's flush runs in its own thread: their writeback proceeds in
 * parallel instead of one device after another. A filesystem whose thread
 * cannot be started is flushed from this thread.
 */
int qz_preflush(struct qz_session *s)
{
    struct flush_job jobs[64];
    pthread_t threads[64];
    int started[64];
    uint32_t base, i, batch;
    int first_err = 0;

    for (base = 0; base < s->n; base += batch) {
        batch = s->n - base < 64 ? s->n - base : 64;
        for (i = 0; i < batch; i++) {
            jobs[i].fs = &s->fs[base + i];
            started[i] = batch > 1 &&
                pthread_create(&threads[i], NULL, flush_thread, &jobs[i]) == 0;
            if (!started[i])
                flush_one(jobs[i].fs);
        }
        for (i = 0; i < batch; i++)
            if (started[i])
                pthread_join(threads[i], NULL);
    }
    for (i = 0; i < s->n; i++)
        if (s->fs[i].flush_errno != 0 && first_err == 0)
            first_err = s->fs[i].flush_errno;
    return -first_err;
}

void qz_thaw_one(struct qz_fs *fs, int32_t done)
{
    int rc;

    fs->thaw_start_ns = qz_now_ns();
    rc = ioctl(fs->fd, FITHAW, 0);
    fs->thaw_end_ns = qz_now_ns();
    fs->thaw_errno = rc == 0 ? 0 : errno;
    qz_store(&fs->state, done);
}

/*
 * Thaw, last frozen first, every filesystem this process still owns. One that
 * the guardian already took over is left to it. Returns the first errno.
 */
int qz_thaw(struct qz_session *s)
{
    int first_err = 0;
    uint32_t i;

    for (i = s->n; i-- > 0;) {
        struct qz_fs *fs = &s->fs[i];

        if (!qz_cas(&fs->state, QZ_FROZEN, QZ_THAWING))
            continue;
        qz_thaw_one(fs, QZ_THAWED);
        if (fs->thaw_errno != 0 && first_err == 0)
            first_err = fs->thaw_errno;
    }
    return -first_err;
}

/* FIFREEZE one filesystem, recording it; returns 0 or errno. */
static int freeze_one(struct qz_session *s, uint32_t i)
{
    struct qz_fs *fs = &s->fs[i];
    int rc;

    fs->freeze_start_ns = qz_now_ns();
    qz_store(&fs->state, QZ_FREEZING);
    rc = ioctl(fs->fd, FIFREEZE, 0);
    fs->freeze_end_ns = qz_now_ns();
    if (rc != 0) {
        fs->freeze_errno = errno;
        qz_store(&fs->state, QZ_FREEZE_FAILED);
        return fs->freeze_errno;
    }
    /* The guardian may have claimed it while the ioctl was blocked. */
    qz_cas(&fs->state, QZ_FREEZING, QZ_FROZEN);
    return 0;
}

#define GROUP_MAX 64

struct group_start {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int go;
};

struct group_job {
    struct qz_session *s;
    uint32_t index;
    struct group_start *start;
    int err;
};

static void *group_thread(void *arg)
{
    struct group_job *job = arg;

    pthread_mutex_lock(&job->start->lock);
    while (!job->start->go)
        pthread_cond_wait(&job->start->cond, &job->start->lock);
    pthread_mutex_unlock(&job->start->lock);
    job->err = freeze_one(job->s, job->index);
    return NULL;
}

/*
 * FIFREEZE filesystems first..last (at most GROUP_MAX) at once, one thread
 * each. The threads are started first and released together, so their
 * creation is not inside the window. Independent filesystems then wait out
 * their RCU grace periods and flushes side by side instead of one after
 * another. A filesystem whose thread could not be started is frozen from
 * this thread once the others have been released.
 */
static int freeze_group(struct qz_session *s, uint32_t first, uint32_t last)
{
    struct group_start start = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
    struct group_job jobs[GROUP_MAX];
    pthread_t threads[GROUP_MAX];
    int started[GROUP_MAX];
    pthread_attr_t attr;
    uint32_t k, n = last - first + 1;
    int err = 0;

    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (k = 0; k < n; k++) {
        jobs[k] = (struct group_job){ s, first + k, &start, 0 };
        started[k] = pthread_create(&threads[k], &attr, group_thread, &jobs[k]) == 0;
    }
    pthread_attr_destroy(&attr);
    pthread_mutex_lock(&start.lock);
    start.go = 1;
    pthread_cond_broadcast(&start.cond);
    pthread_mutex_unlock(&start.lock);
    for (k = 0; k < n; k++)
        if (!started[k])
            jobs[k].err = freeze_one(s, first + k);
    for (k = 0; k < n; k++)
        if (started[k])
            pthread_join(threads[k], NULL);
    for (k = 0; k < n; k++)
        if (jobs[k].err != 0 && err == 0) {
            err = jobs[k].err;
            s->failed_index = (int32_t)(first + k);
        }
    return err;
}

/*
 * Freeze in the given order; with s->parallel, neighbours with the same
 * group number freeze at once (the caller groups only filesystems that do
 * not depend on each other). On the first failure, or when the guardian
 * acted while a FIFREEZE was under way, thaw what this call froze and stop.
 * s->failed_index names the filesystem whose FIFREEZE failed (-1 if none).
 */
int qz_freeze(struct qz_session *s)
{
    uint32_t i = 0;
    int err = 0;

    s->failed_index = -1;
    qz_guardian_begin(s);
    while (i < s->n) {
        uint32_t last = i;

        while (s->parallel && last + 1 < s->n && last + 1 - i < GROUP_MAX &&
               s->fs[last + 1].group == s->fs[i].group)
            last++;
        if (last == i) {
            err = freeze_one(s, i);
            if (err != 0)
                s->failed_index = (int32_t)i;
        } else {
            err = freeze_group(s, i, last);
        }
        if (err != 0)
            break;
        if (qz_load(&s->guard_reason) != QZ_FIRED_NONE) {
            s->failed_index = (int32_t)last;
            err = ETIMEDOUT;
            break;
        }
        i = last + 1;
    }
    qz_store(&s->freeze_done, 1);
    if (err != 0)
        qz_thaw(s);
    return -err;
}

/* Freeze then thaw at once: the window with nothing in between. */
int qz_cycle(struct qz_session *s)
{
    int rc = qz_freeze(s);

    if (rc != 0)
        return rc;
    return qz_thaw(s);
}

/* FITHAW on one fd, outside any session: `quiesce thaw` and recovery. */
int qz_thaw_fd(int fd)
{
    return ioctl(fd, FITHAW, 0) == 0 ? 0 : -errno;
}
