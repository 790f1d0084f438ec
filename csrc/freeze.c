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
#include <stdlib.h>
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

/* FITHAW one filesystem if this process still owns it; returns its errno or 0. */
static int thaw_owned(struct qz_session *s, uint32_t i)
{
    struct qz_fs *fs = &s->fs[i];

    if (!qz_cas(&fs->state, QZ_FROZEN, QZ_THAWING))
        return 0;
    qz_thaw_one(fs, QZ_THAWED);
    return fs->thaw_errno;
}

/* ---- the threads of a parallel session ---------------------------------- */

#define GROUP_MAX 64

enum { OP_FREEZE, OP_THAW };

/*
 * Threads started before the window, parked on a condition variable. The
 * caller hands them a batch (one group: filesystems first..first+n-1), does
 * the batch's first filesystem itself, and worker w does first+w+1. So
 * neither a later group's freeze nor the thaw pays for pthread_create. The
 * pool lives in this process's memory only: the guardian, forked before it
 * exists, never sees it (it thaws on its own, one after another).
 */
struct qz_pool {
    pthread_mutex_t lock;
    pthread_cond_t work;
    pthread_cond_t done;
    struct qz_session *s;
    uint64_t generation;     /* bumped for every batch */
    int stop;
    int op;
    uint32_t first, n;       /* the batch: positions 1..n-1 are the workers' */
    uint32_t pending;        /* workers still on the current batch */
    uint32_t workers;        /* started */
    int err[GROUP_MAX];      /* errno per batch position */
    pthread_t threads[GROUP_MAX - 1];
};

struct pool_arg {
    struct qz_pool *pool;
    uint32_t w;
};

static int run_op(struct qz_session *s, int op, uint32_t i)
{
    return op == OP_FREEZE ? freeze_one(s, i) : thaw_owned(s, i);
}

static void *pool_worker(void *arg)
{
    struct qz_pool *p = ((struct pool_arg *)arg)->pool;
    uint32_t k = ((struct pool_arg *)arg)->w + 1;
    /* The pool starts at generation 0: a batch handed out before this thread first ran still counts. */
    uint64_t seen = 0;

    pthread_mutex_lock(&p->lock);
    for (;;) {
        int op;
        uint32_t first;

        while (p->generation == seen && !p->stop)
            pthread_cond_wait(&p->work, &p->lock);
        if (p->stop)
            break;
        seen = p->generation;
        if (k >= p->n)
            continue;
        op = p->op;
        first = p->first;
        pthread_mutex_unlock(&p->lock);
        p->err[k] = run_op(p->s, op, first + k);
        pthread_mutex_lock(&p->lock);
        if (--p->pending == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* The group that starts at `first`: its last index (at most GROUP_MAX apart). */
static uint32_t group_last(const struct qz_session *s, uint32_t first)
{
    uint32_t last = first;

    while (s->parallel && last + 1 < s->n && last + 1 - first < GROUP_MAX &&
           s->fs[last + 1].group == s->fs[first].group)
        last++;
    return last;
}

/*
 * Start the threads of a parallel session whose groups have more than one
 * member, before the window. A pool that cannot be allocated, or threads
 * that cannot be started, only make the work sequential: the caller does
 * what no worker takes.
 */
static void pool_start(struct qz_session *s)
{
    struct qz_pool *p;
    struct pool_arg *args;
    pthread_attr_t attr;
    uint32_t i, want = 0, w;

    if (!s->parallel || s->pool != NULL)
        return;
    for (i = 0; i < s->n; i = group_last(s, i) + 1)
        if (group_last(s, i) - i > want)
            want = group_last(s, i) - i;
    if (want == 0)
        return;
    p = calloc(1, sizeof(*p) + (size_t)want * sizeof(*args));
    if (p == NULL)
        return;
    args = (struct pool_arg *)(p + 1);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    p->s = s;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (w = 0; w < want; w++) {
        args[w] = (struct pool_arg){ p, w };
        if (pthread_create(&p->threads[w], &attr, pool_worker, &args[w]) != 0)
            break;
        p->workers++;
    }
    pthread_attr_destroy(&attr);
    s->pool = p;
}

void qz_pool_stop(struct qz_session *s)
{
    struct qz_pool *p = s->pool;
    uint32_t w;

    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);
    for (w = 0; w < p->workers; w++)
        pthread_join(p->threads[w], NULL);
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->work);
    pthread_mutex_destroy(&p->lock);
    free(p);
    s->pool = NULL;
}

/*
 * Run `op` on filesystems first..first+n-1 at once: the workers take
 * positions 1.. and this thread position 0, then whatever no worker could
 * take, in order. err[k] is the errno of position k.
 */
static void run_batch(struct qz_session *s, int op, uint32_t first, uint32_t n, int *err)
{
    struct qz_pool *p = s->pool;
    uint32_t k, helped = 0;

    if (p != NULL && n > 1 && p->workers > 0) {
        helped = n - 1 < p->workers ? n - 1 : p->workers;
        pthread_mutex_lock(&p->lock);
        p->op = op;
        p->first = first;
        p->n = helped + 1;
        p->pending = helped;
        p->generation++;
        pthread_cond_broadcast(&p->work);
        pthread_mutex_unlock(&p->lock);
    }
    err[0] = run_op(s, op, first);
    for (k = helped + 1; k < n; k++)
        err[k] = run_op(s, op, first + k);
    if (helped > 0) {
        pthread_mutex_lock(&p->lock);
        while (p->pending > 0)
            pthread_cond_wait(&p->done, &p->lock);
        pthread_mutex_unlock(&p->lock);
        for (k = 1; k <= helped; k++)
            err[k] = p->err[k];
    }
}

/* The group that ends at `last`: its first index (the mirror of group_last). */
static uint32_t group_first(const struct qz_session *s, uint32_t last)
{
    uint32_t first = last;

    while (s->parallel && first > 0 && last - (first - 1) < GROUP_MAX &&
           s->fs[first - 1].group == s->fs[last].group)
        first--;
    return first;
}

/*
 * Thaw, last frozen first, every filesystem this process still owns. One that
 * the guardian already took over is left to it. With s->parallel the groups
 * thaw in the reverse of their freeze order, the members of one group at
 * once on the pool's threads: a filesystem on a loop device still thaws only
 * after the one holding its image. Returns the first errno, last first. The
 * pool is stopped after: nothing this call could thaw is left frozen.
 */
int qz_thaw(struct qz_session *s)
{
    int err[GROUP_MAX];
    int first_err = 0;
    uint32_t end = s->n;

    while (end > 0) {
        uint32_t first = group_first(s, end - 1);
        uint32_t k;

        run_batch(s, OP_THAW, first, end - first, err);
        for (k = end - first; k-- > 0;)
            if (err[k] != 0 && first_err == 0)
                first_err = err[k];
        end = first;
    }
    qz_pool_stop(s);
    return -first_err;
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
    int errs[GROUP_MAX];
    uint32_t i = 0;
    int err = 0;

    s->failed_index = -1;
    /* Before the window: the threads of every group, parked until their batch. */
    pool_start(s);
    qz_guardian_begin(s);
    while (i < s->n) {
        uint32_t last = group_last(s, i);
        uint32_t k;

        run_batch(s, OP_FREEZE, i, last - i + 1, errs);
        for (k = 0; k <= last - i; k++)
            if (errs[k] != 0) {
                err = errs[k];
                s->failed_index = (int32_t)(i + k);
                break;
            }
        if (err != 0)
            break;
        if (qz_load(&s->guard_claim) != QZ_FIRED_NONE) {
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
